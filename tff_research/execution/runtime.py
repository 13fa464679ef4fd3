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
forever, so a worker that dies mid-computation would hang the run for good.
This module bounds that with a `ProcessMonitor` (`monitor.Monitor` for a
child process):

* **Dead worker.** A TFF call waits for its result in slices of
  `monitor.CALL_POLL_SECONDS` (0.25 s) and checks the worker process between
  slices; a watchdog thread also polls it every
  `monitor.WATCHDOG_INTERVAL_SECONDS` (1 s). A
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
TFF workers on other machines (`remote`, whose monitors are `monitor.Monitor`s
too) and splits each round's clients across them. `stop()` disconnects from
them; they are not ours to stop.
"""

from __future__ import annotations

import atexit
import contextlib
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
# TFF's own context for "no runtime": the one public way to drop its
# import-time context (`set_default_context`) needs a context to put there,
# and TFF exports no constructor of this one.
from tensorflow_federated.python.core.impl.context_stack import runtime_error_context

from tff_research.execution import monitor as monitor_lib
from tff_research.execution import remote
from tff_research.execution import stderr_filter
from tff_research.execution import worker as worker_lib

_GRPC_OPTIONS = [
    ('grpc.max_message_length', 2**31 - 1),
    ('grpc.max_receive_message_length', 2**31 - 1),
]
_READY_TIMEOUT_SECONDS = 60.0

WorkerError = monitor_lib.WorkerError
DEFAULT_STALL_TIMEOUT_SECONDS = monitor_lib.DEFAULT_STALL_TIMEOUT_SECONDS

_lock = threading.Lock()
_worker: Optional[subprocess.Popen] = None
_worker_log: Optional[str] = None
_worker_threads = 0  # Intra-op threads of the running worker (0: TF's).
_monitor: Optional['ProcessMonitor'] = None
_atexit_registered = False
_excepthook_installed = False
# The signal whose handler stopped the worker (None: not stopped by one).
_stopped_by_signal: Optional[int] = None
# The SIGTERM handler's line (None: no line); see on_termination.
_termination_line: Optional[Callable[[], str]] = None
# What the last start() installed as TFF's default context: 'local', 'remote'
# or None (never started: TFF's own import-time context).
_started: Optional[str] = None


def _release_tff_default_context() -> None:
  """Drops TFF's import-time context while the interpreter is still whole.

  That context's `ServiceManager.__del__` otherwise runs during module
  teardown, when `subprocess` is already None, and prints a spurious
  AttributeError traceback at the end of every process that imported TFF.
  """
  tff.framework.set_default_context(
      runtime_error_context.create_runtime_error_context())


atexit.register(_release_tff_default_context)


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
    return remote.stats() is None
  return worker_pid() is None


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


class ProcessMonitor(monitor_lib.Monitor):
  """Health of the local worker process: its exit status, and its CPU time
  while a call waits on it."""

  def __init__(self, process: subprocess.Popen, log_path: str,
               stall_timeout: float):
    super().__init__(stall_timeout)
    self.process = process
    self.log_path = log_path
    self.last_cpu: Optional[int] = None

  def stopped_message(self) -> str:
    return (f'the TFF worker (pid {self.process.pid}) was stopped'
            ' (runtime.stop()); call runtime.start() for a new one')

  def check_alive(self) -> None:
    """Records a failure if the worker process has exited."""
    returncode = self.process.poll()
    if returncode is None:
      return
    with self.lock:
      if self.ended():
        return
      if returncode < 0:
        how = f'died with signal {-returncode} ({_signal_name(-returncode)})'
      else:
        how = f'exited with status {returncode}'
      self._fail(f'the TFF worker (pid {self.process.pid}) {how}'
                 f' {self.phase()}')

  def tick(self) -> None:
    self.check_alive()
    now = time.monotonic()
    with self.lock:
      if self.ended():
        return
      waiting = self.waiting()
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


class _SyncContext(tff.framework.SyncContext):
  """TFF's `SyncExecutionContext` on the local worker, except that a call
  never outwaits the worker (`monitor.MonitoredRunner`)."""

  def __init__(self, context: tff.framework.AsyncExecutionContext,
               monitor: ProcessMonitor):
    self._async_context = context
    self._runner = monitor_lib.MonitoredRunner([monitor], 'tff-runtime-loop')

  def invoke(self, comp, arg):
    return self._runner.run_coro_and_return_result(
        self._async_context.invoke(comp, arg))


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


def _install_process_hooks() -> None:
  """Once per process: `stop()` at exit, and one line for a `WorkerError`."""
  global _excepthook_installed, _atexit_registered
  with _lock:
    if not _atexit_registered:
      atexit.register(stop)
      _atexit_registered = True
  if _excepthook_installed:
    return
  previous = sys.excepthook
  sys.excepthook = lambda t, e, tb: _excepthook(t, e, tb, previous=previous)
  _excepthook_installed = True


def _start_worker(max_concurrent_computation_calls: int,
                  intra_op_threads: int) -> tuple[
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
            worker_lib.WORKER_BINARY,
            f'--port={port}',
            f'--max_concurrent_computation_calls={max_concurrent_computation_calls}',
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=worker_lib.thread_environment(intra_op_threads),
        preexec_fn=worker_lib.die_with_parent,
        close_fds=True,
    )
  return process, port


def _wait_until_ready(stub: monitor_lib.MonitoredStub,
                      process: subprocess.Popen) -> None:
  """Waits for the worker to answer; RuntimeError (worker stopped) if it
  exits first or takes longer than `_READY_TIMEOUT_SECONDS`."""
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


def start(
    *,
    workers: Sequence[str] = (),
    default_num_clients: int = 0,
    max_concurrent_computation_calls: int = -1,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_SECONDS,
    intra_op_threads: Optional[int] = None,
) -> None:
  """Starts a managed worker and makes it TFF's default execution context.

  Idempotent: a second call while a worker runs starts nothing (it only
  updates `stall_timeout`), unless it asks for other `intra_op_threads`. A
  worker that failed or was stopped is replaced by a new one. Call from the
  main thread, before any TFF computation is invoked.

  Args:
    workers: `host:port` addresses of remote TFF workers; empty (the
      default) runs on a local worker owned by this process. With workers,
      no local worker runs and each call's clients are split across them
      (see `remote`); a worker unreachable within 10 s raises `WorkerError`
      naming it.
    default_num_clients: cardinality of CLIENTS when it cannot be inferred.
    max_concurrent_computation_calls: passed to the worker; <= 0 is no limit.
    stall_timeout: seconds a computation may wait on a worker that shows no
      progress (no CPU time, no RPC answered) before the worker is declared
      stuck, killed, and the call raises `WorkerError`. Must be > 0.
    intra_op_threads: threads each TensorFlow op of the local worker may
      use; 0 is TensorFlow's default (every core); None (the default) takes
      a running worker as it is and starts a new one with 0. 1 suits
      clients trained side by side, one per core (`parallel_cohorts`): this
      CNN's small convolutions gain less from a second thread than from a
      second client. A running worker with other threads is replaced.
  """
  global _worker, _worker_threads, _monitor, _stopped_by_signal, _started
  if not stall_timeout > 0:
    raise ValueError(f'stall_timeout must be > 0, got {stall_timeout!r}')
  _stopped_by_signal = None  # A new worker: an earlier interrupt is handled.
  if workers:
    _stop_local_worker()
    _install_process_hooks()
    remote.start(workers, default_num_clients=default_num_clients,
                 stall_timeout=stall_timeout)
    _started = 'remote'
    return
  remote.stop()
  running = _worker is not None and _worker.poll() is None
  threads = intra_op_threads
  if threads is None:
    threads = _worker_threads if running else 0
  if running and threads != _worker_threads:
    _stop_local_worker()
  with _lock:
    if _worker is not None and _worker.poll() is None:
      if _monitor is not None:
        _monitor.stall_timeout = float(stall_timeout)
      return
    process, port = _start_worker(max_concurrent_computation_calls, threads)
    _worker, _worker_threads = process, threads
    monitor = ProcessMonitor(process, _worker_log, float(stall_timeout))
    _monitor = monitor
  _install_process_hooks()

  channel = grpc.insecure_channel(f'localhost:{port}', _GRPC_OPTIONS)
  channel.subscribe(monitor.on_channel_state, try_to_connect=True)
  stub = monitor_lib.MonitoredStub(channel, monitor)
  _wait_until_ready(stub, process)
  monitor.start_watchdog('tff-worker-watchdog')
  tff.framework.set_default_context(_SyncContext(
      monitor_lib.worker_context(stub, default_num_clients), monitor))
  _started = 'local'
  logging.info('TFF worker pid %d on port %d (log %s, stall timeout %g s,'
               ' intra-op threads %s)', process.pid, port, _worker_log,
               stall_timeout, threads or 'default')


def stop(timeout: float = 10.0) -> None:
  """Stops the managed worker (SIGINT, then SIGKILL) and waits for it, and
  disconnects from remote workers (which keep running)."""
  remote.stop()
  _stop_local_worker(timeout)


def _stop_local_worker(timeout: float = 10.0) -> None:
  global _worker
  with _lock:
    process, _worker = _worker, None
    monitor = _monitor
  if monitor is not None:
    monitor.stop()
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
      stderr_filter.restore_stderr()  # The line must reach the real stderr.
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
