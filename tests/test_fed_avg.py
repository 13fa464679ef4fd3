"""FedAvg equals an independent numpy computation of McMahan et al.'s rule."""

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_research import algorithms
from tests import fl_testing

LR = 0.05
BATCH = 4


def _run_rounds(config, model_name, clients, rounds):
  alg = algorithms.build_algorithm(
      config, fl_testing.linear_model_fn(name=model_name))
  (w, b), metrics = fl_testing.run_rounds(alg, clients, rounds, BATCH)
  return w, b, metrics


def _numpy_fed_avg(clients, rounds, weighted, server_lr=1.0):
  w = np.zeros((fl_testing.INPUT_DIM, 10))
  b = np.zeros(10)
  for _ in range(rounds):
    w, b = fl_testing.numpy_fed_avg_round(w, b, clients, LR, BATCH, weighted,
                                          server_lr)
  return w, b


@pytest.mark.parametrize('weighted', [True, False])
@pytest.mark.parametrize('model_name', ['linear', 'linear_variable'])
def test_two_rounds_match_numpy_reference(tff_worker, weighted, model_name):
  clients = fl_testing.make_clients([9, 4, 6])
  config = algorithms.AlgorithmConfig(
      client_learning_rate=LR, server_learning_rate=1.0, weighted=weighted)
  w, b, _ = _run_rounds(config, model_name, clients, rounds=2)
  ref_w, ref_b = _numpy_fed_avg(clients, 2, weighted)
  np.testing.assert_allclose(w, ref_w, atol=1e-5)
  np.testing.assert_allclose(b, ref_b, atol=1e-5)
  # Weighted and uniform must actually differ on unequal clients.
  other_w, _ = _numpy_fed_avg(clients, 2, not weighted)
  assert np.abs(other_w - ref_w).max() > 1e-4


def test_server_learning_rate_scales_the_averaged_delta(tff_worker):
  clients = fl_testing.make_clients([5, 5])
  config = algorithms.AlgorithmConfig(
      client_learning_rate=LR, server_learning_rate=0.5)
  w, b, _ = _run_rounds(config, 'linear', clients, rounds=1)
  ref_w, ref_b = _numpy_fed_avg(clients, 1, True, server_lr=0.5)
  np.testing.assert_allclose(w, ref_w, atol=1e-6)
  np.testing.assert_allclose(b, ref_b, atol=1e-6)


def test_train_metrics_are_example_weighted_over_clients(tff_worker):
  clients = fl_testing.make_clients([8, 3])
  config = algorithms.AlgorithmConfig(client_learning_rate=LR)
  _, _, metrics = _run_rounds(config, 'linear', clients, rounds=1)
  train = metrics['train']
  assert train['num_examples'] == 11
  assert train['num_batches'] == 2 + 1
  np.testing.assert_allclose(
      train['loss'], fl_testing.pre_step_train_loss(
          np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10), clients, LR,
          BATCH), rtol=1e-5)


def test_keras_and_variable_linear_models_train_identically(tff_worker):
  clients = fl_testing.make_clients([7, 12, 3], seed=3)
  config = algorithms.AlgorithmConfig(client_learning_rate=0.1)
  kw, kb, km = _run_rounds(config, 'linear', clients, rounds=3)
  vw, vb, vm = _run_rounds(config, 'linear_variable', clients, rounds=3)
  np.testing.assert_allclose(kw, vw, atol=1e-6)
  np.testing.assert_allclose(kb, vb, atol=1e-6)
  for key in ('loss', 'sparse_categorical_accuracy', 'num_examples'):
    np.testing.assert_allclose(km['train'][key], vm['train'][key], rtol=1e-5)


def test_process_type_signature_places_state_at_server():
  alg = algorithms.build_algorithm(
      algorithms.AlgorithmConfig(), fl_testing.linear_model_fn())
  sig = alg.process.next.type_signature
  assert sig.parameter[0].placement is tff.SERVER
  assert sig.parameter[1].placement is tff.CLIENTS
  assert sig.result.state.placement is tff.SERVER


def test_model_weights_read_from_state_equal_tffs_own(tff_worker, tmp_path):
  """`get_model_weights` reads the state's `global_model_weights` without a
  runtime call; it must equal TFF's `process.get_model_weights`, also for a
  state restored from a checkpoint."""
  import asyncio  # pylint: disable=g-import-not-at-top
  from tff_research import algorithms  # pylint: disable=g-import-not-at-top
  from tff_research.run import training  # pylint: disable=g-import-not-at-top
  algorithm = algorithms.build_algorithm(
      algorithms.AlgorithmConfig(client_learning_rate=0.5),
      fl_testing.linear_model_fn(), ['a', 'b'])
  data = fl_testing.make_clients((4, 6), seed=2)
  state, _ = algorithm.next(
      algorithm.initialize(), 1, ['a', 'b'],
      [fl_testing.to_dataset(x, y, 3) for x, y in data])
  manager = training.state_manager(str(tmp_path))
  asyncio.run(manager.save({'round': 1, 'state': state}, 1))
  restored, _ = asyncio.run(manager.load_latest(
      {'round': 0, 'state': algorithm.initialize()}))
  for s in (state, restored['state']):
    ours = algorithm.get_model_weights(s)
    assert isinstance(s.global_model_weights,
                      type(ours))  # read from the state, no runtime call
    theirs = algorithm.process.get_model_weights(s)
    for a, b in zip(ours.trainable, theirs.trainable):
      np.testing.assert_array_equal(a, b)
