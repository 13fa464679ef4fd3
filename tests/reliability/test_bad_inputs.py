"""Every input file the data layer reads fails with one line, changing nothing.

FEMNIST ``.npz`` arrays, LEAF JSON directories and the ``emnist_all.sqlite``
cache are each damaged in the ways files get damaged (truncated, empty,
garbage) and in the ways they get the schema wrong (a missing array, table,
column or key, a wrong dtype or shape, lengths that disagree, labels out of
range, no rows). Each must raise a ``ValueError`` subclass whose message is
one line naming the file, and leave every file as it was. Most cases use
small synthetic files; those built from the shared FEMNIST subset skip when
``../shared`` is absent.
"""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from tff_research.data import build_emnist_cache as B
from tff_research.data import emnist
from tff_research.data import femnist_arrays as F
from tests.reliability import procs

# --- helpers ------------------------------------------------------------------


def good_arrays(n_train=12, n_test=6, n_clients=3):
  rng = np.random.default_rng(0)
  return {
      'client_ids': np.array([f'f{i:04d}_00' for i in range(n_clients)]),
      'train_pixels': rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      'train_labels': (np.arange(n_train) * 7 % 62).astype(np.int32),
      'train_client': (np.arange(n_train) % n_clients).astype(np.int32),
      'test_pixels': rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      'test_labels': (np.arange(n_test) % 10).astype(np.int32),
      'test_client': (np.arange(n_test) % n_clients).astype(np.int32),
  }


def write_npz(path, arrays):
  with open(path, 'wb') as f:
    np.savez(f, **arrays)
  return path


def snapshot(directory):
  """{relative path: sha256} of every file under `directory`."""
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      p = os.path.join(root, name)
      with open(p, 'rb') as f:
        out[os.path.relpath(p, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def assert_one_line(error, path):
  message = str(error)
  assert isinstance(error, ValueError)
  assert '\n' not in message, message
  assert str(path) in message, message
  return message


# --- .npz ---------------------------------------------------------------------


def _with(**changes):
  def make(arrays):
    arrays.update(changes)
    return arrays
  return make


def _without(key):
  def make(arrays):
    del arrays[key]
    return arrays
  return make


def _shift(key, delta):
  def make(arrays):
    arrays[key] = arrays[key].astype(np.int64) + delta
    return arrays
  return make


NPZ_SCHEMA_CASES = {
    'missing_array': (_without('train_labels'), "npz is missing key 'train_labels'"),
    'missing_client_ids': (_without('client_ids'), "npz is missing key 'client_ids'"),
    'pixels_float': (_with(train_pixels=np.zeros((12, 28, 28), np.float32)),
                     'train_pixels has dtype float32; expected uint8'),
    'labels_float': (_with(train_labels=np.full(12, 3.7)),
                     'train_labels has dtype float64; expected an integer dtype'),
    'client_float': (_with(test_client=np.zeros(6, np.float32)),
                     'test_client has dtype float32; expected an integer dtype'),
    'client_ids_int': (_with(client_ids=np.arange(3)),
                       r'client_ids has dtype int64 and shape \(3,\); expected a 1-D array of str'),
    'client_ids_2d': (_with(client_ids=np.array([['a', 'b', 'c']])),
                      'expected a 1-D array of str'),
    'pixels_wrong_shape': (_with(train_pixels=np.zeros((12, 28, 27), np.uint8)),
                           r'train_pixels has shape \(12, 28, 27\); expected \(N, 28, 28\)'),
    'pixels_flat': (_with(test_pixels=np.zeros((6, 784), np.uint8)),
                    r'test_pixels has shape \(6, 784\)'),
    'labels_scalar': (_with(train_labels=np.int32(3)), 'train_labels is a scalar'),
    'mismatched_lengths': (_with(train_labels=np.zeros(11, np.int32)),
                           r'train_labels \(11,\) / train_client \(12,\) do not match train_pixels with N=12'),
    'label_62': (_shift('train_labels', 61), r'train_labels must be in 0\.\.61'),
    'label_negative': (_shift('test_labels', -1), r'test_labels must be in 0\.\.61, got range -1\.\.'),
    'label_huge': (_with(train_labels=np.full(12, 2**40, np.int64)),
                   r'train_labels must be in 0\.\.61, got range 1099511627776'),
    'client_out_of_range': (_shift('train_client', 1), r'train_client must index client_ids \(0\.\.2\)'),
    'duplicate_client_ids': (_with(client_ids=np.array(['a', 'a', 'b'])), 'client_ids are not unique'),
    'no_clients': (_with(client_ids=np.array([], dtype='<U1')), 'no clients'),
    'empty_test_split': (_with(test_pixels=np.zeros((0, 28, 28), np.uint8),
                               test_labels=np.zeros(0, np.int32),
                               test_client=np.zeros(0, np.int32)),
                         'the test split has no examples'),
}


@pytest.mark.parametrize('case', sorted(NPZ_SCHEMA_CASES))
def test_npz_wrong_schema(tmp_path, case):
  make, expected = NPZ_SCHEMA_CASES[case]
  path = write_npz(tmp_path / 'bad.npz', make(good_arrays()))
  before = snapshot(tmp_path)
  with pytest.raises(F.FemnistFormatError, match=expected) as e:
    F.load_femnist_arrays(str(path))
  assert_one_line(e.value, path)
  assert snapshot(tmp_path) == before


def _truncate_to(fraction):
  def damage(path):
    os.truncate(path, int(os.path.getsize(path) * fraction))
  return damage


def _overwrite_middle(path):
  data = bytearray(open(path, 'rb').read())
  mid = len(data) // 2
  data[mid:mid + 64] = bytes(64)
  open(path, 'wb').write(bytes(data))


def _garbage(path):
  n = os.path.getsize(path)
  open(path, 'wb').write(np.random.default_rng(0).bytes(n))


def _npy_not_npz(path):
  with open(path, 'wb') as f:
    np.save(f, np.zeros(3))


def _pickled_object_array(path):
  arrays = good_arrays()
  arrays['client_ids'] = np.array(['a', 'b', 'c'], dtype=object)
  with open(path, 'wb') as f:
    np.savez(f, **arrays)


NPZ_FILE_CASES = {
    'empty': (_truncate_to(0.0), 'the file is empty'),
    'truncated_10_bytes': (lambda p: os.truncate(p, 10), 'not a readable .npz file'),
    'truncated_half': (_truncate_to(0.5), 'not a readable .npz file'),
    'truncated_last_byte': (lambda p: os.truncate(p, os.path.getsize(p) - 1), 'not a readable .npz file'),
    'corrupted_middle': (_overwrite_middle, 'the file may be truncated or corrupted'),
    'garbage': (_garbage, 'not a readable .npz file'),
    'single_npy': (_npy_not_npz, 'holds a single array, not a .npz archive'),
    'object_array': (_pickled_object_array, "array 'client_ids' is unreadable"),
}


@pytest.mark.parametrize('case', sorted(NPZ_FILE_CASES))
def test_npz_damaged_file(tmp_path, case):
  damage, expected = NPZ_FILE_CASES[case]
  path = write_npz(tmp_path / 'bad.npz', good_arrays(n_train=200, n_test=50))
  damage(path)
  before = snapshot(tmp_path)
  with pytest.raises(F.FemnistFormatError, match=expected) as e:
    F.load_femnist_arrays(str(path))
  assert_one_line(e.value, path)
  assert snapshot(tmp_path) == before


@pytest.mark.parametrize('fraction', [0.0, 0.01, 0.5, 0.999])
def test_truncated_shared_npz(shared_femnist_npz, tmp_path, fraction):
  path = tmp_path / 'femnist_dev.npz'
  shutil.copyfile(shared_femnist_npz, path)
  os.truncate(path, int(os.path.getsize(path) * fraction))
  with pytest.raises(F.FemnistFormatError) as e:
    F.load_femnist_arrays(str(path))
  assert_one_line(e.value, path)


def test_good_synthetic_npz_loads(tmp_path):
  a = F.load_femnist_arrays(str(write_npz(tmp_path / 'ok.npz', good_arrays())))
  assert a.client_ids == ['f0000_00', 'f0001_00', 'f0002_00']
  assert a.train_labels.dtype == np.int32 and a.train_client.dtype == np.int32
  assert a.train_pixels.shape == (12, 28, 28) and a.train_pixels.dtype == np.float32


# --- LEAF JSON ------------------------------------------------------------------


def leaf_blob(users=('u1', 'u2'), n=2):
  return {
      'users': list(users),
      'num_samples': [n] * len(users),
      'user_data': {u: {'x': [[0.5] * 784] * n,
                        'y': list(range(n))} for u in users},
  }


def leaf_dir(tmp_path, train=None, test=None):
  root = tmp_path / 'leaf'
  for split, blob in (('train', train), ('test', test)):
    (root / split).mkdir(parents=True)
    text = blob if isinstance(blob, (str, bytes)) else json.dumps(blob or leaf_blob())
    mode = 'wb' if isinstance(text, bytes) else 'w'
    with open(root / split / 'data.json', mode) as f:
      f.write(text)
  return root


def _edit(fn):
  blob = leaf_blob()
  fn(blob)
  return blob


LEAF_CASES = {
    'not_json': ('this is not json', 'malformed JSON'),
    'truncated_json': (json.dumps(leaf_blob())[:500], 'malformed JSON'),
    'empty_file': ('', 'the file is empty'),
    'not_utf8': (b'\xff\xfe{"users": []}', 'not UTF-8 text'),
    'json_list': ('[1, 2, 3]', 'not a LEAF file'),
    'missing_user_data': (_edit(lambda b: b.pop('user_data')), 'not a LEAF file'),
    'missing_users': (_edit(lambda b: b.pop('users')), 'not a LEAF file'),
    'users_not_list': (_edit(lambda b: b.update(users='u1')), '"users" must be a list of str'),
    'user_data_list': (_edit(lambda b: b.update(user_data=[1])), '"user_data" must be an object'),
    'user_missing_record': (_edit(lambda b: b['user_data'].pop('u2')), r"user_data\['u2'\] lacks"),
    'record_missing_y': (_edit(lambda b: b['user_data']['u1'].pop('y')), r"user_data\['u1'\] lacks"),
    'x_y_length_mismatch': (_edit(lambda b: b['user_data']['u1']['y'].append(3)),
                            r"user 'u1' has x \(2, 784\) / y \(3,\)"),
    'x_wrong_width': (_edit(lambda b: b['user_data']['u1'].update(x=[[0.5] * 783] * 2)),
                      r"user 'u1' has x \(2, 783\)"),
    'x_ragged': (_edit(lambda b: b['user_data']['u1'].update(x=[[0.5] * 784, [0.5] * 3])),
                 "user 'u1' has non-numeric or ragged x"),
    'x_strings': (_edit(lambda b: b['user_data']['u1'].update(x=[['a'] * 784] * 2)),
                  "user 'u1' has non-numeric or ragged x"),
    'x_not_list': (_edit(lambda b: b['user_data']['u1'].update(x='abc')), "user 'u1' x is a str"),
    'x_nan': (json.dumps(leaf_blob()).replace('0.5', 'NaN', 1), "user 'u1' x has NaN"),
    'x_out_of_range': (_edit(lambda b: b['user_data']['u1'].update(x=[[2.0] * 784] * 2)),
                       r"user 'u1' x outside \[0, 1\]"),
    'y_fractional': (_edit(lambda b: b['user_data']['u1'].update(y=[0.5, 1])),
                     "user 'u1' y has non-integer labels"),
    'y_out_of_range': (_edit(lambda b: b['user_data']['u2'].update(y=[0, 62])),
                       r"user 'u2' y must be in 0\.\.61, got range 0\.\.62"),
    'num_samples_mismatch': (_edit(lambda b: b.update(num_samples=[2, 5])),
                             "user 'u2' num_samples=5 but has 2 examples"),
    'num_samples_short': (_edit(lambda b: b.update(num_samples=[2])),
                          '"num_samples" must be a list with one count per user'),
}


@pytest.mark.parametrize('case', sorted(LEAF_CASES))
def test_leaf_bad_file(tmp_path, case):
  train, expected = LEAF_CASES[case]
  root = leaf_dir(tmp_path, train=train)
  before = snapshot(root)
  with pytest.raises(F.FemnistFormatError, match=expected) as e:
    F.load_femnist_arrays(str(root))
  assert_one_line(e.value, root / 'train' / 'data.json')
  assert snapshot(root) == before


def test_leaf_missing_split_and_no_json(tmp_path):
  root = leaf_dir(tmp_path)
  shutil.rmtree(root / 'test')
  with pytest.raises(F.FemnistFormatError, match='must contain test/') as e:
    F.load_femnist_arrays(str(root))
  assert_one_line(e.value, root)
  (root / 'test').mkdir()
  (root / 'test' / 'notes.txt').write_text('x')
  with pytest.raises(F.FemnistFormatError, match='no LEAF') as e:
    F.load_femnist_arrays(str(root))
  assert_one_line(e.value, root / 'test')


def test_good_leaf_loads(tmp_path):
  a = F.load_femnist_arrays(str(leaf_dir(tmp_path)))
  assert a.client_ids == ['u1', 'u2'] and a.train_labels.tolist() == [0, 1, 0, 1]


def test_truncated_shared_leaf_json(shared_leaf_dir, tmp_path):
  root = tmp_path / 'leaf'
  shutil.copytree(shared_leaf_dir, root)
  (path,) = (root / 'train').glob('*.json')
  os.chmod(path, 0o644)
  os.truncate(path, os.path.getsize(path) // 2)
  with pytest.raises(F.FemnistFormatError, match='malformed JSON') as e:
    F.load_femnist_arrays(str(root))
  assert_one_line(e.value, path)


# --- emnist_all.sqlite ------------------------------------------------------------


@pytest.fixture(scope='module')
def good_cache(tmp_path_factory):
  """A small valid cache written by build_emnist_cache from synthetic arrays."""
  d = tmp_path_factory.mktemp('good_cache')
  arrays = F.load_femnist_arrays(str(write_npz(d / 'src.npz', good_arrays())))
  return B.write_emnist_sqlite(arrays, str(d / 'cache'))


def _copy_cache(good_cache, tmp_path):
  d = tmp_path / 'cache'
  d.mkdir()
  path = d / B.DB_FILENAME
  shutil.copyfile(good_cache, path)
  return path


def _sql(*statements):
  def damage(path):
    con = sqlite3.connect(path)
    for s in statements:
      con.execute(s)
    con.commit()
    con.close()
  return damage


def _write(data):
  def damage(path):
    open(path, 'wb').write(data)
  return damage


SQLITE_CASES = {
    'not_sqlite': (_write(b'not a database' * 100), 'not an SQLite database'),
    'empty_file': (_write(b''), 'the file is empty'),
    'short_garbage': (_write(b'SQLite'), 'not an SQLite database'),
    'truncated_half': (lambda p: os.truncate(p, os.path.getsize(p) // 2), 'truncated: '),
    'truncated_to_header': (lambda p: os.truncate(p, 100), 'truncated: 100 bytes'),
    'missing_examples_table': (_sql('DROP TABLE examples'), "no table 'examples'"),
    'missing_metadata_table': (_sql('DROP TABLE client_metadata'), "no table 'client_metadata'"),
    'wrong_columns': (_sql('ALTER TABLE examples RENAME COLUMN serialized_example_proto TO blob'),
                      "table 'examples' has no column 'serialized_example_proto'"),
    'zero_rows': (_sql('DELETE FROM examples', 'DELETE FROM client_metadata'),
                  "no clients of split 'digits_only_train' in table client_metadata"),
    'no_examples': (_sql('DELETE FROM examples'),
                    "no examples of split 'digits_only_train' in table examples"),
    'no_test_split': (_sql("DELETE FROM client_metadata WHERE split_name = 'digits_only_test'"),
                      "no clients of split 'digits_only_test'"),
    'proto_garbage': (_sql("UPDATE examples SET serialized_example_proto = x'ffffffff'"),
                      'an example of split .digits_only_train.: not a tf.train.Example'),
    'proto_text': (_sql("UPDATE examples SET serialized_example_proto = 'hello'"),
                   'serialized_example_proto is str, not bytes'),
    'proto_wrong_schema': (_sql("UPDATE examples SET serialized_example_proto = x''"),
                           'no "pixels" feature of 784 floats'),
}


@pytest.mark.parametrize('case', sorted(SQLITE_CASES))
def test_bad_sqlite_cache(good_cache, tmp_path, case):
  damage, expected = SQLITE_CASES[case]
  path = _copy_cache(good_cache, tmp_path)
  damage(path)
  before = snapshot(path.parent)
  with pytest.raises(emnist.InvalidCacheError, match=expected) as e:
    emnist.check_emnist_sqlite(str(path), only_digits=True)
  message = assert_one_line(e.value, path)
  assert 'is not a valid EMNIST sqlite cache' in message
  assert f'--cache_dir={path.parent} --overwrite' in message
  # Through the loader the binaries use: same one line, nothing touched.
  with pytest.raises(emnist.DataNotFoundError) as e2:
    emnist.load_emnist(only_digits=True, data_dir=str(path.parent))
  assert str(e2.value) == message
  assert snapshot(path.parent) == before


def test_good_cache_passes_and_loads(good_cache):
  emnist.check_emnist_sqlite(good_cache)
  train, test = emnist.load_emnist(only_digits=False, data_dir=os.path.dirname(good_cache))
  assert len(train.client_ids) == 3 and len(test.client_ids) == 3


def test_truncated_shared_cache(emnist_cache_dir, tmp_path):
  path = tmp_path / B.DB_FILENAME
  shutil.copyfile(emnist_cache_dir / B.DB_FILENAME, path)
  os.truncate(path, os.path.getsize(path) * 3 // 4)
  with pytest.raises(emnist.InvalidCacheError, match='truncated') as e:
    emnist.load_emnist(only_digits=True, data_dir=str(tmp_path))
  assert_one_line(e.value, path)


# --- build_emnist_cache ---------------------------------------------------------


def _build(args):
  proc = procs.spawn([sys.executable, '-m', 'tff_research.cli.build_emnist_cache', *args])
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out.decode(), err.decode()


def _our_lines(err):
  """stderr without TensorFlow's and pkg_resources' import-time noise."""
  return [l for l in err.splitlines()
          if l.strip() and 'pkg_resources' not in l and 'tensorflow/' not in l]


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'missing_array'])
def test_binary_bad_npz_is_one_line_and_keeps_existing_cache(good_cache, tmp_path, damage):
  src = write_npz(tmp_path / 'in.npz', good_arrays(n_train=300))
  if damage == 'truncated':
    os.truncate(src, os.path.getsize(src) // 2)
  elif damage == 'empty':
    os.truncate(src, 0)
  else:
    write_npz(src, _without('test_labels')(good_arrays()))
  cache = tmp_path / 'cache'
  cache.mkdir()
  shutil.copyfile(good_cache, cache / B.DB_FILENAME)
  before = snapshot(cache)
  code, out, err = _build([f'--input={src}', f'--cache_dir={cache}', '--overwrite'])
  assert code == 1 and out == ''
  lines = _our_lines(err)
  assert len(lines) == 1 and lines[0].startswith(f'error: {src}: '), err
  assert 'Traceback' not in err
  assert snapshot(cache) == before  # untouched, no temp file


def test_binary_truncated_shared_npz(shared_femnist_npz, tmp_path):
  src = tmp_path / 'femnist_dev.npz'
  shutil.copyfile(shared_femnist_npz, src)
  os.truncate(src, os.path.getsize(src) // 3)
  code, out, err = _build([f'--input={src}', f'--cache_dir={tmp_path / "d"}'])
  assert code == 1 and 'Traceback' not in err and 'BadZipFile' in err
  assert _our_lines(err) == [
      l for l in _our_lines(err) if l.startswith(f'error: {src}: not a readable .npz file')]
  assert len(_our_lines(err)) == 1
  assert not (tmp_path / 'd').exists()  # nothing created


def test_failed_write_keeps_existing_cache_and_leaves_no_temp(good_cache, tmp_path, monkeypatch):
  arrays = F.load_femnist_arrays(str(write_npz(tmp_path / 'in.npz', good_arrays())))
  cache = tmp_path / 'cache'
  cache.mkdir()
  shutil.copyfile(good_cache, cache / B.DB_FILENAME)
  before = snapshot(cache)
  calls = []

  def disk_full(pixels, label):
    calls.append(1)
    if len(calls) > 5:
      raise OSError(28, 'No space left on device')
    return b'x'

  monkeypatch.setattr(B, '_example_bytes', disk_full)
  with pytest.raises(B.CacheWriteError) as e:
    B.write_emnist_sqlite(arrays, str(cache), overwrite=True)
  assert str(e.value) == f'cannot write {cache / B.DB_FILENAME}: No space left on device'
  assert snapshot(cache) == before


def test_unwritable_cache_dir_is_one_line(tmp_path):
  arrays = F.load_femnist_arrays(str(write_npz(tmp_path / 'in.npz', good_arrays())))
  (tmp_path / 'afile').write_text('')
  with pytest.raises(B.CacheWriteError, match='cannot write .*afile/emnist_all.sqlite') as e:
    B.write_emnist_sqlite(arrays, str(tmp_path / 'afile'))
  assert '\n' not in str(e.value)
  code, _, err = _build([f'--input={tmp_path / "in.npz"}', f'--cache_dir={tmp_path / "afile"}'])
  assert code == 1 and _our_lines(err) == [
      f'error: cannot write {tmp_path / "afile" / B.DB_FILENAME}: {tmp_path / "afile"} is not'
      ' a directory']
