"""TFF execution runtime whose C++ worker never outlives the Python process.

TFF 0.87's default context (`local_cpp_executor_factory`) launches
`tensorflow_federated/data/worker_binary` with the parent's stdout/stderr and
stops it only in `ServiceManager.__del__`, which does not run reliably at
interpreter exit. The orphaned worker then keeps the parent's output pipe open
and anything reading that pipe (CI logs, `| tee`, pytest's capture) hangs.

`start()` replaces TFF's default context with the same C++ runtime, except
that this module owns the worker process:

* the worker's stdout/stderr go to a log file, never to our pipes, so even a
  worker that survived could not hang a reader;
* the worker is started with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills
  it when this process dies for any reason, `kill -9` included;
* `stop()` runs at normal exit (atexit), on an uncaught exception (atexit runs
  after the traceback), and on SIGINT/SIGTERM (handlers installed by
  `install_signal_handlers`, which stop the worker and then re-raise the
  default behaviour). On SIGTERM the handler first prints the one line that
  whoever is running registered with `on_termination` (the round loop:
  where it stopped and where a re-run resumes).

Worker health
-------------
TFF gives no call a deadline, and its execution context retries `UNAVAILABLE`
forever, so a worker that dies mid-computation used to hang the run for good.
This module bounds that:

* **Dead worker.** A TFF call waits for its result in slices of
  `CALL_POLL_SECONDS` (0.25 s) and checks the worker process between slices; a
  watchdog thread also polls it every `WATCHDOG_INTERVAL_SECONDS` (1 s). A
  worker that exits or is killed during a computation is therefore noticed
  within about 0.25 s, always within 2 s; one that dies between computations
  is reported by the next call, at once.
* **Stuck worker.** While a computation waits on the worker (an RPC in flight,
  or TFF retrying a failed one), the watchdog samples the worker's CPU time
  (`/proc/PID/stat`) every second. If neither the worker's CPU time advances
  nor any RPC completes for `stall_timeout` seconds (`start(stall_timeout=...)`,
  default `DEFAULT_STALL_TIMEOUT_SECONDS` = 60 s), the worker is declared stuck
  (e.g. stopped, deadlocked, unreachable) and killed. Time the controller
  itself spends compiling or serializing does not count. A worker that spins
  the CPU forever without answering is not detected.

Either way the waiting call raises `WorkerError` (a `RuntimeError`) with a
one-line message, e.g. ``the TFF worker (pid 123) died with signal 9
(SIGKILL) during a computation; the last checkpoint is intact, re-run the
same command to resume (worker log: /tmp/tff_worker_x.log)``; every later call
raises it too, at once, until `start()` launches a new worker. The worker is
killed and reaped before the error is raised, so nothing is left behind, and
the usual `stop()`/atexit cleanup still runs as the exception unwinds. An
uncaught `WorkerError` is printed as that single line prefixed ``error: ``
(no traceback; `start()` installs a `sys.excepthook` that does this for
`WorkerError` only) and the process exits with status 1.

Remote workers
--------------
`start(workers=('host:port', ...))` starts no local worker: it connects to
TFF workers on other machines (`tff_research.remote`, which reuses this
module's monitor, stub and `WorkerError`) and splits each round's clients
across them. `stop()` disconnects from them; they are not ours to stop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Optional

from absl import logging
import grpc
import portpicker
import tensorflow_federated as tff
from tensorflow_federated.proto.v0 import executor_pb2
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.context_stack import context_base
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl
from tensorflow_federated.python.core.impl.context_stack import runtime_error_context
from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import executors_errors
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub
from tensorflow_federated.python.core.impl.types import placements

from tff_research.program import console

_PR_SET_PDEATHSIG = 1
_GRPC_OPTIONS = [
    ('grpc.max_message_length', 2**31 - 1),
    ('grpc.max_receive_message_length', 2**31 - 1),
]
_READY_TIMEOUT_SECONDS = 60.0

DEFAULT_STALL_TIMEOUT_SECONDS = 60.0
WATCHDOG_INTERVAL_SECONDS = 1.0
CALL_POLL_SECONDS = 0.25

WORKER_BINARY = os.path.join(
    os.path.dirname(tff.__file__), 'data', 'worker_binary'
)

_lock = threading.Lock()
_worker: Optional[subprocess.Popen] = None
_worker_log: Optional[str] = None
_monitor: Optional['_Monitor'] = None
_atexit_registered = False
_excepthook_installed = False
# The signal whose handler stopped the worker (None: not stopped by one).
_stopped_by_signal: Optional[int] = None
# The SIGTERM handler's line (None: no line); see on_termination.
_termination_line: Optional[Callable[[], str]] = None
# What the last start() installed as TFF's default context: 'local', 'remote'
# or None (never started: TFF's own import-time context).
_started: Optional[str] = None


class WorkerError(RuntimeError):
  """The TFF worker died, was stopped or made no progress (one-line message)."""


def _release_tff_default_context() -> None:
  """Drops TFF's import-time context while the interpreter is still whole.

  That context's `ServiceManager.__del__` otherwise runs during module
  teardown, when `subprocess` is already None, and prints a spurious
  AttributeError traceback at the end of every process that imported TFF.
  """
  context_stack_impl.context_stack.set_default_context(
      runtime_error_context.create_runtime_error_context()
  )


atexit.register(_release_tff_default_context)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
  """A `preexec_fn`: the kernel sends the child `sig` when its parent dies."""
  libc = ctypes.CDLL('libc.so.6', use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def worker_pid() -> Optional[int]:
  """Returns the pid of the running worker, or None."""
  with _lock:
    if _worker is not None and _worker.poll() is None:
      return _worker.pid
    return None


def stopped() -> bool:
  """Whether TFF's default context is one `start()` installed that has since
  ended (stopped, or its local worker died or was declared stuck): TFF calls
  raise `WorkerError` until the next `start()`. False before any `start()`."""
  if _started is None:
    return False
  if _started == 'remote':
    from tff_research import remote  # pylint: disable=g-import-not-at-top
    return remote.stats() is None
  return worker_pid() is None


def worker_log_path() -> Optional[str]:
  return _worker_log


def _proc_stat(pid: int) -> Optional[tuple[str, int]]:
  """(state letter, utime + stime in clock ticks) of `pid`, or None."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
  except (OSError, IndexError):
    return None
  return fields[0], int(fields[11]) + int(fields[12])


def _signal_name(signum: int) -> str:
  try:
    return signal.Signals(signum).name
  except ValueError:
    return f'signal {signum}'


class _Monitor:
  """Health of one worker, shared by its stub, its context and its watchdog.

  All fields are guarded by `lock`. `failure` is the one-line message of the
  first failure seen; once set, it never changes.
  """

  def __init__(self, process: subprocess.Popen, log_path: str,
               stall_timeout: float):
    self.process = process
    self.log_path = log_path
    self.stall_timeout = stall_timeout
    self.lock = threading.RLock()
    self.failure: Optional[str] = None
    self.stopped = False  # stop() was called: its kill is not a failure.
    self.calls = 0  # TFF calls in progress.
    self.inflight = 0  # RPCs in progress.
    self.retrying = False  # The last RPC failed with a retryable error.
    self.last_progress = time.monotonic()
    self.last_cpu: Optional[int] = None
    self.channel_state: Optional[grpc.ChannelConnectivity] = None
    self.done = threading.Event()

  # --- events -------------------------------------------------------------

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

  # --- checks -------------------------------------------------------------

  def unavailable_reason(self) -> Optional[str]:
    """Why the worker cannot serve calls, or None if it can."""
    with self.lock:
      if self.failure is not None:
        return self.failure
      if self.stopped:
        return self.stopped_message()
      return None

  def stopped_message(self) -> str:
    return (f'the TFF worker (pid {self.process.pid}) was stopped'
            ' (runtime.stop()); call runtime.start() for a new one')

  def check_process(self) -> None:
    """Records a failure if the worker process has exited."""
    returncode = self.process.poll()
    if returncode is None:
      return
    with self.lock:
      if self.failure is not None or self.stopped:
        return
      during = 'during a computation' if self.calls else 'between computations'
      if returncode < 0:
        how = f'died with signal {-returncode} ({_signal_name(-returncode)})'
      else:
        how = f'exited with status {returncode}'
      self._fail(f'the TFF worker (pid {self.process.pid}) {how} {during}')

  def check(self) -> None:
    """One watchdog tick: liveness, then progress of a waiting computation."""
    self.check_process()
    now = time.monotonic()
    with self.lock:
      if self.failure is not None or self.stopped:
        return
      waiting = self.calls > 0 and (self.inflight > 0 or self.retrying)
      stat = _proc_stat(self.process.pid)
      cpu = stat[1] if stat else None
      if not waiting or cpu != self.last_cpu:
        self.last_progress = now
      self.last_cpu = cpu
      idle = now - self.last_progress
      if not waiting or idle < self.stall_timeout:
        return
      details = []
      if stat and stat[0] in 'Tt':
        details.append('process stopped')
      if self.retrying:
        details.append('its RPCs fail and are being retried')
      if self.channel_state is not None:
        details.append(f'gRPC channel {self.channel_state.name}')
      detail = f' ({", ".join(details)})' if details else ''
      self._fail(
          f'the TFF worker (pid {self.process.pid}) made no progress for'
          f' {idle:.0f} s during a computation{detail}, more than the'
          f' stall timeout of {self.stall_timeout:g} s; it was killed')

  def _fail(self, what: str) -> None:
    """Records the failure (first one wins) and kills and reaps the worker."""
    self.failure = (
        f'{what}; the last checkpoint is intact, re-run the same command to'
        f' resume (worker log: {self.log_path})')
    logging.info('%s', self.failure)
    self.done.set()
    if self.process.poll() is None:
      with contextlib.suppress(ProcessLookupError):
        self.process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
      self.process.wait(10)

  def watch(self) -> None:
    """The watchdog thread's body: ticks until the worker fails or stops."""
    while not self.done.wait(WATCHDOG_INTERVAL_SECONDS):
      try:
        self.check()
      except Exception:  # pylint: disable=broad-except
        logging.exception('TFF worker watchdog tick failed')


class _MonitoredStub(remote_executor_grpc_stub.RemoteExecutorGrpcStub):
  """The gRPC stub, reporting each RPC to the monitor and failing fast.

  Once the worker has failed or was stopped, requests raise `WorkerError`
  (which TFF does not retry) instead of being sent; disposals, which TFF also
  issues from finalizers where an exception would be printed, become no-ops.
  """

  def __init__(self, channel: grpc.Channel, monitor: _Monitor):
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
    except executors_errors.RetryableError:
      monitor.rpc_end(ok=False, retryable=True)
      monitor.check_process()
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

  _base = remote_executor_grpc_stub.RemoteExecutorGrpcStub

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


class _MonitoredSyncContext(context_base.SyncContext):
  """TFF's `SyncExecutionContext`, except that a call never outwaits the worker.

  As TFF's, it runs the async context on an event loop in a daemon thread; the
  calling thread waits for the result in slices of `CALL_POLL_SECONDS`,
  checking the monitor in between, and raises `WorkerError` once the worker
  has failed (the pending coroutine is cancelled).
  """

  def __init__(self, executor_fn, monitor: _Monitor):
    self._monitor = monitor
    self._async_context = async_execution_context.AsyncExecutionContext(
        executor_fn=executor_fn,
        compiler_fn=compiler.desugar_and_transform_to_native,
        transform_args=tensorflow_computation.transform_args,
        transform_result=tensorflow_computation.transform_result,
    )
    self._loop = asyncio.new_event_loop()
    threading.Thread(
        target=self._loop.run_forever, name='tff-runtime-loop', daemon=True
    ).start()

  def invoke(self, comp, arg):
    monitor = self._monitor
    reason = monitor.unavailable_reason()
    if reason is not None:
      raise WorkerError(reason)
    monitor.call_begin()
    try:
      future = asyncio.run_coroutine_threadsafe(
          self._async_context.invoke(comp, arg), self._loop)
      while True:
        try:
          return future.result(timeout=CALL_POLL_SECONDS)
        except concurrent.futures.TimeoutError:
          monitor.check_process()
        except WorkerError as e:
          raise WorkerError(monitor.unavailable_reason() or str(e)) from None
        except Exception:
          monitor.check_process()
          reason = monitor.unavailable_reason()
          if reason is None:
            raise
          raise WorkerError(reason) from None
        reason = monitor.unavailable_reason()
        if reason is not None:
          future.cancel()
          raise WorkerError(reason)
    finally:
      monitor.call_end()


def _excepthook(exc_type, exc, tb, *, previous):
  if isinstance(exc, WorkerError):
    if _stopped_by_signal is not None:
      # The worker was stopped because the user interrupted the run, and the
      # KeyboardInterrupt was lost on the way (raised inside a finalizer or
      # a GC callback, where Python only prints it): end as the signal would,
      # rather than blame a stopped worker.
      _die_by(_stopped_by_signal)
    print(f'error: {exc}', file=sys.stderr, flush=True)
    return
  previous(exc_type, exc, tb)


def _die_by(signum: int) -> None:
  sys.stderr.flush()
  signal.signal(signum, signal.SIG_DFL)
  os.kill(os.getpid(), signum)
  sys.exit(128 + signum)  # Only if the signal was blocked.


def _install_excepthook() -> None:
  global _excepthook_installed
  if _excepthook_installed:
    return
  previous = sys.excepthook
  sys.excepthook = lambda t, e, tb: _excepthook(t, e, tb, previous=previous)
  _excepthook_installed = True


def _start_worker(max_concurrent_computation_calls: int) -> tuple[
    subprocess.Popen, int]:
  global _worker_log
  port = portpicker.pick_unused_port()
  fd, _worker_log = tempfile.mkstemp(prefix='tff_worker_', suffix='.log')
  with os.fdopen(fd, 'wb') as log:
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits; start() is
    # documented to be called from the main thread, whose exit is the
    # process's.
    process = subprocess.Popen(
        [
            WORKER_BINARY,
            f'--port={port}',
            f'--max_concurrent_computation_calls={max_concurrent_computation_calls}',
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
        close_fds=True,
    )
  return process, port


def start(
    *,
    workers: Sequence[str] = (),
    default_num_clients: int = 0,
    max_concurrent_computation_calls: int = -1,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_SECONDS,
) -> None:
  """Starts a managed worker and makes it TFF's default execution context.

  Idempotent: a second call while a worker runs starts nothing (it only
  updates `stall_timeout`). A worker that failed or was stopped is replaced
  by a new one. Call from the main thread, before any TFF computation is
  invoked.

  Args:
    workers: `host:port` addresses of remote TFF workers; empty (the
      default) runs on a local worker owned by this process. With workers,
      no local worker runs and each call's clients are split across them
      (see `tff_research.remote`); a worker unreachable within 10 s raises
      `WorkerError` naming it.
    default_num_clients: cardinality of CLIENTS when it cannot be inferred.
    max_concurrent_computation_calls: passed to the worker; <= 0 is no limit.
    stall_timeout: seconds a computation may wait on a worker that shows no
      progress (no CPU time, no RPC answered) before the worker is declared
      stuck, killed, and the call raises `WorkerError`. Must be > 0.
  """
  global _worker, _monitor, _atexit_registered, _stopped_by_signal, _started
  if not stall_timeout > 0:
    raise ValueError(f'stall_timeout must be > 0, got {stall_timeout!r}')
  _stopped_by_signal = None  # A new worker: an earlier interrupt is handled.
  if workers:
    from tff_research import remote  # pylint: disable=g-import-not-at-top
    _stop_local_worker()
    with _lock:
      if not _atexit_registered:
        atexit.register(stop)
        _atexit_registered = True
    _install_excepthook()
    remote.start(workers, default_num_clients=default_num_clients,
                 stall_timeout=stall_timeout)
    _started = 'remote'
    return
  _stop_remote()
  with _lock:
    if _worker is not None and _worker.poll() is None:
      if _monitor is not None:
        _monitor.stall_timeout = float(stall_timeout)
      return
    process, port = _start_worker(max_concurrent_computation_calls)
    _worker = process
    monitor = _Monitor(process, _worker_log, float(stall_timeout))
    _monitor = monitor
    if not _atexit_registered:
      atexit.register(stop)
      _atexit_registered = True
  _install_excepthook()

  channel = grpc.insecure_channel(f'localhost:{port}', _GRPC_OPTIONS)
  channel.subscribe(monitor.on_channel_state, try_to_connect=True)
  stub = _MonitoredStub(channel, monitor)
  deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
  while not stub.is_ready:
    if process.poll() is not None:
      stop()
      raise RuntimeError(
          f'TFF worker exited with code {process.returncode} before it was'
          f' ready; see {_worker_log}'
      )
    if time.monotonic() > deadline:
      stop()
      raise RuntimeError(
          f'TFF worker not ready after {_READY_TIMEOUT_SECONDS:.0f}s; see'
          f' {_worker_log}'
      )
    time.sleep(0.01)
  threading.Thread(
      target=monitor.watch, name='tff-worker-watchdog', daemon=True
  ).start()

  context = _MonitoredSyncContext(
      python_executor_stacks.ResourceManagingExecutorFactory(
          executor_stack_fn=remote_stack_fn(stub, default_num_clients)
      ),
      monitor,
  )
  context_stack_impl.context_stack.set_default_context(context)
  _started = 'local'
  logging.info('TFF worker pid %d on port %d (log %s, stall timeout %g s)',
               process.pid, port, _worker_log, stall_timeout)


def remote_stack_fn(stub, default_num_clients: int):
  """The executor stack of one worker: a `RemoteExecutor` on `stub` whose
  CLIENTS cardinality defaults to `default_num_clients` (TFF needs one for
  computations without CLIENTS-placed arguments). Shared by the local worker
  and `remote.py`'s workers."""
  def stack_fn(cardinalities):
    if cardinalities.get(placements.CLIENTS) is None:
      cardinalities[placements.CLIENTS] = default_num_clients
    executor = remote_executor.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor
  return stack_fn


def _stop_remote() -> None:
  remote = sys.modules.get('tff_research.remote')
  if remote is not None:
    remote.stop()


def stop(timeout: float = 10.0) -> None:
  """Stops the managed worker (SIGINT, then SIGKILL) and waits for it, and
  disconnects from remote workers (which keep running)."""
  _stop_remote()
  _stop_local_worker(timeout)


def _stop_local_worker(timeout: float = 10.0) -> None:
  global _worker
  with _lock:
    process, _worker = _worker, None
    monitor = _monitor
  if monitor is not None:
    with monitor.lock:
      monitor.stopped = True
    monitor.done.set()
  if process is None or process.poll() is not None:
    return
  with contextlib.suppress(ProcessLookupError):
    process.send_signal(signal.SIGINT)
  try:
    process.wait(timeout)
  except subprocess.TimeoutExpired:
    with contextlib.suppress(ProcessLookupError):
      process.kill()
    process.wait()


def on_termination(line: Optional[Callable[[], str]]) -> None:
  """Makes the SIGTERM handler print `line()` on stderr before the process
  ends (None: print nothing). `line` runs inside the signal handler: it must
  not start an event loop or take a lock the interrupted code may hold."""
  global _termination_line
  _termination_line = line


def install_signal_handlers() -> None:
  """On SIGINT/SIGTERM: stop the worker, then behave as the default would.

  SIGINT still raises KeyboardInterrupt (so `finally` blocks and checkpoints
  written so far stay consistent); SIGTERM prints the line registered with
  `on_termination`, if any, and exits by the signal (status 128 + 15). If
  the KeyboardInterrupt is lost (raised where Python only prints it, in a
  finalizer or GC callback) and the run's next TFF call meets the stopped
  worker, that `WorkerError` ends the process by SIGINT, not with a line
  about a stopped worker.
  """

  def on_sigterm(signum, frame):
    del frame
    stop()
    line = _termination_line
    if line is not None:
      console.restore_stderr()  # The line must reach the real stderr.
      try:
        print(line(), file=sys.stderr, flush=True)
      except Exception:  # pylint: disable=broad-except
        pass  # Ending the process matters more than its last line.
    _die_by(signum)

  def on_sigint(signum, frame):
    global _stopped_by_signal
    del frame
    _stopped_by_signal = signum
    stop()
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, on_sigterm)
  signal.signal(signal.SIGINT, on_sigint)


@contextlib.contextmanager
def managed_runtime(**kwargs):
  """`with managed_runtime(): ...` starts the worker and always stops it."""
  start(**kwargs)
  try:
    yield
  finally:
    stop()
