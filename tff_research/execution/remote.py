"""A round's client work on TFF workers on other machines.

`runtime.start(workers=('host:port', ...))` calls `start()` here instead of
launching a local worker. Each address is a TFF C++ `worker_binary` (started
on its machine with `python -m tff_research.cli.worker --port=P`); the controller
talks to it through TFF's own `RemoteExecutor`, and TFF's
`MergeableCompExecutionContext` splits the CLIENTS-placed values of a call
(the round's client datasets) into one contiguous slice per worker, runs the
computation up to its aggregation on every worker, and merges the partial
aggregates; here the partial aggregates are merged, and a per-client result
joined, in slice order, which is the clients' order
(`_invoke_slices_in_order`). The wheel of TFF 0.87 lacks the C++ remote executor stack, so
this is built from the public Python pieces (see docs/scale_out.md).

Routing, per computation (decided once, cached):

* a computation with a CLIENTS-placed parameter that
  `compile_to_mergeable_comp_form` accepts (one aggregation level: a round of
  FedAvg and its adaptive, DP and clustered variants, the evaluation pass) is
  split across the workers;
* every other computation (`initialize`, server-only steps, anything the
  compiler refuses) runs whole on one worker, the first. `stats()` counts
  both, so a test can tell that a round really was split.

Health: each worker has a `RemoteMonitor` (`monitor.Monitor`, as the local
worker's, with the same stub, runner and one-line `WorkerError`), checked
with what a remote process allows instead of `/proc`: while a computation
waits on a worker,
the watchdog probes it every second with a cheap RPC on the same channel
(`/grpc.health.v1.Health/Check`, which worker_binary answers UNIMPLEMENTED:
any answer proves its gRPC server is alive) with a deadline of
`PROBE_TIMEOUT_SECONDS`.

* **Dead or unreachable** (connection refused, reset, no route): declared
  failed once no RPC or probe has reached it for `unreachable_timeout`
  (default 5 s), so the run ends about 6 s after the worker died.
* **Hung** (stopped, machine frozen, packets dropped): probes time out; no
  RPC completes and no probe is answered for `stall_timeout` (60 s) -> failed.
  A worker that answers probes but never finishes its computation (e.g. a
  deadlock inside it) is not detected.
* **Unreachable at start**: `start()` raises `WorkerError` after
  `connect_timeout` (default 10 s) with one line naming the address.

A failed worker's channel is closed (its in-flight RPCs are cancelled) and
the waiting call raises `WorkerError` naming ``host:port``; the checkpoint
written before the round is intact, and re-running the same command resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Sequence
from typing import Optional

from absl import logging
import grpc
import tensorflow_federated as tff
# Private TFF: the steps of a mergeable call (split the argument into slices,
# run `merge` and `after_merge` on a context, join CLIENTS-placed slices),
# which TFF exports only inside `MergeableCompExecutionContext.invoke`; that
# invoke joins the slices in the order the workers finish
# (`_invoke_slices_in_order` says why that is wrong).
from tensorflow_federated.python.core.impl.execution_contexts import mergeable_comp_execution_context as mergeable

from tff_research.execution import monitor as monitor_lib
from tff_research.execution import worker as worker_lib

DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_UNREACHABLE_TIMEOUT_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 5.0
_MAX_MESSAGE_BYTES = worker_lib.MAX_MESSAGE_MEGABYTES * 1024 * 1024
_CHANNEL_OPTIONS = [
    ('grpc.max_send_message_length', _MAX_MESSAGE_BYTES),
    ('grpc.max_receive_message_length', _MAX_MESSAGE_BYTES),
]
_PROBE_METHOD = '/grpc.health.v1.Health/Check'
_UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE,
                      grpc.StatusCode.DEADLINE_EXCEEDED)


def parse_address(address: str) -> str:
  """`host:port` normalized, or ValueError (one line) naming the bad value."""
  text = address.strip()
  host, sep, port = text.rpartition(':')
  if host.startswith('[') and host.endswith(']'):
    host = host[1:-1]  # [::1]:8000
  if not sep or not host or not port.isdigit():
    raise ValueError(
        f'--workers entry {address!r} is not valid: expected host:port, e.g.'
        ' 10.0.0.5:8000 or worker-0.tff-workers:8000')
  if not 1 <= int(port) <= 65535:
    raise ValueError(
        f'--workers entry {address!r} is not valid: port {int(port)} is not'
        ' in [1, 65535]')
  return f'[{host}]:{int(port)}' if ':' in host else f'{host}:{int(port)}'


def parse_workers(value) -> tuple[str, ...]:
  """A comma-separated string (the flag) or a sequence, as addresses."""
  if isinstance(value, str):
    items = [v for v in value.split(',') if v.strip()]
  else:
    items = list(value or ())
  addresses = tuple(parse_address(v) for v in items)
  seen = set()
  for a in addresses:
    if a in seen:
      raise ValueError(f'--workers lists {a} twice: each worker once')
    seen.add(a)
  return addresses


class RemoteMonitor(monitor_lib.Monitor):
  """Health of one remote worker: RPC progress and probes, no process."""

  def __init__(self, address: str, channel: grpc.Channel,
               stall_timeout: float, unreachable_timeout: float):
    super().__init__(stall_timeout)
    self.address = address
    self.channel = channel
    self.unreachable_timeout = unreachable_timeout
    self.unreachable_since: Optional[float] = None
    self.last_error = ''
    self._probe = channel.unary_unary(
        _PROBE_METHOD, request_serializer=lambda x: x,
        response_deserializer=lambda x: x)

  def stopped_message(self) -> str:
    return (f'the TFF worker at {self.address} was disconnected'
            ' (runtime.stop()); call runtime.start() again')

  def rpc_end(self, *, ok: bool, retryable: bool = False) -> None:
    super().rpc_end(ok=ok, retryable=retryable)
    with self.lock:
      if ok:
        self.unreachable_since = None
      elif retryable and self.unreachable_since is None:
        self.unreachable_since = time.monotonic()

  def probe(self) -> bool:
    """One cheap RPC with a deadline: True if the worker's server answered."""
    try:
      self._probe(b'', timeout=PROBE_TIMEOUT_SECONDS)
      return True
    except grpc.RpcError as e:
      code = e.code() if isinstance(e, grpc.Call) else None
      if code in _UNREACHABLE_CODES:
        detail = (e.details() or '').split(';')[0][:80] if code else ''
        self.last_error = f'{code.name}: {detail}' if code else 'no answer'
        return False
      return True  # UNIMPLEMENTED etc.: a live server answered.
    except ValueError:  # The channel was closed under us.
      return False

  def check_alive(self) -> None:
    """Fails the worker if it has been unreachable for too long."""
    with self.lock:
      if self.ended():
        return
      since = self.unreachable_since
      if since is None or time.monotonic() - since < self.unreachable_timeout:
        return
      self._fail(
          f'is unreachable ({self.last_error or "connection lost"}) for'
          f' {time.monotonic() - since:.0f} s {self.phase()}, more than'
          f' {self.unreachable_timeout:g} s')

  def tick(self) -> None:
    with self.lock:
      if self.ended():
        return
      waiting = self.waiting()
    now = time.monotonic()
    if not waiting:
      with self.lock:
        self.last_progress = now
      return
    alive = self.probe()
    with self.lock:
      if self.ended():
        return
      if alive:
        self.last_progress = time.monotonic()
        self.unreachable_since = None
      elif self.unreachable_since is None and not self.last_error.startswith(
          'DEADLINE'):
        self.unreachable_since = now
    self.check_alive()
    with self.lock:
      if self.failure is not None:
        return
      idle = time.monotonic() - self.last_progress
      if idle < self.stall_timeout:
        return
      detail = f' (last probe: {self.last_error})' if self.last_error else ''
      self._fail(
          f'made no progress for {idle:.0f} s during a computation{detail},'
          f' more than the stall timeout of {self.stall_timeout:g} s')

  def _fail(self, what: str) -> None:
    self.failure = (
        f'the TFF worker at {self.address} {what}; the last checkpoint is'
        ' intact: restart the worker (or fix --workers) and re-run the same'
        ' command to resume')
    logging.info('%s', self.failure)
    self.done.set()
    # Cancels the RPCs in flight, so TFF's threads stop waiting on it.
    threading.Thread(target=self.channel.close, daemon=True).start()


@dataclasses.dataclass
class Stats:
  """What the controller sent and how calls were routed, since `start()`."""

  bytes_sent: dict[str, int]
  bytes_received: dict[str, int]
  split_calls: int = 0
  single_worker_calls: int = 0
  # (route, type signature) -> [calls, bytes sent, bytes received]: which
  # computations the bytes belong to.
  by_computation: dict[str, list[int]] = dataclasses.field(
      default_factory=dict)

  def _totals(self) -> tuple[int, int]:
    return sum(self.bytes_sent.values()), sum(self.bytes_received.values())


def _has_clients_parameter(comp) -> bool:
  param = comp.type_signature.parameter
  if param is None:
    return False
  return tff.types.contains(
      param, lambda t: isinstance(t, tff.FederatedType)
      and t.placement == tff.CLIENTS)


class _DistributedContext(tff.framework.MergeableCompExecutionContext):
  """TFF's mergeable context over the workers, plus the one-worker route for
  computations it cannot split; its waits are bounded by the monitors."""

  def __init__(self, async_contexts, monitors, stats: Stats):
    super().__init__(
        async_contexts,
        compiler_fn=tff.backends.native.compile_to_mergeable_comp_form)
    # Replaces TFF's runner: the same interface, with waits the monitors
    # bound.
    self._async_runner = monitor_lib.MonitoredRunner(monitors,
                                                     'tff-remote-loop')
    self._single_context = async_contexts[0]
    self._routes: dict[int, tuple[object, bool]] = {}
    self._stats = stats

  def _splits(self, comp) -> bool:
    cached = self._routes.get(id(comp))
    if cached is not None and cached[0] is comp:
      return cached[1]
    split = _has_clients_parameter(comp)
    if split:
      try:
        self._compiler_pipeline.compile(comp)
      except (ValueError, TypeError) as e:
        logging.info('runs on one worker, not mergeable: %s (%s)',
                        comp.type_signature, str(e).splitlines()[0][:200])
        split = False
    self._routes[id(comp)] = (comp, split)
    return split

  def invoke(self, comp, arg=None):
    split = isinstance(comp, tff.framework.MergeableCompForm) or (
        self._splits(comp))
    stats = self._stats
    sent, received = stats._totals()  # pylint: disable=protected-access
    try:
      if split:
        stats.split_calls += 1
        return self._invoke_split(comp, arg)
      stats.single_worker_calls += 1
      return self._async_runner.run_coro_and_return_result(
          self._single_context.invoke(comp, arg))
    finally:
      now_sent, now_received = stats._totals()  # pylint: disable=protected-access
      key = (f'{"split" if split else "one worker"}:'
             f' {str(getattr(comp, "type_signature", "?"))[:120]}')
      entry = stats.by_computation.setdefault(key, [0, 0, 0])
      entry[0] += 1
      entry[1] += now_sent - sent
      entry[2] += now_received - received

  def _invoke_split(self, comp, arg):
    """TFF's mergeable invocation (`MergeableCompExecutionContext.invoke`),
    with the slices kept in the clients' order (`_invoke_slices_in_order`)."""
    form = comp if isinstance(comp, tff.framework.MergeableCompForm) else (
        self._compiler_pipeline.compile(comp))
    contexts = self._async_execution_contexts
    if arg is None:
      slices = [None] * len(contexts)
    else:
      slices = mergeable.MergeableCompExecutionContextValue(
          arg, form.up_to_merge.type_signature.parameter,
          self._num_subrounds).value()
    result = self._async_runner.run_coro_and_return_result(
        _invoke_slices_in_order(form, slices, contexts))
    return tff.types.type_to_py_container(
        result, form.after_merge.type_signature.result)

  def close(self):
    self._async_runner.close()


async def _invoke_slices_in_order(form, slices, contexts):
  """Runs a `MergeableCompForm` on one contiguous slice of the clients per
  worker; returns what the whole computation returns on one machine.

  TFF 0.87 (`mergeable_comp_execution_context._invoke_mergeable_comp_form`)
  merges the partial aggregates and concatenates the slices of a
  CLIENTS-placed result in the order the workers *finish*. A sum does not
  mind the order; a per-client result does: clients [0 1 2 | 3 4] on two
  workers come back as [3 4 0 1 2] when the second slice finishes first,
  and clustered FL would store client 3's projected update and example
  count as client 0's (tests/test_scale_out.py makes the first slice the
  slow one). Here every slice runs at once as in TFF, then the partial
  aggregates are merged and the results joined in slice order, i.e. the
  clients' order, so a per-client result is the local one and a
  distributed run is the same every time.

      (MergeableCompForm, [slice] * n, [AsyncContext] * >= n) -> result
  """
  if len(slices) > len(contexts):
    raise ValueError(f'{len(slices)} slices for {len(contexts)} workers')
  partials = await asyncio.gather(*(
      context.invoke(form.up_to_merge, arg)
      for arg, context in zip(slices, contexts)))
  merged = partials[0]
  for partial, context in zip(partials[1:], contexts[1:]):
    merged = await mergeable._merge_results(  # pylint: disable=protected-access
        form, merged, partial, context)
  result_type = form.after_merge.type_signature.result
  if tff.types.contains_only(result_type, lambda t: not isinstance(
      t, tff.FederatedType) or t.all_equal):
    # No per-client part: every slice would compute the same value.
    return await mergeable._compute_after_merged(  # pylint: disable=protected-access
        form, slices[0], merged, contexts[0])
  results = await asyncio.gather(*(
      mergeable._compute_after_merged(  # pylint: disable=protected-access
          form, arg, merged, context)
      for arg, context in zip(slices, contexts)))
  return mergeable._repackage_partitioned_values(  # pylint: disable=protected-access
      list(results), result_type)


@dataclasses.dataclass
class _Cluster:
  addresses: tuple[str, ...]
  monitors: list[RemoteMonitor]
  context: _DistributedContext
  stats: Stats


_lock = threading.Lock()
_cluster: Optional[_Cluster] = None


def _connect(address: str, timeout: float) -> grpc.Channel:
  channel = grpc.insecure_channel(address, _CHANNEL_OPTIONS)
  try:
    grpc.channel_ready_future(channel).result(timeout=timeout)
  except grpc.FutureTimeoutError:
    channel.close()
    raise monitor_lib.WorkerError(
        f'the TFF worker at {address} is unreachable: no gRPC connection'
        f' within {timeout:g} s; start it there with `python -m'
        ' tff_research.cli.worker --port=PORT` or fix --workers') from None
  return channel


def start(
    workers: Sequence[str],
    *,
    default_num_clients: int = 0,
    stall_timeout: float = monitor_lib.DEFAULT_STALL_TIMEOUT_SECONDS,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
    unreachable_timeout: float = DEFAULT_UNREACHABLE_TIMEOUT_SECONDS,
) -> None:
  """Connects to `workers` and makes them TFF's default execution context.

  Idempotent for the same addresses while all are healthy (only the
  timeouts are updated). Raises `WorkerError` (one line naming the address)
  if a worker cannot be reached within `connect_timeout`.
  """
  global _cluster
  addresses = parse_workers(workers)
  if not addresses:
    raise ValueError('remote.start needs at least one worker address')
  with _lock:
    cluster = _cluster
    if cluster is not None and cluster.addresses == addresses and all(
        m.unavailable_reason() is None for m in cluster.monitors):
      for m in cluster.monitors:
        m.stall_timeout = float(stall_timeout)
        m.unreachable_timeout = float(unreachable_timeout)
      return
  stop()
  channels = []
  try:
    for address in addresses:
      channels.append(_connect(address, connect_timeout))
  except BaseException:
    for c in channels:
      c.close()
    raise
  stats = Stats({a: 0 for a in addresses}, {a: 0 for a in addresses})
  monitors, contexts = [], []
  for address, channel in zip(addresses, channels):
    monitor = RemoteMonitor(address, channel, float(stall_timeout),
                            float(unreachable_timeout))
    channel.subscribe(monitor.on_channel_state, try_to_connect=True)
    stub = _CountingStub(channel, monitor, stats)
    monitors.append(monitor)
    contexts.append(monitor_lib.worker_context(stub, default_num_clients))
    monitor.start_watchdog(f'tff-watchdog-{address}')
  context = _DistributedContext(contexts, monitors, stats)
  with _lock:
    _cluster = _Cluster(addresses, monitors, context, stats)
  tff.framework.set_default_context(context)
  logging.info('TFF remote workers %s (stall timeout %g s, unreachable'
               ' timeout %g s)', ','.join(addresses), stall_timeout,
               unreachable_timeout)


class _CountingStub(monitor_lib.MonitoredStub):
  """Counts serialized request/response bytes per worker (what travels)."""

  def __init__(self, channel, monitor: RemoteMonitor, stats: Stats):
    super().__init__(channel, monitor)
    self._stats = stats
    self._address = monitor.address

  def _call(self, method, request, *, dispose=False):
    response = super()._call(method, request, dispose=dispose)
    self._stats.bytes_sent[self._address] += request.ByteSize()
    if response is not None:
      self._stats.bytes_received[self._address] += response.ByteSize()
    return response


def stats() -> Optional[Stats]:
  """The running cluster's byte counts and routing counts, or None."""
  cluster = _cluster
  return None if cluster is None else cluster.stats


def stop() -> None:
  """Disconnects from the workers (they keep running; they are not ours)."""
  global _cluster
  with _lock:
    cluster, _cluster = _cluster, None
  if cluster is None:
    return
  for m in cluster.monitors:
    m.stop()
    with contextlib.suppress(Exception):
      m.channel.close()
  cluster.context.close()
