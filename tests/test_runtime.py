"""TFF's worker_binary never outlives the process that started it.

Each case runs a real process with stdout/stderr on pipes (as CI and
`| tee` do), ends it one way (normal exit, exception, SIGINT, SIGTERM,
SIGKILL), and asserts both that the pipes reach EOF (nothing hangs a
reader) and that the worker process is gone.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.reliability import procs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, 'experiments', 'train.py')


def _wait_for_worker(proc, timeout=300):  # generous: CI machines are shared
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    workers = procs.children(proc.pid)
    if workers:
      return workers[0]
    if proc.poll() is not None:
      out, err = proc.communicate()
      pytest.fail(f'process ended before starting a worker: {err[-2000:]}')
    time.sleep(0.05)
  proc.kill()
  pytest.fail('no worker_binary appeared')


def _assert_gone(pid, timeout=10):
  assert procs.wait_gone(pid, timeout), (
      f'worker_binary {pid} outlived its parent')


def _spawn(args, **kwargs):
  return subprocess.Popen(
      args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
      stdin=subprocess.DEVNULL, **kwargs)


def _script(body):
  return [sys.executable, '-c', body]


_START = textwrap.dedent("""
    import time
    import numpy as np
    import tensorflow_federated as tff
    from tff_research.execution import runtime
    runtime.start()
    add = tff.tensorflow.computation(lambda x: x + 1, np.int32)
    assert add(1) == 2
    print('ready', flush=True)
""")


def test_exception_exit_stops_worker():
  proc = _spawn(_script(_START + "\nraise RuntimeError('boom')\n"))
  worker = _wait_for_worker(proc)
  out, err = proc.communicate(timeout=120)  # EOF on both pipes, no hang.
  assert proc.returncode == 1
  assert b'RuntimeError: boom' in err
  _assert_gone(worker)


def test_sigkill_of_parent_kills_worker():
  proc = _spawn(_script(_START + '\ntime.sleep(600)\n'))
  worker = _wait_for_worker(proc)
  assert proc.stdout.readline() == b'ready\n'
  proc.kill()
  proc.communicate(timeout=30)  # The worker does not hold our pipes.
  _assert_gone(worker)


def _train_args(tmp_path, rounds):
  return [
      sys.executable, TRAIN, f'--logdir={tmp_path}', '--experiment_name=rt',
      '--model=linear', '--num_clients=4', '--clients_per_round=2',
      f'--total_rounds={rounds}', '--eval_every=1000', '--progress=false',
      '--rounds_per_checkpoint=1', '--client_learning_rate=0.01',
  ]


def test_normal_exit_of_train_binary_stops_worker_and_prints_no_noise(
    tmp_path):
  # One start of the binary for two properties of a normal run (each start
  # costs a TFF import): the worker ends with it, and TensorFlow's import
  # noise (tff_research/execution/stderr_filter.py) never reaches the user.
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  proc = _spawn(_train_args(tmp_path, 2), env=env)
  worker = _wait_for_worker(proc)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err.decode()[-2000:]
  assert out.startswith(b'Data: digits') and b'Round 2: train loss' in out
  _assert_gone(worker)
  output = (out + err).decode()
  for noise in ('Unable to register', 'TensorRT', 'pkg_resources',
                'cuda drivers', 'cpu_feature_guard'):
    assert noise not in output, output[-2000:]


@pytest.mark.parametrize('signum,expected_returncode', [
    # Unhandled KeyboardInterrupt: Python re-raises SIGINT on exit (3.8+).
    (signal.SIGINT, -signal.SIGINT),
    (signal.SIGTERM, -signal.SIGTERM),
])
def test_signal_mid_run_stops_worker(tmp_path, signum, expected_returncode):
  proc = _spawn(_train_args(tmp_path, 10000))
  worker = _wait_for_worker(proc)
  procs.wait_for_rounds(proc, tmp_path / 'rt' / 'metrics.csv', 1)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == expected_returncode, err.decode()[-2000:]
  _assert_gone(worker)


def test_lost_keyboard_interrupt_still_ends_the_run_by_sigint():
  # Ctrl-C stops the worker and raises KeyboardInterrupt; raised inside a
  # finalizer or a GC callback, Python only prints it, and the run's next
  # TFF call meets the stopped worker. That must end the process as SIGINT
  # does (-2), not with an "error: the TFF worker ... was stopped" line.
  proc = _spawn(_script(_START + textwrap.dedent("""
      import os, signal
      runtime.install_signal_handlers()

      class Finalized:
        def __del__(self):
          os.kill(os.getpid(), signal.SIGINT)  # the handler runs in here

      Finalized()  # the KeyboardInterrupt is printed and lost
      add(2)
      print('not reached', flush=True)
  """)))
  worker = _wait_for_worker(proc)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == -signal.SIGINT, err.decode()[-2000:]
  assert b'not reached' not in out
  assert b'was stopped' not in err, err.decode()[-2000:]
  _assert_gone(worker)
