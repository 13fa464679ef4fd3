"""run_lock: one writer per run directory, with real processes."""

import os
import signal
import sys
import textwrap

import pytest

from tff_research.run import run_lock
from tests.reliability import procs

_HOLDER = textwrap.dedent("""
    import sys, time
    from tff_research.run import run_lock
    with run_lock.hold(sys.argv[1]):
      print('held', flush=True)
      time.sleep(600)
""")

_TRY = textwrap.dedent("""
    import sys
    from tff_research.run import run_lock
    try:
      with run_lock.hold(sys.argv[1]):
        print('acquired', flush=True)
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
""")


def _holder(run_dir):
  proc = procs.spawn([sys.executable, '-c', _HOLDER, str(run_dir)])
  line = proc.stdout.readline()
  assert line == b'held\n', proc.stderr.read().decode()[-2000:]
  return proc


def _try(run_dir):
  proc = procs.spawn([sys.executable, '-c', _TRY, str(run_dir)])
  out, err = proc.communicate(timeout=60)
  return proc.returncode, out.decode(), err.decode()


def test_second_process_refused_then_lock_survives_kill_9(tmp_path):
  run_dir = tmp_path / 'logdir' / 'x'
  holder = _holder(run_dir)
  try:
    assert (run_dir / run_lock.LOCK_FILENAME).read_text() == f'{holder.pid}\n'
    assert run_lock.holder_pid(run_dir) == holder.pid
    # A second process is refused at once, with one line naming the holder.
    code, out, err = _try(run_dir)
    assert code == 1 and out == ''
    assert err == (f'error: {run_dir} is in use by another run (pid {holder.pid}); '
                   'wait for it or choose another --experiment_name\n')
    # In this process too, as a ValueError subclass.
    with pytest.raises(run_lock.RunDirectoryInUseError) as e:
      with run_lock.hold(run_dir):
        pass
    assert isinstance(e.value, ValueError) and e.value.holder_pid == holder.pid
    assert os.listdir(run_dir) == [run_lock.LOCK_FILENAME]  # refusals wrote nothing
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=30)
  finally:
    procs.kill_quietly(holder)
  # The kernel released the dead holder's flock: a third process gets it.
  assert run_lock.holder_pid(run_dir) is None
  code, out, err = _try(run_dir)
  assert (code, out) == (0, 'acquired\n'), err
  with run_lock.hold(run_dir) as lock:
    assert lock.held
    assert (run_dir / run_lock.LOCK_FILENAME).read_text() == f'{os.getpid()}\n'
  assert not lock.held
  assert (run_dir / run_lock.LOCK_FILENAME).read_text() == ''  # no stale pid


def test_release_lets_the_next_run_in_and_new_dir_holds_only_the_lock(tmp_path):
  run_dir = tmp_path / 'new' / 'run'
  with run_lock.hold(run_dir):
    assert os.listdir(run_dir) == [run_lock.LOCK_FILENAME]
    code, _, err = _try(run_dir)
    assert code == 1 and f'(pid {os.getpid()})' in err
    with pytest.raises(run_lock.RunDirectoryInUseError, match='this process'):
      run_lock.acquire(run_dir)
  code, out, _ = _try(run_dir)  # released on exit of the with block
  assert (code, out) == (0, 'acquired\n')


def test_lock_released_on_exception(tmp_path):
  with pytest.raises(RuntimeError):
    with run_lock.hold(tmp_path):
      raise RuntimeError('boom')
  lock = run_lock.acquire(tmp_path)
  lock.release()
  lock.release()  # idempotent


def test_holder_pid_is_read_only(tmp_path):
  assert run_lock.holder_pid(tmp_path / 'absent') is None
  assert not (tmp_path / 'absent').exists()


def test_unlockable_directory_is_one_line_value_error(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(ValueError, match=r'cannot lock .*/file/x: Not a directory'):
    run_lock.acquire(tmp_path / 'file' / 'x')


def test_training_on_a_run_directory_in_use_is_refused_and_writes_nothing(
    tmp_path):
  # The original defect: two processes trained into the same LOGDIR/NAME at
  # once, interleaving metrics rows and racing on checkpoints. The training
  # entry point itself must refuse, before writing anything.
  from tests import fl_testing  # pylint: disable=g-import-not-at-top
  run_dir = tmp_path / 'busy'
  holder = _holder(run_dir)
  try:
    with pytest.raises(run_lock.RunDirectoryInUseError) as e:
      fl_testing.run_experiment(
          dict(model='linear', num_clients=4, clients_per_round=2,
               total_rounds=1, progress=False), tmp_path, 'busy')
    assert str(e.value) == (
        f'{run_dir} is in use by another run (pid {holder.pid}); wait for it'
        ' or choose another --experiment_name')
    assert os.listdir(run_dir) == [run_lock.LOCK_FILENAME]
  finally:
    procs.kill_quietly(holder)
