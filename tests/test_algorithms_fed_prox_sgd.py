"""FedProx (Li et al. 2020) and FedSGD (McMahan et al. 2017) against numpy.

FedProx: mu = 0 is FedAvg; mu > 0 is local SGD on F_i(y) + mu/2 ||y - x||^2;
a larger mu shortens the client update. FedSGD: one full-batch gradient step
on the union of the round's clients' data.
"""

import functools

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_research import algorithms
from tff_research.algorithms import base
from tests import fl_testing

LR = 0.05
BATCH = 4


@functools.lru_cache(maxsize=None)
def _algorithm(name, **hyperparameters):
  return algorithms.build_algorithm(
      algorithms.AlgorithmConfig(algorithm=name, **hyperparameters),
      fl_testing.linear_model_fn())


def _run(alg, clients, rounds):
  return fl_testing.run_rounds(alg, clients, rounds, BATCH)


def _local_prox_sgd(w, b, x, y, mu):
  w0, b0 = w, b
  for start in range(0, len(y), BATCH):
    gw, gb = fl_testing.softmax_ce_grad(
        w, b, x[start:start + BATCH], y[start:start + BATCH])
    w = w - LR * (gw + mu * (w - w0))
    b = b - LR * (gb + mu * (b - b0))
  return w, b


def _numpy_fed_prox(clients, rounds, mu):
  w, b = np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10)
  n = np.array([len(y) for _, y in clients], dtype=np.float64)
  for _ in range(rounds):
    models = [_local_prox_sgd(w, b, x, y, mu) for x, y in clients]
    w = np.tensordot(n / n.sum(), [m[0] for m in models], axes=1)
    b = np.tensordot(n / n.sum(), [m[1] for m in models], axes=1)
  return w, b


def test_fed_prox_with_mu_0_is_fed_avg(tff_worker):
  clients = fl_testing.make_clients([9, 4, 6])
  (prox_w, prox_b), prox_metrics = _run(
      _algorithm('fedprox', client_learning_rate=LR, proximal_strength=0.0),
      clients, rounds=2)
  (avg_w, avg_b), avg_metrics = _run(
      _algorithm('fedavg', client_learning_rate=LR), clients, rounds=2)
  np.testing.assert_allclose(prox_w, avg_w, atol=1e-6)
  np.testing.assert_allclose(prox_b, avg_b, atol=1e-6)
  np.testing.assert_allclose(prox_metrics['train']['loss'],
                             avg_metrics['train']['loss'], rtol=1e-6)


def test_fed_prox_matches_numpy_proximal_local_sgd(tff_worker):
  # Epochs of 12 examples in batches of 4 on a strong mu: the proximal pull
  # moves the result by far more than the tolerance.
  clients = fl_testing.make_clients([12, 8], seed=1)
  (w, b), _ = _run(
      _algorithm('fedprox', client_learning_rate=LR, proximal_strength=5.0),
      clients, rounds=2)
  ref_w, ref_b = _numpy_fed_prox(clients, 2, mu=5.0)
  np.testing.assert_allclose(w, ref_w, atol=1e-6)
  np.testing.assert_allclose(b, ref_b, atol=1e-6)
  fed_avg_w, _ = _numpy_fed_prox(clients, 2, mu=0.0)
  assert np.abs(fed_avg_w - ref_w).max() > 1e-4


def test_tff_0_87_fed_prox_pushes_clients_away_from_the_global_model(
    tff_worker):
  """Why fed_prox.py does not use `build_weighted_fed_prox`.

  TFF 0.87's proximal client work adds mu * (x - y) instead of mu * (y - x),
  so it equals the numpy reference with mu negated. If this fails after a TFF
  upgrade, TFF fixed it and fed_prox.py can use TFF's builder again.
  """
  clients = fl_testing.make_clients([12, 8], seed=1)
  process = tff.learning.algorithms.build_weighted_fed_prox(
      fl_testing.linear_model_fn(), proximal_strength=5.0,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(LR))
  (w, b), _ = _run(base.LearningProcessAlgorithm(process), clients, rounds=2)
  anti_w, anti_b = _numpy_fed_prox(clients, 2, mu=-5.0)
  np.testing.assert_allclose(w, anti_w, atol=1e-6)
  np.testing.assert_allclose(b, anti_b, atol=1e-6)
  prox_w, _ = _numpy_fed_prox(clients, 2, mu=5.0)
  assert np.abs(prox_w - w).max() > 1e-3


def test_larger_mu_gives_a_smaller_client_update(tff_worker):
  # One client per round: the global model's change is that client's update.
  client = fl_testing.make_clients([16], seed=2)
  norms = []
  for mu in (0.0, 5.0, 10.0):
    (w, b), _ = _run(
        _algorithm('fedprox', client_learning_rate=LR, proximal_strength=mu),
        client, rounds=1)
    norms.append(np.sqrt(np.sum(w**2) + np.sum(b**2)))
    ref_w, _ = _numpy_fed_prox(client, 1, mu)
    np.testing.assert_allclose(w, ref_w, atol=1e-6)
  assert norms[0] > norms[1] > norms[2] > 0, norms
  # Not a rounding effect: each step shrinks the update by ~(1 - LR mu).
  assert norms[2] < 0.8 * norms[0], norms


def test_fed_sgd_is_a_full_batch_gradient_step_on_the_union(tff_worker):
  clients = fl_testing.make_clients([9, 4, 6], seed=3)
  server_lr = 0.5
  (w, b), metrics = _run(
      _algorithm('fedsgd', server_learning_rate=server_lr), clients, rounds=2)
  x_all = np.concatenate([x for x, _ in clients])
  y_all = np.concatenate([y for _, y in clients])
  ref_w, ref_b = np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10)
  losses = []
  for _ in range(2):
    losses.append(fl_testing.mean_loss_and_accuracy(ref_w, ref_b, x_all,
                                                    y_all)[0])
    gw, gb = fl_testing.softmax_ce_grad(ref_w, ref_b, x_all, y_all)
    ref_w, ref_b = ref_w - server_lr * gw, ref_b - server_lr * gb
  np.testing.assert_allclose(w, ref_w, atol=1e-6)
  np.testing.assert_allclose(b, ref_b, atol=1e-6)
  # Every batch is evaluated at the round's global model: the reported loss
  # is the union's mean loss before the step.
  assert metrics['train']['num_examples'] == 19
  np.testing.assert_allclose(metrics['train']['loss'], losses[-1], rtol=1e-5)
  # The uniform mean of client gradients is a different step here.
  uniform = np.mean([fl_testing.softmax_ce_grad(
      np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10), x, y)[0]
                     for x, y in clients], axis=0)
  first_step = -server_lr * fl_testing.softmax_ce_grad(
      np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10), x_all, y_all)[0]
  assert np.abs(-server_lr * uniform - first_step).max() > 1e-4


def test_fed_sgd_cannot_be_unweighted():
  with pytest.raises(ValueError, match='always example-weighted'):
    algorithms.build_algorithm(
        algorithms.AlgorithmConfig(algorithm='fedsgd', weighted=False),
        fl_testing.linear_model_fn())


def test_fed_prox_rejects_negative_mu():
  with pytest.raises(ValueError, match='proximal_strength=-0.5 is not valid'):
    algorithms.build_algorithm(
        algorithms.AlgorithmConfig(algorithm='fedprox', proximal_strength=-0.5),
        fl_testing.linear_model_fn())
