"""The client array store: each client's examples as one file of fixed records.

Why: TFF's EMNIST cache (`emnist_all.sqlite`) holds one serialized
`tf.train.Example` per example, so every read of a client runs an SQL query
and parses each example's protocol buffer, and a dataset built in Python from
the parsed arrays carries its pixels into every computation's serialized
argument (TFF refuses a dataset over 100 MB). The store keeps the same
examples, in the same order, as flat records a TensorFlow graph reads with
one `tf.io.read_file` per client: a client's dataset is then a small graph
(its file name) that the TFF worker executes, whatever the federation's size.

Layout (`DIR` = `emnist_all.arrays` beside the SQLite file)::

    DIR/manifest.json          format version, the source file's size and
                               mtime, per split: clients, examples, record
    DIR/SPLIT/clients.npz      client_ids (sorted, as SqlClientData's),
                               num_examples (int64)
    DIR/SPLIT/NNNNNN.rec       client NNNNNN (position in client_ids)

A record is one example: 784 pixels then the label. Record `u8` stores each
as a byte (785 bytes; used when every pixel of the split is exactly
float32(k) / 255 and every label is in 0..255, as in TFF's and LEAF's
EMNIST); record `f32` stores 785 float32 (pixels as they are, the label as a
float, exact below 2^24). Readers decode `u8` pixels with the table
`PIXEL_TABLE[k] = float32(k) / 255`, the value the check compared against,
so both records give back the SQLite examples bit for bit.

A store is written to a temporary directory and renamed into place, so a
reader never sees half of one. It records the size and mtime of the SQLite
file it was built from; a store whose source changed is stale and rebuilt
(`ensure_store`).

    build_from_sqlite: (db_path, store_dir) -> ArrayStore
    build_from_arrays: (FemnistArrays, db_path, store_dir) -> ArrayStore
    open_store:        (db_path) -> ArrayStore | None   (None: absent or stale)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Optional

import numpy as np

FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
CLIENTS = 'clients.npz'
SUFFIX = '.arrays'
RECORD_SIZES = {'u8': 785, 'f32': 785 * 4}
# float32(k) / 255: float32 division is correctly rounded, so this is the
# float32 nearest to k/255, the value LEAF and TFF store for 8-bit pixels.
PIXEL_TABLE = np.arange(256, dtype=np.float32) / np.float32(255.0)
_PARSE_BATCH = 8192


class StoreError(ValueError):
  """An array store cannot be used or written (one line)."""


def store_dir_for(db_path: str) -> str:
  """`emnist_all.arrays` beside `db_path` (`emnist_all.sqlite`)."""
  root, _ = os.path.splitext(os.path.abspath(db_path))
  return root + SUFFIX


def _source(db_path: str) -> dict:
  st = os.stat(db_path)
  return {'path': os.path.basename(db_path), 'bytes': st.st_size,
          'mtime_ns': st.st_mtime_ns}


@dataclasses.dataclass(frozen=True)
class StoreSplit:
  """One split of a store: its clients, their sizes and record files."""

  directory: str
  name: str
  record: str                   # 'u8' or 'f32'
  client_ids: tuple[str, ...]   # sorted
  num_examples: np.ndarray      # int64, per client

  def __post_init__(self):
    object.__setattr__(self, '_position',
                       {c: i for i, c in enumerate(self.client_ids)})

  def position(self, client_id: str) -> int:
    try:
      return self._position[client_id]  # pytype: disable=attribute-error
    except KeyError:
      raise ValueError(
          f'client {client_id!r} is not in split {self.name!r} of'
          f' {os.path.dirname(self.directory)} ({len(self.client_ids)}'
          ' clients)') from None

  def __contains__(self, client_id: str) -> bool:
    return client_id in self._position  # pytype: disable=attribute-error

  def path(self, client_id: str) -> str:
    return os.path.join(self.directory, f'{self.position(client_id):06d}.rec')

  def count(self, client_id: str) -> int:
    return int(self.num_examples[self.position(client_id)])

  @property
  def total_examples(self) -> int:
    return int(self.num_examples.sum())

  def read(self, client_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels float32 [n, 28, 28], labels int32 [n]) of one client, in
    numpy (the graph reader is `store_client_data`)."""
    return decode(np.fromfile(self.path(client_id), np.uint8), self.record)


def decode(raw: np.ndarray, record: str) -> tuple[np.ndarray, np.ndarray]:
  """Records (bytes) -> (pixels float32 [n, 28, 28], labels int32 [n])."""
  if record == 'u8':
    rows = raw.reshape(-1, 785)
    return (PIXEL_TABLE[rows[:, :784]].reshape(-1, 28, 28),
            rows[:, 784].astype(np.int32))
  rows = raw.view(np.float32).reshape(-1, 785)
  return rows[:, :784].reshape(-1, 28, 28).copy(), rows[:, 784].astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ArrayStore:
  """An opened store: `split(name)` for each split it holds."""

  directory: str
  splits: dict

  def split(self, name: str) -> StoreSplit:
    if name not in self.splits:
      raise StoreError(f'{self.directory} has no split {name!r}; it has'
                       f' {", ".join(sorted(self.splits)) or "none"}')
    return self.splits[name]


def _read_manifest(directory: str) -> Optional[dict]:
  try:
    with open(os.path.join(directory, MANIFEST), encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def open_store(db_path: str, directory: Optional[str] = None
               ) -> Optional[ArrayStore]:
  """The store of `db_path`, or None if it is absent, of another format
  version, or was built from another version of the file (size or mtime)."""
  directory = directory or store_dir_for(db_path)
  manifest = _read_manifest(directory)
  if (manifest is None or manifest.get('format') != FORMAT_VERSION or
      manifest.get('source') != _source(db_path)):
    return None
  splits = {}
  for name, info in manifest['splits'].items():
    split_dir = os.path.join(directory, name)
    try:
      with np.load(os.path.join(split_dir, CLIENTS)) as z:
        ids = tuple(str(c) for c in z['client_ids'])
        counts = np.asarray(z['num_examples'], np.int64)
    except (OSError, ValueError, KeyError):
      return None
    splits[name] = StoreSplit(split_dir, name, info['record'], ids, counts)
  return ArrayStore(directory, splits)


# --- writing -----------------------------------------------------------------

def _is_u8(pixels: np.ndarray, labels: np.ndarray) -> bool:
  k = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
  return (bool(np.all(PIXEL_TABLE[k].view(np.uint32) ==
                      np.asarray(pixels, np.float32).view(np.uint32)))
          and bool(np.all((labels >= 0) & (labels <= 255))))


def _records(pixels: np.ndarray, labels: np.ndarray, record: str) -> bytes:
  n = len(labels)
  if record == 'u8':
    rows = np.empty((n, 785), np.uint8)
    rows[:, :784] = np.rint(pixels.reshape(n, 784) * 255.0).astype(np.uint8)
    rows[:, 784] = labels
  else:
    if np.any(np.abs(labels) >= 2**24):
      raise StoreError(f'a label ({int(np.max(np.abs(labels)))}) is too large'
                       ' for an f32 record (|label| < 2^24)')
    rows = np.empty((n, 785), np.float32)
    rows[:, :784] = pixels.reshape(n, 784)
    rows[:, 784] = labels
  return rows.tobytes()


ClientArrays = tuple[str, np.ndarray, np.ndarray]  # id, pixels, labels


def _write_split(directory: str, name: str,
                 clients: Iterable[ClientArrays]) -> dict:
  """Writes one split from (id, pixels, labels) per client; returns its
  manifest entry. The record is decided from all of it: `u8` unless some
  pixel is off the 8-bit grid or a label is outside 0..255."""
  clients = sorted(clients, key=lambda c: c[0])
  if len({c[0] for c in clients}) != len(clients):
    raise StoreError(f'split {name!r} lists a client twice')
  record = 'u8' if all(_is_u8(px, lb) for _, px, lb in clients) else 'f32'
  split_dir = os.path.join(directory, name)
  os.makedirs(split_dir)
  for i, (_, pixels, labels) in enumerate(clients):
    with open(os.path.join(split_dir, f'{i:06d}.rec'), 'wb') as f:
      f.write(_records(pixels, labels, record))
  np.savez(os.path.join(split_dir, CLIENTS),
           client_ids=np.array([c[0] for c in clients], dtype=str),
           num_examples=np.array([len(c[2]) for c in clients], np.int64))
  return {'record': record, 'clients': len(clients),
          'examples': int(sum(len(c[2]) for c in clients))}


def _write_store(db_path: str, directory: str,
                 splits: dict[str, Callable[[], Iterable[ClientArrays]]],
                 log=None) -> ArrayStore:
  """Writes `splits` into a temporary directory, then renames it to
  `directory` (replacing a stale store)."""
  parent = os.path.dirname(os.path.abspath(directory))
  tmp = os.path.join(parent, f'.{os.path.basename(directory)}.tmp-{uuid.uuid4().hex[:8]}')
  start = time.monotonic()
  try:
    os.makedirs(tmp)
    entries = {}
    for name, clients in splits.items():
      entries[name] = _write_split(tmp, name, clients())
      if log:
        log(f'  {name}: {entries[name]["clients"]} clients,'
            f' {entries[name]["examples"]} examples ({entries[name]["record"]}'
            f' records, {time.monotonic() - start:.0f} s)')
    with open(os.path.join(tmp, MANIFEST), 'w', encoding='utf-8') as f:
      json.dump({'format': FORMAT_VERSION, 'source': _source(db_path),
                 'splits': entries}, f, indent=1, sort_keys=True)
    old = None
    if os.path.exists(directory):
      old = f'{tmp}.old'
      os.rename(directory, old)
    os.rename(tmp, directory)
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except OSError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    raise StoreError(f'cannot write the array store {directory}:'
                     f' {e.strerror or e}') from None
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  store = open_store(db_path, directory)
  assert store is not None
  return store


def _sqlite_clients(db_path: str, split: str) -> Iterator[ClientArrays]:
  """Each client's examples of `split` as TFF's `SqlClientData` yields them.

  One scan of the table (rows in rowid order, the order of TFF's per-client
  query whether or not an index serves it), grouped by client; the protos
  are parsed in batches by `tf.io.parse_example` with TFF's EMNIST spec.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = {'pixels': tf.io.FixedLenFeature((28, 28), tf.float32),
          'label': tf.io.FixedLenFeature((), tf.int64)}
  uri = 'file:' + urllib.parse.quote(os.path.abspath(db_path)) + '?mode=ro'
  con = sqlite3.connect(uri, uri=True)
  pixels, labels = {}, {}
  try:
    cursor = con.execute(
        'SELECT client_id, serialized_example_proto FROM examples'
        ' WHERE split_name = ? ORDER BY rowid;', (split,))
    while True:
      rows = cursor.fetchmany(_PARSE_BATCH)
      if not rows:
        break
      parsed = tf.io.parse_example([r[1] for r in rows], spec)
      px = parsed['pixels'].numpy()
      lb = parsed['label'].numpy().astype(np.int32)
      owners = np.array([r[0] for r in rows], dtype=object)
      for cid in dict.fromkeys(owners):
        mask = owners == cid
        pixels.setdefault(cid, []).append(px[mask])
        labels.setdefault(cid, []).append(lb[mask])
    listed = [r[0] for r in con.execute(
        'SELECT DISTINCT client_id FROM client_metadata WHERE split_name = ?;',
        (split,))]
  finally:
    con.close()
  for cid in sorted(set(listed)):
    if cid not in pixels:
      raise StoreError(f'{db_path}: client {cid!r} of split {split!r} is in'
                       ' client_metadata but has no examples')
    yield cid, np.concatenate(pixels.pop(cid)), np.concatenate(labels.pop(cid))


def sqlite_splits(db_path: str) -> list[str]:
  uri = 'file:' + urllib.parse.quote(os.path.abspath(db_path)) + '?mode=ro'
  con = sqlite3.connect(uri, uri=True)
  try:
    return sorted(r[0] for r in con.execute(
        'SELECT DISTINCT split_name FROM client_metadata;'))
  finally:
    con.close()


def build_from_sqlite(db_path: str, directory: Optional[str] = None,
                      log=None) -> ArrayStore:
  """The store of every split of an EMNIST SQLite cache (read once)."""
  directory = directory or store_dir_for(db_path)
  return _write_store(
      db_path, directory,
      {s: (lambda s=s: _sqlite_clients(db_path, s)) for s in sqlite_splits(db_path)},
      log)


def build_from_arrays(arrays, db_path: str, directory: Optional[str] = None,
                      log=None) -> ArrayStore:
  """The store of `arrays` (`femnist_arrays.FemnistArrays`), for the SQLite
  file `build_emnist_cache` wrote from the same arrays at `db_path`: the
  four splits `all_*` and `digits_only_*` (labels 0-9), in that file's order."""
  def clients(split: str, digits_only: bool):
    pixels = getattr(arrays, f'{split}_pixels')
    labels = getattr(arrays, f'{split}_labels')
    for cid, idx in arrays.client_indices(split).items():
      if digits_only:
        idx = idx[labels[idx] < 10]
        if not idx.size:
          continue
      yield cid, pixels[idx], labels[idx].astype(np.int32)

  splits = {f'{prefix}_{split}': (lambda s=split, d=digits: clients(s, d))
            for split in ('train', 'test')
            for prefix, digits in (('all', False), ('digits_only', True))}
  return _write_store(db_path, directory or store_dir_for(db_path), splits, log)


def ensure_store(db_path: str, log=print) -> Optional[ArrayStore]:
  """The up-to-date store of `db_path`, built (once, logged) if absent or
  stale; None, with one logged line, when it cannot be written (a read-only
  directory): the caller then reads the SQLite file."""
  store = open_store(db_path)
  if store is not None:
    return store
  directory = store_dir_for(db_path)
  log(f'Building the array store {directory} from {db_path} (once per cache;'
      ' runs read their clients from it)')
  try:
    return build_from_sqlite(db_path, directory, log=log)
  except StoreError as e:
    log(f'warning: {e}; reading {db_path} instead (slower)')
    return None
