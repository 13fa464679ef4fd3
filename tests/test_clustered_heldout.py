"""Clustered FL with --eval_on=heldout_clients: a held-out client chooses the
cluster of least loss on its train split and is evaluated on its test split
(IFCA's assignment of a new client), on hand-made clients whose right
cluster is known, from memory and from the array store; and the flag
combination end to end through experiments/train.py."""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_research import evaluation
from tff_research.algorithms import clustered
from tff_research.data import build_emnist_cache
from tff_research.data import emnist
from tff_research.data import federated_data
from tff_research.data import femnist_arrays
from tff_research.data import partition
from tff_research.evaluation import model_choice
from tff_research.evaluation import per_client
from tff_research.run import checkpoint_evaluation
from tff_research.run import client_split
from tff_research.run import config as config_lib
from tff_research.run import held_out_evaluation
from tff_research.run import validation_split
from tests import fl_testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = [f'w{i}' for i in range(8)]
NUM_TRAIN, NUM_TEST = 6, 3
HELDOUT = dict(eval_on='heldout_clients', heldout_client_fraction=0.5)


def _label(group, k):
  """Group 0 sees label k for pattern k, group 1 label (k + 5) mod 10."""
  return (k + 5 * group) % 10


def _examples(rng, group, n):
  k = rng.integers(0, 10, n)
  pixels = np.zeros((n, 28, 28), np.float32)
  pixels.reshape(n, -1)[np.arange(n), k] = 1.0
  return pixels, np.array([_label(group, c) for c in k], np.int32)


def _clients():
  """{id: (train (pixels, labels), test (pixels, labels))}: writer i is in
  group i % 2, except that the first held-out writer's *test* split
  follows the other group (its train split chooses; its test split shows
  the choice was made on the train split)."""
  heldout = partition.heldout_split(IDS, 0.5, 0)[1]
  rng = np.random.default_rng(0)
  out = collections.OrderedDict()
  for i, cid in enumerate(IDS):
    group = i % 2
    test_group = 1 - group if cid == heldout[0] else group
    out[cid] = (_examples(rng, group, NUM_TRAIN),
                _examples(rng, test_group, NUM_TEST))
  return out


def _in_memory(clients):
  def client_data(split):
    return tff.simulation.datasets.TestClientData({
        cid: collections.OrderedDict(label=parts[split][1],
                                     pixels=parts[split][0])
        for cid, parts in clients.items()})
  train = client_data(0)
  return federated_data.FederatedData(train, client_data(1), 10, tuple(IDS),
                                      'hand-made')


def _in_store(clients, cache_dir):
  def stacked(split):
    pixels = np.concatenate([p[split][0] for p in clients.values()])
    labels = np.concatenate([p[split][1] for p in clients.values()])
    owner = np.repeat(np.arange(len(IDS)),
                      [len(p[split][1]) for p in clients.values()])
    return pixels, labels, owner.astype(np.int32)
  train, test = stacked(0), stacked(1)
  arrays = femnist_arrays.FemnistArrays(IDS, *train, *test)
  build_emnist_cache.write_emnist_sqlite(arrays, str(cache_dir))
  train_cd, test_cd = emnist.load_emnist(True, str(cache_dir), log=lambda _: 0)
  return federated_data.FederatedData(train_cd, test_cd, 10,
                                      tuple(train_cd.client_ids), 'store')


def _right_models():
  """Linear models: model g maps pattern k to _label(g, k)."""
  out = []
  for group in (0, 1):
    kernel = np.zeros((fl_testing.INPUT_DIM, 10), np.float32)
    for k in range(10):
      kernel[k, _label(group, k)] = 10.0
    out.append([kernel, np.zeros(10, np.float32)])
  return out


def _clustered_state(train_ids):
  """A two-cluster state whose cluster g holds _right_models()[g], cluster 1
  the larger (the default for a client that cannot choose)."""
  alg = clustered.build_clustered_fed_avg(
      fl_testing.linear_model_fn(), train_ids,
      client_optimizer=tff.learning.optimizers.build_sgdm(0.1),
      metric='cosine', num_clusters=2, recluster_every=1, warmup_rounds=0)
  state = alg.initialize()
  for g, (kernel, bias) in enumerate(_right_models()):
    state['models'].trainable[0][g] = kernel
    state['models'].trainable[1][g] = bias
  state['num_clusters'] = np.int32(2)
  state['assignments'] = np.array([0] + [1] * (len(train_ids) - 1), np.int32)
  return alg, state


@pytest.mark.parametrize('where', ['memory', 'store'])
def test_a_heldout_client_takes_the_cluster_right_for_its_train_split(
    tff_worker, tmp_path, where):
  clients = _clients()
  data = (_in_memory(clients) if where == 'memory'
          else _in_store(clients, tmp_path))
  split = client_split.ClientSplit(
      data, config_lib.EvaluationConfig(**HELDOUT), seed=0, choose_model=True)
  assert split.chooses_model and split.eval_client_ids == (
      partition.heldout_split(IDS, 0.5, 0)[1])
  source, selection = split.eval_datasets(), split.selection_datasets()
  if where == 'store':  # Read by the worker: the graphs hold recipes only.
    assert isinstance(source, per_client.RecipeSource)
    assert isinstance(selection, per_client.RecipeSource)
  alg, state = _clustered_state(split.train_client_ids)
  evaluator = evaluation.Evaluator(fl_testing.linear_model_fn(), 10)
  groups, sizes = held_out_evaluation.EvalModels(
      alg, split, evaluator).groups(state)

  truth = [IDS.index(c) % 2 for c in split.eval_client_ids]
  assert [sorted(g) for _, g in groups] == [
      [i for i, t in enumerate(truth) if t == k] for k in (0, 1)]
  assert sizes == {'heldout_size_0': truth.count(0),
                   'heldout_size_1': truth.count(1), 'heldout_by_default': 0}
  result = evaluator.evaluate_groups(groups, source)
  # Evaluated on the test split only; right everywhere but on the writer
  # whose test split follows the other group: the choice was made on its
  # train split, which its test split would have contradicted.
  assert result['per_client_num_examples'].tolist() == [NUM_TEST] * 4
  assert result['per_client_accuracy'].tolist() == [0.0, 1.0, 1.0, 1.0]
  on_test = [evaluator.evaluate(
      tff.learning.models.ModelWeights(w, []), source)['per_client_loss']
             for w in _right_models()]
  assert int(np.argmin([l[0] for l in on_test])) != truth[0]
  assert evaluator.evaluate(
      tff.learning.models.ModelWeights(_right_models()[0], []), selection)[
          'per_client_num_examples'].tolist() == [NUM_TRAIN] * 4


def test_choice_ignores_nan_models_and_defaults_without_selection_data(
    tff_worker):
  clients = _clients()
  datasets = [fl_testing.to_dataset(p[0][0].reshape(-1, 784), p[0][1], 4)
              for p in clients.values()][:3]
  x, y = clients['w0'][0]
  datasets.append(fl_testing.to_dataset(x[:0].reshape(0, 784), y[:0], 4))
  right = [tff.learning.models.ModelWeights(w, []) for w in _right_models()]
  nan = tff.learning.models.ModelWeights(
      [np.full_like(right[0].trainable[0], np.nan), right[0].trainable[1]],
      [])
  evaluator = evaluation.Evaluator(fl_testing.linear_model_fn())
  choice = model_choice.choose_by_loss(
      evaluator, [nan] + right, per_client.DatasetSource(datasets), default=2)
  # w0, w2 are group 0 (model 1 here), w1 group 1; the empty client cannot
  # choose and takes the default.
  assert choice.choice.tolist() == [1, 2, 1, 2]
  assert choice.by_default.tolist() == [False, False, False, True]
  assert choice.counts(3).tolist() == [0, 2, 2]
  one = model_choice.choose_by_loss(evaluator, right[:1],
                                    per_client.DatasetSource(datasets), 0)
  assert one.choice.tolist() == [0] * 4
  with pytest.raises(ValueError, match='default=3 is not one of the 2'):
    model_choice.choose_by_loss(evaluator, right,
                                per_client.DatasetSource(datasets), 3)


def test_heldout_clients_without_test_examples_are_named_not_evaluated():
  clients = _clients()
  data = _in_memory(clients)
  without = partition.heldout_split(IDS, 0.5, 0)[1][1]
  test = tff.simulation.datasets.TestClientData({
      cid: collections.OrderedDict(label=p[1][1], pixels=p[1][0])
      for cid, p in clients.items() if cid != without})
  data = federated_data.FederatedData(data.train, test, 10, tuple(IDS), 'x')
  evaluation_config = config_lib.EvaluationConfig(**HELDOUT)
  split = client_split.ClientSplit(data, evaluation_config, 0,
                                   choose_model=True)
  assert without not in split.eval_client_ids
  assert split.untested_client_ids == [without]
  assert split.describe_left_out().startswith(
      '1 held-out clients without test examples are not evaluated')
  # Without a model to choose, the held-out client is evaluated on all of
  # its data, as before.
  plain = client_split.ClientSplit(data, evaluation_config, 0)
  assert without in plain.eval_client_ids and not plain.chooses_model
  with pytest.raises(ValueError, match='selection data exists only'):
    plain.selection_datasets()


@pytest.mark.parametrize('where', ['memory', 'store'])
def test_heldout_validation_keeps_a_validation_clients_test_split_apart(
    tmp_path, where):
  """Validation clients (--validation_fraction with heldout_clients) keep
  their test split in the carved test data: evaluated whole (train then
  test, the examples they always were) or, choosing a cluster, on it."""
  clients = _clients()
  data = (_in_memory(clients) if where == 'memory'
          else _in_store(clients, tmp_path))
  evaluation_config = config_lib.EvaluationConfig(
      **HELDOUT, validation_fraction=0.5)
  carved, split_config = validation_split.carve(data, evaluation_config, 0)
  whole = client_split.ClientSplit(carved, split_config, 0)
  chooses = client_split.ClientSplit(carved, split_config, 0,
                                     choose_model=True)
  assert whole.eval_client_ids == chooses.eval_client_ids
  assert len(whole.eval_client_ids) == 2  # round(0.5 * 4 training writers)

  def labels(ds):
    return [int(e['label']) for e in ds.as_numpy_iterator()]

  for cid in whole.eval_client_ids:
    (_, train_labels), (_, test_labels) = clients[cid]
    assert labels(whole.raw_eval_dataset(cid)) == (
        train_labels.tolist() + test_labels.tolist())
    assert labels(chooses.raw_eval_dataset(cid)) == test_labels.tolist()
  # A training client trains on all of its data, test split included.
  trainer = whole.train_client_ids[0]
  assert len(labels(carved.train.create_tf_dataset_for_client(trainer))) == (
      NUM_TRAIN + NUM_TEST)


# --- experiments/train.py --clustering --eval_on=heldout_clients ------------

# gamma_max 0: the first clustering step (round 2) splits, so the held-out
# clients choose between two clusters in rounds 2 and 3.
FLAGS = dict(
    dataset='digits', model='linear', num_clients=8, clients_per_round=6,
    client_learning_rate=0.01, batch_size=10, total_rounds=3, eval_every=1,
    rounds_per_checkpoint=1, clustering='cosine', num_clusters=2,
    cluster_warmup_rounds=1, recluster_every=1, permute_labels_fraction=0.5,
    split_gamma_max=0, eval_on='heldout_clients', heldout_client_fraction=0.25)


def test_train_binary_runs_clustering_with_heldout_clients(tff_worker,
                                                           tmp_path):
  argv = [f'--{k}={v}' for k, v in FLAGS.items()]
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'experiments', 'train.py'),
       f'--logdir={tmp_path}', '--experiment_name=run', '--noprogress']
      + argv, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = fl_testing.read_csv(tmp_path / 'run' / 'metrics.csv')
  assert [int(r['round']) for r in rows] == [1, 2, 3]
  assert [int(r['clusters_num_clusters']) for r in rows] == [1, 2, 2]
  for row in rows:
    clusters = int(row['clusters_num_clusters'])
    sizes = [int(row[f'eval_heldout_size_{k}']) for k in range(clusters)]
    assert sum(sizes) == int(row['eval_num_clients']) == 2  # 0.25 * 8
    assert int(row['eval_heldout_by_default']) == 0
    assert 0.0 <= float(row['eval_accuracy']) <= 1.0
  # experiments/evaluate.py's path chooses the same clusters and reports the
  # run's last evaluation.
  out = checkpoint_evaluation.evaluate_checkpoint(
      str(tmp_path / 'run' / 'checkpoints'))
  last = rows[-1]
  assert out['eval_on'] == 'heldout_clients'
  assert out['accuracy'] == pytest.approx(float(last['eval_accuracy']),
                                          rel=1e-6)
  for k in range(int(last['clusters_num_clusters'])):
    assert out[f'heldout_size_{k}'] == int(last[f'eval_heldout_size_{k}'])
  assert len(out['per_client']) == 2
