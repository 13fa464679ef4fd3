"""The client array store against TFF's SQLite EMNIST, the reference.

Every client's elements (bit for bit), the training pipeline's batches for
a seed, the evaluation sequence, and the views (rows, label shift,
concatenation) equal what TFF's `SqlClientData` gives on the same file, for
both record formats: `u8` (the shared FEMNIST writers, pixels on the 8-bit
grid) and `f32` (random pixels). The graphs the worker receives hold file
names, not examples.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tests import fl_testing
from tff_research.data import array_store
from tff_research.data import build_emnist_cache
from tff_research.data import emnist
from tff_research.data import femnist_arrays
from tff_research.data import preprocessing
from tff_research.data import store_client_data as scd


def _elements(ds):
  return list(ds.as_numpy_iterator())


def _assert_same(a, b):
  """Equal element lists, pixels compared as bits."""
  assert len(a) == len(b)
  for x, y in zip(a, b):
    x, y = tf.nest.flatten(x), tf.nest.flatten(y)
    for u, v in zip(x, y):
      assert u.dtype == v.dtype and u.shape == v.shape
      assert np.array_equal(np.atleast_1d(u).view(np.uint8),
                            np.atleast_1d(v).view(np.uint8))


@pytest.fixture(scope='module')
def femnist_cache(shared_femnist_npz, tmp_path_factory):
  """Twelve shared writers in a TFF cache (u8 records)."""
  a = femnist_arrays.load_femnist_arrays(str(shared_femnist_npz))

  def take(split):
    keep = getattr(a, f'{split}_client') < 12
    return tuple(getattr(a, f'{split}_{k}')[keep]
                 for k in ('pixels', 'labels', 'client'))

  small = femnist_arrays.FemnistArrays(a.client_ids[:12], *take('train'),
                                       *take('test'))
  cache = tmp_path_factory.mktemp('femnist12')
  db = build_emnist_cache.write_emnist_sqlite(small, str(cache))
  return small, db


@pytest.fixture(scope='module')
def random_cache(tmp_path_factory):
  """Two writers with random pixels (f32 records)."""
  cache = tmp_path_factory.mktemp('random2')
  fl_testing.tiny_emnist_sqlite(cache)
  return str(cache / build_emnist_cache.DB_FILENAME)


def _sql(db, only_digits):
  return emnist.load_emnist(only_digits, os.path.dirname(db), reader='sqlite')


@pytest.mark.parametrize('only_digits', [False, True])
def test_store_built_from_sqlite_or_arrays_reads_as_tff(femnist_cache,
                                                         tmp_path, only_digits):
  arrays, db = femnist_cache
  from_sql = array_store.build_from_sqlite(db, str(tmp_path / 'a'))
  from_arrays = array_store.build_from_arrays(arrays, db, str(tmp_path / 'b'))
  prefix = 'digits_only' if only_digits else 'all'
  for store in (from_sql, from_arrays):
    for split, reference in zip(('train', 'test'), _sql(db, only_digits)):
      part = store.split(f'{prefix}_{split}')
      assert part.record == 'u8'
      data = scd.StoreClientData.from_split(part)
      assert data.client_ids == reference.client_ids
      for cid in reference.client_ids:
        want = _elements(reference.create_tf_dataset_for_client(cid))
        _assert_same(_elements(data.create_tf_dataset_for_client(cid)), want)
        assert data.num_examples(cid) == len(want)
  # 12 writers' train split: 785 bytes an example, one file a writer.
  train = from_sql.split('all_train')
  assert sum(os.path.getsize(train.path(c)) for c in train.client_ids) == (
      785 * len(arrays.train_labels))


def test_off_grid_pixels_use_float_records(random_cache):
  store = array_store.build_from_sqlite(random_cache)
  assert store.split('all_train').record == 'f32'
  train, test = emnist.load_emnist(False, os.path.dirname(random_cache))
  assert isinstance(train, scd.StoreClientData)
  sql_train, sql_test = _sql(random_cache, False)
  for data, reference in ((train, sql_train), (test, sql_test)):
    for cid in reference.client_ids:
      _assert_same(_elements(data.create_tf_dataset_for_client(cid)),
                   _elements(reference.create_tf_dataset_for_client(cid)))


def test_training_batches_equal_the_sql_pipeline_for_a_seed(femnist_cache):
  _, db = femnist_cache
  train, _ = emnist.load_emnist(False, os.path.dirname(db))
  sql_train, _ = _sql(db, False)
  from_recipe = scd.build_train_dataset_fn(epochs=2, batch_size=7,
                                           shuffle_buffer=50)
  preprocess = preprocessing.build_preprocess_fn(epochs=2, batch_size=7,
                                                 shuffle_buffer=50)
  for cid, seed in zip(train.client_ids[:3], (0, 17, 2**31 - 2)):
    got = _elements(from_recipe(train.recipe(cid), seed))
    want = _elements(preprocess(sql_train.create_tf_dataset_for_client(cid),
                                seed))
    _assert_same(got, want)
    # What TFF serializes into a round's call: the file name, no pixels.
    graph = from_recipe(train.recipe(cid), seed)._as_serialized_graph().numpy()
    assert train.recipe(cid).files[0][0].encode() in graph
    assert len(graph) < 64_000 < 785 * train.num_examples(cid) * 4


def test_eval_sequence_is_each_clients_batches_tagged(femnist_cache):
  _, db = femnist_cache
  _, test = emnist.load_emnist(False, os.path.dirname(db))
  _, sql_test = _sql(db, False)
  ids = test.client_ids
  order = [5, 0, 11, 3]
  (sequence,) = scd.eval_sequences([test.recipe(ids[i]) for i in order],
                                   order, batch_size=4)
  got = _elements(sequence)
  want = []
  for i in order:
    for batch in _elements(preprocessing.preprocess_for_eval(
        sql_test.create_tf_dataset_for_client(ids[i]), 4)):
      want.append((batch, np.int32(i)))
  _assert_same(got, want)
  # Every test client's examples, none of them in the graph.
  (every,) = scd.eval_sequences([test.recipe(c) for c in ids],
                                range(len(ids)), 4)
  size = len(every._as_serialized_graph().numpy())
  assert size < 64_000 < 785 * test.total_examples


def test_views_equal_the_same_selection_of_sql_elements(femnist_cache):
  _, db = femnist_cache
  train, test = emnist.load_emnist(True, os.path.dirname(db))
  sql_train, sql_test = _sql(db, True)
  cid = train.client_ids[2]
  base = _elements(sql_train.create_tf_dataset_for_client(cid))
  rows = np.array([0, 3, 4, len(base) - 1])
  view = train.with_rows({cid: rows})
  assert view.client_ids == [cid] and view.num_examples(cid) == 4
  _assert_same(_elements(view.create_tf_dataset_for_client(cid)),
               [base[i] for i in rows])
  # Rows of a view select within the view.
  _assert_same(_elements(view.with_rows({cid: [3, 1]})
                         .create_tf_dataset_for_client(cid)),
               [base[rows[3]], base[rows[1]]])
  shifted = train.with_label_shift([cid], 3, 10)
  got = _elements(shifted.create_tf_dataset_for_client(cid))
  assert [int(e['label']) for e in got] == [
      (int(e['label']) + 3) % 10 for e in base]
  other = train.client_ids[0]
  _assert_same(_elements(shifted.create_tf_dataset_for_client(other)),
               _elements(sql_train.create_tf_dataset_for_client(other)))
  whole = train.concat_clients(test, [cid])
  want = base + _elements(sql_test.create_tf_dataset_for_client(cid))
  _assert_same(_elements(whole.create_tf_dataset_for_client(cid)), want)
  assert whole.num_examples(cid) == len(want)
  # The ClientData contract: a dataset function of the id tensor.
  _assert_same(_elements(whole.serializable_dataset_fn(tf.constant(cid))), want)


def test_stale_or_missing_store_is_rebuilt_and_logged(random_cache):
  directory = array_store.store_dir_for(random_cache)
  array_store.build_from_sqlite(random_cache)
  assert array_store.open_store(random_cache) is not None
  os.utime(random_cache, ns=(1, 1))  # The SQLite file changed.
  assert array_store.open_store(random_cache) is None
  lines = []
  store = array_store.ensure_store(random_cache, log=lines.append)
  assert store is not None and store.directory == directory
  assert lines[0].startswith(f'Building the array store {directory}')
  assert not [n for n in os.listdir(os.path.dirname(directory))
              if '.tmp-' in n]


def test_unwritable_directory_falls_back_to_sqlite(random_cache, tmp_path,
                                                   monkeypatch):
  def refuse(*args, **kwargs):
    raise array_store.StoreError('cannot write the array store X: Read-only')

  monkeypatch.setattr(array_store, 'build_from_sqlite', refuse)
  cache = tmp_path / 'ro'
  cache.mkdir()
  db = cache / build_emnist_cache.DB_FILENAME
  db.write_bytes(open(random_cache, 'rb').read())
  lines = []
  train, _ = emnist.load_emnist(False, str(cache), log=lines.append)
  assert isinstance(train, tff.simulation.datasets.ClientData)
  assert not isinstance(train, scd.StoreClientData)
  assert lines[-1] == ('warning: cannot write the array store X: Read-only;'
                       f' reading {db} instead (slower)')


def test_tile_gives_new_writer_ids_and_k_times_the_examples(femnist_cache):
  arrays, _ = femnist_cache
  tiled = femnist_arrays.tile(arrays, 3)
  assert len(tiled.client_ids) == 36 == len(set(tiled.client_ids))
  assert tiled.client_ids[0] == f'{arrays.client_ids[0]}_t0'
  assert tiled.client_ids[13] == f'{arrays.client_ids[1]}_t1'
  assert len(tiled.train_labels) == 3 * len(arrays.train_labels)
  index = tiled.client_indices('train')
  np.testing.assert_array_equal(
      tiled.train_pixels[index[f'{arrays.client_ids[4]}_t2']],
      arrays.train_pixels[arrays.client_indices('train')[arrays.client_ids[4]]])
  with pytest.raises(ValueError, match='tile=0 is not valid'):
    femnist_arrays.tile(arrays, 0)


def test_eval_sequences_split_by_kind_of_recipe(femnist_cache):
  """Held-out clients with and without a test split are read by two
  graphs (one or two files): each client's tagged batches, all of them."""
  _, db = femnist_cache
  train, test = emnist.load_emnist(False, os.path.dirname(db))
  ids = train.client_ids[:3]
  recipes = [train.concat(test, ids[0]), train.recipe(ids[1]),
             train.concat(test, ids[2])]
  sequences = scd.eval_sequences(recipes, [7, 8, 9], batch_size=5)
  assert len(sequences) == 2
  got = {}
  for sequence in sequences:
    for batch, tag in _elements(sequence):
      got.setdefault(int(tag), []).append(batch)
  assert sorted(got) == [7, 8, 9]
  for tag, recipe in zip((7, 8, 9), recipes):
    want = _elements(preprocessing.preprocess_for_eval(
        scd.raw_dataset(recipe), 5))
    _assert_same(got[tag], want)
