"""FedAvg / FedAvgM / FedAdam / FedYogi / FedAdagrad against numpy references
of Reddi et al. 2021's server update rules (module docstring of
tff_research/algorithms/server_optimizers.py), and the client optimizers.

Every reference runs the clients' local SGD in numpy (fl_testing.local_sgd)
from the current global model, averages the deltas by example count and
applies the paper's rule; TFF runs the same three rounds on the same
unshuffled data. A variant of each rule that is plausibly wrong (no bias
correction, no momentum, Adam's instead of Yogi's second moment, tau outside
the root) must disagree by far more than the tolerance, so the comparisons
can fail.
"""

import numpy as np
import pytest
import tensorflow as tf

from tff_research import algorithms
from tff_research.algorithms import server_optimizers
from tests import fl_testing

LR = 0.05
BATCH = 4
ROUNDS = 3
SIZES = [9, 4, 6]
ATOL = 2e-6


def _tff_rounds(config, clients, rounds=ROUNDS):
  alg = algorithms.build_algorithm(config, fl_testing.linear_model_fn())
  return fl_testing.run_rounds(alg, clients, rounds, BATCH)[0]


def _mean_delta(params, clients):
  """Example-weighted mean of the clients' local-SGD deltas at `params`."""
  w, b = params
  n = np.array([len(y) for _, y in clients], dtype=np.float64)
  deltas = []
  for x, y in clients:
    cw, cb = fl_testing.local_sgd(w, b, x, y, LR, BATCH)
    deltas.append((cw - w, cb - b))
  return [sum(ni * d[k] for ni, d in zip(n, deltas)) / n.sum()
          for k in range(2)]


def _numpy_run(rule, clients, rounds=ROUNDS):
  """Global model after `rounds` rounds of FedAvg with server rule `rule`.

  `rule(state, x, delta, t)` -> (state, new x) for one parameter array;
  `state` starts as None.
  """
  params = [np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10)]
  states = [None, None]
  for t in range(1, rounds + 1):
    delta = _mean_delta(params, clients)
    for k in range(2):
      states[k], params[k] = rule(states[k], params[k], delta[k], t)
  return params


def _sgd(lr):
  def rule(state, x, d, t):
    del t
    return state, x + lr * d
  return rule


def _momentum(lr, beta):
  def rule(v, x, d, t):
    del t
    v = d if v is None else beta * v + d
    return v, x + lr * v
  return rule


def _adam(lr, beta_1, beta_2, tau, yogi=False, bias_correction=True):
  def rule(state, x, d, t):
    m, v = state if state is not None else (np.zeros_like(x), np.zeros_like(x))
    m = beta_1 * m + (1 - beta_1) * d
    if yogi:
      v = v - (1 - beta_2) * d**2 * np.sign(v - d**2)
    else:
      v = beta_2 * v + (1 - beta_2) * d**2
    scale = (np.sqrt(1 - beta_2**t) / (1 - beta_1**t) if bias_correction
             else 1.0)
    return (m, v), x + lr * scale * m / (np.sqrt(v) + tau)
  return rule


def _adagrad(lr, tau, tau_inside_root=True):
  def rule(v, x, d, t):
    del t
    if v is None:
      v = np.full_like(x, tau**2 if tau_inside_root else 0.0)
    v = v + d**2
    step = d / np.sqrt(v) if tau_inside_root else d / (np.sqrt(v) + tau)
    return v, x + lr * step
  return rule


# Non-default hyperparameters, so each flag's wiring is checked too.
CASES = {
    'fedavgm': (
        dict(server_learning_rate=0.7, server_momentum=0.8),
        _momentum(0.7, 0.8),
        _sgd(0.7),  # wrong: momentum ignored
    ),
    'fedadam': (
        dict(server_learning_rate=0.02, server_beta_1=0.8, server_beta_2=0.95,
             server_epsilon=1e-3),
        _adam(0.02, 0.8, 0.95, 1e-3),
        _adam(0.02, 0.8, 0.95, 1e-3, bias_correction=False),
    ),
    'fedyogi': (
        dict(server_learning_rate=0.02, server_beta_1=0.8, server_beta_2=0.95,
             server_epsilon=1e-3),
        _adam(0.02, 0.8, 0.95, 1e-3, yogi=True),
        _adam(0.02, 0.8, 0.95, 1e-3),  # wrong: Adam's second moment
    ),
    'fedadagrad': (
        dict(server_learning_rate=0.05, server_epsilon=0.02),
        _adagrad(0.05, 0.02),
        _adagrad(0.05, 0.02, tau_inside_root=False),
    ),
}


@pytest.mark.parametrize('algorithm', sorted(CASES))
def test_three_server_steps_match_the_papers_rule(tff_worker, algorithm):
  hyperparameters, rule, wrong_rule = CASES[algorithm]
  clients = fl_testing.make_clients(SIZES)
  config = algorithms.AlgorithmConfig(
      algorithm=algorithm, client_learning_rate=LR, **hyperparameters)
  w, b = _tff_rounds(config, clients)
  ref_w, ref_b = _numpy_run(rule, clients)
  np.testing.assert_allclose(w, ref_w, atol=ATOL)
  np.testing.assert_allclose(b, ref_b, atol=ATOL)
  wrong_w, _ = _numpy_run(wrong_rule, clients)
  assert np.abs(wrong_w - ref_w).max() > 50 * ATOL


def test_fedavg_with_server_lr_1_is_the_weighted_average_of_client_models(
    tff_worker):
  clients = fl_testing.make_clients(SIZES, seed=1)
  config = algorithms.AlgorithmConfig(
      algorithm='fedavg', client_learning_rate=LR, server_learning_rate=1.0)
  w, b = _tff_rounds(config, clients, rounds=1)
  zero_w, zero_b = np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10)
  models = [fl_testing.local_sgd(zero_w, zero_b, x, y, LR, BATCH)
            for x, y in clients]
  n = np.array(SIZES, dtype=np.float64)
  np.testing.assert_allclose(
      w, np.tensordot(n / n.sum(), [m[0] for m in models], axes=1), atol=1e-6)
  np.testing.assert_allclose(
      b, np.tensordot(n / n.sum(), [m[1] for m in models], axes=1), atol=1e-6)
  # The uniform average is a different model on these unequal clients.
  uniform_w = np.mean([m[0] for m in models], axis=0)
  assert np.abs(uniform_w - w).max() > 1e-4


def test_client_sgdm_matches_local_momentum_sgd(tff_worker):
  clients = fl_testing.make_clients([8, 5], seed=2)
  config = algorithms.AlgorithmConfig(
      algorithm='fedavg', client_optimizer='sgdm', client_learning_rate=LR,
      client_momentum=0.5)
  w, b = _tff_rounds(config, clients, rounds=1)

  def local_momentum_sgd(x, y):
    params = [np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10)]
    velocity = [np.zeros_like(p) for p in params]
    for start in range(0, len(y), BATCH):
      grads = fl_testing.softmax_ce_grad(
          *params, x[start:start + BATCH], y[start:start + BATCH])
      for k in range(2):
        velocity[k] = 0.5 * velocity[k] + grads[k]
        params[k] = params[k] - LR * velocity[k]
    return params

  models = [local_momentum_sgd(x, y) for x, y in clients]
  n = np.array([8, 5], dtype=np.float64) / 13
  np.testing.assert_allclose(
      w, np.tensordot(n, [m[0] for m in models], axes=1), atol=1e-6)
  np.testing.assert_allclose(
      b, np.tensordot(n, [m[1] for m in models], axes=1), atol=1e-6)


@pytest.mark.parametrize('algorithm,expected', [
    ('fedavg', {'learning_rate': 1.0}),
    ('fedavgm', {'learning_rate': 10**-0.5, 'momentum': 0.9}),
    ('fedadam', {'learning_rate': 10**-2.5, 'beta_1': 0.9, 'beta_2': 0.999,
                 'epsilon': 1e-4}),
    ('fedyogi', {'learning_rate': 10**-2.5, 'beta_1': 0.9, 'beta_2': 0.999,
                 'epsilon': 1e-4}),
    ('fedadagrad', {'learning_rate': 10**-1, 'epsilon': 0.0}),
])
def test_default_server_optimizers_carry_the_papers_emnist_values(
    algorithm, expected):
  optimizer = server_optimizers.build_server_optimizer(algorithm)
  state = optimizer.initialize([tf.TensorSpec([3], tf.float32)])
  for name, value in expected.items():
    assert state[name] == pytest.approx(value, rel=1e-6), name
  if algorithm == 'fedadagrad':
    # tau = 10^-2 enters as the initial accumulator tau^2.
    np.testing.assert_allclose(state['preconditioner'][0], 1e-4, rtol=1e-6)


def test_algorithm_config_resolves_defaults_only_for_used_hyperparameters():
  adam = algorithms.AlgorithmConfig(algorithm='fedadam')
  assert adam.server_learning_rate == pytest.approx(10**-2.5)
  assert (adam.server_beta_1, adam.server_beta_2, adam.server_epsilon) == (
      0.9, 0.999, 1e-4)
  assert adam.server_momentum is None and adam.proximal_strength is None
  assert algorithms.AlgorithmConfig().server_learning_rate == 1.0
  assert algorithms.AlgorithmConfig(
      algorithm='fedsgd').server_learning_rate == 0.1
  assert algorithms.AlgorithmConfig(
      algorithm='fedprox').proximal_strength == 1.0
  # An explicit value wins over the default.
  assert algorithms.AlgorithmConfig(
      algorithm='fedavgm', server_momentum=0.5).server_momentum == 0.5


@pytest.mark.parametrize('given,message', [
    (dict(algorithm='fedadam', server_momentum=0.9),
     r'server_momentum=0.9 does not apply to --algorithm=fedadam'),
    (dict(algorithm='fedavg', proximal_strength=0.1),
     r'proximal_strength=0.1 does not apply'),
    (dict(algorithm='fedavg', client_momentum=0.9),
     r'client_momentum=0.9 does not apply'),
])
def test_unused_hyperparameters_are_rejected(given, message):
  with pytest.raises(ValueError, match=message):
    algorithms.AlgorithmConfig(**given)


def test_server_optimizer_rejects_hyperparameters_it_does_not_use():
  with pytest.raises(ValueError, match='beta_1=0.5 does not apply to fedavgm'):
    server_optimizers.build_server_optimizer('fedavgm', beta_1=0.5)
  with pytest.raises(ValueError, match='unknown server-optimizer algorithm'):
    server_optimizers.build_server_optimizer('fedfoo')
