"""Worker health: one monitor per TFF worker, the stub that reports to it,
and the wait that never outlasts it. Shared by the local worker (`runtime`)
and remote workers (`remote`).

TFF gives no call a deadline, and its execution context retries
`UNAVAILABLE` forever, so without this a worker that dies or hangs in a
computation would hang the run for good.

* `Monitor`: the health of one worker, fed by events (TFF calls, RPCs, the
  gRPC channel's state) and ticked every `WATCHDOG_INTERVAL_SECONDS` by a
  watchdog thread. A subclass says how its kind of worker is checked:
  `runtime.ProcessMonitor` (a child process: exit status, CPU time) and
  `remote.RemoteMonitor` (an address: RPC progress and probes).
* `MonitoredStub`: TFF's gRPC stub, reporting each RPC to its monitor and
  failing fast once the worker has failed.
* `MonitoredRunner`: runs a call's coroutine on a private event loop; the
  caller waits in slices of `CALL_POLL_SECONDS`, checking every monitor in
  between, and gets `WorkerError` (one line) once a worker has failed.
* `worker_context(stub, ...)`: TFF's async execution context on one worker.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Optional

from absl import logging
import grpc
import tensorflow_federated as tff
# The gRPC messages of TFF's executor service; TFF exports no public module
# for them, and a disposal the stub skips must still return its response.
from tensorflow_federated.proto.v0 import executor_pb2

DEFAULT_STALL_TIMEOUT_SECONDS = 60.0
WATCHDOG_INTERVAL_SECONDS = 1.0
CALL_POLL_SECONDS = 0.25


class WorkerError(RuntimeError):
  """A TFF worker died, was stopped or made no progress (one-line message)."""


class Monitor(abc.ABC):
  """Health of one worker, shared by its stub, its context and its watchdog.

  All fields are guarded by `lock`. `failure` is the one-line message of the
  first failure seen; once set, it never changes.
  """

  def __init__(self, stall_timeout: float):
    self.stall_timeout = stall_timeout
    self.lock = threading.RLock()
    self.failure: Optional[str] = None
    self.stopped = False  # stop() was called: what follows is no failure.
    self.calls = 0  # TFF calls in progress.
    self.inflight = 0  # RPCs in progress.
    self.retrying = False  # The last RPC failed with a retryable error.
    self.last_progress = time.monotonic()
    self.channel_state: Optional[grpc.ChannelConnectivity] = None
    self.done = threading.Event()

  # --- what a kind of worker defines -----------------------------------------

  @abc.abstractmethod
  def stopped_message(self) -> str:
    """The line a call gets after `stop()`."""

  @abc.abstractmethod
  def check_alive(self) -> None:
    """Records a failure if the worker is gone (cheap: runs between the
    slices of every wait)."""

  @abc.abstractmethod
  def tick(self) -> None:
    """One watchdog tick: liveness, then progress of a waiting call."""

  # --- events -----------------------------------------------------------------

  def on_channel_state(self, state: grpc.ChannelConnectivity) -> None:
    self.channel_state = state

  def call_begin(self) -> None:
    with self.lock:
      if self.calls == 0:
        self.last_progress = time.monotonic()
      self.calls += 1

  def call_end(self) -> None:
    with self.lock:
      self.calls -= 1

  def rpc_begin(self) -> None:
    with self.lock:
      if self.inflight == 0 and not self.retrying:
        self.last_progress = time.monotonic()
      self.inflight += 1

  def rpc_end(self, *, ok: bool, retryable: bool = False) -> None:
    with self.lock:
      self.inflight -= 1
      if ok:
        self.retrying = False
        self.last_progress = time.monotonic()
      elif retryable:
        self.retrying = True

  def stop(self) -> None:
    """Marks the worker stopped (its end is then no failure) and ends the
    watchdog."""
    with self.lock:
      self.stopped = True
    self.done.set()

  # --- state ------------------------------------------------------------------

  def unavailable_reason(self) -> Optional[str]:
    """Why the worker cannot serve calls, or None if it can."""
    with self.lock:
      if self.failure is not None:
        return self.failure
      if self.stopped:
        return self.stopped_message()
      return None

  def ended(self) -> bool:
    """Whether the worker has failed or was stopped."""
    with self.lock:
      return self.failure is not None or self.stopped

  def waiting(self) -> bool:
    """Whether a call waits on the worker (an RPC in flight or retried)."""
    with self.lock:
      return self.calls > 0 and (self.inflight > 0 or self.retrying)

  def phase(self) -> str:
    return 'during a computation' if self.calls else 'between computations'

  def watch(self) -> None:
    """The watchdog thread's body: ticks until the worker fails or stops."""
    while not self.done.wait(WATCHDOG_INTERVAL_SECONDS):
      try:
        self.tick()
      except Exception:  # pylint: disable=broad-except
        logging.exception('TFF worker watchdog tick failed')

  def start_watchdog(self, name: str) -> None:
    threading.Thread(target=self.watch, name=name, daemon=True).start()


class MonitoredStub(tff.framework.RemoteExecutorGrpcStub):
  """TFF's gRPC stub, reporting each RPC to the monitor and failing fast.

  Once the worker has failed or was stopped, requests raise `WorkerError`
  (which TFF does not retry) instead of being sent; disposals, which TFF also
  issues from finalizers where an exception would be printed, become no-ops.
  """

  _base = tff.framework.RemoteExecutorGrpcStub

  def __init__(self, channel: grpc.Channel, monitor: Monitor):
    super().__init__(channel)
    self._monitor = monitor

  def _call(self, method, request, *, dispose=False):
    monitor = self._monitor
    reason = monitor.unavailable_reason()
    if reason is not None:
      if dispose:
        return None
      raise WorkerError(reason)
    monitor.rpc_begin()
    try:
      response = method(self, request)
    except tff.framework.RetryableError:
      monitor.rpc_end(ok=False, retryable=True)
      monitor.check_alive()
      reason = monitor.unavailable_reason()
      if reason is not None:
        if dispose:
          return None
        raise WorkerError(reason) from None
      raise
    except BaseException:
      monitor.rpc_end(ok=False)
      raise
    monitor.rpc_end(ok=True)
    return response

  def get_executor(self, request):
    return self._call(self._base.get_executor, request)

  def create_value(self, request):
    return self._call(self._base.create_value, request)

  def create_struct(self, request):
    return self._call(self._base.create_struct, request)

  def create_call(self, request):
    return self._call(self._base.create_call, request)

  def create_selection(self, request):
    return self._call(self._base.create_selection, request)

  def compute(self, request):
    return self._call(self._base.compute, request)

  def dispose(self, request):
    return (self._call(self._base.dispose, request, dispose=True)
            or executor_pb2.DisposeResponse())

  def dispose_executor(self, request):
    return (self._call(self._base.dispose_executor, request, dispose=True)
            or executor_pb2.DisposeExecutorResponse())


class MonitoredRunner:
  """Runs coroutines on a private event loop in a daemon thread; the caller
  waits for each result in slices of `CALL_POLL_SECONDS`, checking every
  monitor in between, and raises `WorkerError` once one has failed (every
  task of the call is cancelled first).

  `run_coro_and_return_result` is what TFF's mergeable context asks of its
  runner, so one runner serves a local and a distributed context alike.
  """

  def __init__(self, monitors: Sequence[Monitor], name: str):
    self._monitors = tuple(monitors)
    self._loop = asyncio.new_event_loop()
    threading.Thread(target=self._loop.run_forever, name=name,
                     daemon=True).start()

  def failure(self) -> Optional[str]:
    """The first failed or stopped worker's line, or None."""
    for m in self._monitors:
      m.check_alive()
      reason = m.unavailable_reason()
      if reason is not None:
        return reason
    return None

  def run_coro_and_return_result(self, coro):
    reason = self.failure()
    if reason is not None:
      coro.close()
      raise WorkerError(reason)
    for m in self._monitors:
      m.call_begin()
    try:
      future = asyncio.run_coroutine_threadsafe(coro, self._loop)
      while True:
        try:
          return future.result(timeout=CALL_POLL_SECONDS)
        except concurrent.futures.TimeoutError:
          pass
        except Exception:  # pylint: disable=broad-except
          reason = self.failure()
          if reason is None:
            raise
          self.cancel_all()
          raise WorkerError(reason) from None
        reason = self.failure()
        if reason is not None:
          self.cancel_all()
          raise WorkerError(reason)
    finally:
      for m in self._monitors:
        m.call_end()

  def cancel_all(self, timeout: float = 5.0) -> None:
    """Cancels every task on the loop, the call's sibling tasks too.

    TFF does not cancel a call's other tasks when one fails (on several
    workers: the other workers' parts); left pending, asyncio would print
    "Task was destroyed but it is pending" for each at exit, after the
    run's one-line error.
    """
    async def cancel():
      tasks = [t for t in asyncio.all_tasks()
               if t is not asyncio.current_task()]
      for t in tasks:
        t.cancel()
      if tasks:
        await asyncio.wait(tasks, timeout=timeout)

    if self._loop.is_closed() or not self._loop.is_running():
      return
    with contextlib.suppress(Exception):
      asyncio.run_coroutine_threadsafe(cancel(), self._loop).result(
          timeout + 1)

  def close(self) -> None:
    self.cancel_all()
    self._loop.call_soon_threadsafe(self._loop.stop)


def worker_context(stub: MonitoredStub, default_num_clients: int
                   ) -> tff.framework.AsyncExecutionContext:
  """TFF's async execution context on one worker: a `RemoteExecutor` on
  `stub`, compiled as TFF's native backend compiles. CLIENTS' cardinality
  defaults to `default_num_clients` (TFF needs one for computations without
  CLIENTS-placed arguments)."""
  def stack_fn(cardinalities):
    if cardinalities.get(tff.CLIENTS) is None:
      cardinalities[tff.CLIENTS] = default_num_clients
    # Each value is freed on the worker as soon as its last Python reference
    # goes: TFF's default batches 20 disposals, and until they queue up the
    # worker holds the last rounds' arguments and results, model-sized
    # tables included (1.2 GB more a round for SCAFFOLD with 50 CNN
    # clients). A dispose is one small RPC.
    executor = tff.framework.RemoteExecutor(stub, dispose_batch_size=1)
    executor.set_cardinalities(cardinalities)
    return executor

  return tff.framework.AsyncExecutionContext(
      executor_fn=tff.framework.ResourceManagingExecutorFactory(
          executor_stack_fn=stack_fn),
      compiler_fn=tff.backends.native.desugar_and_transform_to_native,
      transform_args=tff.tensorflow.transform_args,
      transform_result=tff.tensorflow.transform_result,
  )
