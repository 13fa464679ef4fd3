"""SCAFFOLD equals an independent numpy computation of Karimireddy et al.'s
option II, reduces to FedAvg when its control variates are zero, and resumes
exactly from a checkpoint holding c and every c_i."""

import asyncio
import collections
import csv

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_research import algorithms
from tff_research.aggregators import config as aggregation_config
from tff_research.attacks import config as attack_config
from tff_research.algorithms import scaffold
from tff_research.cli import flags
from tff_research.run import checkpoint_evaluation
from tff_research.run import run_directory
from tff_research.run import training
from tests import fl_testing

LR = 0.05
BATCH = 3
EPOCHS = 2
SIZES = [7, 4, 6]  # K = ceil(2 n / 3) = 5, 3, 4 local steps.
# Partial participation: every client skips a round, client 2 starts late.
SCHEDULE = [[0, 1], [1, 2], [2, 0]]
IDS = ['a', 'b', 'c']


def _datasets(clients, members):
  return [fl_testing.to_dataset(*clients[i], BATCH, epochs=EPOCHS)
          for i in members]


def _numpy_scaffold(clients, schedule, lr, server_lr, weighted):
  """Option II of Algorithm 1 in float64, one client at a time."""
  shapes = [(fl_testing.INPUT_DIM, 10), (10,)]
  n_clients = len(clients)
  x = [np.zeros(s) for s in shapes]
  c = [np.zeros(s) for s in shapes]
  ci = [[np.zeros(s) for s in shapes] for _ in clients]
  for members in schedule:
    dys, dcs, weights = [], [], []
    for i in members:
      # repeat(E).batch(B): batches run across the epoch boundary.
      xs, ys = (np.concatenate([a] * EPOCHS) for a in clients[i])
      y = [v.copy() for v in x]
      k = 0
      for start in range(0, len(ys), BATCH):
        g = fl_testing.softmax_ce_grad(
            y[0], y[1], xs[start:start + BATCH], ys[start:start + BATCH])
        y = [yv - lr * (gv - civ + cv)
             for yv, gv, civ, cv in zip(y, g, ci[i], c)]
        k += 1
      new_ci = [civ - cv + (xv - yv) / (k * lr)
                for civ, cv, xv, yv in zip(ci[i], c, x, y)]
      dys.append([yv - xv for yv, xv in zip(y, x)])
      dcs.append([n - o for n, o in zip(new_ci, ci[i])])
      ci[i] = new_ci
      weights.append(len(clients[i][1]) if weighted else 1.0)
    p = np.array(weights) / np.sum(weights)
    x = [xv + server_lr * sum(pj * d[v] for pj, d in zip(p, dys))
         for v, xv in enumerate(x)]
    c = [cv + len(members) / n_clients * np.mean([d[v] for d in dcs], axis=0)
         for v, cv in enumerate(c)]
  return x, c, ci


def _run_scaffold(alg, clients, schedule):
  state = alg.initialize()
  for r, members in enumerate(schedule, start=1):
    state, metrics = alg.next(state, r, [IDS[i] for i in members],
                              _datasets(clients, members))
  return state, metrics


@pytest.mark.parametrize('model_name,weighted,server_lr', [
    ('linear', True, 1.0),
    ('linear', False, 0.7),
    ('linear_variable', False, 1.0),
])
def test_three_rounds_match_numpy_reference(
    tff_worker, model_name, weighted, server_lr):
  clients = fl_testing.make_clients(SIZES, seed=1)
  alg = scaffold.build_scaffold(
      fl_testing.linear_model_fn(name=model_name), client_ids=IDS,
      client_learning_rate=LR, server_learning_rate=server_lr,
      weighted=weighted)
  state, metrics = _run_scaffold(alg, clients, SCHEDULE)
  ref_x, ref_c, ref_ci = _numpy_scaffold(
      clients, SCHEDULE, LR, server_lr, weighted)

  weights = alg.get_model_weights(state)
  for got, want in zip(weights.trainable, ref_x):
    np.testing.assert_allclose(got, want, atol=1e-5)
  for got, want in zip(state['server']['control_variate'], ref_c):
    np.testing.assert_allclose(got, want, atol=1e-5)
  for i, cid in enumerate(IDS):
    for got, want in zip(alg.get_client_control(state, cid), ref_ci[i]):
      np.testing.assert_allclose(got, want, atol=1e-5)
  # c stays the mean of all N client control variates (Algorithm 1's
  # invariant under partial participation).
  for v, c in enumerate(state['server']['control_variate']):
    np.testing.assert_allclose(
        c, np.mean(alg.client_controls(state)[v], axis=0), atol=1e-6)
  np.testing.assert_array_equal(state['participation'], [2, 2, 2])
  # The corrections matter here: plain FedAvg on the same schedule ends
  # elsewhere, so the comparison above cannot pass by accident.
  fedavg_x = _numpy_fed_avg(clients, SCHEDULE, server_lr, weighted)
  assert np.abs(fedavg_x[0] - ref_x[0]).max() > 1e-3
  assert metrics['scaffold']['new_clients'] == 0
  assert metrics['scaffold']['clients_seen'] == 3
  np.testing.assert_allclose(
      metrics['scaffold']['control_norm'],
      np.sqrt(sum(np.sum(c**2) for c in ref_c)), rtol=1e-5)


# Local results pinned to 1e-5, so that how the process is composed (its
# template parts, the aggregate that returns c_i+) cannot move them (float32
# sums differ by ~1e-6 between CPUs of different vector widths): 3 rounds
# of SCHEDULE with each rule of PINNED_RULES, the pipeline's aggregator (the
# excluding mean, example-weighted) and the median (uniform, eta_g = 0.7).
# Per array: its L2 norm and its dot products with two fixed random sign
# vectors (`_fingerprint`); one value per rule.
PINNED_RULES = ('mean', 'median')
PINNED = {
    'loss': (2.0298612117767334, 2.788076639175415),
    'x0': ((1.263937999, 0.517580003, -0.522594107),
           (0.856368012, 0.317046598, -0.199263885)),
    'x1': ((0.019786679, -0.03925726, -0.003427829),
           (0.018180775, -0.036337913, -0.000686225)),
    'c0': ((1.768259689, 0.304722083, -0.207888796),
           (1.916120912, 0.124473205, -0.427382451)),
    'c1': ((0.025251172, 0.035525159, 0.000762214),
           (0.04818486, 0.114545066, 0.004759295)),
    'ci0': ((7.545136772, -12.858967514, 6.428854957),
            (8.147482574, -14.281405145, 9.853274004)),
    'ci1': ((0.393080077, 0.816982718, 0.779212333),
            (0.438854412, 0.863044087, 0.858456638)),
}


def _fingerprint(array):
  x = np.asarray(array, np.float64).ravel()
  signs = np.random.default_rng(x.size).choice([-1.0, 1.0], size=(2, x.size))
  return [np.sqrt(x @ x), *(signs @ x)]


@pytest.mark.parametrize('rule', PINNED_RULES)
def test_local_results_are_pinned(tff_worker, rule):
  config = algorithms.AlgorithmConfig('scaffold', client_learning_rate=LR)
  if rule == 'median':
    config = config.replace(
        weighted=False, server_learning_rate=0.7,
        aggregation=aggregation_config.AggregationConfig('median'))
  alg = algorithms.build_algorithm(config, fl_testing.linear_model_fn(), IDS)
  state, metrics = _run_scaffold(alg, fl_testing.make_clients(SIZES, seed=1),
                                 SCHEDULE)
  got = dict(loss=metrics['train']['loss'])
  arrays = (('x', alg.get_model_weights(state).trainable),
            ('c', state['server']['control_variate']),
            ('ci', alg.client_controls(state)))
  for name, leaves in arrays:
    for v, leaf in enumerate(leaves):
      got[f'{name}{v}'] = _fingerprint(leaf)
  for key, values in PINNED.items():
    np.testing.assert_allclose(got[key], values[PINNED_RULES.index(rule)],
                               rtol=1e-5, atol=1e-5, err_msg=key)


# Cohorts: clients of different sizes, an empty one (2) and, in one case, a
# diverged one (4: NaN pixels from round 2 on); every round has a client
# that trains after the empty one in its cohort.
COHORT_SIZES = [7, 4, 0, 6, 9]
COHORT_SCHEDULE = [[0, 1, 2, 3], [4, 2, 0, 1, 3], [3, 4, 1, 2]]
COHORT_IDS = ['a', 'b', 'c', 'd', 'e']


def _cohort_rounds(alg, clients, diverged):
  """Three rounds of COHORT_SCHEDULE; (the state after each, the metrics
  of each)."""
  state, out = alg.initialize(), []
  for r, members in enumerate(COHORT_SCHEDULE, start=1):
    data = [fl_testing.to_dataset(*clients[i], BATCH, epochs=EPOCHS)
            for i in members]
    if diverged and r > 1:
      data[members.index(4)] = data[members.index(4)].map(
          lambda b: collections.OrderedDict(x=b['x'] * np.nan, y=b['y']))
    state, metrics = alg.next(state, r, [COHORT_IDS[i] for i in members],
                              data)
    out.append((state, metrics))
  return out


@pytest.mark.parametrize('weighted,diverged', [
    (True, False), (False, False), (True, True)])
def test_cohorts_equal_the_per_client_work(tff_worker, weighted, diverged):
  """The pipeline's plain mean trains SCAFFOLD in cohorts
  (`scaffold_cohorts`): one cohort and two end every round within 1e-6 of
  the per-client work with the excluding mean (the path it replaces), on
  x, c and every c_i row, with the same training metrics, per-client rows
  and counts of excluded clients."""
  clients = fl_testing.make_clients(COHORT_SIZES, seed=3)
  config = algorithms.AlgorithmConfig(
      'scaffold', client_learning_rate=LR, server_learning_rate=0.7,
      weighted=weighted)
  model_fn = fl_testing.linear_model_fn()
  reference = scaffold.build_scaffold(
      model_fn, client_ids=COHORT_IDS, client_learning_rate=LR,
      server_learning_rate=0.7, weighted=weighted,
      model_aggregator=config.model_aggregator(len(COHORT_IDS)))
  cohorts = algorithms.build_algorithm(config, model_fn, COHORT_IDS)
  assert cohorts.in_cohorts and not reference.in_cohorts
  want = _cohort_rounds(reference, clients, diverged)
  for count in (1, 2):
    cohorts.cohorts = count
    got = _cohort_rounds(cohorts, clients, diverged)
    for (state_g, metrics_g), (state_w, metrics_w) in zip(got, want):
      _assert_same_round(cohorts, state_g, metrics_g, reference, state_w,
                         metrics_w)
  # The corrections moved the model, and the empty client kept a zero c_i.
  assert np.abs(cohorts.get_model_weights(got[-1][0]).trainable[0]).max() > 0
  assert not any(np.any(c) for c in cohorts.get_client_control(
      got[-1][0], 'c'))
  excluded = [m['robustness']['excluded_clients'] for _, m in got]
  assert excluded == ([1.0, 2.0, 2.0] if diverged else [1.0, 1.0, 1.0])


def _assert_same_round(alg_a, state_a, metrics_a, alg_b, state_b, metrics_b,
                       atol=1e-6):
  for a, b in zip(tf.nest.flatten(state_a['server']),
                  tf.nest.flatten(state_b['server'])):
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)
  for a, b in zip(alg_a.client_controls(state_a),
                  alg_b.client_controls(state_b)):
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)
  np.testing.assert_array_equal(state_a['participation'],
                                state_b['participation'])
  assert metrics_a['robustness'] == metrics_b['robustness']
  for group in ('train', 'scaffold'):
    assert list(metrics_a[group]) == list(metrics_b[group])
    for key in metrics_a[group]:
      np.testing.assert_allclose(metrics_a[group][key],
                                 metrics_b[group][key], rtol=1e-6, atol=1e-6,
                                 err_msg=f'{group}/{key}')
  for key in ('loss', 'accuracy', 'examples'):
    np.testing.assert_allclose(np.sort(metrics_a['clients'][key]),
                               np.sort(metrics_b['clients'][key]), rtol=1e-6)


RULE_CASES = {
    'median_diverged': (aggregation_config.AggregationConfig('median'),
                        attack_config.AttackConfig(), True),
    'trimmed_mean_sign_flip': (
        aggregation_config.AggregationConfig('trimmed_mean',
                                             dict(trim_fraction=0.2)),
        attack_config.AttackConfig('sign_flip', 0.4, 10.0), False),
    # Krum is left out here: a selection among near-equal scores flips with
    # rounding-size differences in c (the cohorts sum Delta c_i in another
    # order), which the FedAvg test (exact c) does not have.
    'median_gaussian': (aggregation_config.AggregationConfig('median'),
                        attack_config.AttackConfig('gaussian', 0.4, 10.0),
                        False),
}


@pytest.mark.parametrize('case', RULE_CASES)
def test_a_rule_over_cohorts_equals_it_per_client(tff_worker, case):
  """A collecting rule trains SCAFFOLD in cohorts, its members' Delta y
  sent as tables (attacked per member): two cohorts end every round within
  1e-6 of the per-client work with the same rule and attack, on x, c and
  every c_i, with the same kept, trimmed and malicious counts."""
  rule, attack, diverged = RULE_CASES[case]
  clients = fl_testing.make_clients(COHORT_SIZES, seed=3)
  config = algorithms.AlgorithmConfig(
      'scaffold', client_learning_rate=LR, server_learning_rate=0.7,
      weighted=False, aggregation=rule, attack=attack)
  model_fn = fl_testing.linear_model_fn()
  reference = scaffold.build_scaffold(
      model_fn, client_ids=COHORT_IDS, client_learning_rate=LR,
      server_learning_rate=0.7, weighted=False,
      model_aggregator=config.model_aggregator(len(COHORT_IDS)),
      update_fn=attack.update_fn())
  reference.set_attack(attack, COHORT_IDS)
  cohorts = algorithms.build_algorithm(config, model_fn, COHORT_IDS,
                                       cohorts=2)
  assert cohorts.in_cohorts and not reference.in_cohorts
  got = _cohort_rounds(cohorts, clients, diverged)
  want = _cohort_rounds(reference, clients, diverged)
  for (state_g, metrics_g), (state_w, metrics_w) in zip(got, want):
    # 1e-5: the cohorts sum Delta c_i in another order (c differs by 3e-8
    # after round 2), and option II's (x - y) / (K eta_l) magnifies the
    # rounding in x into the new c_i (6e-6 at round 3 with Gaussian
    # attackers; values of order 0.1).
    _assert_same_round(cohorts, state_g, metrics_g, reference, state_w,
                       metrics_w, atol=1e-5)
    assert metrics_g.get('attack') == metrics_w.get('attack')
  assert np.abs(cohorts.get_model_weights(got[-1][0]).trainable[0]).max() > 0
  if attack.active:
    assert sum(m['attack']['malicious_clients'] for _, m in got) > 0


def test_cohorts_only_with_the_plain_mean_or_a_collecting_rule():
  """Norm bounding or the mean under an attack keeps the per-client work;
  the cohorts' count comes from the registry (one per TFF worker)."""
  config = algorithms.AlgorithmConfig('scaffold', client_learning_rate=LR)
  alg = algorithms.build_algorithm(config, fl_testing.linear_model_fn(), IDS,
                                   cohorts=2)
  assert alg.in_cohorts and alg.cohorts == 2
  sig = alg.process.next.type_signature
  _, client_states, client_data = sig.parameter
  # Each cohort's c_i: one table of flat rows, d = 784 * 10 + 10.
  assert client_states.member.is_equivalent_to(
      tff.TensorType(np.float32, [None, 7850]))
  assert [name for name, _ in tff.structure.iter_elements(
      client_data.member)] == ['batches', 'members']
  assert sig.result[1].member.controls.is_equivalent_to(
      tff.TensorType(np.float32, [None, 7850]))
  # Rows come back in the order the cohorts were merged, each with its
  # slot: each is written to the client of its slot, as leaves of the model.
  rows = np.arange(3 * 7850, dtype=np.float32).reshape(3, 7850)
  written, leaves = alg._new_rows(  # pylint: disable=protected-access
      dict(controls=rows, positions=np.array([2, 0, 1], np.int32)),
      [10, 11, 12])
  assert written == [12, 10, 11]
  np.testing.assert_array_equal(leaves[0][1], rows[1, :7840].reshape(784, 10))
  np.testing.assert_array_equal(leaves[1][2], rows[2, 7840:])
  with pytest.raises(RuntimeError, match='slots are not 0..K-1'):
    alg._new_rows(  # pylint: disable=protected-access
        dict(controls=rows, positions=np.array([0, 0, 1], np.int32)),
        [10, 11, 12])
  # Still one aggregation level, every result at the server.
  assert all(t.placement is tff.SERVER for t in sig.result)
  tff.backends.native.compile_to_mergeable_comp_form(alg.process.next)
  median = algorithms.build_algorithm(config.replace(
      weighted=False, aggregation=aggregation_config.AggregationConfig(
          'median')), fl_testing.linear_model_fn(), IDS, cohorts=2)
  assert median.in_cohorts
  bounded = algorithms.build_algorithm(config.replace(
      aggregation=aggregation_config.AggregationConfig(
          'norm_bound', dict(norm_bound=1.0))), fl_testing.linear_model_fn(),
                                       IDS, cohorts=2)
  assert not bounded.in_cohorts
  attacked_mean = algorithms.build_algorithm(config.replace(
      attack=attack_config.AttackConfig('sign_flip', 0.5, 2.0)),
                                             fl_testing.linear_model_fn(),
                                             IDS, cohorts=2)
  assert not attacked_mean.in_cohorts
  with pytest.raises(ValueError, match='takes the plain mean or a'):
    scaffold.build_scaffold_process(
        fl_testing.linear_model_fn(), num_clients=3, client_learning_rate=LR,
        model_aggregator=tff.aggregators.MeanFactory(), in_cohorts=True)


def test_a_diverged_client_changes_nothing_but_is_counted(tff_worker):
  clients = fl_testing.make_clients(SIZES, seed=5)
  bad_x = clients[1][0].copy()
  bad_x[0, 0] = np.nan  # Its loss, update and control delta are NaN.
  clients_with_nan = [clients[0], (bad_x, clients[1][1]), clients[2]]
  alg = scaffold.build_scaffold(
      fl_testing.linear_model_fn(), client_ids=IDS, client_learning_rate=LR)
  state, metrics = _run_scaffold(alg, clients_with_nan, [[0, 1]])
  # Exactly as if only client 0 had taken part (c still divides by N = 3).
  ref_x, ref_c, ref_ci = _numpy_scaffold(clients, [[0]], LR, 1.0, True)
  for got, want in zip(alg.get_model_weights(state).trainable, ref_x):
    np.testing.assert_allclose(got, want, atol=1e-5)
  for got, want in zip(state['server']['control_variate'], ref_c):
    np.testing.assert_allclose(got, want, atol=1e-5)
  for got, want in zip(alg.get_client_control(state, 'a'), ref_ci[0]):
    np.testing.assert_allclose(got, want, atol=1e-5)
  assert not any(np.any(c) for c in alg.get_client_control(state, 'b'))
  assert metrics['train']['num_examples'] == SIZES[0] * EPOCHS
  np.testing.assert_array_equal(state['participation'], [1, 1, 0])


def _numpy_fed_avg(clients, schedule, server_lr, weighted):
  """FedAvg on the same schedule (SCAFFOLD with c = c_i = 0 forever)."""
  x = [np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10)]
  for members in schedule:
    ys, weights = [], []
    for i in members:
      xs, labels = (np.concatenate([a] * EPOCHS) for a in clients[i])
      ys.append(fl_testing.local_sgd(x[0], x[1], xs, labels, LR, BATCH))
      weights.append(len(clients[i][1]) if weighted else 1.0)
    p = np.array(weights) / np.sum(weights)
    x = [xv + server_lr * sum(pj * (y[v] - xv) for pj, y in zip(p, ys))
         for v, xv in enumerate(x)]
  return x


def test_first_round_with_zero_controls_equals_fed_avg(tff_worker):
  clients = fl_testing.make_clients(SIZES, seed=2)
  config = algorithms.AlgorithmConfig(client_learning_rate=LR)
  model_fn = fl_testing.linear_model_fn()
  fedavg = algorithms.build_algorithm(config, model_fn, IDS)
  scaf = algorithms.build_algorithm(
      config.replace(algorithm='scaffold'), model_fn, IDS)
  assert isinstance(scaf, scaffold.Scaffold)

  def rounds(alg, schedule):
    state = alg.initialize()
    out = []
    for r, members in enumerate(schedule, start=1):
      state, metrics = alg.next(state, r, [IDS[i] for i in members],
                                _datasets(clients, members))
      out.append((alg.get_model_weights(state), metrics))
    return out

  fa = rounds(fedavg, [[0, 1, 2], [0, 1]])
  sc = rounds(scaf, [[0, 1, 2], [0, 1]])
  for got, want in zip(sc[0][0].trainable, fa[0][0].trainable):
    np.testing.assert_allclose(got, want, atol=1e-6)
  for key in ('loss', 'sparse_categorical_accuracy', 'num_examples',
              'num_batches'):
    np.testing.assert_allclose(sc[0][1]['train'][key],
                               fa[0][1]['train'][key], rtol=1e-6)
  # From round 2 on the control variates are non-zero and the two differ.
  assert np.abs(
      np.asarray(sc[1][0].trainable[0]) - np.asarray(fa[1][0].trainable[0])
  ).max() > 1e-4


def test_control_variate_is_mean_of_client_controls_for_keras_mlp(tff_worker):
  # Any tff.learning model, here a wrapped two-hidden-layer Keras model.
  clients = fl_testing.make_clients([5, 3, 4, 6], seed=4)
  ids = ['w', 'x', 'y', 'z']
  alg = scaffold.build_scaffold(
      fl_testing.linear_model_fn(name='mlp'), client_ids=ids,
      client_learning_rate=LR)
  state = alg.initialize()
  for r, members in enumerate([[0, 1], [1, 2]], start=1):
    state, metrics = alg.next(
        state, r, [ids[i] for i in members],
        [fl_testing.to_dataset(*clients[i], BATCH) for i in members])
  assert len(alg.client_controls(state)) == 6  # 3 Dense layers x (kernel, bias)
  for v, c in enumerate(state['server']['control_variate']):
    np.testing.assert_allclose(
        c, np.mean(alg.client_controls(state)[v], axis=0), atol=1e-6)
    assert np.abs(c).max() > 0
    # Client 'z' never took part: still zero.
    assert not np.any(alg.client_controls(state)[v][3])
  assert metrics['scaffold']['new_clients'] == 1  # 'y' joins in round 2.
  assert metrics['scaffold']['clients_seen'] == 3
  np.testing.assert_array_equal(state['participation'], [1, 2, 1, 0])


def test_sends_twice_the_model_each_way():
  alg = scaffold.build_scaffold(
      fl_testing.linear_model_fn(), client_ids=IDS, client_learning_rate=LR)
  fedavg = algorithms.build_algorithm(
      algorithms.AlgorithmConfig(), fl_testing.linear_model_fn())
  model_bytes = (784 * 10 + 10) * 4
  assert fedavg.bytes_per_client(fedavg.initialize()) == (
      model_bytes, model_bytes)
  assert alg.bytes_per_client(alg.initialize()) == (
      2 * model_bytes, 2 * model_bytes)


def test_type_signature_returns_client_controls_at_the_server():
  """Every result SERVER-placed, so TFF's mergeable execution splits a
  round across workers; the new c_i+ come back as a [K, ...] table."""
  alg = scaffold.build_scaffold(
      fl_testing.linear_model_fn(), client_ids=IDS, client_learning_rate=LR)
  assert isinstance(alg.process, tff.templates.IterativeProcess)
  sig = alg.process.next.type_signature
  server_state, client_states, client_data = sig.parameter
  assert server_state.placement is tff.SERVER
  assert client_states.placement is tff.CLIENTS
  assert client_data.placement is tff.CLIENTS
  control_type = server_state.member.global_model_weights.trainable
  assert client_states.member.control.is_equivalent_to(control_type)
  assert client_states.member.slot.is_equivalent_to(tff.TensorType(np.int32))
  new_state, clients, metrics = sig.result
  assert new_state.placement is tff.SERVER
  assert clients.placement is tff.SERVER
  assert metrics.placement is tff.SERVER
  for table, leaf in zip(clients.member.controls, control_type):
    assert table.dtype == leaf.dtype
    assert table.shape == (None, *leaf.shape)
  assert clients.member.positions.is_equivalent_to(
      tff.TensorType(np.int32, [None]))
  assert new_state.is_equivalent_to(server_state)
  assert server_state.member.control_variate.is_equivalent_to(control_type)
  tff.backends.native.compile_to_mergeable_comp_form(alg.process.next)


def test_is_composed_of_tff_template_parts():
  weights_type = tff.learning.models.weights_type_from_model(
      fl_testing.linear_model_fn())
  finalizer = scaffold.build_finalizer(
      weights_type, server_learning_rate=1.0, num_clients=3)
  assert isinstance(finalizer, tff.learning.templates.FinalizerProcess)
  aggregator = scaffold.build_aggregator(None, weights_type.trainable)
  assert isinstance(aggregator, tff.templates.AggregationProcess)
  assert aggregator.is_weighted
  with pytest.raises(TypeError, match='keeps state'):
    scaffold.compose_scaffold(None, aggregator, None, aggregator, finalizer)


def _updates(slots):
  """Client results U of a two-leaf model whose c_i+ rows are 10 * slot."""
  return [collections.OrderedDict(
      delta=[np.float32(1.0), np.ones(2, np.float32)],
      control_delta=[np.float32(slot), np.full(2, slot, np.float32)],
      control=[np.float32(10 * slot), np.full(2, 10 * slot, np.float32)],
      slot=np.int32(slot)) for slot in slots]


def test_aggregator_returns_client_rows_in_slot_order(tff_worker):
  # Split across workers the rows arrive in the order the workers finish:
  # here the clients come in slot order 2, 0, 1.
  control_type = tff.to_type([tff.TensorType(np.float32),
                              tff.TensorType(np.float32, [2])])
  aggregator = scaffold.build_aggregator(None, control_type)
  output = aggregator.next(aggregator.initialize(), _updates([2, 0, 1]),
                           [1.0, 1.0, 1.0])
  scalar, vector = output.result['clients']['controls']
  np.testing.assert_array_equal(scalar, [0.0, 10.0, 20.0])
  np.testing.assert_array_equal(vector, [[0.0, 0.0], [10.0, 10.0],
                                         [20.0, 20.0]])
  # The order they came in, which a rule's `kept_share` follows.
  np.testing.assert_array_equal(output.result['clients']['positions'],
                                [2, 0, 1])
  np.testing.assert_array_equal(output.result['control_delta_sum'][1],
                                [3.0, 3.0])
  with pytest.raises(Exception, match='slots are not 0..K-1'):
    aggregator.next(aggregator.initialize(), _updates([0, 0, 1]),
                    [1.0, 1.0, 1.0])


def test_bad_inputs_give_one_line_errors():
  with pytest.raises(ValueError, match=r'client_optimizer=adam is not valid'
                     r' with --algorithm=scaffold.*sgd'):
    algorithms.AlgorithmConfig(algorithm='scaffold', client_optimizer='adam')
  with pytest.raises(ValueError, match='needs the training client ids'):
    scaffold.build_scaffold(fl_testing.linear_model_fn(), client_ids=[],
                            client_learning_rate=LR)
  with pytest.raises(ValueError, match='client_learning_rate=0'):
    scaffold.build_scaffold(fl_testing.linear_model_fn(), client_ids=IDS,
                            client_learning_rate=0.0)
  alg = scaffold.build_scaffold(
      fl_testing.linear_model_fn(), client_ids=IDS, client_learning_rate=LR)
  with pytest.raises(ValueError, match=r"client 'q' is not one of the 3"):
    alg.next(alg.initialize(), 1, ['a', 'q'], [None, None])
  with pytest.raises(ValueError, match='appears twice'):
    alg.next(alg.initialize(), 1, ['a', 'a'], [None, None])


# A training run small enough for a unit test: 6 digit clients, 3 per round.
SMALL_RUN = dict(
    algorithm='scaffold', model='linear', num_clients=6, clients_per_round=3,
    client_learning_rate=0.01, eval_every=10, rounds_per_checkpoint=2,
    progress=False, batch_size=10)


def _train(tmp_path, name, **overrides):
  return fl_testing.run_experiment(SMALL_RUN, tmp_path, name, **overrides)


def _final_checkpoint(run_dir):
  """(the latest checkpoint, its version, every c_i read from the run's
  table as [N, *shape] arrays)."""
  alg = training.rebuild_run(str(run_dir)).algorithm
  manager = tff.program.FileProgramStateManager(
      str(run_dir / 'checkpoints'), prefix=run_directory.CHECKPOINT_PREFIX)
  state, version = asyncio.run(manager.load_latest(
      {'round': 0, 'state': alg.initialize()}))
  return state, version, alg.client_controls(state['state'])


_read_csv = fl_testing.read_csv


def test_resume_from_checkpoint_gives_identical_state(tff_worker, tmp_path):
  _train(tmp_path, 'straight', total_rounds=4)
  _train(tmp_path, 'resumed', total_rounds=2)
  # A new invocation: new data objects, new process, state from disk.
  resumed_rows = _train(tmp_path, 'resumed', total_rounds=4)
  assert [r['round'] for r in resumed_rows] == [3, 4]

  straight, v1, controls_s = _final_checkpoint(tmp_path / 'straight')
  resumed, v2, controls_r = _final_checkpoint(tmp_path / 'resumed')
  assert v1 == v2 == 4
  # Every leaf but the table's index (slot numbers, an allocation detail),
  # and every c_i row read through it.
  for key in ('server', 'participation'):
    flat_s = _flatten(straight['state'][key])
    flat_r = _flatten(resumed['state'][key])
    assert len(flat_s) == len(flat_r)
    for a, b in zip(flat_s, flat_r):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(controls_s, controls_r):
    np.testing.assert_array_equal(a, b)
  state = straight['state']
  # The checkpoint holds c and, through the table, every c_i: 12
  # participations over 4 rounds, and c is their mean.
  assert int(np.sum(state['participation'])) == 12
  assert np.abs(controls_s[0]).max() > 0
  np.testing.assert_allclose(
      state['server']['control_variate'][0],
      np.mean(controls_s[0], axis=0), atol=1e-6)

  rows = {r['round']: r for r in _read_csv(tmp_path / 'straight' /
                                           'metrics.csv')}
  resumed_csv = {r['round']: r for r in _read_csv(tmp_path / 'resumed' /
                                                  'metrics.csv')}
  assert sorted(resumed_csv) == [1, 2, 3, 4]
  for r in (3, 4):
    assert rows[r]['train_loss'] == resumed_csv[r]['train_loss']
  # Communication: x and c down, Delta y and Delta c up, 3 clients a round.
  model_kb = (784 * 10 + 10) * 4 / 1024
  assert float(rows[1]['communication_kb_down']) == pytest.approx(
      3 * 2 * model_kb)
  assert float(rows[1]['communication_kb_up']) == pytest.approx(
      3 * 2 * model_kb)
  assert float(rows[1]['scaffold_new_clients']) == 3
  # experiments/evaluate.py's library path restores the SCAFFOLD state too.
  evaluated = checkpoint_evaluation.evaluate_checkpoint(
      str(tmp_path / 'straight' / 'checkpoints'))
  assert evaluated['round'] == 4
  np.testing.assert_allclose(evaluated['accuracy'],
                             float(rows[4]['eval_accuracy']), rtol=1e-6)


def _flatten(structure):
  return [np.asarray(v) for v in tf.nest.flatten(structure)]


def test_flags_reject_scaffold_with_a_non_sgd_client_optimizer():
  with pytest.raises(flags.FlagError,
                     match='client_optimizer=adam is not valid with'
                     ' --algorithm=scaffold'):
    flags.config_from_argv(['--experiment_name=x', '--algorithm=scaffold',
                            '--client_optimizer=adam'])
  # sgd, the default: valid.
  flags.config_from_argv(['--experiment_name=x', '--algorithm=scaffold'])
