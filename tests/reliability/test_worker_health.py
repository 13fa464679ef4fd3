"""A dead or stuck TFF worker ends the run in bounded time with one line.

Each case runs a real process on pipes: a small script (or the training
binary) in the middle of a TFF computation, whose worker is then killed
(`kill -9`) or stopped (`SIGSTOP`, alive but making no progress). The process
must print one `error: ...` line on stderr, exit non-zero within the
documented bound, reach EOF on both pipes and leave no worker behind. Before
the watchdog, each of these hung forever (TFF retries UNAVAILABLE with no
deadline, and an RPC to a stopped worker never returns).
"""

import os
import signal
import sys
import textwrap
import threading
import time

import pytest

from tests.reliability import procs

TRAIN = os.path.join(procs.REPO, 'experiments', 'train.py')

# A computation that keeps the worker busy for minutes: a TF while loop.
_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import tensorflow as tf
    import tensorflow_federated as tff
    from tff_research.execution import runtime

    runtime.start(stall_timeout=float(os.environ.get('STALL', '60')))

    @tff.tensorflow.computation(np.int64)
    def spin(n):
      return tf.while_loop(lambda i: i < n, lambda i: i + 1,
                           [tf.constant(0, tf.int64)])[0]

    assert spin(10) == 10
    print('ready', runtime.worker_pid(), flush=True)
""")


class _Lines:
  """Reads a pipe in a thread, timestamping each line (EOF = None)."""

  def __init__(self, pipe):
    self.lines = []
    self.eof_at = None
    self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
    self._thread.start()

  def _read(self, pipe):
    for line in iter(pipe.readline, b''):
      self.lines.append((time.monotonic(), line.decode(errors='replace').rstrip('\n')))
    self.eof_at = time.monotonic()

  def join(self, timeout):
    self._thread.join(timeout)
    return not self._thread.is_alive()

  def ours(self):
    """(time, line) without TensorFlow/absl import-time noise."""
    return [(t, l) for t, l in self.lines
            if l.strip() and 'pkg_resources' not in l and not l.startswith('20')
            and 'tensorflow/' not in l]


def _run_until_ready(args, env=None):
  proc = procs.spawn(args, env=env or {})
  line = proc.stdout.readline().decode()
  if not line.startswith('ready '):
    procs.kill_quietly(proc)
    pytest.fail(f'script did not start: {line!r} {proc.stderr.read().decode()[-3000:]}')
  return proc, int(line.split()[1])


def _end_and_check(proc, worker, action, *, line_within, exit_within):
  """Applies `action(worker)`, then checks the one line, the exit, EOF, no worker."""
  out, err = _Lines(proc.stdout), _Lines(proc.stderr)
  time.sleep(1.0)  # well inside the computation
  t0 = time.monotonic()
  action(worker)
  try:
    proc.wait(timeout=exit_within)
  except Exception:  # pylint: disable=broad-except
    procs.kill_quietly(proc)
    os.kill(worker, signal.SIGKILL) if procs.alive(worker) else None
    pytest.fail(f'still running {exit_within} s after the worker failed (hang)')
  assert out.join(30) and err.join(30), 'pipes did not reach EOF'
  assert proc.returncode == 1, err.lines[-20:]
  text = '\n'.join(l for _, l in err.lines)
  assert 'Traceback' not in text and 'Exception ignored' not in text, text[-3000:]
  ours = err.ours()
  assert len(ours) == 1, ours
  at, line = ours[0]
  assert line.startswith(f'error: the TFF worker (pid {worker}) '), line
  assert at - t0 < line_within, f'error line after {at - t0:.1f} s'
  assert procs.wait_gone(worker), f'worker {worker} left behind'
  assert procs.children(proc.pid) == []
  return line


def test_worker_killed_mid_computation_ends_script_with_one_line():
  proc, worker = _run_until_ready(
      procs.python(_SCRIPT + 'spin(10**10)\nprint("finished")\n'))
  try:
    line = _end_and_check(
        proc, worker, lambda pid: os.kill(pid, signal.SIGKILL),
        line_within=5.0, exit_within=60)
  finally:
    procs.kill_quietly(proc)
  assert 'died with signal 9 (SIGKILL) during a computation' in line
  assert 're-run the same command to resume' in line


def test_stopped_worker_is_declared_stuck_after_stall_timeout():
  stall = 3.0
  proc, worker = _run_until_ready(
      procs.python(_SCRIPT + 'spin(10**10)\n'), env={'STALL': str(stall)})
  try:
    line = _end_and_check(
        proc, worker, lambda pid: os.kill(pid, signal.SIGSTOP),
        # stall timeout + 1 s watchdog tick + 1 s CPU sampling + slack
        line_within=stall + 6.0, exit_within=60)
  finally:
    procs.kill_quietly(proc)
  assert 'made no progress for' in line and 'process stopped' in line
  assert f'more than the stall timeout of {stall:g} s; it was killed' in line


_RECOVERY = _SCRIPT + textwrap.dedent("""
    # Busy for longer than the stall timeout: the worker's CPU time advances,
    # so it is not declared stuck.
    t = time.monotonic()
    assert spin(15 * 10**5) == 15 * 10**5
    print('long call', round(time.monotonic() - t, 1), flush=True)

    import threading
    threading.Timer(1.0, os.kill, (runtime.worker_pid(), 9)).start()
    t = time.monotonic()
    try:
      spin(10**10)
    except runtime.WorkerError as e:
      print('raised after', round(time.monotonic() - t, 1), 'one line', '\\n' not in str(e), flush=True)
    t = time.monotonic()
    try:
      spin(1)
    except runtime.WorkerError as e:
      print('again at once', time.monotonic() - t < 0.5, 'died' in str(e), flush=True)
    print('stopped after death', runtime.stopped(), flush=True)
    runtime.start()  # a new worker
    assert spin(5) == 5
    print('recovered', runtime.worker_pid(), runtime.stopped(), flush=True)
    runtime.stop()
    print('stopped after stop', runtime.stopped(), flush=True)
    t = time.monotonic()
    try:
      spin(1)
    except runtime.WorkerError as e:
      print('after stop', time.monotonic() - t < 0.5, 'was stopped' in str(e), flush=True)
""")


def test_long_call_is_not_stuck_failure_is_sticky_and_start_recovers():
  proc = procs.spawn(procs.python(_RECOVERY), env={'STALL': '2'})
  try:
    out, err = proc.communicate(timeout=300)
  finally:
    procs.kill_quietly(proc)
  lines = out.decode().splitlines()
  assert proc.returncode == 0, err.decode()[-3000:]
  long_call = next(l for l in lines if l.startswith('long call'))
  assert float(long_call.split()[-1]) > 2.0, 'the long call must outlast the stall timeout'
  raised = next(l for l in lines if l.startswith('raised after')).split()
  assert float(raised[2]) < 1.0 + 2.5 and raised[-1] == 'True'
  assert 'again at once True True' in lines
  # runtime.stopped() is what the test suite's conftest restarts on.
  assert 'stopped after death True' in lines
  assert any(l.startswith('recovered ') and l.endswith(' False') for l in lines)
  assert 'stopped after stop True' in lines
  assert 'after stop True True' in lines


def test_train_binary_worker_killed_mid_run(tmp_path):
  args = [sys.executable, TRAIN, '--experiment_name=x', f'--logdir={tmp_path}',
          '--model=linear', '--total_rounds=100000', '--progress=false',
          '--rounds_per_checkpoint=2', '--num_clients=4', '--clients_per_round=2']
  proc = procs.spawn(args)
  try:
    procs.wait_for_rounds(proc, tmp_path / 'x' / 'metrics.csv', 3, poll=0.2)
    (worker,) = procs.children(proc.pid)
    line = _end_and_check(
        proc, worker, lambda pid: os.kill(pid, signal.SIGKILL),
        line_within=10.0, exit_within=60)
  finally:
    procs.kill_quietly(proc)
  assert 'died with signal 9 (SIGKILL)' in line
  assert any(p.name.startswith('round_') for p in (tmp_path / 'x' / 'checkpoints').iterdir())
