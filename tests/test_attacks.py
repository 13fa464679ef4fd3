"""Attack transforms on tiny clients, and what they do to the aggregators.

Each attack of `tff_research.attacks` is checked on a hand-made client
against its definition (label flip y -> C - 1 - y, sign flip -s u, seeded
Gaussian noise with its stated distribution, the backdoor's trigger,
poisoned indices, success metric and model-replacement boost), the
malicious subset for purity and uniformity, and the boosted backdoor update
against the mean and norm bounding with the kept malicious share counted
from the aggregator's `kept_share`.
"""

import collections

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest
from scipy import stats
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.aggregators import registry
from tff_research.attacks import backdoor
from tff_research.attacks import client_work
from tff_research.attacks import gaussian
from tff_research.attacks import label_flip
from tff_research.attacks import selection
from tff_research.attacks import sign_flip
from tests import fl_testing

# Every stated false-alarm rate of the statistical checks below.
ALPHA = 1e-3


def _client(labels, seed=0):
  """A tiny client: digits-like pixels (1.0 = background) and `labels`."""
  rng = np.random.default_rng(seed)
  pixels = np.ones((len(labels), 28, 28), np.float32)
  pixels[:, 4:24, 4:24] = rng.random((len(labels), 20, 20))
  return pixels, tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
      pixels=pixels, label=np.array(labels, np.int32)))


def _arrays(dataset):
  elements = list(dataset.as_numpy_iterator())
  return (np.stack([e['pixels'] for e in elements]),
          np.array([e['label'] for e in elements]))


# --- the malicious subset ---

IDS = [f'writer_{i:03d}' for i in range(40)]


def test_malicious_clients_are_a_seeded_fixed_subset():
  chosen = selection.malicious_clients(IDS, 0.2, seed=3)
  assert len(chosen) == 8 and set(chosen) <= set(IDS)
  assert list(chosen) == sorted(chosen)
  # Pure: the same call, the ids in another order, the same subset.
  assert selection.malicious_clients(IDS, 0.2, seed=3) == chosen
  assert selection.malicious_clients(IDS[::-1], 0.2, seed=3) == chosen
  assert selection.malicious_clients(IDS, 0.2, seed=4) != chosen
  assert selection.malicious_clients(IDS, 0.0, seed=3) == ()
  assert selection.malicious_clients(IDS, 1.0, seed=3) == tuple(IDS)
  # round(f N), halves up: 0.1 of 25 is 2.5 -> 3.
  assert len(selection.malicious_clients(IDS[:25], 0.1, seed=0)) == 3
  with pytest.raises(ValueError, match=r'^--malicious_fraction=1.5 is not'
                     r' valid: must be in \[0, 1\]$'):
    selection.malicious_clients(IDS, 1.5, seed=0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=30,
                unique=True),
       st.floats(0.0, 1.0), st.integers(0, 2**31), st.randoms())
def test_the_subset_depends_only_on_seed_fraction_and_the_set_of_ids(
    ids, fraction, seed, random):
  chosen = selection.malicious_clients(ids, fraction, seed)
  shuffled = list(ids)
  random.shuffle(shuffled)
  assert selection.malicious_clients(shuffled, fraction, seed) == chosen
  assert len(chosen) == int(np.floor(fraction * len(ids) + 0.5))
  assert len(set(chosen)) == len(chosen) and set(chosen) <= set(ids)


def test_every_client_is_equally_likely_to_be_malicious():
  # Over 2,000 seeds each of 10 clients is malicious Binomial(2000, 0.3)
  # times; a chi-square test of equal counts at ALPHA.
  ids = [str(i) for i in range(10)]
  counts = collections.Counter(
      c for seed in range(2000)
      for c in selection.malicious_clients(ids, 0.3, seed))
  observed = np.array([counts[c] for c in ids])
  assert observed.sum() == 2000 * 3
  assert stats.chisquare(observed).pvalue > ALPHA


def test_kept_malicious_sums_the_kept_share_of_malicious_positions():
  mask = selection.round_mask(['a', 'b', 'c', 'd'], {'b', 'd', 'z'})
  np.testing.assert_array_equal(mask, [0, 1, 0, 1])
  share = [1.0, 0.25, 1.0, 1.0, 0.0, 0.0]  # capacity 6
  assert selection.kept_malicious(share, mask) == 1.25
  # A mask padded to the capacity, as the client work reports it.
  assert selection.kept_malicious(share, [0, 1, 0, 1, 0, 0]) == 1.25
  with pytest.raises(ValueError, match='capacity'):
    selection.kept_malicious(share[:3], mask)


# --- data attacks ---


def test_label_flip_maps_y_to_c_minus_1_minus_y_and_keeps_the_pixels():
  pixels, ds = _client([0, 3, 9, 5])
  got_pixels, got_labels = _arrays(label_flip.flip_labels(ds, 10))
  np.testing.assert_array_equal(got_labels, [9, 6, 0, 4])
  np.testing.assert_array_equal(got_pixels, pixels)
  _, labels62 = _arrays(label_flip.flip_labels(ds, 62))
  np.testing.assert_array_equal(labels62, [61, 58, 52, 56])
  assert label_flip.flip_labels(ds, 10).element_spec == ds.element_spec
  with pytest.raises(ValueError, match='num_classes=1 is not valid'):
    label_flip.flip_labels(ds, 1)


def test_the_trigger_is_a_checkerboard_in_the_blank_corner():
  assert backdoor.TRIGGER_MASK.sum() == 16
  assert backdoor.TRIGGER_MASK[24:, 24:].all()
  corner = backdoor.TRIGGER_VALUES[24:, 24:]
  np.testing.assert_array_equal(corner[0], [0, 1, 0, 1])
  np.testing.assert_array_equal(corner[1], [1, 0, 1, 0])
  assert (corner == 0).sum() == 8


def test_backdoor_poisons_exactly_floor_n_f_evenly_spread_examples():
  labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  pixels, ds = _client(labels)
  got_pixels, got_labels = _arrays(backdoor.poison(ds, target=7,
                                                   fraction=0.3))
  # floor((i + 1) 0.3) > floor(i 0.3) at i = 3, 6, 9.
  poisoned = [3, 6, 9]
  clean = [i for i in range(10) if i not in poisoned]
  np.testing.assert_array_equal(got_labels[poisoned], [7, 7, 7])
  np.testing.assert_array_equal(got_labels[clean], np.array(labels)[clean])
  np.testing.assert_array_equal(got_pixels[clean], pixels[clean])
  for i in poisoned:
    np.testing.assert_array_equal(got_pixels[i][backdoor.TRIGGER_MASK],
                                  backdoor.TRIGGER_VALUES[
                                      backdoor.TRIGGER_MASK])
    np.testing.assert_array_equal(got_pixels[i][~backdoor.TRIGGER_MASK],
                                  pixels[i][~backdoor.TRIGGER_MASK])
  corner = backdoor.TRIGGER_VALUES[24:, 24:]
  for fraction, want in ((0.0, []), (1.0, list(range(10))),
                         (0.5, [1, 3, 5, 7, 9]), (0.25, [3, 7])):
    got_pixels, got_labels = _arrays(backdoor.poison(ds, target=7,
                                                     fraction=fraction))
    stamped = np.flatnonzero(np.all(got_pixels[:, 24:, 24:] == corner,
                                    axis=(1, 2)))
    np.testing.assert_array_equal(stamped, want)
    assert np.all(got_labels[want] == 7)


def test_backdoor_success_counts_non_target_examples_classified_as_target():
  # Target 7: examples 2 and 3 are 7s and do not count; of the other three,
  # two are classified as 7.
  assert backdoor.backdoor_success([7, 2, 7, 1, 7], [1, 2, 7, 7, 3],
                                   7) == pytest.approx(2 / 3)
  assert np.isnan(backdoor.backdoor_success([7, 7], [7, 7], 7))
  pixels, ds = _client([1, 7, 3, 7, 0])
  got_pixels, got_labels = _arrays(backdoor.triggered_test_set(ds, 7))
  np.testing.assert_array_equal(got_labels, [7, 7, 7])
  np.testing.assert_array_equal(got_pixels[:, 24:, 24:],
                                np.broadcast_to(backdoor.TRIGGER_VALUES[24:,
                                                                        24:],
                                                (3, 4, 4)))
  np.testing.assert_array_equal(got_pixels[:, :24], pixels[[0, 2, 4], :24])
  # Accuracy on the triggered set is the success: a classifier that says 7
  # when the trigger's first pixel is ink and the true class otherwise.
  def classify(p, y):
    return np.where(p[:, 24, 24] == 0.0, 7, y)
  raw_pixels, raw_labels = _arrays(ds)
  stamped = np.asarray(backdoor.stamp_trigger(raw_pixels))
  assert np.mean(classify(got_pixels, got_labels) == got_labels) == 1.0
  assert backdoor.backdoor_success(classify(stamped, raw_labels), raw_labels,
                                   7) == 1.0
  assert backdoor.backdoor_success(classify(raw_pixels, raw_labels),
                                   raw_labels, 7) == 0.0


# --- update attacks ---

UPDATE = collections.OrderedDict(w=np.array([[1.0, -2.0], [0.5, 0.0]],
                                            np.float32),
                                 b=np.array([3.0], np.float32))


def test_sign_flip_sends_minus_scale_times_the_honest_update():
  flipped = sign_flip.sign_flip(UPDATE, 10.0)
  np.testing.assert_array_equal(flipped['w'], [[-10, 20], [-5, 0]])
  np.testing.assert_array_equal(flipped['b'], [-30])
  with pytest.raises(ValueError, match='--attack_scale=0 is not valid'):
    sign_flip.sign_flip(UPDATE, 0)


def test_gaussian_noise_is_seeded_by_seed_round_and_client():
  seed = gaussian.noise_seed(0, 5, 'writer_001')
  assert seed.dtype == np.int64 and seed.shape == (2,)
  np.testing.assert_array_equal(seed, gaussian.noise_seed(0, 5, 'writer_001'))
  a = gaussian.gaussian_update(UPDATE, 2.0, seed)
  b = gaussian.gaussian_update(UPDATE, 2.0, seed)
  np.testing.assert_array_equal(a['w'], b['w'])
  assert a['w'].shape == (2, 2) and a['b'].dtype == tf.float32
  for other in (gaussian.noise_seed(1, 5, 'writer_001'),
                gaussian.noise_seed(0, 6, 'writer_001'),
                gaussian.noise_seed(0, 5, 'writer_002')):
    c = gaussian.gaussian_update(UPDATE, 2.0, other)
    assert not np.array_equal(a['w'], c['w'])
  # Inside a graph (a client's TF computation) with the seed as a tensor.
  graph_fn = tf.function(lambda s: gaussian.gaussian_update(UPDATE, 2.0, s))
  np.testing.assert_array_equal(graph_fn(tf.constant(seed))['b'], a['b'])


def test_gaussian_noise_has_mean_zero_and_the_stated_scale():
  like = np.zeros((100, 100), np.float32)
  scale = 3.0
  x = gaussian.gaussian_update(like, scale, gaussian.noise_seed(7, 1, 'c'))
  x = np.asarray(x, np.float64).ravel()
  n = x.size
  # Mean: z-test; variance: (n - 1) s^2 / sigma^2 ~ chi2(n - 1); both at
  # ALPHA, two-sided.
  assert abs(x.mean()) / (scale / np.sqrt(n)) < stats.norm.ppf(1 - ALPHA / 2)
  statistic = (n - 1) * x.var(ddof=1) / scale**2
  assert stats.chi2.ppf(ALPHA / 2, n - 1) < statistic < stats.chi2.ppf(
      1 - ALPHA / 2, n - 1)
  assert stats.kstest(x / scale, 'norm').pvalue > ALPHA


def test_model_replacement_boost_lands_the_mean_step_on_the_attackers_model():
  # n = 10 clients, server learning rate 0.5; the nine honest deltas
  # cancel (zero), so G + eta * mean = X exactly.
  n, eta = 10, 0.5
  gamma = backdoor.replacement_factor(n, eta)
  assert gamma == 20.0
  g = np.array([0.2, -0.1, 0.4], np.float32)
  x = np.array([1.0, 1.0, -1.0], np.float32)
  sent = [np.asarray(backdoor.boost(x - g, gamma))] + [np.zeros(3)] * (n - 1)
  np.testing.assert_allclose(g + eta * np.mean(sent, axis=0), x, rtol=1e-6)
  with pytest.raises(ValueError, match='server_learning_rate=0 is not valid'):
    backdoor.replacement_factor(n, 0)


def test_norm_bounding_caps_the_boosted_backdoor_and_reports_it(tff_worker):
  # Four clients: three honest deltas near u, one boosted backdoor update
  # (gamma = 4) towards a far model. The mean is dragged to the attacker;
  # norm bounding at the honest norm keeps it close to u, and its kept
  # share says how much of the attacker survived.
  value_type = tff.TensorType(np.float32, [3])
  u = np.array([0.3, 0.4, 0.0], np.float32)  # norm 0.5
  honest = [u, u * 1.1, u * 0.9]
  boosted = np.asarray(backdoor.boost(np.array([0.0, 0.0, 10.0], np.float32),
                                      backdoor.replacement_factor(4, 1.0)))
  values = [honest[0], boosted, honest[1], honest[2]]
  mask = selection.round_mask(['h0', 'm0', 'h1', 'h2'], {'m0'})

  def run(name, **parameters):
    process = registry.build(name, parameters, capacity=4).create(value_type)
    return process.next(process.initialize(), values)

  mean = run('mean')
  np.testing.assert_allclose(mean.result, np.mean(values, axis=0), rtol=1e-6)
  assert mean.result[2] == pytest.approx(10.0)
  assert selection.kept_malicious(mean.measurements['kept_share'],
                                  mask) == 1.0
  bounded = run('norm_bound', norm_bound=0.55)
  clipped = [v * min(1.0, 0.55 / np.linalg.norm(v)) for v in values]
  np.testing.assert_allclose(bounded.result, np.mean(clipped, axis=0),
                             rtol=1e-6)
  assert bounded.result[2] == pytest.approx(0.55 / 4)
  assert selection.kept_malicious(bounded.measurements['kept_share'],
                                  mask) == pytest.approx(0.55 / 40)


# --- update attacks inside TFF's client work ---


def _attacked_fed_avg(model_fn, lr, kind, scale):
  """FedAvg (uniform, server lr 1) composed from TFF's parts with the
  client work wrapped by `client_work.with_update_attack`."""
  initial = tff.tensorflow.computation(
      lambda: tff.learning.models.ModelWeights.from_model(model_fn()))
  weights_type = initial.type_signature.result
  inner = tff.learning.templates.build_model_delta_client_work(
      model_fn, tff.learning.optimizers.build_sgdm(learning_rate=lr),
      tff.learning.ClientWeighting.UNIFORM)
  return tff.learning.templates.compose_learning_process(
      initial, tff.learning.templates.build_broadcast_process(weights_type),
      client_work.with_update_attack(
          inner, client_work.update_attack(kind, scale), capacity=3),
      registry.build('mean', capacity=3).create(
          weights_type.trainable, tff.TensorType(np.float32)),
      tff.learning.templates.build_apply_optimizer_finalizer(
          tff.learning.optimizers.build_sgdm(learning_rate=1.0),
          weights_type))


def test_a_sign_flip_client_sends_minus_scale_times_its_delta_in_fedavg(
    tff_worker):
  clients = fl_testing.make_clients([5, 3, 4], seed=5)
  lr, batch = 0.1, 2
  process = _attacked_fed_avg(fl_testing.linear_model_fn(), lr, 'sign_flip',
                              10.0)
  data = [collections.OrderedDict(
      data=fl_testing.to_dataset(x, y, batch),
      attack=client_work.attack_input(malicious=(i == 1)))
          for i, (x, y) in enumerate(clients)]
  output = process.next(process.initialize(), data)
  w, b = process.get_model_weights(output.state).trainable
  deltas = [fl_testing.local_sgd(np.zeros((fl_testing.INPUT_DIM, 10)),
                                 np.zeros(10), x, y, lr, batch)
            for x, y in clients]
  factor = np.array([1.0, -10.0, 1.0])  # client 1 attacks
  np.testing.assert_allclose(
      w, np.tensordot(factor, [d[0] for d in deltas], axes=1) / 3, atol=1e-6)
  np.testing.assert_allclose(
      b, np.tensordot(factor, [d[1] for d in deltas], axes=1) / 3, atol=1e-6)
  attack = output.metrics['client_work']['attack']
  assert attack['malicious_clients'] == 1.0
  np.testing.assert_array_equal(attack['malicious_mask'], [0, 1, 0])
  assert selection.kept_malicious(output.metrics['aggregator']['kept_share'],
                                  attack['malicious_mask']) == 1.0


def test_update_attacks_change_only_malicious_updates():
  u = collections.OrderedDict(w=tf.constant([[1.0, -2.0]]),
                              b=tf.constant([3.0]))
  seed = gaussian.noise_seed(0, 1, 'c')
  honest = dict(malicious=tf.constant(False), seed=tf.constant(seed))
  attacker = dict(malicious=tf.constant(True), seed=tf.constant(seed))
  for kind, want in (('sign_flip', -2.0 * np.array([1, -2, 3])),
                     ('backdoor', 2.0 * np.array([1, -2, 3])),
                     ('gaussian', np.concatenate([
                         np.ravel(v) for v in gaussian.gaussian_update(
                             u, 2.0, seed).values()]))):
    fn = client_work.update_attack(kind, 2.0)
    got = fn(u, attacker)
    np.testing.assert_array_equal(
        np.concatenate([np.ravel(got['w']), np.ravel(got['b'])]), want)
    same = fn(u, honest)
    np.testing.assert_array_equal(same['w'], u['w'])
    np.testing.assert_array_equal(same['b'], u['b'])
  with pytest.raises(ValueError, match='--attack=label_flip has no update'):
    client_work.update_attack('label_flip', 1.0)
