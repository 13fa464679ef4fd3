"""FEMNIST as plain numpy arrays, from a compact ``.npz`` or LEAF JSON files.

FEMNIST is NIST SD-19 handwriting grouped by writer, as preprocessed by LEAF
(Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings"); TFF's
federated EMNIST is derived from the same preprocessing. Two on-disk sources
are supported:

* ``.npz`` with ``client_ids`` (str writer ids), ``{train,test}_pixels``
  (uint8 ``N x 28 x 28``, 255 = white background), ``{train,test}_labels``
  (int, 0-9 digits, 10-35 upper case, 36-61 lower case) and
  ``{train,test}_client`` (int index into ``client_ids``);
* a LEAF directory with ``train/`` and ``test/`` subdirectories of LEAF JSON
  files: ``{"users": [...], "num_samples": [...], "user_data": {user: {"x":
  [[784 floats in 0..1]], "y": [int]}}}``. LEAF's ``x`` is already
  1.0 = background (it is PIL's grey level / 255), i.e. the EMNIST convention.

Every problem with a source is a :class:`FemnistFormatError` (a ``ValueError``)
with one line naming the file and what is wrong: a missing, empty, truncated
or corrupted file, a missing array or JSON key, a wrong dtype or shape,
lengths that do not match, labels outside 0..61, client indices outside
``client_ids``, non-finite or out-of-range pixels, an empty split. Nothing is
ever written.

Both are returned in TFF's EMNIST convention: float32 pixels in [0, 1] with
1.0 = background. LEAF floats that lie on the 8-bit grid (within 1e-3 of
``k/255``, as LEAF's always do) are recomputed as ``float32(k) / 255`` so that
both sources give bit-identical pixels for the same writer.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import numpy as np

NUM_CLASSES = 62
_NPZ_KEYS = ('client_ids', 'train_pixels', 'train_labels', 'train_client',
             'test_pixels', 'test_labels', 'test_client')


class FemnistFormatError(ValueError):
  """The FEMNIST source is missing or does not have the expected layout."""


@dataclasses.dataclass
class FemnistArrays:
  """Writer-partitioned FEMNIST, EMNIST convention (float32, 1.0 = background).

  ``train_client[j]`` / ``test_client[j]`` index into ``client_ids``.
  """
  client_ids: list[str]
  train_pixels: np.ndarray  # float32 [N, 28, 28]
  train_labels: np.ndarray  # int32 [N]
  train_client: np.ndarray  # int32 [N]
  test_pixels: np.ndarray
  test_labels: np.ndarray
  test_client: np.ndarray

  def client_indices(self, split: str) -> dict[str, np.ndarray]:
    """Example indices of each client in ``split`` ('train' or 'test').

    Clients without examples in the split are absent from the result.
    """
    if split not in ('train', 'test'):
      raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    owner = getattr(self, f'{split}_client')
    order = np.argsort(owner, kind='stable')  # stable: keeps file order
    bounds = np.searchsorted(owner[order], np.arange(len(self.client_ids) + 1))
    return {cid: order[bounds[i]:bounds[i + 1]]
            for i, cid in enumerate(self.client_ids) if bounds[i + 1] > bounds[i]}


def _u8_to_float(pixels_u8: np.ndarray) -> np.ndarray:
  # float32 division is correctly rounded, so float32(k)/255 is *the* float32
  # nearest to k/255: the same value whichever source it came from.
  return pixels_u8.astype(np.float32) / np.float32(255.0)


def _describe(e: BaseException) -> str:
  """`Type: first line of the message` of an exception, for one-line errors."""
  lines = str(e).strip().splitlines()
  text = f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__
  return text if len(text) <= 200 else text[:197] + '...'


def _validate(arrays: FemnistArrays, source: str) -> FemnistArrays:
  n_clients = len(arrays.client_ids)
  if n_clients == 0:
    raise FemnistFormatError(f'{source}: no clients (client_ids is empty)')
  if len(set(arrays.client_ids)) != n_clients:
    raise FemnistFormatError(f'{source}: client_ids are not unique')
  for split in ('train', 'test'):
    px = getattr(arrays, f'{split}_pixels')
    lb = getattr(arrays, f'{split}_labels')
    cl = getattr(arrays, f'{split}_client')
    if px.ndim != 3 or px.shape[1:] != (28, 28):
      raise FemnistFormatError(
          f'{source}: {split}_pixels has shape {px.shape}; expected (N, 28, 28)')
    if not (lb.shape == cl.shape == (px.shape[0],)):
      raise FemnistFormatError(
          f'{source}: {split}_labels {lb.shape} / {split}_client {cl.shape} do not '
          f'match {split}_pixels with N={px.shape[0]}')
    if lb.size and (lb.min() < 0 or lb.max() >= NUM_CLASSES):
      raise FemnistFormatError(
          f'{source}: {split}_labels must be in 0..{NUM_CLASSES - 1}, got '
          f'range {lb.min()}..{lb.max()}')
    if cl.size and (cl.min() < 0 or cl.max() >= n_clients):
      raise FemnistFormatError(
          f'{source}: {split}_client must index client_ids (0..{n_clients - 1}), '
          f'got range {cl.min()}..{cl.max()}')
    if px.shape[0] == 0:
      raise FemnistFormatError(f'{source}: the {split} split has no examples')
    if px.dtype.kind == 'f' and not (
        np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0):
      raise FemnistFormatError(
          f'{source}: {split}_pixels must be finite and in [0, 1]')
  return arrays


def _load_npz(path: str) -> FemnistArrays:
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise FemnistFormatError(f'{path}: cannot read it ({e.strerror})') from None
  if size == 0:
    raise FemnistFormatError(f'{path}: the file is empty (0 bytes); expected a .npz archive')
  try:
    data = np.load(path, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    # BadZipFile (truncated), EOFError, OSError, ValueError, zlib.error, ...
    raise FemnistFormatError(
        f'{path}: not a readable .npz file, it may be truncated or corrupted'
        f' ({_describe(e)})') from None
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise FemnistFormatError(
        f'{path}: holds a single array, not a .npz archive with keys {list(_NPZ_KEYS)}')
  with data:
    missing = [k for k in _NPZ_KEYS if k not in data.files]
    if missing:
      raise FemnistFormatError(
          f'{path}: npz is missing key {missing[0]!r}; expected keys {list(_NPZ_KEYS)}')
    arrays = {}
    for k in _NPZ_KEYS:
      try:
        arrays[k] = data[k]
      except Exception as e:  # pylint: disable=broad-except
        raise FemnistFormatError(
            f'{path}: array {k!r} is unreadable, the file may be truncated or'
            f' corrupted ({_describe(e)})') from None
  ids = arrays['client_ids']
  if ids.ndim != 1 or ids.dtype.kind not in 'US':
    raise FemnistFormatError(
        f'{path}: client_ids has dtype {ids.dtype} and shape {ids.shape}; expected'
        ' a 1-D array of str')
  try:
    client_ids = [c.decode('utf-8') if isinstance(c, bytes) else str(c) for c in ids.tolist()]
  except UnicodeDecodeError:
    raise FemnistFormatError(f'{path}: client_ids are not UTF-8 text') from None
  for split in ('train', 'test'):
    px = arrays[f'{split}_pixels']
    if px.dtype != np.uint8:
      raise FemnistFormatError(
          f'{path}: {split}_pixels has dtype {px.dtype}; expected uint8 (255 = background)')
    for k in (f'{split}_labels', f'{split}_client'):
      if arrays[k].dtype.kind not in 'iu':
        raise FemnistFormatError(
            f'{path}: {k} has dtype {arrays[k].dtype}; expected an integer dtype')
  for k in _NPZ_KEYS[1:]:
    if arrays[k].ndim == 0:
      raise FemnistFormatError(f'{path}: {k} is a scalar; expected an array')
  # Ranges are checked on int64 copies, so a huge value cannot wrap into range.
  arrays = _validate(FemnistArrays(
      client_ids=client_ids,
      train_pixels=_u8_to_float(arrays['train_pixels']),
      train_labels=arrays['train_labels'].astype(np.int64),
      train_client=arrays['train_client'].astype(np.int64),
      test_pixels=_u8_to_float(arrays['test_pixels']),
      test_labels=arrays['test_labels'].astype(np.int64),
      test_client=arrays['test_client'].astype(np.int64),
  ), path)
  return _to_int32(arrays)


def _to_int32(arrays: FemnistArrays) -> FemnistArrays:
  """Labels and client indices as int32 (after `_validate` checked ranges)."""
  for split in ('train', 'test'):
    for field in (f'{split}_labels', f'{split}_client'):
      setattr(arrays, field, getattr(arrays, field).astype(np.int32))
  return arrays


def _read_leaf_json(f: str):
  """The parsed JSON of one LEAF file (one-line errors)."""
  try:
    if os.path.getsize(f) == 0:
      raise FemnistFormatError(f'{f}: the file is empty (0 bytes); expected LEAF JSON')
    with open(f, encoding='utf-8') as fh:
      return json.load(fh)
  except json.JSONDecodeError as e:
    raise FemnistFormatError(f'{f}: malformed JSON ({e})') from None
  except UnicodeDecodeError as e:
    raise FemnistFormatError(f'{f}: not UTF-8 text, so not JSON ({e.reason} at byte {e.start})') from None
  except RecursionError:
    raise FemnistFormatError(f'{f}: malformed JSON (nested too deeply)') from None
  except OSError as e:
    raise FemnistFormatError(f'{f}: cannot read it ({e.strerror})') from None


def _leaf_array(f: str, user: str, name: str, value, dtype) -> np.ndarray:
  if not isinstance(value, list):
    raise FemnistFormatError(
        f'{f}: user {user!r} {name} is a {type(value).__name__}; expected a list')
  try:
    return np.asarray(value, dtype)
  except (TypeError, ValueError, OverflowError) as e:
    raise FemnistFormatError(
        f'{f}: user {user!r} has non-numeric or ragged {name} ({_describe(e)})') from None


def _read_leaf_split(split_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  files = sorted(glob.glob(os.path.join(split_dir, '*.json')))
  if not files:
    raise FemnistFormatError(f'{split_dir}: no LEAF *.json files found')
  users: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  for f in files:
    blob = _read_leaf_json(f)
    if not isinstance(blob, dict) or 'user_data' not in blob or 'users' not in blob:
      raise FemnistFormatError(
          f'{f}: not a LEAF file; expected keys "users", "num_samples", "user_data"')
    num_samples = blob.get('num_samples')
    if not isinstance(blob['users'], list) or not all(isinstance(u, str) for u in blob['users']):
      raise FemnistFormatError(f'{f}: "users" must be a list of str')
    if not isinstance(blob['user_data'], dict):
      raise FemnistFormatError(f'{f}: "user_data" must be an object keyed by user')
    if num_samples is not None and not (
        isinstance(num_samples, list) and len(num_samples) == len(blob['users'])):
      raise FemnistFormatError(
          f'{f}: "num_samples" must be a list with one count per user'
          f' ({len(blob["users"])} users)')
    for j, user in enumerate(blob['users']):
      record = blob['user_data'].get(user)
      if not isinstance(record, dict) or 'x' not in record or 'y' not in record:
        raise FemnistFormatError(f'{f}: user_data[{user!r}] lacks "x"/"y"')
      x = _leaf_array(f, user, 'x', record['x'], np.float64)
      y = _leaf_array(f, user, 'y', record['y'], np.float64)
      if x.size == 0 and y.size == 0:
        x = x.reshape(0, 784)
      if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
        raise FemnistFormatError(
            f'{f}: user {user!r} has x {x.shape} / y {y.shape}; expected '
            '(n, 784) / (n,)')
      if num_samples is not None and num_samples[j] != y.size:
        raise FemnistFormatError(
            f'{f}: user {user!r} num_samples={num_samples[j]} but has {y.size} examples')
      if not np.isfinite(x).all():
        raise FemnistFormatError(f'{f}: user {user!r} x has NaN or infinite values')
      if x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise FemnistFormatError(
            f'{f}: user {user!r} x outside [0, 1] ({x.min()}..{x.max()})')
      if not (np.isfinite(y).all() and (y == np.rint(y)).all()):
        raise FemnistFormatError(f'{f}: user {user!r} y has non-integer labels')
      if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise FemnistFormatError(
            f'{f}: user {user!r} y must be in 0..{NUM_CLASSES - 1}, got range '
            f'{int(y.min())}..{int(y.max())}')
      if user in users:
        raise FemnistFormatError(f'{f}: user {user!r} appears in more than one file')
      k = np.rint(x * 255.0)
      if np.abs(x * 255.0 - k).max(initial=0.0) < 1e-3:
        # LEAF writes PIL grey levels / 255: snap to the exact k/255 grid.
        px = _u8_to_float(k.astype(np.uint8))
      else:  # not on the 8-bit grid (other preprocessing): keep as is
        px = x.astype(np.float32)
      users[user] = (px.reshape(-1, 28, 28), y.astype(np.int64))
  return users


def _load_leaf(path: str) -> FemnistArrays:
  for split in ('train', 'test'):
    if not os.path.isdir(os.path.join(path, split)):
      raise FemnistFormatError(
          f'{path}: LEAF directory must contain {split}/ with LEAF *.json files')
  train = _read_leaf_split(os.path.join(path, 'train'))
  test = _read_leaf_split(os.path.join(path, 'test'))
  client_ids = sorted(set(train) | set(test))
  index = {c: i for i, c in enumerate(client_ids)}

  def stack(users):
    order = [u for u in client_ids if u in users]
    if not order:
      return (np.zeros((0, 28, 28), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32))
    px = np.concatenate([users[u][0] for u in order])
    lb = np.concatenate([users[u][1] for u in order]).astype(np.int32)
    cl = np.concatenate([np.full(users[u][1].size, index[u], np.int32) for u in order])
    return px, lb, cl

  tr, te = stack(train), stack(test)
  return _validate(FemnistArrays(client_ids, *tr, *te), path)


def tile(arrays: FemnistArrays, copies: int) -> FemnistArrays:
  """`copies` copies of every writer, each under a new id `ID_tNN` (NN =
  0..copies-1): a federation `copies` times larger with the same writers'
  statistics, e.g. the 201 shared FEMNIST writers x 24 = 4,824 writers,
  672k train / 77k test examples, at least federated EMNIST-62's size
  (3,400 writers, 671,585 / 77,483). Copy k's examples follow copy k - 1's."""
  if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
    raise ValueError(f'tile={copies!r} is not valid: must be an int >= 1')
  if copies == 1:
    return arrays
  n = len(arrays.client_ids)
  width = len(str(copies - 1))
  ids = [f'{cid}_t{k:0{width}d}' for k in range(copies) for cid in arrays.client_ids]

  def split(name):
    pixels = getattr(arrays, f'{name}_pixels')
    return (np.concatenate([pixels] * copies),
            np.concatenate([getattr(arrays, f'{name}_labels')] * copies),
            np.concatenate([getattr(arrays, f'{name}_client') + k * n
                            for k in range(copies)]).astype(np.int32))

  return FemnistArrays(ids, *split('train'), *split('test'))


def load_femnist_arrays(path: str) -> FemnistArrays:
  """Loads FEMNIST from an ``.npz`` file or a LEAF ``{train,test}/`` directory.

  Raises:
    FemnistFormatError (a ValueError), one line naming the file: missing,
      empty, truncated or corrupted file, wrong npz schema (names the missing
      key, the wrong dtype or shape), malformed JSON or inconsistent LEAF
      records, labels or client indices out of range, an empty split.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    return _load_leaf(path)
  if os.path.isfile(path):
    if not path.endswith('.npz'):
      raise FemnistFormatError(
          f'{path}: expected a .npz file or a LEAF directory with train/ and test/')
    return _load_npz(path)
  raise FemnistFormatError(
      f'FEMNIST source not found: {path} (expected a .npz file or a LEAF '
      'directory with train/ and test/)')
