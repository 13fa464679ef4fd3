"""Clustered FedAvg: exactly FedAvg with one cluster, per-cluster averaging
against a numpy reference, splits of an incongruent federation, the split
tree for returning clients, and checkpoint round trips."""

import asyncio

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.algorithms import base
from tff_research.algorithms import clustered
from tff_research.algorithms import clustering
from tff_research.algorithms import fed_avg
from tff_research.aggregators import registry as aggregator_registry
from tests import fl_testing

LR = 0.05
BATCH = 10


def _build(ids, *, k=2, warmup=2, recluster_every=1, metric='cosine',
           weighted=True, model_name='linear', **kwargs):
  return clustered.build_clustered_fed_avg(
      fl_testing.linear_model_fn(name=model_name), ids,
      client_optimizer=tff.learning.optimizers.build_sgdm(LR),
      metric=metric, num_clusters=k, recluster_every=recluster_every,
      warmup_rounds=warmup, weighted=weighted, **kwargs)


def _fed_avg(weighted):
  return base.LearningProcessAlgorithm(fed_avg.build_fed_avg(
      fl_testing.linear_model_fn(),
      client_optimizer=tff.learning.optimizers.build_sgdm(LR),
      weighted=weighted))


def _datasets(clients):
  return [fl_testing.to_dataset(x, y, BATCH) for x, y in clients]


def _teacher_clients(num_clients, permuted, n=40, seed=0):
  """Noisy copies of 10 sparse class prototypes; `permuted` clients see
  labels y -> (y + 5) mod 10 for the same images (an incongruent
  federation: no single model fits both groups)."""
  rng = np.random.default_rng(seed)
  prototypes = rng.random((10, fl_testing.INPUT_DIM)) < 0.05
  clients = []
  for i in range(num_clients):
    y = rng.integers(0, 10, n).astype(np.int32)
    x = np.clip(prototypes[y] + 0.1 * rng.standard_normal(
        (n, fl_testing.INPUT_DIM)), 0, 1).astype(np.float32)
    if i in permuted:
      y = (y + 5) % 10
    clients.append((x, y))
  return clients


def _run(alg, clients, ids, rounds, state=None, start=1, sampled=None):
  state = alg.initialize() if state is None else state
  history = []
  for r in range(start, start + rounds):
    members = sampled(r) if sampled else list(range(len(clients)))
    state, metrics = alg.next(
        state, r, [ids[i] for i in members],
        _datasets([clients[i] for i in members]))
    history.append(metrics)
  return state, history


def _numpy_fed_avg_round(w, b, clients, weighted=True, server_lr=1.0):
  return fl_testing.numpy_fed_avg_round(w, b, clients, LR, BATCH, weighted,
                                        server_lr)


def test_three_rounds_through_every_path_are_pinned(tff_worker):
  # Every path of a round, 6 of 8 clients a round: a clustering step that
  # splits (round 1, gamma_max 0), a round whose returning clients walk the
  # split tree and whose projected updates are kept (round 2), and a step
  # whose clients walk from the root and that splits again (round 3). The
  # numbers pin the results: a reorganisation of the module keeps them
  # (1e-6).
  clients = _teacher_clients(8, {1, 3, 4, 6})
  ids = [f'c{i}' for i in range(8)]
  plan = {1: [0, 1, 2, 3, 4, 5], 2: [2, 3, 4, 5, 6, 7],
          3: [0, 1, 4, 5, 6, 7]}
  alg = _build(ids, k=3, warmup=0, recluster_every=2, split_gamma_max=0.0)
  state, history = _run(alg, clients, ids, 3, sampled=lambda r: plan[r])
  assert state['assignments'].tolist() == [0, 1, 0, 2, 2, 0, 1, 0]
  assert state['sketch_round'].tolist() == [3, 3, 2, 2, 3, 3, 3, 3]
  assert [h['clusters']['num_clusters'] for h in history] == [2, 2, 3]
  assert [h['clusters']['extra_local_updates'] for h in history] == [0, 2, 6]
  np.testing.assert_allclose([h['train']['loss'] for h in history],
                             [2.1170919, 1.5921904, 1.2129875], rtol=1e-6)
  kernel, bias = (np.asarray(t, np.float64) for t in state['models'].trainable)
  np.testing.assert_allclose(
      np.abs(kernel).sum(axis=(1, 2)),
      [35.160961283662346, 35.17460842854052, 35.64241175666757], rtol=1e-6)
  np.testing.assert_allclose(bias, [
      [-0.0043542, 0.0056112, -0.001609, 0.0067126, -0.0033981, 0.0028213,
       0.0047865, -0.0151703, 0.0030565, 0.0015435],
      [0.0036842, -0.0058531, -0.001799, 0.0033902, -0.0055542, 0.0059678,
       0.0046931, -0.0059571, 0.0061027, -0.0046745],
      [0.008979, 0.0091693, -0.0031574, -0.0060329, 0.0042334, -0.0141661,
       -0.0042294, -0.0058705, 0.0138103, -0.0027356]], atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(state['split_ref_stayed'], np.float64).sum(axis=1),
      [0.0, -0.3089091673482329, 0.1711383720394224], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('k,warmup,weighted', [(1, 0, True), (2, 3, False)])
def test_one_cluster_is_exactly_fed_avg(tff_worker, k, warmup, weighted):
  # K = 1, and K = 2 before its first clustering step, are FedAvg: same
  # client update, same weighted mean, same server step.
  clients = fl_testing.make_clients([9, 4, 6])
  ids = ['a', 'b', 'c']
  reference = _fed_avg(weighted)
  alg = _build(ids, k=k, warmup=warmup, weighted=weighted)
  state, history = _run(alg, clients, ids, 3)
  ref_state = reference.initialize()
  for r in range(1, 4):
    ref_state, ref_metrics = reference.next(ref_state, r, ids,
                                            _datasets(clients))
  ours = alg.get_model_weights(state)
  ref = reference.get_model_weights(ref_state)
  for a, b in zip(ours.trainable, ref.trainable):
    np.testing.assert_array_equal(a, b)
  for key in ('loss', 'sparse_categorical_accuracy', 'num_examples',
              'num_batches'):
    np.testing.assert_array_equal(history[-1]['train'][key],
                                  ref_metrics['train'][key])
  assert all(m['clusters']['num_clusters'] == 1 for m in history)
  # And both equal the numpy reference of McMahan et al.'s rule.
  w, b = np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10)
  for _ in range(3):
    w, b = _numpy_fed_avg_round(w, b, clients, weighted)
  np.testing.assert_allclose(ours.trainable[0], w, atol=1e-5)


def test_each_cluster_averages_only_its_own_clients(tff_worker):
  clients = fl_testing.make_clients([8, 5, 7, 6], seed=1)
  ids = ['a', 'b', 'c', 'd']
  alg = _build(ids, k=3, warmup=100)
  state = alg.initialize()
  rng = np.random.default_rng(2)
  models = state['models']
  # Three different cluster models; clients a, c in cluster 0, b, d in 2.
  for t in models.trainable:
    t[...] = 0.01 * rng.standard_normal(t.shape)
  state['num_clusters'] = np.int32(3)
  state['assignments'] = np.array([0, 2, 0, 2], np.int32)
  state['resolved'] = np.full(4, 3, np.int32)
  before = [np.array(t) for t in models.trainable]
  new_state, metrics = alg.next(state, 1, ids, _datasets(clients))
  for cluster, members in ((0, [0, 2]), (2, [1, 3])):
    w, b = _numpy_fed_avg_round(
        before[0][cluster].astype(np.float64),
        before[1][cluster].astype(np.float64),
        [clients[i] for i in members])
    got = alg.cluster_model_weights(new_state, cluster)
    np.testing.assert_allclose(got.trainable[0], w, atol=2e-6)
    np.testing.assert_allclose(got.trainable[1], b, atol=2e-6)
  # Cluster 1 had no clients: unchanged.
  np.testing.assert_array_equal(
      alg.cluster_model_weights(new_state, 1).trainable[0], before[0][1])
  # The input state was not modified.
  np.testing.assert_array_equal(state['models'].trainable[0], before[0])
  c = metrics['clusters']
  assert (c['size_0'], c['size_1'], c['size_2']) == (2, 0, 2)
  assert 'train_accuracy_1' not in c
  # Per-cluster training loss: the example-weighted mean of the batch losses
  # each cluster's clients saw (before each SGD step).
  for cluster, members in ((0, [0, 2]), (2, [1, 3])):
    np.testing.assert_allclose(
        c[f'train_loss_{cluster}'], fl_testing.pre_step_train_loss(
            before[0][cluster], before[1][cluster],
            [clients[i] for i in members], LR, BATCH), rtol=1e-5)


@pytest.mark.parametrize('rule', ['median', 'norm_bound'])
def test_each_cluster_takes_the_model_aggregator_over_its_own_clients(
    tff_worker, rule):
  # Clients a, c, e in cluster 0, b, d in cluster 2, cluster 1 empty. The
  # median (uniform) of cluster 0's three updates is their coordinate-wise
  # middle value, of cluster 2's two their mean; norm bounding (weighted by
  # examples) projects each update onto the ball of radius 0.05 first.
  clients = fl_testing.make_clients([8, 5, 7, 6, 9], seed=3)
  ids = ['a', 'b', 'c', 'd', 'e']
  weighted = rule == 'norm_bound'
  factory = (aggregator_registry.build('median', {}, capacity=5)
             if rule == 'median' else
             aggregator_registry.build('norm_bound', {'norm_bound': 0.05},
                                       capacity=5))
  alg = _build(ids, k=3, warmup=100, weighted=weighted,
               model_aggregator=factory)
  state = alg.initialize()
  rng = np.random.default_rng(5)
  for t in state['models'].trainable:
    t[...] = 0.01 * rng.standard_normal(t.shape)
  state['num_clusters'] = np.int32(3)
  state['assignments'] = np.array([0, 2, 0, 2, 0], np.int32)
  state['resolved'] = np.full(5, 3, np.int32)
  before = [np.array(t, np.float64) for t in state['models'].trainable]
  new_state, metrics = alg.next(state, 1, ids, _datasets(clients))
  kept_factors = []
  for cluster, members in ((0, [0, 2, 4]), (2, [1, 3])):
    w0, b0 = before[0][cluster], before[1][cluster]
    deltas, sizes = [], []
    for i in members:
      x, y = clients[i]
      w, b = fl_testing.local_sgd(w0, b0, x, y, LR, BATCH)
      deltas.append(np.concatenate([(w - w0).ravel(), b - b0]))
      sizes.append(len(y))
    deltas = np.array(deltas)
    if rule == 'median':
      step = np.median(deltas, axis=0)
    else:
      norms = np.linalg.norm(deltas, axis=1, keepdims=True)
      clipped = deltas * np.minimum(1.0, 0.05 / norms)
      kept_factors.extend(np.minimum(1.0, 0.05 / norms).ravel())
      step = np.average(clipped, axis=0, weights=sizes)
    got = alg.cluster_model_weights(new_state, cluster)
    np.testing.assert_allclose(
        np.concatenate([got.trainable[0].ravel(), got.trainable[1]]),
        np.concatenate([w0.ravel(), b0]) + step, atol=2e-6)
  np.testing.assert_array_equal(
      alg.cluster_model_weights(new_state, 1).trainable[0], before[0][1])
  robustness = metrics['robustness']
  assert robustness['excluded_clients'] == 0
  if rule == 'median':
    # One middle value in cluster 0 (odd), two in cluster 2 (even).
    assert robustness['kept_clients'] == pytest.approx(3.0)
    assert robustness['trimmed_clients'] == pytest.approx(2.0)
  else:
    assert robustness['clipped_clients'] == 5
    # Each update kept the factor it was scaled by: 0.05 / its norm.
    assert robustness['kept_clients'] == pytest.approx(
        sum(kept_factors), rel=1e-4)


def test_a_stateful_model_aggregator_is_refused_in_one_line():
  adaptive = tff.aggregators.clipping_factory(
      tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
          initial_estimate=1.0, target_quantile=0.5, learning_rate=0.2),
      tff.aggregators.MeanFactory())
  with pytest.raises(ValueError, match='clustered FL takes only a model'
                     ' aggregator without state') as error:
    _build(['a', 'b'], model_aggregator=adaptive)
  assert '\n' not in str(error.value)


def test_cosine_splits_an_incongruent_federation(tff_worker):
  permuted = {1, 3, 4, 6}
  clients = _teacher_clients(8, permuted)
  ids = [f'c{i}' for i in range(8)]
  alg = _build(ids, k=2, warmup=2, recluster_every=1)
  state, history = _run(alg, clients, ids, 2)
  parent = alg.cluster_model_weights(state, 0)
  state, history = _run(alg, clients, ids, 1, state=state, start=3)
  step = history[0]['clusters']
  truth = [int(i in permuted) for i in range(8)]
  assignments = state['assignments']
  assert clustering.purity(assignments, truth) == 1.0
  assert step['num_clusters'] == 2 and step['splits'] == 1
  assert step['changed'] == 4
  assert step['split_gap'] > 0
  assert step['similarity'].shape == (128, 128, 3)
  # Each new cluster started from the model it split from, then averaged
  # its own clients' updates.
  for cluster in (0, 1):
    members = [i for i in range(8) if assignments[i] == cluster]
    w, b = _numpy_fed_avg_round(
        parent.trainable[0].astype(np.float64),
        parent.trainable[1].astype(np.float64),
        [clients[i] for i in members])
    got = alg.cluster_model_weights(state, cluster)
    np.testing.assert_allclose(got.trainable[0], w, atol=2e-5)
  assert state['split_parent'].tolist() == [-1, 0]
  # A further clustering step cannot exceed K = 2.
  state, history = _run(alg, clients, ids, 1, state=state, start=4)
  assert history[0]['clusters']['num_clusters'] == 2
  assert clustering.purity(state['assignments'], truth) == 1.0
  # Evaluation uses each client's cluster model: group g = cluster g.
  groups = alg.eval_model_groups(state, ids[::-1])
  assert [sorted(g) for _, g in groups] == [
      sorted(7 - i for i in range(8) if assignments[i] == c) for c in (0, 1)]


def test_clients_absent_at_the_split_are_placed_by_the_metric(tff_worker):
  permuted = {5, 6, 7, 8, 9}
  clients = _teacher_clients(10, permuted, seed=3)
  ids = [f'c{i}' for i in range(10)]
  # update_window=1: the step compares only its own sampled clients.
  alg = _build(ids, k=2, warmup=2, recluster_every=100, update_window=1)
  # Clients 4 and 9 miss the clustering step (round 3) and return in round 4.
  sampled = lambda r: ([0, 1, 2, 3, 5, 6, 7, 8] if r == 3 else
                       [0, 4, 5, 9] if r == 4 else list(range(10)))
  state, history = _run(alg, clients, ids, 4, sampled=sampled)
  split_step, returned = history[2]['clusters'], history[3]['clusters']
  assert split_step['num_clusters'] == 2
  assert split_step['unresolved'] == 2
  assert returned['unresolved'] == 0
  assert returned['extra_local_updates'] == 2  # one split to decide each
  truth = [int(i in permuted) for i in range(10)]
  assert clustering.purity(state['assignments'], truth) == 1.0
  moved_group = state['assignments'][9]
  assert state['assignments'][4] != moved_group
  # Only the client whose group left cluster 0 moved on return.
  assert returned['moved_on_return'] == 1
  # A brand-new client with the same data is placed the same way.
  new = alg.assign_clients(state, _datasets([clients[4], clients[9]]))
  assert new.tolist() == [state['assignments'][4], state['assignments'][9]]


def test_a_step_compares_every_client_seen_in_its_window(tff_worker):
  # Partial participation: 4 of 10 clients per round. The step at round 5
  # compares the newest update of every client seen in rounds 3..5
  # (update_window=3, stored as projections), not only its own 4, and
  # places all of them; with ground truth it logs purity.
  permuted = {5, 6, 7, 8, 9}
  clients = _teacher_clients(10, permuted, seed=3)
  ids = [f'c{i}' for i in range(10)]
  truth = [int(i in permuted) for i in range(10)]
  alg = _build(ids, k=2, warmup=4, recluster_every=3, ground_truth=truth,
               projection_dim=512)
  assert alg.update_window == 3 and alg.sketch_dim == 512
  plan = {1: range(10), 2: range(10), 3: [0, 1, 5, 6], 4: [2, 3, 7, 8],
          5: [4, 9, 0, 5]}
  state, history = _run(alg, clients, ids, 5, sampled=lambda r: list(plan[r]))
  assert not alg.needs_sketches(alg.initialize(), 1)  # outside the window
  assert all(alg.needs_sketches(alg.initialize(), r) for r in (3, 4, 5))
  step = history[-1]['clusters']
  assert step['num_clusters'] == 2 and step['splits'] == 1
  assert step['compared'] == 10 and step['compared_0'] == 10
  assert step['split_decision_0'] == clustering.SPLIT
  assert step['gamma_bound_0'] > alg.split_gamma_max
  assert step['purity'] == step['purity_compared'] == 1.0
  assert step['unresolved'] == 0
  assert clustering.purity(state['assignments'], truth) == 1.0
  assert np.asarray(state['sketch_round']).tolist() == [5, 3, 4, 4, 5, 5, 3,
                                                       4, 4, 5]
  assert alg.last_decisions[0].split
  # The split references live in projection space.
  assert np.asarray(state['split_ref_moved']).shape == (2, 512)


def test_stationarity_thresholds_block_the_split(tff_worker):
  permuted = {1, 3, 4, 6}
  clients = _teacher_clients(8, permuted)
  ids = [f'c{i}' for i in range(8)]
  for kwargs, code in (({'split_mean_norm_max': 1e-6},
                        clustering.NOT_STATIONARY),
                       ({'split_max_norm_min': 1e6}, clustering.SMALL_UPDATES),
                       ({'split_gamma_max': 0.99}, clustering.NOT_SEPARATED)):
    alg = _build(ids, k=2, warmup=2, recluster_every=1, **kwargs)
    _, history = _run(alg, clients, ids, 3)
    step = history[-1]['clusters']
    assert step['num_clusters'] == 1, kwargs
    assert step['split_decision_0'] == code, kwargs
    assert step['mean_update_norm_0'] < step['max_update_norm_0']


def test_l2_also_separates_the_incongruent_federation(tff_worker):
  permuted = {0, 2, 5, 7}
  clients = _teacher_clients(8, permuted, seed=4)
  ids = [f'c{i}' for i in range(8)]
  alg = _build(ids, k=2, warmup=2, metric='l2')
  state, history = _run(alg, clients, ids, 3)
  assert history[-1]['clusters']['num_clusters'] == 2
  truth = [int(i in permuted) for i in range(8)]
  assert clustering.purity(state['assignments'], truth) == 1.0


def test_state_round_trips_through_a_checkpoint(tff_worker, tmp_path):
  # Resume after a split: the cluster models, assignments and split tree come
  # back from the checkpoint, so the continued run equals a straight one.
  permuted = {5, 6, 7, 8, 9}
  clients = _teacher_clients(10, permuted, seed=3)
  ids = [f'c{i}' for i in range(10)]
  sampled = lambda r: ([0, 1, 2, 3, 5, 6, 7, 8] if r == 3 else
                       [0, 4, 5, 9] if r >= 4 else list(range(10)))
  alg = _build(ids, k=2, warmup=2, recluster_every=3, update_window=1)
  straight, _ = _run(alg, clients, ids, 5, sampled=sampled)
  first, _ = _run(alg, clients, ids, 3, sampled=sampled)
  manager = tff.program.FileProgramStateManager(str(tmp_path))
  asyncio.run(manager.save({'round': 3, 'state': first}, 3))
  fresh = _build(ids, k=2, warmup=2, recluster_every=3, update_window=1)
  restored, _ = asyncio.run(
      manager.load_latest({'round': 0, 'state': fresh.initialize()}))
  assert int(restored['round']) == 3
  resumed, _ = _run(fresh, clients, ids, 2, state=restored['state'], start=4,
                    sampled=sampled)
  assert int(resumed['num_clusters']) == 2
  np.testing.assert_array_equal(resumed['assignments'],
                                straight['assignments'])
  for a, b in zip(_flatten(resumed), _flatten(straight)):
    np.testing.assert_array_equal(a, b)


def _flatten(state):
  return [np.asarray(x) for x in tf.nest.flatten(state)]


def test_bad_arguments_are_one_line_errors():
  ids = ['a', 'b']
  with pytest.raises(ValueError, match=r'num_clusters=9 is not valid'):
    _build(ids, k=9)
  with pytest.raises(ValueError, match=r"'manhattan' is not valid"):
    _build(ids, metric='manhattan')
  for kwargs, message in (
      ({'split_rule': 'ward'}, r"split_rule='ward' is not valid"),
      ({'split_gamma_max': 1.0}, r'split_gamma_max=1.0 is not valid'),
      ({'split_mean_norm_max': 0.0}, r'split_mean_norm_max=0.0 is not valid'),
      ({'split_max_norm_min': -1.0}, r'split_max_norm_min=-1.0 is not valid'),
      ({'update_window': 2}, r'update_window=2 is not valid'),
      ({'projection_dim': -1}, r'projection_dim=-1 is not valid'),
      ({'ground_truth': [0]}, r'ground_truth has 1 entries')):
    with pytest.raises(ValueError, match=message):
      _build(ids, **kwargs)
  alg = _build(ids)
  with pytest.raises(ValueError, match="'z' is not one of the 2 training"):
    alg.next(alg.initialize(), 1, ['z'], [])
