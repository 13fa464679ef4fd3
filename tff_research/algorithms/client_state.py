"""Per-client state sized for thousands of clients: a table of rows on disk.

SCAFFOLD keeps a control variate per client (the model's size: 4.8 MB for
the EMNIST CNN, 16 GB for 3,400 clients) and clustered FL a projected
update per client. Held in the algorithm state as [N, ...] arrays, every
round copied all of them and every checkpoint wrote all of them. Here the
rows live in a file of fixed-size *slots* (`rows.bin`) and the algorithm
state holds only an *index*: int64 [N], the slot of each client's current
row (-1: never written, reads as zeros). A round reads the rows of its
clients and writes their new rows to free slots; a checkpoint saves the
index (8 bytes a client), never the rows.

Crash consistency (kill -9 at any instant, or a power loss, resumes
bit-exactly): a slot that any state still in use may read is never
written. A write

 1. puts the new rows in *free* slots and flushes them (`fdatasync`),
 2. then appends (round, client, slot) records to `journal.bin` and flushes.

The journal says which slot held which client's row from which round to
which, so the index of any past round r is a replay of the records of
rounds <= r. A slot is *pinned*, never free, while it holds the row of
some client at a pinned round: a round of a checkpoint on disk, or one of
the two rounds before the one being written (the loop's divergence guard
may keep the state of two rounds back as a checkpoint). Rows of a round
therefore reach disk before the checkpoint that refers to them is
written, and a crash before that checkpoint leaves every checkpoint's rows
untouched. Records of rounds at or after the one being written (left by a
run that crashed, or a run resumed from an older checkpoint) are dropped
first: the rows they name are free again. A torn journal record (a crash
mid-append) is ignored.

`directory=None` keeps the same table in memory (tests, library use).
The rows read for a client are exactly the rows written: the disk and
memory tables are tested equal, and equal to a plain [N, ...] array.

    read:  (index int64 [N], positions [K]) -> [float [K, *shape] per leaf]
    write: (round, index [N], positions [K], rows [[K, *shape] per leaf])
           -> new index [N]
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from typing import Optional

import numpy as np

_RECORD = np.dtype([('round', '<i8'), ('position', '<i8'), ('slot', '<i8')])
ROWS = 'rows.bin'
JOURNAL = 'journal.bin'
# States up to this many rounds before the one being written stay readable.
LIVE_ROUNDS = 2


class ClientStateTable:
  """Rows of per-client state, one per client, each a list of arrays of
  `shapes` and `dtypes` (a model's trainable variables, a sketch, ...)."""

  def __init__(self, num_clients: int, shapes: Sequence[Sequence[int]],
               dtypes: Sequence, *, directory: Optional[str] = None,
               checkpoint_dir: Optional[str] = None,
               checkpoint_prefix: str = 'round_'):
    """
    Args:
      num_clients: N, rows of the index.
      shapes, dtypes: one row's leaves.
      directory: where `rows.bin` and `journal.bin` live (created on the
        first write); None keeps them in memory.
      checkpoint_dir: the run's checkpoints (`PREFIX<round>` entries); the
        rows of their rounds are pinned.
    """
    if num_clients < 1:
      raise ValueError(f'num_clients={num_clients} is not valid: must be >= 1')
    self.num_clients = int(num_clients)
    self._shapes = [tuple(int(d) for d in s) for s in shapes]
    self._dtypes = [np.dtype(d) for d in dtypes]
    self._sizes = [int(np.prod(s)) * d.itemsize
                   for s, d in zip(self._shapes, self._dtypes)]
    self.row_bytes = sum(self._sizes)
    self._directory = directory
    self._checkpoint_dir = checkpoint_dir
    self._pattern = re.compile(re.escape(checkpoint_prefix) + r'(\d+)$')
    self._memory = bytearray()
    self._journal = None  # loaded on first use
    self._fd = None

  # --- reading ------------------------------------------------------------

  def empty_index(self) -> np.ndarray:
    return np.full(self.num_clients, -1, np.int64)

  def read(self, index: np.ndarray, positions: Sequence[int]) -> list[np.ndarray]:
    """The rows of clients `positions` in the state whose index is `index`."""
    out = [np.zeros((len(positions),) + s, d)
           for s, d in zip(self._shapes, self._dtypes)]

    def put(k, raw):
      offset = 0
      for leaf, size in zip(out, self._sizes):
        leaf[k] = np.frombuffer(raw, leaf.dtype, leaf[k].size,
                                offset).reshape(leaf.shape[1:])
        offset += size

    self._read_rows(index, positions, put)
    return out

  def read_flat(self, index: np.ndarray,
                positions: Sequence[int]) -> np.ndarray:
    """The same rows as one [K, d] array, each row its leaves flattened one
    after another (leaves of one dtype): no second copy to join them."""
    if len(set(self._dtypes)) != 1:
      raise ValueError(f'read_flat needs leaves of one dtype, not'
                       f' {[d.name for d in self._dtypes]}')
    dtype = self._dtypes[0]
    out = np.zeros((len(positions), self.row_bytes // dtype.itemsize), dtype)

    def put(k, raw):
      out[k] = np.frombuffer(raw, dtype)

    self._read_rows(index, positions, put)
    return out

  def _read_rows(self, index, positions, put) -> None:
    """put(k, the raw row) for each written row of clients `positions`."""
    index = np.asarray(index)
    for k, p in enumerate(positions):
      slot = int(index[p])
      if slot >= 0:
        put(k, self._read_slot(slot))

  def _read_slot(self, slot: int) -> bytes:
    start = slot * self.row_bytes
    if self._directory is None:
      return bytes(self._memory[start:start + self.row_bytes])
    raw = os.pread(self._rows_fd(), self.row_bytes, start)
    if len(raw) != self.row_bytes:
      raise ValueError(
          f'{os.path.join(self._directory, ROWS)} is truncated: slot {slot}'
          f' ends at byte {start + self.row_bytes}, the file has'
          f' {os.fstat(self._rows_fd()).st_size}')
    return raw

  # --- writing ------------------------------------------------------------

  def write(self, round_num: int, index: np.ndarray,
            positions: Sequence[int], rows: Sequence[np.ndarray]) -> np.ndarray:
    """Stores `rows` ([K, *shape] per leaf) as the round-`round_num` rows of
    clients `positions`; returns the new index (`index` is unchanged)."""
    positions = np.asarray(positions, np.int64)
    if len(set(positions.tolist())) != len(positions):
      raise ValueError(f'a client appears twice in one write: {positions}')
    journal = self._load_journal()
    keep = journal['round'] < round_num
    if not keep.all():
      self._journal = journal = journal[keep]
      self._rewrite_journal()
    slots = self._allocate(len(positions), round_num, np.asarray(index))
    for k, slot in enumerate(slots):
      self._write_slot(int(slot), b''.join(
          np.ascontiguousarray(leaf[k], d).tobytes()
          for leaf, d in zip(rows, self._dtypes)))
    records = np.zeros(len(positions), _RECORD)
    records['round'], records['position'], records['slot'] = (
        round_num, positions, slots)
    if self._directory is not None:
      os.fdatasync(self._rows_fd())
      self._append_journal(records)
    self._journal = np.concatenate([journal, records])
    new = np.array(index, np.int64, copy=True)
    new[positions] = slots
    self._compact(round_num)
    return new

  def _write_slot(self, slot: int, raw: bytes) -> None:
    start = slot * self.row_bytes
    if self._directory is None:
      if len(self._memory) < start + self.row_bytes:
        self._memory.extend(bytes(start + self.row_bytes - len(self._memory)))
      self._memory[start:start + self.row_bytes] = raw
    else:
      _write_all(lambda b, done: os.pwrite(self._rows_fd(), b, start + done),
                 raw)

  def _capacity(self) -> int:
    if self._directory is None:
      return len(self._memory) // self.row_bytes
    return os.fstat(self._rows_fd()).st_size // self.row_bytes

  def _pinned_rounds(self, round_num: int) -> np.ndarray:
    rounds = {round_num - k for k in range(1, LIVE_ROUNDS + 1)}
    if self._checkpoint_dir and os.path.isdir(self._checkpoint_dir):
      for name in os.listdir(self._checkpoint_dir):
        match = self._pattern.match(name)
        if match and int(match.group(1)) < round_num:
          rounds.add(int(match.group(1)))
    return np.array(sorted(r for r in rounds if r >= 0), np.int64)

  def _pinning(self, journal: np.ndarray, pinned: np.ndarray) -> np.ndarray:
    """[J] bool: records whose row some pinned round reads (the record was
    the client's latest at that round: written at w, superseded at s,
    w <= r < s)."""
    if not len(journal):
      return np.zeros(0, bool)
    order = np.lexsort((np.arange(len(journal)), journal['position']))
    by_pos = journal[order]
    superseded = np.full(len(journal), np.iinfo(np.int64).max)
    same = by_pos['position'][1:] == by_pos['position'][:-1]
    superseded[:-1][same] = by_pos['round'][1:][same]
    k = np.searchsorted(pinned, by_pos['round'], side='left')
    hit = k < len(pinned)
    hit[hit] &= pinned[k[hit]] < superseded[hit]
    out = np.zeros(len(journal), bool)
    out[order] = hit
    return out

  def _allocate(self, count: int, round_num: int, index: np.ndarray) -> np.ndarray:
    journal = self._journal
    used = set(journal['slot'][self._pinning(
        journal, self._pinned_rounds(round_num))].tolist())
    used.update(int(s) for s in index[index >= 0])
    capacity = self._capacity()
    free = [s for s in range(capacity) if s not in used][:count]
    free += list(range(capacity, capacity + count - len(free)))
    return np.array(free, np.int64)

  def _compact(self, round_num: int) -> None:
    """Drops records no pinned round, present or future, can read: every
    future pinned round is a checkpoint on disk now or a round after
    `round_num`, so a record unpinned now stays unpinned."""
    journal = self._journal
    pinned = np.append(self._pinned_rounds(round_num + 1), round_num)
    keep = self._pinning(journal, np.unique(pinned))
    if len(journal) - keep.sum() > max(1024, keep.sum()):
      self._journal = journal[keep]
      self._rewrite_journal()

  # --- files ----------------------------------------------------------------

  def _rows_fd(self) -> int:
    if self._fd is None:
      os.makedirs(self._directory, exist_ok=True)
      self._fd = os.open(os.path.join(self._directory, ROWS),
                         os.O_RDWR | os.O_CREAT, 0o644)
    return self._fd

  def _load_journal(self) -> np.ndarray:
    if self._journal is None:
      self._journal = np.zeros(0, _RECORD)
      if self._directory is not None:
        path = os.path.join(self._directory, JOURNAL)
        if os.path.exists(path):
          raw = np.fromfile(path, np.uint8)
          whole = len(raw) // _RECORD.itemsize * _RECORD.itemsize
          self._journal = raw[:whole].view(_RECORD).copy()
          if whole != len(raw):  # A torn record: never acknowledged.
            self._rewrite_journal()
    return self._journal

  def _append_journal(self, records: np.ndarray) -> None:
    path = os.path.join(self._directory, JOURNAL)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    try:
      _write_all(lambda b, _: os.write(fd, b), records.tobytes())
      os.fdatasync(fd)
    except OSError:
      # A full disk mid-append: the journal ends at its last whole record,
      # so the next append (after space is freed) is not misaligned.
      os.ftruncate(fd, size)
      raise
    finally:
      os.close(fd)

  def _rewrite_journal(self) -> None:
    if self._directory is None:
      return
    os.makedirs(self._directory, exist_ok=True)
    path = os.path.join(self._directory, JOURNAL)
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
      _write_all(lambda b, _: os.write(fd, b), self._journal.tobytes())
      os.fsync(fd)
    except OSError:
      # Never replace the journal by a short copy: the old one stays.
      os.close(fd)
      fd = None
      os.remove(tmp)
      raise
    finally:
      if fd is not None:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(self._directory, os.O_RDONLY)
    try:
      os.fsync(dir_fd)
    finally:
      os.close(dir_fd)

  def close(self) -> None:
    if getattr(self, '_fd', None) is not None:
      os.close(self._fd)
      self._fd = None

  def __del__(self):
    self.close()


class Tables:
  """Where a run's per-client tables live: `directory/NAME/`, their rows
  pinned by the checkpoints in `checkpoint_dir`; in memory when `directory`
  is None (the default of an algorithm built outside a run)."""

  def __init__(self, directory: Optional[str] = None,
               checkpoint_dir: Optional[str] = None,
               checkpoint_prefix: str = 'round_'):
    self.directory = directory
    self.checkpoint_dir = checkpoint_dir
    self.checkpoint_prefix = checkpoint_prefix

  def table(self, name: str, num_clients: int, shapes, dtypes
            ) -> ClientStateTable:
    return ClientStateTable(
        num_clients, shapes, dtypes,
        directory=(None if self.directory is None
                   else os.path.join(self.directory, name)),
        checkpoint_dir=self.checkpoint_dir,
        checkpoint_prefix=self.checkpoint_prefix)


IN_MEMORY = Tables()


def _write_all(write, data: bytes) -> None:
  """Calls `write(remaining bytes, bytes done)` until all of `data` is
  written. A write that makes no progress (a full device reports a short
  write first, ENOSPC next) raises ENOSPC."""
  done = 0
  view = memoryview(data)
  while done < len(data):
    n = write(view[done:], done)
    if n <= 0:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    done += n
