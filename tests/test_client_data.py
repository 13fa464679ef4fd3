"""The round's client datasets: the same elements as the eager pipeline, and
no memory growth from building them every round."""

import numpy as np
import pytest

from tff_research.data import federated_data
from tff_research.data import preprocessing
from tff_research.run import client_data
from tests import fl_testing

SETTINGS = dict(epochs=2, batch_size=3, shuffle_buffer=4)


def _eager(cd, cid, seed):
  return preprocessing.preprocess(cd.create_tf_dataset_for_client(cid),
                                  seed=seed, **SETTINGS)


def _same(a, b):
  a, b = list(a.as_numpy_iterator()), list(b.as_numpy_iterator())
  assert len(a) == len(b) and a
  for p, q in zip(a, b):
    np.testing.assert_array_equal(p['x'], q['x'])
    np.testing.assert_array_equal(p['y'], q['y'])


def _array_client_data():
  rng = np.random.default_rng(0)
  pixels = rng.random((20, 28, 28)).astype(np.float32)
  labels = rng.integers(0, 10, 20).astype(np.int32)
  return federated_data.ArrayClientData(
      pixels, labels, {'a': np.arange(0, 7), 'b': np.arange(7, 20)})


def test_array_client_data_matches_eager_pipeline():
  cd = _array_client_data()
  fn = client_data.build_dataset_fn(cd, **SETTINGS)
  for cid in ('a', 'b'):
    for seed in (0, 12345):
      _same(fn(cid, seed), _eager(cd, cid, seed))


def _sql_client_data(tmp_path):
  return fl_testing.tiny_emnist_sqlite(tmp_path)[0]


def test_tffs_emnist_loader_takes_the_traced_sql_path(tmp_path):
  # TFF's loader returns its SqlClientData preprocessed (proto parsing):
  # still a query, so the dataset is built by the traced function.
  assert client_data._reads_sql(_sql_client_data(tmp_path))
  assert not client_data._reads_sql(_array_client_data())


def test_sql_client_data_matches_eager_pipeline_and_sends_no_pixels(tmp_path):
  cd = _sql_client_data(tmp_path)
  fn = client_data.build_dataset_fn(cd, **SETTINGS)
  for cid in ('w0', 'w1'):
    _same(fn(cid, 7), _eager(cd, cid, 7))
  # The dataset TFF serializes into a call holds the query, not the 15
  # examples' 47 kB of pixels.
  assert len(fn('w0', 7)._as_serialized_graph().numpy()) < 15 * 28 * 28 * 4 / 4
  with pytest.raises(ValueError, match='not a client'):
    fn('no such writer', 0)


def _rss_mb():
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS'):
        return int(line.split()[1]) / 1024
  raise AssertionError('no VmRSS')


def test_building_datasets_every_round_does_not_grow_memory():
  # The eager pipeline grew ~80 kB per dataset (1.7 MB per 10-client round);
  # 2,000 datasets would add ~160 MB. Allow 20 MB for allocator noise.
  cd = _array_client_data()
  fn = client_data.build_dataset_fn(cd, **SETTINGS)
  for seed in range(200):
    fn('a', seed)
  before = _rss_mb()
  for seed in range(2000):
    fn('ab'[seed % 2], seed)._as_serialized_graph()
  assert _rss_mb() - before < 20
