"""Per-client training metrics from the round's own client work.

Each client's row must be exactly what TFF reports for a round in which that
client trains alone, and the example-weighted mean of the rows must be the
round's aggregate `train` loss, for every built-in algorithm family.
"""

import numpy as np
import pytest

from tests import fl_testing
from tff_research import algorithms
from tff_research.algorithms import client_metrics

SIZES = (3, 7, 5, 11)
IDS = [f'c{i}' for i in range(len(SIZES))]
BATCH = 4


def _datasets():
  return [fl_testing.to_dataset(x, y, BATCH)
          for x, y in fl_testing.make_clients(SIZES, seed=3)]


def _build(algorithm, **kwargs):
  config = algorithms.AlgorithmConfig(algorithm, client_learning_rate=0.5,
                                      **kwargs)
  return algorithms.build_algorithm(config, fl_testing.linear_model_fn(), IDS)


def test_rows_equal_single_client_rounds_fedavg(tff_worker):
  algorithm = _build('fedavg')
  state = algorithm.initialize()
  datasets = _datasets()
  _, metrics = algorithm.next(state, 1, IDS, datasets)
  assert client_metrics.KEY not in metrics['train']
  got = sorted(zip(metrics['clients']['loss'], metrics['clients']['accuracy']))
  alone = []
  for cid, ds in zip(IDS, datasets):
    _, m = algorithm.next(state, 1, [cid], [ds])
    alone.append((float(m['train']['loss']),
                  float(m['train']['sparse_categorical_accuracy'])))
  np.testing.assert_allclose(got, sorted(alone), rtol=1e-6)


def test_fedavg_first_batch_losses_are_log10(tff_worker):
  # The linear model starts at zero weights: every example's loss is
  # log(10) before the first step, so a one-batch client sees exactly that.
  algorithm = algorithms.build_algorithm(
      algorithms.AlgorithmConfig(client_learning_rate=0.5),
      fl_testing.linear_model_fn(), ['a', 'b'])
  data = fl_testing.make_clients((4, 2), seed=1)
  _, metrics = algorithm.next(
      algorithm.initialize(), 1, ['a', 'b'],
      [fl_testing.to_dataset(x, y, 8) for x, y in data])
  np.testing.assert_allclose(metrics['clients']['loss'], [np.log(10)] * 2,
                             rtol=1e-6)


@pytest.mark.parametrize('algorithm,kwargs', [
    ('fedavg', {'weighted': False}),
    ('fedprox', {}),
    ('fedadam', {}),
    ('scaffold', {}),
    ('fedavg', {'clustering': 'cosine', 'num_clusters': 2,
                'cluster_warmup_rounds': 1}),
])
def test_weighted_mean_of_rows_is_the_train_loss(tff_worker, algorithm,
                                                  kwargs):
  algo = _build(algorithm, **kwargs)
  state = algo.initialize()
  for round_num in (1, 2):
    subset = [0, 2, 3] if round_num == 1 else [1, 2]
    ids = [IDS[i] for i in subset]
    datasets = [_datasets()[i] for i in subset]
    state, metrics = algo.next(state, round_num, ids, datasets)
    clients = metrics['clients']
    assert len(clients['loss']) == len(ids)
    # Every client trains on all of its examples once (1 epoch).
    assert sorted(clients['examples']) == sorted(SIZES[i] for i in subset)
    weighted = np.dot(clients['loss'], clients['examples']) / sum(
        clients['examples'])
    np.testing.assert_allclose(weighted, float(metrics['train']['loss']),
                               rtol=1e-5)


def test_capacity_is_checked():
  with pytest.raises(ValueError, match='capacity must be >= 1'):
    client_metrics.per_client_then_finalize(0)


def test_split_without_table_is_unchanged():
  train, clients = client_metrics.split({'loss': 1.0})
  assert train == {'loss': 1.0} and clients == {}


def test_more_clients_than_capacity_fails_loudly(tff_worker):
  algorithm = algorithms.build_algorithm(
      algorithms.AlgorithmConfig(client_learning_rate=0.5),
      fl_testing.linear_model_fn(), ['only'])
  with pytest.raises(Exception, match='capacity 1'):
    algorithm.next(algorithm.initialize(), 1, ['a', 'b'], _datasets()[:2])
