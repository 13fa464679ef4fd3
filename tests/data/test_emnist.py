"""Tests for build_emnist_cache, emnist and the EMNIST path of federated_data.

The cache is built once per module from the shared FEMNIST npz (skipped if
absent) and read back through TFF's own, unchanged ``emnist.load_data``. No
TFF computation is invoked (only Python-side ClientData / tf.data).
"""

import collections
import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.data import build_emnist_cache as B
from tff_research.data import emnist
from tff_research.data import federated_data as FD
from tff_research.data import femnist_arrays as F

SPEC = collections.OrderedDict(
    label=tf.TensorSpec(shape=(), dtype=tf.int32),
    pixels=tf.TensorSpec(shape=(28, 28), dtype=tf.float32))


@pytest.fixture(scope='module')
def npz_arrays(shared_femnist_npz):
  return F.load_femnist_arrays(str(shared_femnist_npz))


@pytest.fixture(scope='module')
def npz_cache(npz_arrays, tmp_path_factory):
  cache_dir = tmp_path_factory.mktemp('emnist_npz')
  B.write_emnist_sqlite(npz_arrays, str(cache_dir))
  return str(cache_dir)


def _expected_counts(a):
  out = {}
  for split in ('train', 'test'):
    lab, cl = getattr(a, f'{split}_labels'), getattr(a, f'{split}_client')
    out[f'all_{split}'] = (len(np.unique(cl)), len(lab))
    d = lab < 10
    out[f'digits_only_{split}'] = (len(np.unique(cl[d])), int(d.sum()))
  return out


def test_split_summary_matches_arrays(npz_arrays, npz_cache):
  summary = B.split_summary(os.path.join(npz_cache, B.DB_FILENAME))
  assert summary == _expected_counts(npz_arrays)
  assert summary['all_train'] == (201, 28016) and summary['all_test'] == (201, 3209)
  assert [f for f in os.listdir(npz_cache)] == [B.DB_FILENAME]  # no temp files left


@pytest.mark.parametrize('only_digits', [False, True])
def test_tff_loader_reads_cache_unchanged(npz_arrays, npz_cache, only_digits):
  train, test = tff.simulation.datasets.emnist.load_data(
      only_digits=only_digits, cache_dir=npz_cache)
  counts = _expected_counts(npz_arrays)
  prefix = 'digits_only' if only_digits else 'all'
  assert len(train.client_ids) == counts[f'{prefix}_train'][0]
  assert len(test.client_ids) == counts[f'{prefix}_test'][0]
  if not only_digits:
    assert train.client_ids == sorted(npz_arrays.client_ids)
  assert train.element_type_structure == SPEC and test.element_type_structure == SPEC
  for split, cd in (('train', train), ('test', test)):
    cid = cd.client_ids[5]
    idx = npz_arrays.client_indices(split)[cid]
    if only_digits:
      idx = idx[getattr(npz_arrays, f'{split}_labels')[idx] < 10]
    got = list(cd.create_tf_dataset_for_client(cid).as_numpy_iterator())
    assert len(got) == len(idx)
    np.testing.assert_array_equal(np.stack([g['pixels'] for g in got]),
                                  getattr(npz_arrays, f'{split}_pixels')[idx])
    np.testing.assert_array_equal([g['label'] for g in got],
                                  getattr(npz_arrays, f'{split}_labels')[idx])


def test_leaf_sample_cache_and_overwrite(shared_leaf_dir, tmp_path):
  arrays = F.load_femnist_arrays(str(shared_leaf_dir))
  path = B.write_emnist_sqlite(arrays, str(tmp_path))
  assert path == str(tmp_path / B.DB_FILENAME)
  train, test = tff.simulation.datasets.emnist.load_data(only_digits=False, cache_dir=str(tmp_path))
  assert train.client_ids == arrays.client_ids and test.client_ids == arrays.client_ids
  first = next(train.create_tf_dataset_for_client('f1506_35').as_numpy_iterator())
  j = arrays.client_indices('train')['f1506_35'][0]
  np.testing.assert_array_equal(first['pixels'], arrays.train_pixels[j])
  assert first['label'] == arrays.train_labels[j]
  with pytest.raises(B.CacheExistsError, match='already exists; pass overwrite=True'):
    B.write_emnist_sqlite(arrays, str(tmp_path))
  B.write_emnist_sqlite(arrays, str(tmp_path), overwrite=True)
  assert B.split_summary(path)['all_train'] == (6, 760)


def test_failed_write_leaves_nothing(shared_leaf_dir, tmp_path, monkeypatch):
  arrays = F.load_femnist_arrays(str(shared_leaf_dir))
  calls = []

  def boom(pixels, label):
    calls.append(1)
    if len(calls) > 50:
      raise RuntimeError('simulated crash')
    return b'x'

  monkeypatch.setattr(B, '_example_bytes', boom)
  with pytest.raises(RuntimeError, match='simulated crash'):
    B.write_emnist_sqlite(arrays, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_cli_main(shared_leaf_dir, tmp_path, capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from tff_research.cli import build_emnist_cache as cli  # pylint: disable=g-import-not-at-top
  argv = ['build_emnist_cache', f'--input={shared_leaf_dir}', f'--cache_dir={tmp_path}']
  flags.FLAGS(argv)
  try:
    assert cli.main(['build_emnist_cache']) == 0
    out = capsys.readouterr().out
    assert f'wrote {tmp_path / B.DB_FILENAME}' in out
    assert 'all_train: 6 clients, 760 examples' in out
    assert 'all_test: 6 clients, 87 examples' in out
    assert cli.main(['build_emnist_cache']) == 1  # refuses to overwrite
    assert 'already exists' in capsys.readouterr().err
  finally:
    flags.FLAGS.unparse_flags()


def test_load_emnist_missing_offline_is_fast_and_clear(tmp_path, monkeypatch):
  # Force "offline" so the test never downloads on a connected machine.
  monkeypatch.setattr(emnist, '_network_available', lambda *a, **k: False)
  t0 = time.monotonic()
  with pytest.raises(emnist.DataNotFoundError) as e:
    emnist.load_emnist(only_digits=True, data_dir=str(tmp_path))
  assert time.monotonic() - t0 < 1.0
  assert str(e.value) == (
      f'emnist data not found: expected {tmp_path}/emnist_all.sqlite (no network to download '
      'it). Build it with: uv run python -m tff_research.cli.build_emnist_cache '
      f'--input=PATH --cache_dir={tmp_path}')
  assert isinstance(e.value, ValueError) and os.listdir(tmp_path) == []
  monkeypatch.setenv('HOME', str(tmp_path))
  with pytest.raises(emnist.DataNotFoundError, match=f'expected {tmp_path}/.tff/emnist_all.sqlite'):
    emnist.load_emnist(only_digits=False, data_dir=None)


def test_network_probe_is_bounded():
  # Whatever the network, the probe returns within its timeout (+ slack).
  t0 = time.monotonic()
  emnist._network_available(timeout=1.0)
  assert time.monotonic() - t0 < 2.5


def test_load_emnist_invalid_file(tmp_path):
  (tmp_path / 'emnist_all.sqlite').write_bytes(b'not a database' * 100)
  with pytest.raises(emnist.DataNotFoundError, match='is not a valid EMNIST sqlite cache'):
    emnist.load_emnist(only_digits=True, data_dir=str(tmp_path))


def test_load_emnist_and_federated_data_natural(npz_cache):
  train, test = emnist.load_emnist(only_digits=True, data_dir=npz_cache)
  assert len(train.client_ids) == 197
  fd = FD.load_federated_data(FD.DataConfig(dataset='emnist', data_dir=npz_cache))
  assert fd.num_classes == 62 and len(fd.client_ids) == 201
  assert fd.description == 'emnist: 201 clients (natural writers), 28016 train / 3209 test'
  fd = FD.load_federated_data(FD.DataConfig(dataset='emnist_digits', data_dir=npz_cache))
  assert fd.num_classes == 10
  assert fd.description == 'emnist_digits: 197 clients (natural writers), 20015 train / 2274 test'


def test_federated_data_emnist_digits_repartitioned(npz_cache):
  cfg = FD.DataConfig(dataset='emnist_digits', data_dir=npz_cache, num_clients=10,
                      dirichlet_alpha=0.1, seed=3)
  fd = FD.load_federated_data(cfg)
  assert fd.client_ids == tuple(f'client_{i:04d}' for i in range(10))
  n_train = sum(fd.train.num_examples(c) for c in fd.client_ids)
  n_test = sum(fd.test.num_examples(c) for c in fd.test.client_ids)
  assert n_train + n_test == 20015 + 2274  # pooled digits, nothing lost
  assert fd.description.startswith('emnist_digits re-partitioned (pooled train+test): 10 clients, ')
  assert fd.description.endswith('dirichlet alpha=0.1')
  # alpha = 0.1: strongly skewed, most clients dominated by few digits.
  top = []
  for c in fd.client_ids:
    labels = np.array([e['label'] for e in fd.train.create_tf_dataset_for_client(c).as_numpy_iterator()])
    assert labels.max() < 10
    top.append(np.bincount(labels, minlength=10).max() / len(labels))
  assert np.median(top) > 0.4  # IID would give ~0.1
