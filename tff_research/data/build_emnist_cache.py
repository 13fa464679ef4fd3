r"""Builds ``emnist_all.sqlite`` that TFF's federated-EMNIST loader reads as is.

TFF's ``tff.simulation.datasets.emnist.load_data(only_digits, cache_dir)``
downloads ``emnist_all.sqlite.lzma`` into ``cache_dir`` unless
``cache_dir/emnist_all.sqlite`` already exists, then reads it with
``SqlClientData`` (``sql_client_data.py``). Offline machines can therefore use
TFF's unchanged loader on FEMNIST from another source by writing that file
here. The layout reproduces what ``SqlClientData`` and
``sql_client_data_utils.save_to_sql_client_data`` use:

* table ``examples(split_name TEXT, client_id TEXT,
  serialized_example_proto BLOB)``, one row per example;
* table ``client_metadata(client_id TEXT, split_name TEXT, num_examples
  INTEGER)``, one row per (client, split); ``SqlClientData.client_ids`` are
  the distinct ``client_id`` of a split in this table;
* splits ``all_train``, ``all_test`` (62 classes) and ``digits_only_train``,
  ``digits_only_test`` (labels 0-9 only; a writer without digits in a split is
  omitted from that split, and likewise a writer without any example in a
  split);
* each example a ``tf.train.Example`` with ``pixels`` (float_list, 784 values,
  row-major 28x28, 1.0 = background) and ``label`` (int64_list, 1 value),
  which ``emnist._add_proto_parsing`` parses into
  ``OrderedDict(label=int32 [], pixels=float32 [28, 28])``.

We additionally create an index on ``examples(client_id, split_name)``:
``SqlClientData`` issues one ``WHERE client_id = .. AND split_name = ..``
query per client dataset, which is otherwise a full-table scan. The loader
only requires its tables to be present, so the extra index is invisible to it.

The file is written to a temporary file in ``cache_dir`` and moved into place
with ``os.replace`` (atomic on POSIX), so an interrupted build never leaves a
half-written cache that TFF would then trust. The input is read and checked
completely first (:mod:`~tff_research.data.femnist_arrays`), so a bad input
changes nothing on disk; a failed write (disk full, unwritable directory)
removes its temporary file and leaves an existing cache untouched. Either is
a ValueError with one line (the command line prints it as ``error: ...``
and exits with status 1).

Beside the file it writes the client array store (`array_store`,
``emnist_all.arrays/``), from which runs read their clients; a cache without
one (e.g. TFF's download) gets it built on first use.

``--tile=K`` writes K copies of every writer under new ids
(`femnist_arrays.tile`): 24 copies of the 201 shared writers (4,824 writers,
672k train / 77k test examples) reach federated EMNIST-62's size, for the
scale benchmark. Such a cache is ~6 GB: never commit it.

Its command line is `tff_research.cli.build_emnist_cache`::

  uv run python -m tff_research.cli.build_emnist_cache \
      --input=../shared/data/femnist/femnist_dev.npz --cache_dir=/tmp/emnist \
      [--tile=K] [--overwrite]
"""

from __future__ import annotations

import os
import sqlite3
import tempfile

import numpy as np

from tff_research.data import array_store
from tff_research.data import femnist_arrays as femnist_arrays_lib

DB_FILENAME = 'emnist_all.sqlite'
SPLITS = ('all_train', 'all_test', 'digits_only_train', 'digits_only_test')


class CacheExistsError(ValueError):
  """The target cache file exists and overwriting was not requested."""


class CacheWriteError(ValueError):
  """The cache could not be written (one line naming the path)."""


def _example_bytes(pixels: np.ndarray, label: int) -> bytes:
  # Imported lazily: TensorFlow is only needed to serialize the protos.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.train.Example(features=tf.train.Features(feature={
      'pixels': tf.train.Feature(float_list=tf.train.FloatList(value=pixels.reshape(-1).tolist())),
      'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
  })).SerializeToString()


def _write_tables(db_path: str, arrays: femnist_arrays_lib.FemnistArrays
                  ) -> None:
  """Writes TFF's `examples` and `client_metadata` tables (and the index on
  examples) into a new SQLite file."""
  con = sqlite3.connect(db_path)
  try:
    con.execute('PRAGMA journal_mode = OFF')  # temp file: no crash recovery needed
    con.execute('PRAGMA synchronous = OFF')
    con.execute("""CREATE TABLE examples (
        split_name TEXT NOT NULL,
        client_id TEXT NOT NULL,
        serialized_example_proto BLOB NOT NULL);""")
    con.execute("""CREATE TABLE client_metadata (
        client_id TEXT NOT NULL,
        split_name TEXT NOT NULL,
        num_examples INTEGER NOT NULL);""")
    for split in ('train', 'test'):
      pixels = getattr(arrays, f'{split}_pixels')
      labels = getattr(arrays, f'{split}_labels')
      for cid, idx in arrays.client_indices(split).items():
        protos = [_example_bytes(pixels[j], labels[j]) for j in idx]
        digit = labels[idx] < 10
        rows = [(f'all_{split}', cid, p) for p in protos]
        rows += [(f'digits_only_{split}', cid, p) for p, d in zip(protos, digit) if d]
        con.executemany(
            'INSERT INTO examples (split_name, client_id, serialized_example_proto) '
            'VALUES (?, ?, ?);', rows)
        meta = [(cid, f'all_{split}', len(idx))]
        if digit.any():
          meta.append((cid, f'digits_only_{split}', int(digit.sum())))
        con.executemany(
            'INSERT INTO client_metadata (client_id, split_name, num_examples) '
            'VALUES (?, ?, ?);', meta)
    con.execute('CREATE INDEX examples_client_split ON examples (client_id, split_name);')
    con.commit()
  finally:
    con.close()


def write_emnist_sqlite(
    arrays: femnist_arrays_lib.FemnistArrays,
    cache_dir: str,
    *,
    overwrite: bool = False,
) -> str:
  """Writes ``cache_dir/emnist_all.sqlite`` from ``arrays``; returns its path.

  Args:
    arrays: FEMNIST in EMNIST convention (float32 pixels, 1.0 = background).
    cache_dir: directory to write into (created if needed).
    overwrite: replace an existing file; otherwise refuse.

  Returns:
    The path of the written database.

  Raises:
    CacheExistsError (a ValueError): the file exists and ``overwrite`` is False.
    CacheWriteError (a ValueError): the directory or file cannot be written;
      nothing is left behind and an existing cache is unchanged.
  """
  cache_dir = os.fspath(cache_dir)
  path = os.path.join(cache_dir, DB_FILENAME)
  if os.path.exists(path) and not overwrite:
    raise CacheExistsError(
        f'{path} already exists; pass overwrite=True (--overwrite) to replace it')
  if os.path.isdir(path):
    raise CacheWriteError(f'cannot write {path}: it is a directory')
  if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
    raise CacheWriteError(f'cannot write {path}: {cache_dir} is not a directory')
  try:
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix='.emnist_all.', suffix='.sqlite.tmp', dir=cache_dir)
  except OSError as e:
    raise CacheWriteError(f'cannot write {path}: {e.strerror or e}') from None
  os.close(fd)
  try:
    _write_tables(tmp_path, arrays)
    # mkstemp creates 0600; give the cache ordinary umask-governed permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    os.replace(tmp_path, path)
  except BaseException as e:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    if isinstance(e, (OSError, sqlite3.Error)):
      raise CacheWriteError(
          f'cannot write {path}: {getattr(e, "strerror", None) or e}') from None
    raise
  return path


def split_summary(db_path: str) -> dict[str, tuple[int, int]]:
  """``{split_name: (num_clients, num_examples)}`` read from ``client_metadata``."""
  con = sqlite3.connect(f'file:{db_path}?mode=ro', uri=True)
  try:
    rows = con.execute(
        'SELECT split_name, COUNT(DISTINCT client_id), SUM(num_examples) '
        'FROM client_metadata GROUP BY split_name;').fetchall()
  finally:
    con.close()
  return {s: (int(c), int(n)) for s, c, n in rows}


def build_cache(input_path: str, cache_dir: str, *, tile: int = 1,
                overwrite: bool = False) -> tuple[str, str]:
  """Reads FEMNIST from `input_path` (an .npz or a LEAF directory), tiles
  it `tile` times and writes the SQLite cache and its array store into
  `cache_dir`; returns (the cache's path, the store's directory). Raises
  ValueError (one line)."""
  arrays = femnist_arrays_lib.tile(
      femnist_arrays_lib.load_femnist_arrays(input_path), tile)
  path = write_emnist_sqlite(arrays, cache_dir, overwrite=overwrite)
  store = array_store.build_from_arrays(arrays, path)
  return path, store.directory
