"""SafeFileProgramStateManager: atomic saves, fallback past damaged versions.

Program states are nested dicts/lists of numpy arrays, a namedtuple and an
attrs `tff.learning.models.ModelWeights`, with values that encode the version
so every assertion knows which version was loaded.
"""

import asyncio
import collections
import os
import shutil
import signal
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow_federated as tff
from tensorflow_federated.python.program import structure_utils

from tff_research.run import safe_checkpoints as C
from tests.reliability import procs

Pair = collections.namedtuple('Pair', ['a', 'b'])
DATA = 'variables/variables.data-00000-of-00001'
INDEX = 'variables/variables.index'
FILES = ('saved_model.pb', INDEX, DATA, 'fingerprint.pb')


def make_state(v):
  return {
      'round': v,
      'state': {
          'weights': tff.learning.models.ModelWeights(
              trainable=[np.full((3, 4), v, np.float32),
                         np.arange(5, dtype=np.float64) * v],
              non_trainable=[np.int64(v)]),
          'pair': Pair(a=np.full((2,), v, np.int32),
                       b=[np.float32(v), np.zeros((0,), np.float32)]),
          'nested': [{'x': np.full((2, 2, 2), -v, np.float64)}],
      },
  }


def assert_state(got, v):
  want = structure_utils.flatten_with_name(make_state(v))
  have = structure_utils.flatten_with_name(got)
  assert [n for n, _ in have] == [n for n, _ in want]
  for (name, a), (_, b) in zip(have, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    if isinstance(b, (np.ndarray, np.generic)):  # Python ints come back int32
      assert np.asarray(a).dtype == b.dtype, name
  assert isinstance(got['state']['weights'], tff.learning.models.ModelWeights)
  assert isinstance(got['state']['pair'], Pair)


def run(coro):
  return asyncio.run(coro)


class Manager:
  """A SafeFileProgramStateManager whose warnings are collected."""

  def __init__(self, root, **kwargs):
    self.warnings = []
    self.m = C.SafeFileProgramStateManager(root, warn=self.warnings.append, **kwargs)

  def save(self, v):
    run(self.m.save(make_state(v), v))

  def load_latest(self):
    return run(self.m.load_latest(make_state(0)))

  def versions(self):
    return run(self.m.get_versions())


def populate(root, versions=(1, 2, 3), legacy=False):
  """Saves `versions` with ours or (legacy) TFF's own manager, as runs do."""
  if legacy:
    m = tff.program.FileProgramStateManager(
        root, prefix='round_', keep_total=3, keep_first=False)
  else:
    m = C.SafeFileProgramStateManager(root)
  for v in versions:
    run(m.save(make_state(v), v))


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
  """Versions 1..3 written once by each manager; tests copy them."""
  base = tmp_path_factory.mktemp('pristine')
  populate(base / 'ours')
  populate(base / 'legacy', legacy=True)
  return base


def copy_of(pristine, tmp_path, kind):
  root = tmp_path / 'checkpoints'
  shutil.copytree(pristine / kind, root)
  return root


def _truncate_half(p):
  os.truncate(p, os.path.getsize(p) // 2)


def _empty(p):
  os.truncate(p, 0)


def _zero(p):
  n = os.path.getsize(p)
  with open(p, 'r+b') as f:
    f.write(b'\0' * n)


def _garbage(p):
  n = os.path.getsize(p)
  with open(p, 'r+b') as f:
    f.write(np.random.default_rng(0).bytes(n))


def _flip_one_byte(p):
  n = os.path.getsize(p)
  with open(p, 'r+b') as f:
    f.seek(n // 2)
    b = f.read(1)
    f.seek(n // 2)
    f.write(bytes([b[0] ^ 0xFF]))


CORRUPTIONS = {
    'truncated': _truncate_half, 'empty': _empty, 'zeroed': _zero,
    'garbage': _garbage, 'deleted': os.remove, 'one_byte_flipped': _flip_one_byte,
}


def test_save_load_roundtrip_layout_and_pruning(tmp_path):
  root = tmp_path / 'checkpoints'
  mgr = Manager(root)
  assert mgr.load_latest() == (None, 0) and mgr.versions() is None
  for v in range(1, 6):
    mgr.save(v)
  # Same layout as FileProgramStateManager(prefix='round_', keep_total=3).
  assert sorted(os.listdir(root)) == ['round_3', 'round_4', 'round_5']
  assert mgr.versions() == [3, 4, 5]
  state, version = mgr.load_latest()
  assert version == 5
  assert_state(state, 5)
  assert_state(run(mgr.m.load(4, make_state(0))), 4)
  assert mgr.warnings == []
  # Readable by TFF's own manager too (evaluate.py, older code).
  plain = tff.program.FileProgramStateManager(root, prefix='round_')
  assert_state(run(plain.load(5, make_state(0))), 5)


def test_legacy_checkpoints_of_existing_runs_load(pristine, tmp_path):
  mgr = Manager(copy_of(pristine, tmp_path, 'legacy'))
  state, version = mgr.load_latest()
  assert version == 3 and mgr.warnings == []
  assert_state(state, 3)


def test_plain_tff_manager_fails_on_truncated_newest(pristine, tmp_path):
  # The defect: TFF's manager dies with a raw IndexError, never trying round_2.
  root = copy_of(pristine, tmp_path, 'legacy')
  _truncate_half(root / 'round_3' / DATA)
  plain = tff.program.FileProgramStateManager(root, prefix='round_')
  with pytest.raises(IndexError, match='Read less bytes than requested'):
    run(plain.load_latest(make_state(0)))
  mgr = Manager(root)
  state, version = mgr.load_latest()
  assert version == 2
  assert_state(state, 2)
  assert mgr.warnings == [
      f'warning: checkpoint {root}/round_3 is unreadable (IndexError: Read less'
      ' bytes than requested); using round_2']


def falls_back_to_round_2(root) -> str:
  """Loads `root`, whose round_3 is damaged: asserts round_2's state and one
  one-line warning naming round_3; returns that line."""
  mgr = Manager(root)
  state, version = mgr.load_latest()
  assert version == 2
  assert_state(state, 2)
  assert len(mgr.warnings) == 1, mgr.warnings
  (line,) = mgr.warnings
  assert line.startswith(f'warning: checkpoint {root}/round_3 is unreadable (')
  assert line.endswith('); using round_2') and '\n' not in line
  return line


@pytest.mark.parametrize('filename, corruption', [
    (f, c) for f in FILES + (C.MANIFEST,) for c in sorted(CORRUPTIONS)
    # Without its manifest a version is checked as a legacy one:
    # test_deleted_manifest_is_checked_by_loading.
    if (f, c) != (C.MANIFEST, 'deleted')])
def test_damaged_newest_falls_back_to_older(pristine, tmp_path, filename, corruption):
  root = copy_of(pristine, tmp_path, 'ours')
  CORRUPTIONS[corruption](root / 'round_3' / filename)
  line = falls_back_to_round_2(root)
  assert filename in line or corruption in ('garbage', 'zeroed') or filename == C.MANIFEST, line
  # Reading never writes.
  assert sorted(os.listdir(root)) == ['round_1', 'round_2', 'round_3']


@pytest.mark.parametrize('corruption', ['truncated', 'empty', 'zeroed', 'garbage', 'deleted'])
@pytest.mark.parametrize('filename', ['saved_model.pb', INDEX, DATA])
def test_damaged_legacy_newest_falls_back(pristine, tmp_path, filename, corruption):
  # Checkpoints without a manifest (TFF's plain manager writes none): TF's
  # errors decide.
  root = copy_of(pristine, tmp_path, 'legacy')
  CORRUPTIONS[corruption](root / 'round_3' / filename)
  falls_back_to_round_2(root)


def test_deleted_manifest_is_checked_by_loading(pristine, tmp_path):
  root = copy_of(pristine, tmp_path, 'ours')
  os.remove(root / 'round_3' / C.MANIFEST)
  mgr = Manager(root)
  state, version = mgr.load_latest()
  assert version == 3 and mgr.warnings == []
  assert_state(state, 3)
  os.remove(root / 'round_3' / 'saved_model.pb')
  state, version = mgr.load_latest()
  assert version == 2 and len(mgr.warnings) == 1


def test_missing_directory_content_and_two_bad_versions(pristine, tmp_path):
  root = copy_of(pristine, tmp_path, 'ours')
  shutil.rmtree(root / 'round_3' / 'variables')
  _empty(root / 'round_2' / 'saved_model.pb')
  mgr = Manager(root)
  state, version = mgr.load_latest()
  assert version == 1
  assert_state(state, 1)
  assert [w.split(' is unreadable')[0] for w in mgr.warnings] == [
      f'warning: checkpoint {root}/round_3', f'warning: checkpoint {root}/round_2']
  assert all(w.endswith('; using round_1') for w in mgr.warnings)


def test_every_version_bad_is_one_line_value_error(pristine, tmp_path):
  root = copy_of(pristine, tmp_path, 'ours')
  for v in (1, 2, 3):
    _truncate_half(root / f'round_{v}' / DATA)
  mgr = Manager(root)
  with pytest.raises(C.NoReadableCheckpointError) as e:
    mgr.load_latest()
  message = str(e.value)
  assert isinstance(e.value, ValueError) and '\n' not in message
  assert message.startswith(f'no readable checkpoint in {root} (round_3: ')
  assert 'round_2: ' in message and 'round_1: ' in message and 'truncated' in message
  assert mgr.warnings == []


@pytest.mark.parametrize('structure, expected', [
    ({'round': 0, 'state': [np.zeros(3)]}, 'TypeError: The two structures'),
    ({**make_state(0), 'extra': np.zeros(1)}, 'ValueError: The two structures'),
])
def test_wrong_structure_is_unreadable(pristine, tmp_path, structure, expected):
  root = copy_of(pristine, tmp_path, 'ours')
  m = C.SafeFileProgramStateManager(root, warn=lambda _: None)
  with pytest.raises(C.NoReadableCheckpointError, match=expected) as e:
    run(m.load_latest(structure))
  assert '\n' not in str(e.value)
  with pytest.raises(C.UnreadableCheckpointError, match=f'checkpoint {root}/round_2 is unreadable'):
    run(m.load(2, structure))


def test_wrong_shape_or_dtype_is_unreadable(pristine, tmp_path):
  root = copy_of(pristine, tmp_path, 'ours')
  m = C.SafeFileProgramStateManager(root, warn=lambda _: None)
  shape = make_state(0)
  shape['state']['weights'].trainable[0] = np.zeros((4, 3), np.float32)
  with pytest.raises(C.NoReadableCheckpointError,
                     match=r'state/weights/trainable/0 is float32\[3, 4\], expected float32\[4, 3\]'):
    run(m.load_latest(shape))
  dtype = make_state(0)
  dtype['state']['pair'] = Pair(a=np.zeros((2,), np.int64), b=dtype['state']['pair'].b)
  with pytest.raises(C.UnreadableCheckpointError, match=r'state/pair/a is int32\[2\], expected int64\[2\]'):
    run(m.load(3, dtype))


def test_load_of_absent_version_is_not_found(tmp_path):
  mgr = Manager(tmp_path / 'checkpoints')
  mgr.save(1)
  with pytest.raises(tff.program.ProgramStateNotFoundError):
    run(mgr.m.load(7, make_state(0)))


def test_crash_at_rename_keeps_previous_set(pristine, tmp_path, monkeypatch):
  root = copy_of(pristine, tmp_path, 'ours')
  mgr = Manager(root)
  real_rename = C._rename

  def crash(src, dst):
    if os.path.basename(dst) == 'round_4':
      raise OSError('simulated crash before the rename')
    real_rename(src, dst)

  monkeypatch.setattr(C, '_rename', crash)
  with pytest.raises(OSError, match='simulated crash'):
    mgr.save(4)
  assert sorted(os.listdir(root)) == ['round_1', 'round_2', 'round_3']  # no temp left
  state, version = mgr.load_latest()
  assert version == 3 and mgr.warnings == []
  assert_state(state, 3)


def test_crash_while_writing_keeps_previous_set(pristine, tmp_path, monkeypatch):
  root = copy_of(pristine, tmp_path, 'ours')
  mgr = Manager(root)
  real_write = C.file_utils.write_saved_model

  async def half_write(value, path):
    await real_write(value, path)
    _truncate_half(os.path.join(path, DATA))
    raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a save

  monkeypatch.setattr(C.file_utils, 'write_saved_model', half_write)
  with pytest.raises(KeyboardInterrupt):
    mgr.save(4)
  monkeypatch.setattr(C.file_utils, 'write_saved_model', real_write)
  assert sorted(os.listdir(root)) == ['round_1', 'round_2', 'round_3']
  assert mgr.load_latest()[1] == 3 and mgr.warnings == []


def test_write_that_does_not_read_back_is_not_installed(pristine, tmp_path, monkeypatch):
  root = copy_of(pristine, tmp_path, 'ours')
  mgr = Manager(root)
  real_manifest = C._write_manifest

  def damage_after_manifest(path):
    real_manifest(path)
    _truncate_half(os.path.join(path, DATA))

  monkeypatch.setattr(C, '_write_manifest', damage_after_manifest)
  with pytest.raises(C.CheckpointError, match=r'round_4 did not read back after writing'):
    mgr.save(4)
  assert sorted(os.listdir(root)) == ['round_1', 'round_2', 'round_3']


def test_write_of_other_values_is_not_installed(pristine, tmp_path, monkeypatch):
  # A writer that stores something else than it was given (here one array
  # of version 4 holds version 5's values; sizes and manifest agree).
  root = copy_of(pristine, tmp_path, 'ours')
  mgr = Manager(root)
  real_write = C.file_utils.write_saved_model

  async def wrong_write(value, path, overwrite=False):
    value = structure_utils.map_structure(lambda x: x, value)
    value['state']['nested'][0]['x'] = np.full((2, 2, 2), -5, np.float64)
    await real_write(value, path, overwrite)

  monkeypatch.setattr(C.file_utils, 'write_saved_model', wrong_write)
  with pytest.raises(C.CheckpointError,
                     match=r'round_4 did not read back after writing \(1 of 8'
                           r' arrays differ from what was written\)'):
    mgr.save(4)
  assert sorted(os.listdir(root)) == ['round_1', 'round_2', 'round_3']


def test_saving_does_not_grow_the_python_heap(tmp_path):
  # Loading a SavedModel defines new classes and functions that are never
  # freed (~3,000 objects per load); a save checks what it wrote without
  # loading it, so 20 more saves leave the heap as it was.
  import gc  # pylint: disable=g-import-not-at-top
  mgr = Manager(tmp_path / 'ckpt', keep_total=2)
  for v in range(1, 6):
    mgr.save(v)
  gc.collect()
  before = len(gc.get_objects())
  for v in range(6, 26):
    mgr.save(v)
  gc.collect()
  assert len(gc.get_objects()) - before < 20 * 50
  assert mgr.versions() == [24, 25]


def test_leftover_temporary_entries_are_ignored_then_cleaned(pristine, tmp_path):
  root = copy_of(pristine, tmp_path, 'ours')
  # What a save killed mid-write leaves: a half-written version under a
  # temporary name (and TFF's own inner temporary directory).
  shutil.copytree(root / 'round_3', root / '.tmp-round_4-deadbeef')
  _truncate_half(root / '.tmp-round_4-deadbeef' / DATA)
  (root / '.tmp-round_4-deadbeef_temp1234').mkdir()
  mgr = Manager(root)
  assert mgr.versions() == [1, 2, 3]
  assert mgr.load_latest()[1] == 3 and mgr.warnings == []
  mgr.save(4)
  assert sorted(os.listdir(root)) == ['round_2', 'round_3', 'round_4']
  assert_state(mgr.load_latest()[0], 4)


def test_non_directories_are_not_versions(tmp_path):
  root = tmp_path / 'checkpoints'
  mgr = Manager(root)
  mgr.save(1)
  (root / 'round_9').write_text('not a checkpoint')
  (root / 'round_x').mkdir()
  assert mgr.versions() == [1]
  assert mgr.load_latest()[1] == 1


def test_resume_past_bad_version_saves_it_again(pristine, tmp_path):
  root = copy_of(pristine, tmp_path, 'ours')
  _garbage(root / 'round_3' / INDEX)
  mgr = Manager(root)
  assert mgr.load_latest()[1] == 2
  mgr.warnings.clear()
  mgr.save(3)  # the resumed run reaches round 3 again
  (line,) = mgr.warnings
  assert line.startswith(f'warning: checkpoint {root}/round_3 is unreadable (')
  assert f'moved it to {root}/.unreadable-round_3-' in line
  state, version = mgr.load_latest()
  assert version == 3
  assert_state(state, 3)
  with pytest.raises(tff.program.ProgramStateExistsError):
    mgr.save(3)  # a readable version is never replaced


_SAVER = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    from tff_research.run import safe_checkpoints as C
    m = C.SafeFileProgramStateManager(sys.argv[1])
    base = np.random.default_rng(0).random((512, 1024)).astype(np.float32)
    structure = {'round': 0, 'w': base, 'v': np.int64(0)}
    _, last = asyncio.run(m.load_latest(structure))
    for v in range(last + 1, last + 10_000):
      asyncio.run(m.save({'round': v, 'w': base + v, 'v': np.int64(v)}, v))
      print(v, flush=True)
""")


def test_kill_9_at_any_instant_leaves_a_loadable_latest(tmp_path):
  root = tmp_path / 'checkpoints'
  base = np.random.default_rng(0).random((512, 1024)).astype(np.float32)
  structure = {'round': 0, 'w': np.zeros_like(base), 'v': np.int64(0)}
  rng = np.random.default_rng(1)
  last = 0
  for _ in range(2):  # each start costs a TFF import (about 20 s)
    proc = procs.spawn([sys.executable, '-c', _SAVER, str(root)])
    try:
      for _ in range(2):  # two versions saved by this process, then kill it
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode()[-2000:]
        assert int(line) > last
      time.sleep(rng.uniform(0.0, 0.4))
      proc.send_signal(signal.SIGKILL)
      proc.communicate(timeout=30)
    finally:
      procs.kill_quietly(proc)
    warnings = []
    m = C.SafeFileProgramStateManager(root, warn=warnings.append)
    state, version = run(m.load_latest(structure))
    assert warnings == [], warnings
    assert version >= last + 2 and state['round'] == version
    assert int(state['v']) == version
    np.testing.assert_array_equal(state['w'], base + version)
    for v in run(m.get_versions()):  # every installed version is complete
      run(m.load(v, structure))
    last = version
  # A killed save's temporary entry, if any, is cleaned by the next save.
  run(m.save({'round': last + 1, 'w': base, 'v': np.int64(0)}, last + 1))
  assert not [e for e in os.listdir(root) if e.startswith(C.TEMP_PREFIX)]


def test_training_resumes_past_a_truncated_newest_checkpoint(tff_worker, tmp_path, capsys):
  # The original defect end to end: a run whose newest checkpoint was
  # truncated (a crash mid-write under TFF's own manager) died on re-run
  # with a raw IndexError. Now the re-run warns in one line, resumes from
  # the older version, re-trains the lost round and ends where an
  # uninterrupted run ends.
  from tests import fl_testing  # pylint: disable=g-import-not-at-top
  flags = dict(model='linear', num_clients=4, clients_per_round=2,
               client_learning_rate=0.05, eval_every=10,
               rounds_per_checkpoint=1, progress=False, batch_size=10)
  straight = fl_testing.run_experiment(flags, tmp_path, 'straight', total_rounds=3)
  fl_testing.run_experiment(flags, tmp_path, 'damaged', total_rounds=2)
  ckpt = tmp_path / 'damaged' / 'checkpoints'
  _truncate_half(ckpt / 'round_2' / DATA)
  capsys.readouterr()
  rows = fl_testing.run_experiment(flags, tmp_path, 'damaged', total_rounds=3)
  warnings = [l for l in capsys.readouterr().err.splitlines()
              if l.startswith('warning: checkpoint')]
  assert len(warnings) >= 1, warnings  # the resume; save may add one
  assert warnings[0].startswith(f'warning: checkpoint {ckpt}/round_2 is unreadable ({DATA} is truncated: ')
  assert warnings[0].endswith('); using round_1')
  assert [r['round'] for r in rows] == [2, 3]
  for a, b in zip(straight[1:], rows):
    assert a['train_loss'] == b['train_loss']
  assert sorted(os.listdir(ckpt))[-1] == 'round_3'
  assert not [e for e in os.listdir(ckpt) if e.startswith(C.TEMP_PREFIX)]
