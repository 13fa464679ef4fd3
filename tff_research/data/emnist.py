"""Federated EMNIST (Caldas et al. 2018; Cohen et al. 2017) through TFF's loader.

``load_emnist`` calls ``tff.simulation.datasets.emnist.load_data`` unchanged,
so the data, client ids and element format are exactly TFF's. What it adds is
an offline-safe failure mode:

* TFF downloads ``emnist_all.sqlite.lzma`` with ``urllib.request.urlopen``
  *without a timeout* when ``cache_dir/emnist_all.sqlite`` is missing. Where
  DNS fails (as on these machines) that fails in milliseconds, but behind a
  firewall that silently drops packets it would block on the TCP connect
  indefinitely. We therefore first probe ``storage.googleapis.com:443`` with
  a short timeout (DNS lookup included, run in a daemon thread because
  ``getaddrinfo`` ignores socket timeouts) and only call TFF's downloader when
  the host is reachable.
* A failed download is reported as one-line :class:`DataNotFoundError` naming
  the expected file and the command that builds it offline
  (:mod:`tff_research.cli.build_emnist_cache`). There is no silent fallback
  to other data.
* TFF writes the decompressed download straight to ``emnist_all.sqlite`` and
  afterwards trusts any file of that name, so a download that dies midway
  would poison the cache; we delete such a partial file.
* Before TFF reads an existing file, :func:`check_emnist_sqlite` checks it
  read-only, in milliseconds whatever its size: SQLite header (an empty,
  truncated or non-SQLite file), the two tables and their columns, at least
  one client and one example in each split used, and that an example parses
  as ``pixels`` (784 floats) and ``label`` (int64). A bad file is reported as
  one-line :class:`InvalidCacheError` naming it and the problem; it is never
  modified or deleted (only a file our own download just wrote is removed).

Default cache directory: TFF's ``emnist.load_data`` docstring says "Keras'
default cache directory", but the code path (``download.get_compressed_file``)
actually uses ``~/.tff``; we use (and name in errors) ``~/.tff``.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import urllib.error
import urllib.parse

_DB_FILENAME = 'emnist_all.sqlite'
_HOST = 'storage.googleapis.com'
_PROBE_TIMEOUT_S = 5.0


class DataNotFoundError(ValueError):
  """A dataset's files are absent and cannot be downloaded."""


class InvalidCacheError(DataNotFoundError):
  """``emnist_all.sqlite`` exists but is not a valid EMNIST cache."""


_SQLITE_MAGIC = b'SQLite format 3\x00'
_TABLES = {
    'examples': ('split_name', 'client_id', 'serialized_example_proto'),
    'client_metadata': ('client_id', 'split_name', 'num_examples'),
}


def _rebuild(db_path: str) -> str:
  return ('rebuild it with uv run python -m tff_research.cli.build_emnist_cache '
          f'--input=PATH --cache_dir={os.path.dirname(db_path)} --overwrite')


def cache_path(data_dir: str | None) -> str:
  """``DATA_DIR/emnist_all.sqlite`` (``~/.tff`` when ``data_dir`` is None)."""
  cache_dir = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else default_cache_dir()
  return os.path.join(cache_dir, _DB_FILENAME)


def _describe(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__


def _check_example(blob, db_path: str, split: str) -> None:
  # pylint: disable=g-import-not-at-top
  from tensorflow.core.example import example_pb2
  from google.protobuf import message
  # pylint: enable=g-import-not-at-top
  problem = None
  if not isinstance(blob, bytes):
    problem = f'serialized_example_proto is {type(blob).__name__}, not bytes'
  else:
    try:
      features = example_pb2.Example.FromString(blob).features.feature
    except message.DecodeError as e:
      problem = f'not a tf.train.Example ({_describe(e)})'
    else:
      if 'pixels' not in features or len(features['pixels'].float_list.value) != 784:
        problem = 'no "pixels" feature of 784 floats'
      elif 'label' not in features or len(features['label'].int64_list.value) != 1:
        problem = 'no "label" feature of one int64'
  if problem:
    raise InvalidCacheError(
        f'{db_path} is not a valid EMNIST sqlite cache (an example of split '
        f'{split!r}: {problem}); {_rebuild(db_path)}')


def check_emnist_sqlite(db_path: str, only_digits: bool | None = None) -> None:
  """Checks, read-only, that ``db_path`` is an EMNIST cache TFF can read.

  Args:
    db_path: the ``emnist_all.sqlite`` file.
    only_digits: check the ``digits_only_*`` splits (True), the ``all_*``
      splits (False) or all four (None).

  Raises:
    InvalidCacheError (a ValueError): one line naming the file and the
      problem (empty, not SQLite, truncated, missing table or column, a split
      without clients or examples, an example that is not EMNIST's proto).
  """

  def bad(problem: str) -> InvalidCacheError:
    return InvalidCacheError(
        f'{db_path} is not a valid EMNIST sqlite cache ({problem}); {_rebuild(db_path)}')

  try:
    size = os.path.getsize(db_path)
    with open(db_path, 'rb') as f:
      header = f.read(100)
  except OSError as e:
    raise bad(f'cannot read it: {e.strerror}') from None
  if size == 0:
    raise bad('the file is empty (0 bytes)')
  if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
    raise bad('not an SQLite database')
  page_size = int.from_bytes(header[16:18], 'big')
  page_size = 65536 if page_size == 1 else page_size
  pages = int.from_bytes(header[28:32], 'big')
  # The header's page count is valid when its "version-valid-for" number
  # equals the change counter (every SQLite >= 3.7.0 writes both).
  if header[24:28] == header[92:96] and pages and size < pages * page_size:
    raise bad(f'truncated: {size} bytes, its header says {pages * page_size}')
  if only_digits is None:
    splits = ('all_train', 'all_test', 'digits_only_train', 'digits_only_test')
  else:
    prefix = 'digits_only' if only_digits else 'all'
    splits = (f'{prefix}_train', f'{prefix}_test')
  uri = 'file:' + urllib.parse.quote(os.path.abspath(db_path)) + '?mode=ro'
  try:
    con = sqlite3.connect(uri, uri=True)
  except sqlite3.Error as e:
    raise bad(_describe(e)) from None
  try:
    for table, columns in _TABLES.items():
      info = con.execute(f'PRAGMA table_info({table});').fetchall()
      if not info:
        raise bad(f'no table {table!r}')
      have = {row[1] for row in info}
      missing = [c for c in columns if c not in have]
      if missing:
        raise bad(f'table {table!r} has no column {missing[0]!r}; expected '
                  f'columns {", ".join(columns)}')
    for split in splits:
      (clients,) = con.execute(
          'SELECT COUNT(*) FROM client_metadata WHERE split_name = ?;', (split,)).fetchone()
      if not clients:
        raise bad(f'no clients of split {split!r} in table client_metadata')
      # By a listed client: `WHERE split_name = ? LIMIT 1` alone scans the
      # table up to the split's first row (gigabytes for a test split
      # written after every training row).
      (client,) = con.execute(
          'SELECT client_id FROM client_metadata WHERE split_name = ? LIMIT 1;',
          (split,)).fetchone()
      row = con.execute(
          'SELECT serialized_example_proto FROM examples WHERE client_id = ?'
          ' AND split_name = ? LIMIT 1;', (client, split)).fetchone()
      if row is None:
        raise bad(f'no examples of split {split!r} in table examples')
      _check_example(row[0], db_path, split)
  except sqlite3.Error as e:
    raise bad(_describe(e)) from None
  finally:
    con.close()


def default_cache_dir() -> str:
  """TFF's default download cache (``download.get_compressed_file``)."""
  return os.path.join(os.path.expanduser('~'), '.tff')


def _network_available(host: str = _HOST, port: int = 443,
                       timeout: float = _PROBE_TIMEOUT_S) -> bool:
  """Whether a TCP connection to ``host:port`` opens within ``timeout`` s."""
  result = []

  def probe():
    try:
      with socket.create_connection((host, port), timeout=timeout):
        result.append(True)
    except OSError:
      result.append(False)

  # Daemon thread: a hung DNS lookup cannot keep the process alive or block us.
  t = threading.Thread(target=probe, daemon=True)
  t.start()
  t.join(timeout)
  return bool(result and result[0])


def _not_found(db_path: str, cache_dir: str, why: str) -> DataNotFoundError:
  return DataNotFoundError(
      f'emnist data not found: expected {db_path} ({why}). Build it with: '
      'uv run python -m tff_research.cli.build_emnist_cache --input=PATH '
      f'--cache_dir={cache_dir}')


def load_emnist(only_digits: bool, data_dir: str | None, *,
                reader: str = 'store', log=print):
  """Loads federated EMNIST: TFF's cache, read through its array store.

  The file is TFF's (``tff.simulation.datasets.emnist.load_data`` reads and
  downloads it). With ``reader='store'`` the clients are read from the
  cache's client array store (`array_store`, built once beside the file if
  absent or stale; logged): the same examples in the same order, read by the
  TFF worker without parsing protocol buffers. ``reader='sqlite'`` returns
  TFF's own ``SqlClientData`` (the reference the store is tested against;
  also the fallback when the store cannot be written).

  Args:
    only_digits: the 10-class digits-only splits (else all 62 classes).
    data_dir: directory holding (or to receive) ``emnist_all.sqlite``;
      ``None`` = TFF's default ``~/.tff``.
    reader: ``'store'`` or ``'sqlite'``.
    log: where a store build is reported.

  Returns:
    ``(train, test)`` ``tff.simulation.datasets.ClientData`` with elements
    ``OrderedDict(label=int32 [], pixels=float32 [28, 28])``.

  Raises:
    DataNotFoundError (a ValueError): the file is missing and cannot be
      downloaded; InvalidCacheError (a DataNotFoundError) if it is not a
      valid EMNIST cache (see `check_emnist_sqlite`).
  """
  if reader not in ('store', 'sqlite'):
    raise ValueError(f"reader={reader!r} is not valid: 'store' or 'sqlite'")
  db_path = cache_path(data_dir)
  cache_dir = os.path.dirname(db_path)
  existed = os.path.exists(db_path)
  if existed:
    if reader == 'store':
      # A store built from this very file (its size and mtime) stands for
      # it: start-up reads the store's index, not the SQLite file.
      fresh = _store_splits(db_path, only_digits, log, build=False)
      if fresh is not None:
        return fresh
    check_emnist_sqlite(db_path, only_digits)
    if reader == 'store':
      store = _store_splits(db_path, only_digits, log)
      if store is not None:
        return store
  elif not _network_available():
    raise _not_found(db_path, cache_dir, 'no network to download it')

  train, test = _load_with_tff(db_path, only_digits, existed)
  if reader == 'store':
    store = _store_splits(db_path, only_digits, log)
    if store is not None:
      return store
  return train, test


def _load_with_tff(db_path: str, only_digits: bool, existed: bool):
  """TFF's own loader on `db_path`'s directory (it downloads the file when
  missing); a download of ours that fails or is invalid is removed, never
  left to be trusted later. Returns TFF's (train, test)."""
  cache_dir = os.path.dirname(db_path)
  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff
  # The error TFF's SqlClientData raises for a file of another layout; TFF
  # exports the class but not its error.
  from tensorflow_federated.python.simulation.datasets import sql_client_data
  # pylint: enable=g-import-not-at-top

  def remove_download():
    if not existed and os.path.exists(db_path):
      os.remove(db_path)

  try:
    train, test = tff.simulation.datasets.emnist.load_data(
        only_digits=only_digits, cache_dir=cache_dir)
  except (urllib.error.URLError, OSError) as e:
    remove_download()
    raise _not_found(db_path, cache_dir, f'download failed: {e}') from None
  except (sqlite3.DatabaseError, sql_client_data.DatabaseFormatError) as e:
    remove_download()
    raise InvalidCacheError(
        f'{db_path} is not a valid EMNIST sqlite cache ({_describe(e)}); '
        f'{_rebuild(db_path)}') from None
  if not existed:
    try:
      check_emnist_sqlite(db_path, only_digits)
    except InvalidCacheError:
      os.remove(db_path)
      raise
  if not train.client_ids or not test.client_ids:
    split = 'digits_only' if only_digits else 'all'
    raise DataNotFoundError(
        f'{db_path} has no clients in the {split}_train/{split}_test splits; '
        'rebuild it with uv run python -m tff_research.cli.build_emnist_cache')
  return train, test


def _store_splits(db_path: str, only_digits: bool, log, build: bool = True):
  """(train, test) `StoreClientData` of the file's array store, or None if
  there is no up-to-date store and `build` is False or it cannot be built."""
  # pylint: disable=g-import-not-at-top
  from tff_research.data import array_store
  from tff_research.data import store_client_data
  # pylint: enable=g-import-not-at-top
  store = (array_store.ensure_store(db_path, log) if build
           else array_store.open_store(db_path))
  if store is None:
    return None
  prefix = 'digits_only' if only_digits else 'all'
  try:
    splits = [store.split(f'{prefix}_{s}') for s in ('train', 'test')]
  except array_store.StoreError as e:
    raise InvalidCacheError(f'{e}; {_rebuild(db_path)}') from None
  empty = [s.name for s in splits if not s.client_ids]
  if empty:
    raise DataNotFoundError(
        f'{db_path} has no clients in split {empty[0]}; rebuild it with uv run'
        ' python -m tff_research.cli.build_emnist_cache')
  return tuple(store_client_data.StoreClientData.from_split(s) for s in splits)
