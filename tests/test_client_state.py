"""The per-client row table: equal to a plain [N, ...] array, on disk and in
memory; checkpoints' rows pinned; torn journal records ignored; disk use
bounded by the rows in use."""

import errno
import os

import numpy as np
import pytest

from tff_research.algorithms import client_state

SHAPES = [(3, 2), (4,)]
DTYPES = [np.float32, np.int64]


def _rows(rng, k):
  return [rng.normal(size=(k, 3, 2)).astype(np.float32),
          rng.integers(-9, 9, size=(k, 4))]


def _assert_rows_equal(got, want):
  for g, w in zip(got, want):
    assert g.dtype == w.dtype
    np.testing.assert_array_equal(g, w)


def _table(tmp_path, n, on_disk, name='t'):
  if not on_disk:
    return client_state.ClientStateTable(n, SHAPES, DTYPES)
  return client_state.ClientStateTable(
      n, SHAPES, DTYPES, directory=str(tmp_path / name),
      checkpoint_dir=str(tmp_path / 'checkpoints'))


@pytest.mark.parametrize('on_disk', [False, True], ids=['memory', 'disk'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_equals_a_plain_array_for_every_state_still_live(tmp_path, on_disk,
                                                         seed):
  rng = np.random.default_rng(seed)
  n, k = 12, 4
  table = _table(tmp_path, n, on_disk)
  reference = [np.zeros((n, 3, 2), np.float32), np.zeros((n, 4), np.int64)]
  index = table.empty_index()
  _assert_rows_equal(table.read(index, range(n)), reference)
  history = [(index, [r.copy() for r in reference])]
  for round_num in range(1, 30):
    positions = rng.choice(n, k, replace=False)
    rows = _rows(rng, k)
    index = table.write(round_num, index, positions, rows)
    for ref, new in zip(reference, rows):
      ref[positions] = new
    history.append((index, [r.copy() for r in reference]))
    # This state and the LIVE_ROUNDS before it read as they were written.
    for old_index, old_ref in history[-1 - client_state.LIVE_ROUNDS:]:
      _assert_rows_equal(table.read(old_index, range(n)), old_ref)
    _assert_rows_equal(table.read(index, positions[::-1]),
                       [r[positions[::-1]] for r in reference])
  # 29 rounds x 4 rows written; a slot is freed once no live state reads it.
  assert table._capacity() <= n + (client_state.LIVE_ROUNDS + 1) * k  # pylint: disable=protected-access


@pytest.mark.parametrize('on_disk', [False, True], ids=['memory', 'disk'])
def test_flat_rows_are_the_leaves_joined(tmp_path, on_disk):
  shapes, n = [(3, 2), (4,)], 6
  kwargs = dict(directory=str(tmp_path / 'f')) if on_disk else {}
  table = client_state.ClientStateTable(n, shapes, [np.float32] * 2, **kwargs)
  rng = np.random.default_rng(0)
  rows = [rng.normal(size=(3, 3, 2)).astype(np.float32),
          rng.normal(size=(3, 4)).astype(np.float32)]
  index = table.write(1, table.empty_index(), [4, 1, 2], rows)
  positions = [2, 0, 4]  # 0 never written: zeros
  want = np.concatenate([leaf.reshape(3, -1) for leaf in table.read(
      index, positions)], axis=1)
  got = table.read_flat(index, positions)
  assert got.dtype == np.float32 and got.shape == (3, 10)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got[0], np.concatenate(
      [rows[0][2].ravel(), rows[1][2]]))
  assert not got[1].any()
  with pytest.raises(ValueError, match='one dtype'):
    client_state.ClientStateTable(n, SHAPES, DTYPES).read_flat(
        table.empty_index(), [0])


def test_disk_and_memory_tables_allocate_the_same_slots(tmp_path):
  rng = np.random.default_rng(3)
  memory, disk = _table(tmp_path, 9, False), _table(tmp_path, 9, True)
  a, b = memory.empty_index(), disk.empty_index()
  for round_num in range(1, 12):
    positions = rng.choice(9, 3, replace=False)
    rows = _rows(rng, 3)
    a = memory.write(round_num, a, positions, rows)
    b = disk.write(round_num, b, positions, rows)
    np.testing.assert_array_equal(a, b)


def test_a_checkpointed_state_survives_later_rounds_and_a_resume(tmp_path):
  rng = np.random.default_rng(4)
  n = 6
  table = _table(tmp_path, n, True)
  index = table.empty_index()
  saved = {}
  for round_num in range(1, 5):
    index = table.write(round_num, index, [round_num % n, 5], _rows(rng, 2))
  os.makedirs(tmp_path / 'checkpoints' / 'round_4')
  saved = (index, table.read(index, range(n)))
  # Twenty more rounds rewrite every client many times over.
  for round_num in range(5, 25):
    index = table.write(round_num, index, rng.choice(n, 3, replace=False),
                        _rows(rng, 3))
  _assert_rows_equal(table.read(saved[0], range(n)), saved[1])
  # A new process resumes from round 4 (the later rounds never
  # checkpointed): the rounds after 4 are dropped from the journal and
  # redone with other rows; round 4's rows are still those saved.
  resumed = _table(tmp_path, n, True)
  index = saved[0]
  for round_num in range(5, 9):
    index = resumed.write(round_num, index, [0, 1, 2], _rows(rng, 3))
    _assert_rows_equal(resumed.read(saved[0], range(n)), saved[1])
  # Once its checkpoint is gone, round 4's slots are free for reuse.
  os.rmdir(tmp_path / 'checkpoints' / 'round_4')
  before = resumed._capacity()  # pylint: disable=protected-access
  for round_num in range(9, 40):
    index = resumed.write(round_num, index, [0, 1, 2], _rows(rng, 3))
  assert resumed._capacity() == before  # pylint: disable=protected-access


def test_a_torn_journal_record_is_ignored(tmp_path):
  rng = np.random.default_rng(5)
  table = _table(tmp_path, 4, True)
  index = table.write(1, table.empty_index(), [0, 1], _rows(rng, 2))
  os.makedirs(tmp_path / 'checkpoints' / 'round_1')
  want = table.read(index, range(4))
  journal = tmp_path / 't' / client_state.JOURNAL
  size = journal.stat().st_size
  with open(journal, 'ab') as f:  # Half of a record: a crash mid-append.
    f.write(b'\x02' * 11)
  resumed = _table(tmp_path, 4, True)
  new = resumed.write(2, index, [1, 2], _rows(rng, 2))
  _assert_rows_equal(resumed.read(index, range(4)), want)
  assert journal.stat().st_size == size + 2 * 24
  assert set(new[[1, 2]]).isdisjoint(index[[0, 1]])


def test_rows_of_unwritten_clients_are_zero_and_bad_writes_refused(tmp_path):
  table = _table(tmp_path, 3, True)
  got = table.read(table.empty_index(), [2, 0])
  _assert_rows_equal(got, [np.zeros((2, 3, 2), np.float32),
                           np.zeros((2, 4), np.int64)])
  with pytest.raises(ValueError, match='appears twice'):
    table.write(1, table.empty_index(), [1, 1], _rows(np.random.default_rng(), 2))
  with pytest.raises(ValueError, match='num_clients=0 is not valid'):
    client_state.ClientStateTable(0, SHAPES, DTYPES)
  # Nothing is created on disk before the first write.
  assert not (tmp_path / 't').exists()


def test_a_truncated_row_file_is_one_line(tmp_path):
  table = _table(tmp_path, 2, True)
  index = table.write(1, table.empty_index(), [0, 1],
                      _rows(np.random.default_rng(6), 2))
  table.close()
  rows = tmp_path / 't' / client_state.ROWS
  os.truncate(rows, rows.stat().st_size - 1)
  fresh = _table(tmp_path, 2, True)
  with pytest.raises(ValueError, match=r'rows.bin is truncated: slot 1 ends'):
    fresh.read(index, [1])


class _FullDisk:
  """`os` for the table, whose `write`/`pwrite` (as armed) write half of
  what they are given, then fail with ENOSPC: what a device filling up
  mid-write does."""

  def __init__(self, call):
    self.call = call
    self.armed = False
    self.failed = False

  def __getattr__(self, name):
    return getattr(os, name)

  def _short(self, real, data, *args):
    if not self.armed:
      return real(data, *args)
    if self.failed:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    self.failed = True
    return real(bytes(data)[:max(1, len(data) // 2)], *args)

  def write(self, fd, data):
    if self.call != 'write':
      return os.write(fd, data)
    return self._short(lambda d: os.write(fd, d), data)

  def pwrite(self, fd, data, offset):
    if self.call != 'pwrite':
      return os.pwrite(fd, data, offset)
    return self._short(lambda d: os.pwrite(fd, d, offset), data)


@pytest.mark.parametrize('step', ['rows', 'journal_append',
                                  'journal_rewrite'])
def test_a_full_disk_at_each_write_fails_and_resumes_exactly(
    tmp_path, monkeypatch, step):
  """A full device during a round's rows, its journal records, or the
  journal's rewrite (a resume from an older checkpoint) raises ENOSPC; the
  journal keeps whole records only, a checkpoint's rows are untouched, and
  the run resumed from its checkpoint once space is freed reads exactly
  what an uninterrupted run reads."""
  rng = np.random.default_rng(7)
  n = 5
  rows = [_rows(rng, 2) for _ in range(9)]
  picks = [[r % n, (r + 2) % n] for r in range(9)]

  def rounds(table, index, first, last):
    for r in range(first, last + 1):
      index = table.write(r, index, picks[r], rows[r])
    return index

  reference = _table(tmp_path / 'ref', n, True)
  want = rounds(reference, reference.empty_index(), 1, 8)
  disk = _FullDisk('pwrite' if step == 'rows' else 'write')
  monkeypatch.setattr(client_state, 'os', disk)
  table = _table(tmp_path, n, True)
  saved = rounds(table, table.empty_index(), 1, 4)
  os.makedirs(tmp_path / 'checkpoints' / 'round_4')
  (tmp_path / 'ref' / 'checkpoints' / 'round_4').mkdir(parents=True)
  checkpointed = table.read(saved, range(n))
  if step == 'journal_rewrite':
    # Rounds 5-6 ran, then the run is resumed from round 4's checkpoint:
    # its first write drops the records of rounds 5-6 by a rewrite.
    rounds(table, saved, 5, 6)
    table = _table(tmp_path, n, True)
  journal = tmp_path / 't' / client_state.JOURNAL
  disk.armed = True
  with pytest.raises(OSError) as failure:
    rounds(table, saved, 5, 5)
  assert failure.value.errno == errno.ENOSPC and disk.failed
  assert journal.stat().st_size % client_state._RECORD.itemsize == 0  # pylint: disable=protected-access
  assert not (tmp_path / 't' / (client_state.JOURNAL + '.tmp')).exists()
  disk.armed = False
  resumed = _table(tmp_path, n, True)
  _assert_rows_equal(resumed.read(saved, range(n)), checkpointed)
  got = rounds(resumed, saved, 5, 8)
  _assert_rows_equal(resumed.read(got, range(n)),
                     reference.read(want, range(n)))
  _assert_rows_equal(resumed.read(saved, range(n)), checkpointed)
