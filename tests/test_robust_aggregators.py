"""Robust aggregators against numpy references on hand-made updates.

The rules (coordinate-wise median and trimmed mean, Yin et al. 2018; Krum
and Multi-Krum, Blanchard et al. 2017; norm bounding, Sun et al. 2019) are
checked eagerly on their TensorFlow functions (exact answers on hand-made
geometry, hypothesis properties against numpy and scipy), then as TFF
aggregation processes in the runtime: exclusion of non-finite updates and
its count, positions in client order, the mergeable form, a sign-flip
attacker, and a real FedAvg round with the median as model aggregator.
"""

import collections
import dataclasses

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest
from scipy import stats
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.aggregators import collection
from tff_research.aggregators import bulyan
from tff_research.aggregators import krum
from tff_research.aggregators import median
from tff_research.aggregators import registry
from tff_research.aggregators import spec
from tff_research.aggregators import trimmed_mean
from tff_research.algorithms import fed_avg
from tff_research.attacks import selection
from tff_research.attacks import sign_flip
from tests import fl_testing

# Five clients, three coordinates; every value exact in float32.
HAND = np.array([[1.0, 10.0, -3.0],
                 [2.0, -20.0, 0.0],
                 [6.0, 30.0, 5.0],
                 [100.0, 0.0, 1.0],
                 [-50.0, 5.0, 2.0]], np.float32)
# A structure of two tensors: the first 4 parameters as w[2, 2], the last b.
VALUE_TYPE = tff.to_type(collections.OrderedDict(
    w=tff.TensorType(np.float32, [2, 2]), b=tff.TensorType(np.float32, [1])))
# No subnormals: TensorFlow's CPU kernels flush them to zero.
FLOAT = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False,
                  width=32)
COLLECTING = ('median', 'trimmed_mean', 'krum', 'multi_krum', 'bulyan')


def _eager(rule_fn, rows, *args):
  aggregate, kept, extra = rule_fn(tf.constant(rows, tf.float32), *args)
  return np.asarray(aggregate), np.asarray(kept), {
      k: float(v) for k, v in extra.items()}


def _structure(vector):
  v = np.asarray(vector, np.float32)
  return collections.OrderedDict(w=v[:4].reshape(2, 2), b=v[4:])


def _flat(value):
  return np.concatenate([np.ravel(value['w']), np.ravel(value['b'])])


def _run(name, values, capacity=8, value_type=VALUE_TYPE, **parameters):
  process = registry.build(name, parameters, capacity=capacity).create(
      value_type)
  return process.next(process.initialize(), values)


# --- the rules, eagerly ---


def test_median_and_trimmed_mean_are_exact_on_hand_made_updates():
  agg, kept, extra = _eager(median.coordinate_median, HAND)
  # Sorted columns: [-50 1 2 6 100], [-20 0 5 10 30], [-3 0 1 2 5].
  np.testing.assert_array_equal(agg, [2.0, 5.0, 1.0])
  # The middle values come from clients 1, 4 and 3.
  np.testing.assert_allclose(kept, [0, 1 / 3, 0, 1 / 3, 1 / 3], rtol=1e-6)
  assert extra[collection.KEPT] == 1.0

  agg, kept, extra = _eager(median.coordinate_median, HAND[:4])
  np.testing.assert_array_equal(agg, [4.0, 5.0, 0.5])  # means of the middle two
  assert extra[collection.KEPT] == 2.0
  np.testing.assert_array_equal(agg, np.median(HAND[:4], axis=0))

  # beta = 0.2 of 5: one value off each end.
  agg, kept, extra = _eager(trimmed_mean.trimmed_mean, HAND, 0.2)
  np.testing.assert_array_equal(agg, [3.0, 5.0, 1.0])
  np.testing.assert_allclose(kept, [2 / 3, 2 / 3, 1 / 3, 2 / 3, 2 / 3],
                             rtol=1e-6)
  assert extra[collection.KEPT] == 3.0
  # beta = 0 is the mean; 0.19 of 5 trims nothing (int(0.95) = 0).
  for beta in (0.0, 0.19):
    agg, kept, _ = _eager(trimmed_mean.trimmed_mean, HAND, beta)
    np.testing.assert_allclose(agg, HAND.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(kept, np.ones(5))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 6), st.floats(0.0, 0.49),
       st.data())
def test_coordinate_rules_agree_with_numpy_and_scipy(k, d, beta, data):
  rows = np.array(data.draw(st.lists(FLOAT, min_size=k * d, max_size=k * d)),
                  np.float32).reshape(k, d)
  agg, _, extra = _eager(median.coordinate_median, rows)
  np.testing.assert_allclose(agg, np.median(rows.astype(np.float64), axis=0),
                             rtol=1e-6, atol=1e-4)
  assert extra[collection.KEPT] == (1.0 if k % 2 else 2.0)
  agg, kept, extra = _eager(trimmed_mean.trimmed_mean, rows, beta)
  np.testing.assert_allclose(
      agg, stats.trim_mean(rows.astype(np.float64), beta, axis=0),
      rtol=1e-5, atol=1e-3)
  b = int(beta * k)
  assert extra[collection.KEPT] == k - 2 * b
  np.testing.assert_allclose(kept.sum(), k - 2 * b, rtol=1e-5)
  assert np.all((kept >= 0) & (kept <= 1))


# Positions 0..5: a Byzantine point Z far out, then four corners of a square
# of side 2 and its centre E.
GEOMETRY = np.array([[20, 20], [0, 0], [2, 0], [0, 2], [2, 2], [1, 1]],
                    np.float32)


def test_krum_scores_and_selection_on_a_known_geometry():
  # f = 1 of 6: each score sums the 6 - 1 - 2 = 3 nearest squared distances.
  # Corners: 2 (to E) + 4 + 4 (two sides); E: 2 + 2 + 2; Z: 648 + 722 + 724.
  scores = krum.krum_scores(tf.constant(GEOMETRY), 1).numpy()
  np.testing.assert_array_equal(scores, [2094, 10, 10, 10, 10, 6])
  agg, kept = krum.multi_krum(tf.constant(GEOMETRY), 1, 1)
  np.testing.assert_array_equal(agg, [1, 1])  # E
  np.testing.assert_array_equal(kept, [0, 0, 0, 0, 0, 1])
  # Multi-Krum, m = 2: E, then the first corner of the tie (position 1).
  agg, kept = krum.multi_krum(tf.constant(GEOMETRY), 1, 2)
  np.testing.assert_array_equal(agg, [0.5, 0.5])
  np.testing.assert_array_equal(kept, [0, 1, 0, 0, 0, 1])
  # Default m = k - f = 5: every honest point, their mean is E.
  agg, kept = krum.multi_krum(tf.constant(GEOMETRY), 1, None)
  np.testing.assert_array_equal(agg, [1, 1])
  np.testing.assert_array_equal(kept, [0, 1, 1, 1, 1, 1])
  # f = 3 leaves 6 - 3 - 2 = 1 neighbour: corners score 2, E 2, Z 648.
  np.testing.assert_array_equal(
      krum.krum_scores(tf.constant(GEOMETRY), 3).numpy(),
      [648, 2, 2, 2, 2, 2])


def _numpy_krum_scores(rows, f):
  rows = rows.astype(np.float64)
  k = len(rows)
  q = min(max(k - f - 2, 1), max(k - 1, 0))
  scores = []
  for i in range(k):
    d = sorted(np.sum((rows[i] - rows[j]) ** 2) for j in range(k) if j != i)
    scores.append(sum(d[:q]))
  return np.array(scores)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(1, 5), st.integers(0, 3), st.data())
def test_krum_scores_agree_with_a_brute_force_numpy_reference(k, d, f, data):
  rows = np.array(data.draw(st.lists(FLOAT, min_size=k * d, max_size=k * d)),
                  np.float32).reshape(k, d)
  scores = krum.krum_scores(tf.constant(rows), f).numpy()
  np.testing.assert_allclose(scores, _numpy_krum_scores(rows, f), rtol=1e-9,
                             atol=1e-6)
  agg, kept = krum.multi_krum(tf.constant(rows), f, 1)
  best = int(np.argmin(scores))  # argmin takes the first of a tie too
  np.testing.assert_array_equal(agg, rows[best])
  np.testing.assert_array_equal(kept, np.eye(k)[best])


def _rules(num_byzantine):
  return {
      'median': median.coordinate_median,
      'trimmed_mean': lambda u: trimmed_mean.trimmed_mean(u, 0.3),
      'krum': lambda u: (*krum.multi_krum(u, num_byzantine, 1), {}),
      'multi_krum': lambda u: (*krum.multi_krum(u, num_byzantine, None), {}),
      'bulyan': lambda u: bulyan.bulyan(u, num_byzantine),
  }


def test_bulyan_on_a_hand_computed_line():
  # k = 7, f = 1: theta = 5 selections, beta = 3 values a coordinate.
  # Recursive Krum on 0..5 and 100 (neighbours 4, 3, 2, 1, 1): picks 2
  # (score 10, tied with 3: first position), 3 (9), 1 (10, tied with 4),
  # 4 (1), 0 (25, tied with 5). S = {2, 3, 1, 4, 0}, median 2; the 3 values
  # closest to it are 2, 3, 1 (3 and 1 tie at 1: S's order), mean 2.
  rows = np.array([[0], [1], [2], [3], [4], [5], [100]], np.float32)
  np.testing.assert_array_equal(bulyan.select(tf.constant(rows), 1),
                                [2, 3, 1, 4, 0])
  agg, kept, extra = _eager(bulyan.bulyan, rows, 1)
  np.testing.assert_array_equal(agg, [2.0])
  np.testing.assert_array_equal(kept, [0, 1, 1, 1, 0, 0, 0])
  assert extra == {'kept_clients': 3.0}


def _numpy_bulyan(rows, f):
  """(aggregate, selected positions in order), straight from the paper."""
  rows = rows.astype(np.float64)
  remaining, selected = list(range(len(rows))), []
  theta = min(max(len(rows) - 2 * f, 1), len(rows))
  for _ in range(theta):
    scores = _numpy_krum_scores(rows[remaining], f)
    selected.append(remaining.pop(int(np.argmin(scores))))
  chosen = rows[selected]
  beta = min(max(theta - 2 * f, 1), theta)
  closest = np.argsort(np.abs(chosen - np.median(chosen, axis=0)), axis=0,
                       kind='stable')[:beta]
  return np.take_along_axis(chosen, closest, axis=0).mean(axis=0), selected


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 4), st.integers(0, 2), st.data())
def test_bulyan_agrees_with_a_numpy_reference(k, d, f, data):
  # Small integers: every distance and score is exact in float64, so ties
  # are exact and both break them by position.
  rows = np.array(data.draw(st.lists(st.integers(-20, 20), min_size=k * d,
                                     max_size=k * d)),
                  np.float32).reshape(k, d)
  want, selected = _numpy_bulyan(rows, f)
  np.testing.assert_array_equal(bulyan.select(tf.constant(rows), f),
                                selected)
  agg, kept, extra = _eager(bulyan.bulyan, rows, f)
  np.testing.assert_allclose(agg, want, rtol=1e-6, atol=1e-6)
  beta = min(max(len(selected) - 2 * f, 1), len(selected))
  assert extra == {'kept_clients': float(beta)}
  np.testing.assert_allclose(kept.sum(), beta, rtol=1e-6)
  assert np.all(kept[np.setdiff1d(np.arange(k), selected)] == 0)


@settings(max_examples=20, deadline=None)
@given(st.lists(FLOAT, min_size=1, max_size=6), st.integers(1, 9))
def test_every_rule_is_the_update_when_all_clients_are_identical(vector, k):
  rows = np.tile(np.array(vector, np.float32), (k, 1))
  for name, rule in _rules(num_byzantine=1).items():
    agg, kept, _ = _eager(rule, rows)
    np.testing.assert_allclose(agg, rows[0], rtol=1e-6, atol=1e-6,
                               err_msg=name)
    assert 0 < kept.sum() <= k


def test_an_empty_round_aggregates_to_zero_and_keeps_nothing():
  empty = np.zeros((0, 3), np.float32)
  for name, rule in _rules(num_byzantine=1).items():
    agg, kept, _ = _eager(rule, empty)
    np.testing.assert_array_equal(agg, np.zeros(3), err_msg=name)
    assert kept.shape == (0,)


# --- accumulate / merge / report ---


def _rows(updates, entered):
  return [collections.OrderedDict(update=tf.constant(u, tf.float32),
                                  entered=tf.constant(e, tf.int32))
          for u, e in zip(updates, entered)]


def _accumulate(rows, size):
  acc = collection.zero(size)
  for row in rows:
    acc = collection.accumulate(acc, row)
  return acc


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 9), st.lists(st.integers(0, 9), max_size=4),
       st.sampled_from(COLLECTING), st.data())
def test_merging_partial_accumulators_equals_one_pass(k, cuts, name, data):
  updates = np.array(data.draw(st.lists(FLOAT, min_size=3 * k,
                                        max_size=3 * k)),
                     np.float32).reshape(k, 3)
  entered = data.draw(st.lists(st.integers(0, 1), min_size=k, max_size=k))
  rows = _rows(updates, entered)
  # The slices of a mergeable run: contiguous, some possibly empty.
  bounds = [0, *sorted(min(c, k) for c in cuts), k]
  parts = [_accumulate(rows[a:b], 3) for a, b in zip(bounds, bounds[1:])]
  merged = parts[0]
  for part in parts[1:]:
    merged = collection.merge(merged, part)
  one_pass = _accumulate(rows, 3)
  rule = _rules(num_byzantine=1)[name]
  got = collection.report(merged, rule, capacity=12)
  want = collection.report(one_pass, rule, capacity=12)
  np.testing.assert_array_equal(got[0], want[0])
  for key in want[1]:
    np.testing.assert_array_equal(got[1][key], want[1][key])
  # The positions are the clients': excluded ones keep nothing.
  share = np.asarray(want[1][collection.KEPT_SHARE])
  assert np.all(share[:k][np.array(entered) == 0] == 0)
  assert np.all(share[k:] == 0)
  assert float(want[1][collection.EXCLUDED]) == k - sum(entered)


# --- the processes, in the TFF runtime ---


def test_processes_exclude_non_finite_updates_and_count_them(tff_worker):
  # HAND's five clients in five parameters each, with a NaN client at
  # position 1, an all-zero one (TFF's zeroed non-finite delta) at 3 and an
  # Inf at 6.
  honest = [np.append(row, [row.sum(), row[0] - row[1]]) for row in HAND]
  values = [_structure(honest[0]), _structure([np.nan, 0, 0, 0, 0]),
            _structure(honest[1]), _structure(np.zeros(5)),
            _structure(honest[2]), _structure(honest[3]),
            _structure([0, 0, np.inf, 0, 0]), _structure(honest[4])]
  entered_positions = [0, 2, 4, 5, 7]
  rows = tf.constant(np.stack(honest), tf.float32)
  expected = {
      'median': median.coordinate_median(rows),
      'trimmed_mean': trimmed_mean.trimmed_mean(rows, 0.2),
      'krum': (*krum.multi_krum(rows, 1, 1), {}),
      'multi_krum': (*krum.multi_krum(rows, 1, 2), {}),
      'bulyan': bulyan.bulyan(rows, 1),
  }
  for name in COLLECTING:
    parameters = dict(trim_fraction=0.2) if name == 'trimmed_mean' else {}
    if name == 'multi_krum':
      parameters['multi_krum_m'] = 2
    out = _run(name, values, capacity=10, **parameters)
    agg, kept, _ = expected[name]
    np.testing.assert_allclose(_flat(out.result), agg, rtol=1e-6,
                               err_msg=name)
    m = out.measurements
    assert m['excluded_clients'] == 3.0, name
    share = np.zeros(10)
    share[entered_positions] = kept
    np.testing.assert_allclose(m['kept_share'], share, rtol=1e-6,
                               err_msg=name)
  # The mean and norm bounding exclude the same clients, and keep the rest.
  out = _run('mean', values, capacity=10)
  np.testing.assert_allclose(_flat(out.result), np.mean(honest, axis=0),
                             rtol=1e-6)
  assert out.measurements['excluded_clients'] == 3.0
  assert out.measurements['kept_clients'] == 5.0
  np.testing.assert_array_equal(np.flatnonzero(out.measurements['kept_share']),
                                entered_positions)


def test_a_round_of_only_excluded_clients_leaves_the_model_unchanged(
    tff_worker):
  values = [_structure([np.nan] * 5), _structure(np.zeros(5))]
  # trimmed_mean and multi_krum share median's and krum's code paths.
  for name in ('median', 'krum', 'mean', 'norm_bound'):
    out = _run(name, values, capacity=4)
    np.testing.assert_array_equal(_flat(out.result), np.zeros(5))
    assert out.measurements['excluded_clients'] == 2.0, name
    assert out.measurements['kept_clients'] == 0.0, name
    np.testing.assert_array_equal(out.measurements['kept_share'], np.zeros(4))


def test_positions_follow_the_client_order_in_the_runtime(tff_worker):
  # TFF documents no aggregation order; kept_share is only attributable if
  # the runtime accumulates clients in the order they were given.
  rng = np.random.default_rng(0)
  values = [_structure(rng.normal(size=5)) for _ in range(12)]
  for p in (2, 7, 11):
    values[p] = _structure([np.nan] * 5)
  out = _run('mean', values, capacity=14)
  np.testing.assert_array_equal(
      np.flatnonzero(np.asarray(out.measurements['kept_share']) == 0),
      [2, 7, 11, 12, 13])
  # Krum on a far outlier at position 5: it is the one never kept.
  points = [_structure(np.full(5, 1.0 + 0.01 * p)) for p in range(8)]
  points[5] = _structure(np.full(5, 1e3))
  out = _run('multi_krum', points, capacity=8, byzantine_clients=1)
  np.testing.assert_array_equal(out.measurements['kept_share'],
                                [1, 1, 1, 1, 1, 0, 1, 1])


def test_more_clients_than_the_capacity_fails_inside_the_computation(
    tff_worker):
  values = [_structure(np.full(5, p + 1.0)) for p in range(4)]
  with pytest.raises(Exception, match='capacity 3'):
    _run('median', values, capacity=3)


@pytest.mark.parametrize('name', registry.names())
def test_every_aggregator_compiles_to_the_mergeable_form(name):
  process = registry.build(name, capacity=4).create(VALUE_TYPE)
  form = tff.backends.native.compile_to_mergeable_comp_form(process.next)
  assert form.up_to_merge.type_signature.parameter is not None
  assert 'kept_share=float32[4]' in str(process.next.type_signature.result)


def test_a_sign_flip_attacker_pulls_the_mean_back_but_not_the_robust_rules(
    tff_worker):
  # Six honest clients agree on g (plus a little noise); the seventh sends
  # -10 times its own honest update.
  rng = np.random.default_rng(1)
  g = np.array([1.0, -2.0, 0.5, 1.5, -1.0], np.float32)
  honest = [g + 0.05 * rng.standard_normal(5).astype(np.float32)
            for _ in range(7)]
  sent = honest[:6] + [sign_flip.sign_flip(honest[6], 10.0)]
  values = [_structure(u) for u in sent]
  results = {}
  for name, parameters in (
      ('mean', {}), ('median', {}), ('trimmed_mean', dict(trim_fraction=0.2)),
      ('krum', dict(byzantine_clients=1)),
      ('multi_krum', dict(byzantine_clients=1)),
      ('bulyan', dict(byzantine_clients=1)),
      ('norm_bound', dict(norm_bound=float(np.linalg.norm(g))))):
    results[name] = _flat(_run(name, values, **parameters).result)
  # The mean: (sum of 6 honest - 10 g) / 7 ~ -4/7 g, the wrong way.
  np.testing.assert_allclose(results['mean'], np.mean(sent, axis=0),
                             rtol=1e-5)
  assert np.dot(results['mean'], g) < -0.4 * np.dot(g, g)
  for name in ('median', 'trimmed_mean', 'krum', 'multi_krum', 'bulyan'):
    assert np.dot(results[name], g) > 0.9 * np.dot(g, g), name
    assert np.linalg.norm(results[name] - g) < 0.15, name
  # Norm bounding: the attacker now weighs as one honest client, so the
  # mean is about (6 - 1) / 7 g: still the right way, shrunk.
  bound = np.linalg.norm(g)
  clipped = [u * min(1.0, bound / np.linalg.norm(u)) for u in sent]
  np.testing.assert_allclose(results['norm_bound'], np.mean(clipped, axis=0),
                             rtol=1e-5)
  assert np.dot(results['norm_bound'], g) > 0.5 * np.dot(g, g)


def test_robust_rules_equal_the_mean_when_all_clients_are_honest_and_equal(
    tff_worker):
  u = np.array([0.3, -1.2, 2.0, 0.0, 4.5], np.float32)
  values = [_structure(u)] * 5
  for name, parameters in (
      ('mean', {}), ('median', {}), ('trimmed_mean', dict(trim_fraction=0.4)),
      ('krum', dict(byzantine_clients=1)), ('multi_krum', {}),
      ('bulyan', dict(byzantine_clients=0)),
      ('norm_bound', dict(norm_bound=10.0))):
    out = _run(name, values, **parameters)
    np.testing.assert_allclose(_flat(out.result), u, rtol=1e-6, err_msg=name)
    assert out.measurements['excluded_clients'] == 0.0


def test_norm_bound_clips_and_reports_each_clients_kept_factor(tff_worker):
  values = [_structure([3, 4, 0, 0, 0]), _structure([0, 0, 0, 0, 0.5]),
            _structure([np.nan, 0, 0, 0, 0])]
  out = _run('norm_bound', values, capacity=4, norm_bound=1.0)
  # [3, 4] (norm 5) becomes [0.6, 0.8]; the second is inside the ball.
  np.testing.assert_allclose(_flat(out.result), [0.3, 0.4, 0, 0, 0.25],
                             rtol=1e-6)
  m = out.measurements
  np.testing.assert_allclose(m['kept_share'], [0.2, 1.0, 0.0, 0.0],
                             rtol=1e-6)
  assert (m['excluded_clients'], m['clipped_clients']) == (1.0, 1.0)
  np.testing.assert_allclose(m['kept_clients'], 1.2, rtol=1e-6)
  # Weighted: weights 1 and 3, and the excluded client's weight is ignored.
  process = registry.build('norm_bound', dict(norm_bound=1.0),
                           capacity=4).create(VALUE_TYPE,
                                              tff.TensorType(np.float32))
  out = process.next(process.initialize(), values, [1.0, 3.0, 5.0])
  np.testing.assert_allclose(_flat(out.result),
                             [0.15, 0.2, 0, 0, 0.375], rtol=1e-6)


def test_the_median_as_fedavgs_model_aggregator_matches_numpy(tff_worker):
  clients = fl_testing.make_clients([6, 4, 8], seed=2)
  lr, batch = 0.1, 3
  process = fed_avg.build_fed_avg(
      fl_testing.linear_model_fn(),
      client_optimizer=tff.learning.optimizers.build_sgdm(learning_rate=lr),
      weighted=False, model_aggregator=registry.build('median', capacity=3))
  output = process.next(process.initialize(), [
      fl_testing.to_dataset(x, y, batch) for x, y in clients])
  w, b = process.get_model_weights(output.state).trainable
  zeros_w = np.zeros((fl_testing.INPUT_DIM, 10))
  deltas = [fl_testing.local_sgd(zeros_w, np.zeros(10), x, y, lr, batch)
            for x, y in clients]
  np.testing.assert_allclose(w, np.median([d[0] for d in deltas], axis=0),
                             atol=1e-6)
  np.testing.assert_allclose(b, np.median([d[1] for d in deltas], axis=0),
                             atol=1e-6)
  # The median is not the mean here.
  assert np.abs(np.mean([d[0] for d in deltas], axis=0) - w).max() > 1e-4
  aggregator = output.metrics['aggregator']
  assert aggregator['excluded_clients'] == 0.0
  assert aggregator['kept_clients'] == 1.0


# --- the registry ---


def test_registry_specs_declare_weighting_and_server_dp_soundness():
  assert registry.names() == ('mean', 'median', 'trimmed_mean', 'krum',
                              'multi_krum', 'bulyan', 'norm_bound')
  sound = {n for n in registry.names() if registry.get_spec(n).server_dp}
  weighted = {n for n in registry.names() if registry.get_spec(n).weighted}
  assert sound == weighted == {'mean', 'norm_bound'}
  assert registry.resolve('trimmed_mean') == dict(trim_fraction=0.1)
  assert registry.resolve('multi_krum') == dict(byzantine_clients=1,
                                                multi_krum_m=None)
  assert registry.resolve('norm_bound', dict(norm_bound=2)) == dict(
      norm_bound=2.0)
  assert '| `krum` | Blanchard et al. 2017 |' in registry.markdown_table()


@pytest.mark.parametrize('name, parameters, settings_, error', [
    ('krum', {}, dict(weighted=True),
     '--robust_aggregation=krum is not valid with --weight_by_size: it'
     ' selects or ranks whole updates and takes no example weight; add'
     ' --noweight_by_size'),
    ('median', {}, dict(weighted=False, dp='server'),
     '--robust_aggregation=median is not valid with --dp=server: server DP'
     ' calibrates its noise to the sensitivity of a sum of clipped updates,'
     ' and a median is no sum of clipped updates, so the noise calibrated to'
     ' a sum bounds nothing; valid with --dp=server: mean, norm_bound'),
    ('trimmed_mean', dict(trim_fraction=0.5), dict(weighted=False),
     '--trim_fraction=0.5 is not valid: must be in [0, 0.5)'),
    ('trimmed_mean', dict(trim_fraction=-0.1), dict(weighted=False),
     '--trim_fraction=-0.1 is not valid: must be in [0, 0.5)'),
    ('krum', dict(byzantine_clients=4), dict(weighted=False,
                                            clients_per_round=10),
     '--byzantine_clients=4 is not valid with --clients_per_round=10: Krum'
     ' needs more than 2f + 2 = 10 clients per round'),
    ('multi_krum', dict(byzantine_clients=2, multi_krum_m=9),
     dict(weighted=False, clients_per_round=10),
     '--multi_krum_m=9 is not valid with --clients_per_round=10 and'
     ' --byzantine_clients=2: must be <= 8 (more would always average in a'
     ' Byzantine update)'),
    ('krum', dict(byzantine_clients=1.5), dict(weighted=False),
     "--byzantine_clients=1.5 is not valid: must be an int >= 0"),
    ('median', dict(trim_fraction=0.2), dict(weighted=False),
     '--trim_fraction=0.2 does not apply to --robust_aggregation=median; it'
     ' applies to --robust_aggregation=trimmed_mean'),
    ('geometric_median', {}, dict(weighted=False),
     '--robust_aggregation=geometric_median is not valid; valid: mean,'
     ' median, trimmed_mean, krum, multi_krum, bulyan, norm_bound'),
    ('bulyan', dict(byzantine_clients=2), dict(weighted=False,
                                               clients_per_round=10),
     '--byzantine_clients=2 is not valid with --clients_per_round=10: Bulyan'
     ' needs at least 4f + 3 = 11 clients per round'),
    ('norm_bound', dict(norm_bound=0.0), dict(weighted=True),
     '--norm_bound=0.0 is not valid: must be > 0'),
])
def test_validate_names_the_unsound_combination_in_one_line(
    name, parameters, settings_, error):
  assert registry.validate(name, parameters, **settings_) == error


@pytest.mark.parametrize('name, settings_', [
    ('mean', dict(weighted=True)), ('norm_bound', dict(weighted=False,
                                                       dp='server')),
    ('median', dict(weighted=False, dp='client')),
    ('krum', dict(weighted=False, clients_per_round=5)),
    ('multi_krum', dict(weighted=False, dp='none', clients_per_round=10)),
])
def test_validate_accepts_sound_combinations(name, settings_):
  assert registry.validate(name, **settings_) is None


class _CoordinateMax(collection.CollectingFactory):
  """A toy rule: the coordinate-wise maximum (no robustness at all)."""

  def rule(self, updates):
    k = tf.shape(updates)[0]
    return (tf.reduce_max(tf.concat([updates, tf.fill([1, tf.shape(updates)[1]],
                                                      -np.inf)], 0), axis=0),
            tf.ones([k]), {})


TOY_SCALE = spec.Parameter('toy_scale', float, 1.0, 'A toy parameter.',
                           low=0.0, high=10.0)


@pytest.fixture
def toy_aggregator():
  toy = spec.AggregatorSpec(
      name='coordinate_max', paper='(a test)', summary='toy',
      build=lambda p, capacity: _CoordinateMax(capacity),
      parameters=(TOY_SCALE,), server_dp_reason='it is a maximum',
      collects_updates=True)
  registry.register(toy)
  yield toy
  del registry.SPECS['coordinate_max']


def test_registering_an_aggregator_is_one_spec(tff_worker, toy_aggregator):
  assert 'coordinate_max' in registry.names()
  assert registry.resolve('coordinate_max') == dict(toy_scale=1.0)
  assert registry.validate('coordinate_max', dict(toy_scale=11.0),
                           weighted=False) == (
                               '--toy_scale=11.0 is not valid: must be in'
                               ' [0, 10]')
  assert 'it is a maximum' in registry.validate('coordinate_max',
                                                weighted=False, dp='server')
  out = _run('coordinate_max', [_structure([1, 5, -2, 0, 3]),
                                _structure([4, -1, 0, 0, 3])], capacity=2)
  np.testing.assert_array_equal(_flat(out.result), [4, 5, 0, 0, 3])
  with pytest.raises(ValueError, match="'toy_scale' of 'other' is declared"
                     ' twice'):
    registry.register(dataclasses.replace(toy_aggregator, name='other',
                                        parameters=(spec.Parameter(
                                            'toy_scale', float, 2.0, ''),)))
  with pytest.raises(ValueError, match="'coordinate_max' is registered twice"):
    registry.register(dataclasses.replace(toy_aggregator, summary='again'))


def test_factories_refuse_bad_parameters_in_one_line():
  with pytest.raises(ValueError, match=r'^--trim_fraction=0.7 is not valid:'
                     r' must be in \[0, 0.5\)$'):
    trimmed_mean.TrimmedMeanFactory(0.7)
  with pytest.raises(ValueError, match=r'^capacity=0 is not valid'):
    median.MedianFactory(capacity=0)
  with pytest.raises(ValueError, match=r'^--multi_krum_m=0 is not valid'):
    krum.KrumFactory(1, 0)
  with pytest.raises(TypeError, match='structure of float tensors'):
    median.MedianFactory().create(tff.TensorType(np.int32, [3]))


def _pairs(measurements, mask):
  return sorted(zip(np.round(measurements['kept_share'], 5), mask))


@pytest.mark.slow
def test_split_across_two_workers_the_rules_agree_and_positions_line_up(
    tff_worker):
  """Real mergeable execution: each of two `tff_research.cli.worker`
  processes gets a contiguous slice of the clients and the partial results
  are merged in slice order. The rules' results equal one machine's, and
  so do the positions: a flag collected in the same computation lines up
  with `kept_share` in the clients' order."""
  from tff_research.execution import remote  # pylint: disable=g-import-not-at-top
  from tff_research.execution import runtime  # pylint: disable=g-import-not-at-top
  from tests import test_scale_out  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  values = [_structure(rng.normal(size=5)) for _ in range(7)]
  values[1] = _structure([np.nan] * 5)
  values[5] = _structure([1e3] * 5)  # an outlier Krum must not keep
  flags = [float(p in (1, 5, 6)) for p in range(7)]  # "malicious"
  cases = (('median', {}), ('trimmed_mean', dict(trim_fraction=0.2)),
           ('multi_krum', dict(byzantine_clients=1)), ('norm_bound', {}))

  def with_flags(process):
    @tff.federated_computation(
        process.next.type_signature.parameter[0],
        process.next.type_signature.parameter[1],
        tff.FederatedType(tff.TensorType(np.float32), tff.CLIENTS))
    def comp(state, value, flag):
      @tff.tensorflow.computation(tff.TensorType(np.float32))
      def row(f):
        return collections.OrderedDict(update=f[tf.newaxis],
                                       entered=tf.constant(1, tf.int32))
      output = process.next(state, value)
      mask = collection.federated_collect(
          tff.federated_map(row, flag), 1,
          lambda r: (tf.zeros([1]), r[:, 0], {}), 8,
          lambda a, m: m[collection.KEPT_SHARE])
      return output.result, output.measurements, mask
    return comp

  def run_all():
    out = []
    for name, parameters in cases:
      process = registry.build(name, parameters, capacity=8).create(
          VALUE_TYPE)
      out.append(with_flags(process)(process.initialize(), values, flags))
    return out

  local = run_all()
  workers = test_scale_out._start_workers(2)  # pylint: disable=protected-access
  try:
    runtime.start(workers=tuple(w.address for w in workers))
    split = run_all()
    assert remote.stats().split_calls >= len(cases)
  finally:
    runtime.stop()
    for w in workers:
      w.stop()
  for (name, _), (a_result, a_m, a_mask), (b_result, b_m, b_mask) in zip(
      cases, local, split):
    np.testing.assert_allclose(_flat(b_result), _flat(a_result), rtol=1e-6,
                               err_msg=name)
    for key in ('excluded_clients', 'kept_clients'):
      np.testing.assert_allclose(b_m[key], a_m[key], rtol=1e-6, err_msg=name)
    # The same (kept share, flag) pairs, position by position.
    assert _pairs(b_m, b_mask) == _pairs(a_m, a_mask), name
    np.testing.assert_array_equal(b_mask, a_mask, err_msg=name)
    np.testing.assert_allclose(b_m['kept_share'], a_m['kept_share'],
                               rtol=1e-6, err_msg=name)
  # Positions are the client order: the flags as given, and Multi-Krum
  # keeps neither the NaN client (1) nor the outlier (5).
  np.testing.assert_array_equal(local[2][2][:7], flags)
  np.testing.assert_array_equal(local[2][1]['kept_share'][[1, 5]], [0, 0])
  _, krum_m, krum_mask = split[2]
  # Split, the kept malicious clients are still only position 6's.
  assert selection.kept_malicious(krum_m['kept_share'], krum_mask) == 1.0
