"""Clustered FL from the outside: the label-permuted federation, the flags,
and experiments/train.py's logs, images and resume with --clustering."""

import asyncio
import csv
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from tff_research.cli import flags
from tff_research.data import federated_data
from tff_research.data import label_permutation
from tff_research.run import config as config_lib
from tff_research.run import held_out_evaluation
from tff_research.run import training
from tests import fl_testing


# --- the label-permuted federation ----------------------------------------


def test_permuted_clients_are_a_seeded_subset():
  ids = [f'c{i}' for i in range(20)]
  chosen = label_permutation.permuted_clients(ids, 0.5, seed=3)
  assert len(chosen) == 10 and set(chosen) <= set(ids)
  assert list(chosen) == sorted(chosen, key=ids.index)
  assert chosen == label_permutation.permuted_clients(ids, 0.5, seed=3)
  assert chosen != label_permutation.permuted_clients(ids, 0.5, seed=4)
  assert label_permutation.permuted_clients(ids, 0.0, seed=3) == ()
  assert len(label_permutation.permuted_clients(ids, 0.26, seed=3)) == 5
  with pytest.raises(ValueError, match='permute_labels_fraction=1.5'):
    label_permutation.permuted_clients(ids, 1.5, seed=3)


def _labels(ds):
  return np.array([int(e['label']) for e in ds.as_numpy_iterator()])


def test_permuted_federation_shifts_exactly_the_chosen_clients_labels():
  config = federated_data.DataConfig(dataset='digits', num_clients=8, seed=1)
  plain = federated_data.load_federated_data(config)
  permuted = federated_data.load_federated_data(
      federated_data.DataConfig(dataset='digits', num_clients=8, seed=1,
                                permute_labels_fraction=0.5,
                                label_permutation_shift=3))
  chosen = set(label_permutation.permuted_clients(plain.client_ids, 0.5, 1))
  assert len(chosen) == 4
  assert 'labels of 4 of 8 clients mapped y -> (y + 3) mod 10' in (
      permuted.description)
  for cid in plain.client_ids:
    for split in ('train', 'test'):
      before = _labels(getattr(plain, split).create_tf_dataset_for_client(cid))
      after_cd = getattr(permuted, split)
      after = _labels(after_cd.create_tf_dataset_for_client(cid))
      expected = (before + 3) % 10 if cid in chosen else before
      np.testing.assert_array_equal(after, expected)
      # The traceable path (used by TFF's dataset computations) agrees.
      traced = _labels(after_cd.serializable_dataset_fn(tf.constant(cid)))
      np.testing.assert_array_equal(traced, expected)
  # Pixels are untouched.
  cid = sorted(chosen)[0]
  a = next(plain.train.create_tf_dataset_for_client(cid).as_numpy_iterator())
  b = next(permuted.train.create_tf_dataset_for_client(cid).as_numpy_iterator())
  np.testing.assert_array_equal(a['pixels'], b['pixels'])
  with pytest.raises(ValueError, match='label_permutation_shift=10'):
    label_permutation.permute_labels(plain, 0.5, 10, 1)


# --- flags ------------------------------------------------------------------


def _parse(argv):
  return flags.config_from_argv(['--experiment_name=x'] + argv)


@pytest.mark.parametrize('argv,message', [
    (['--num_clusters=3'],
     '--num_clusters=3 does not apply to --algorithm=fedavg; it applies to'
     ' --clustering=cosine|l2'),
    (['--cluster_warmup_rounds=3'],
     '--cluster_warmup_rounds=3 does not apply to --algorithm=fedavg; it'
     ' applies to --clustering=cosine|l2'),
    (['--clustering=cosine', '--num_clusters=9'],
     '--num_clusters=9 is not valid: must be in [1, 8]'),
    (['--clustering=l2', '--num_clusters=0'],
     '--num_clusters=0 is not valid'),
    (['--clustering=cosine', '--recluster_every=0'],
     '--recluster_every=0 is not valid'),
    (['--clustering=cosine', '--cluster_warmup_rounds=-1'],
     '--cluster_warmup_rounds=-1 is not valid'),
    (['--clustering=cosine', '--algorithm=fedprox'],
     '--clustering=cosine does not apply to --algorithm=fedprox; it applies'
     ' to --algorithm=fedavg'),
    (['--label_permutation_shift=3'],
     '--label_permutation_shift applies only with --permute_labels_fraction'),
    (['--permute_labels_fraction=1.5'],
     '--permute_labels_fraction=1.5 is not valid'),
    (['--permute_labels_fraction=0.5', '--label_permutation_shift=10'],
     '--label_permutation_shift=10 is not valid for --dataset=digits'),
])
def test_bad_clustering_flags_are_one_line_errors(argv, message):
  with pytest.raises(flags.FlagError) as e:
    _parse(argv)
  assert message in str(e.value)
  assert '\n' not in str(e.value)


def test_clustering_flags_reach_the_algorithm_config():
  parsed = _parse(['--clustering=l2', '--num_clusters=4',
                    '--recluster_every=3', '--cluster_warmup_rounds=7',
                    '--permute_labels_fraction=0.25'])
  config, data = parsed.algorithm, parsed.data
  assert (config.clustering, config.num_clusters, config.recluster_every,
          config.cluster_warmup_rounds) == ('l2', 4, 3, 7)
  assert (data.permute_labels_fraction, data.label_permutation_shift) == (
      0.25, 5)
  # A run recorded before these flags existed: no clustering, no permutation.
  old = config_lib.to_hparams(parsed)
  for name in ('clustering', 'num_clusters', 'recluster_every',
               'cluster_warmup_rounds', 'permute_labels_fraction',
               'label_permutation_shift'):
    del old[name]
  rebuilt = config_lib.from_hparams(old)
  assert rebuilt.algorithm.clustering == 'none'
  assert rebuilt.data.permute_labels_fraction == 0.0


def test_group_metrics_weight_clients_by_examples():
  result = dict(per_client_accuracy=np.array([1.0, 0.5, 0.0]),
                per_client_loss=np.array([0.1, 0.2, 0.3]),
                per_client_num_examples=np.array([1.0, 3.0, 2.0]))
  groups = [(None, [0, 1]), (None, [2]), (None, [])]
  out = held_out_evaluation.group_metrics(groups, result)
  assert out == {
      'group0_accuracy': pytest.approx((1.0 + 1.5) / 4),
      'group0_loss': pytest.approx((0.1 + 0.6) / 4),
      'group0_clients': 2,
      'group1_accuracy': 0.0,
      'group1_loss': pytest.approx(0.3),
      'group1_clients': 1,
  }
  assert held_out_evaluation.group_metrics(groups[:1], result) == {}


# --- experiments/train.py with --clustering ----------------------------------

SMALL = dict(
    dataset='digits', model='linear', num_clients=6, clients_per_round=4,
    client_learning_rate=0.01, batch_size=10, eval_every=2,
    rounds_per_checkpoint=2, progress=False, clustering='cosine',
    num_clusters=2, cluster_warmup_rounds=1, recluster_every=1,
    permute_labels_fraction=0.5)


def _run(tmp_path, name, **overrides):
  return fl_testing.run_experiment(SMALL, tmp_path, name, **overrides)


def _final_state(run_dir):
  run = training.rebuild_run(str(run_dir))
  restored, _ = asyncio.run(training.state_manager(
      run.directory.checkpoint_dir).load_latest(run.state_template()))
  return restored


def _image_tags(run_dir):
  tags = []
  for path in glob.glob(os.path.join(run_dir, 'events.out.tfevents*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'images':
          tags.append((event.step, value.tag))
  return sorted(tags)


def test_train_logs_clusters_and_resumes_exactly(tff_worker, tmp_path):
  straight = _run(tmp_path, 'straight', total_rounds=3)
  _run(tmp_path, 'resumed', total_rounds=2)
  resumed = _run(tmp_path, 'resumed', total_rounds=3)
  assert [r['round'] for r in resumed] == [3]
  for a, b in zip(straight[2:], resumed):
    for key in ('train_loss', 'clusters_num_clusters', 'clusters_size_0'):
      assert a[key] == pytest.approx(b[key], rel=1e-6), key
  assert straight[-1]['eval_accuracy'] == pytest.approx(
      resumed[-1]['eval_accuracy'], rel=1e-6)
  s = _final_state(tmp_path / 'straight')
  r = _final_state(tmp_path / 'resumed')
  assert int(s['round']) == int(r['round']) == 3
  for x, y in zip(tf.nest.flatten(s['state']), tf.nest.flatten(r['state'])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with open(tmp_path / 'straight' / 'metrics.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  # Clustering steps at rounds 2 and 3 (warmup 1, every round).
  assert [bool(row['clusters_changed']) for row in rows] == [
      False, True, True]
  assert all(row['clusters_num_clusters'] for row in rows)
  sizes = [int(rows[-1][f'clusters_size_{c}']) for c in (0, 1)]
  assert sum(sizes) == 6
  # The similarity matrix is an image at each clustering step.
  assert [t for t in _image_tags(tmp_path / 'straight')
          if t[1].startswith('clusters/')] == [
              (2, 'clusters/similarity'), (3, 'clusters/similarity')]
