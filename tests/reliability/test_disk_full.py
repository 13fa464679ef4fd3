"""A full disk ends a run with one line and leaves a resumable directory.

The run directory lives on a 4 MB tmpfs (we run as root) and the test fills
it at a chosen write: the checkpoint of round 2, or round 2's metrics.csv
rewrite. Without the right to mount, the same writes fail through seams
(TFF's SavedModel writer and CSV writer raise what they raise on a full
device, after leaving the temporary files they leave).
"""

import errno
import os
import subprocess

import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.run import release as release_lib
from tff_research.run import safe_checkpoints
from tests import fl_testing

FLAGS = dict(model='linear', num_clients=4, clients_per_round=2,
             client_learning_rate=0.05, eval_every=10, rounds_per_checkpoint=1,
             progress=False, batch_size=10)
_TF_FULL = ('{{function_node __wrapped__SaveV2}} {path}/variables/variables;'
            ' No space left on device [Op:SaveV2]')


class _Disk:
  """`fill()` makes the next writes under `root` fail with ENOSPC; `free()`
  undoes it."""

  def __init__(self, root, mounted):
    self.root = root
    self.mounted = mounted
    self._seams = pytest.MonkeyPatch()

  def fill(self):
    if self.mounted:
      fd = os.open(os.path.join(self.root, 'ballast'), os.O_WRONLY | os.O_CREAT)
      try:
        while True:
          os.write(fd, b'\0' * 65536)
      except OSError as e:
        assert e.errno == errno.ENOSPC
      finally:
        os.close(fd)
      return
    async def write_saved_model(value, path, overwrite=False):
      del value, overwrite
      os.makedirs(f'{path}_temp1234/variables')
      raise tf.errors.ResourceExhaustedError(None, None,
                                             _TF_FULL.format(path=path))
    def write_values(manager, fieldnames, values):
      del fieldnames, values
      with open(f'{manager._file_path}_temp1234', 'w'):
        pass
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    self._seams.setattr(safe_checkpoints.file_utils, 'write_saved_model',
                        write_saved_model)
    self._seams.setattr(tff.program.CSVFileReleaseManager, '_write_values',
                        write_values)

  def free(self):
    if self.mounted:
      os.remove(os.path.join(self.root, 'ballast'))
    self._seams.undo()


@pytest.fixture
def disk(tmp_path):
  root = tmp_path / 'small'
  root.mkdir()
  mounted = subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(root)],
      capture_output=True).returncode == 0
  d = _Disk(str(root), mounted)
  yield d
  d._seams.undo()
  if mounted:
    # Lazily: a writer of the failed run may still hold a file open.
    subprocess.run(['umount', '--lazy', str(root)], check=True)


def _fill_before(monkeypatch, owner, method, disk, round_num):
  """Fills `disk` just before `owner.method` handles round `round_num`."""
  original = getattr(owner, method)
  def wrapper(self, *args, **kwargs):
    if round_num in args:
      disk.fill()
    return original(self, *args, **kwargs)
  monkeypatch.setattr(owner, method, wrapper)


def _leftovers(run_dir):
  found = [n for n in os.listdir(run_dir) if '_temp' in n or '.tmp' in n]
  found += [n for n in os.listdir(os.path.join(run_dir, 'checkpoints'))
            if n.startswith('.')]
  return found


def _free_and_resume(disk, monkeypatch):
  """Frees the disk; the same command resumes after round 1 and ends whole."""
  monkeypatch.undo()
  disk.free()
  run_dir = os.path.join(disk.root, 'run')
  rows = fl_testing.run_experiment(FLAGS, disk.root, 'run', total_rounds=3)
  assert [r['round'] for r in rows] == [2, 3]
  assert [r['round'] for r in fl_testing.read_csv(
      os.path.join(run_dir, 'metrics.csv'))] == [1, 2, 3]
  assert _leftovers(run_dir) == []


def test_full_disk_at_a_checkpoint(tff_worker, disk, monkeypatch, capfd):
  root, run_dir = disk.root, os.path.join(disk.root, 'run')
  fl_testing.run_experiment(FLAGS, root, 'run', total_rounds=1)
  _fill_before(monkeypatch, safe_checkpoints.SafeFileProgramStateManager, 'save',
               disk, 2)
  capfd.readouterr()
  with pytest.raises(Exception) as e:
    fl_testing.run_experiment(FLAGS, root, 'run', total_rounds=3)
  # TensorFlow's C++ log echoes the failed SaveV2 op: the one line replaces it.
  assert 'No space left on device' not in capfd.readouterr().err
  assert str(e.value) == (
      f'no space left on device writing the checkpoint of round 2 in'
      f' {run_dir}; the run is intact up to round 1: free space there and'
      ' re-run the same command to resume after round 1')
  assert isinstance(e.value, ValueError)  # The binaries' one-line errors.
  assert _leftovers(run_dir) == []
  assert sorted(os.listdir(os.path.join(run_dir, 'checkpoints'))) == [
      'round_1']
  _free_and_resume(disk, monkeypatch)


def test_full_disk_at_the_metrics(tff_worker, disk, monkeypatch):
  # Round 2 is logged but not checkpointed (a crash before its save), so
  # the resumed round 2 rewrites metrics.csv through a temporary file.
  root, run_dir = disk.root, os.path.join(disk.root, 'run')
  fl_testing.run_experiment(FLAGS, root, 'run', total_rounds=2)
  ckpt = os.path.join(run_dir, 'checkpoints')
  tf.io.gfile.rmtree(os.path.join(ckpt, 'round_2'))
  before = open(os.path.join(run_dir, 'metrics.csv')).read()
  _fill_before(monkeypatch, release_lib.MetricsRelease, 'release', disk, 2)
  with pytest.raises(Exception) as e:
    fl_testing.run_experiment(FLAGS, root, 'run', total_rounds=3)
  assert str(e.value) == (
      f'no space left on device writing the outputs of round 2 in {run_dir};'
      ' the run is intact up to round 1: free space there and re-run the'
      ' same command to resume after round 1')
  assert isinstance(e.value, ValueError)
  assert _leftovers(run_dir) == []
  assert open(os.path.join(run_dir, 'metrics.csv')).read() == before
  _free_and_resume(disk, monkeypatch)


def test_stderr_without_drops_matching_lines_at_the_file_descriptor(capfd):
  from tff_research.execution import stderr_filter  # pylint: disable=g-import-not-at-top
  with stderr_filter.stderr_without(lambda line: 'OP_REQUIRES' in line):
    os.write(2, b'kept 1\nW op_kernel.cc] OP_REQUIRES failed: full\nkep')
    os.write(2, b't 2\nunfinished')
  assert capfd.readouterr().err == 'kept 1\nkept 2\nunfinished'
  os.write(2, b'after\n')
  assert capfd.readouterr().err == 'after\n'
