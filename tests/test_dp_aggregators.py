"""The DP aggregators against numpy references and TFF's own DP factory.

Clipping properties follow jax_privacy's clipping tests (norm bound, identity
inside the ball); noise-free server-level DP must equal
`tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed`.
"""

import collections

import numpy as np
import pytest
from scipy import stats
import tensorflow_federated as tff

from tff_research.privacy import adaptive_clipping
from tff_research.privacy import clipping
from tff_research.privacy import dp_client
from tff_research.privacy import dp_server

VALUE_TYPE = tff.to_type(collections.OrderedDict(
    w=tff.TensorType(np.float32, [4, 3]), b=tff.TensorType(np.float32, [3])))
# Every stated false-alarm rate of the statistical checks below.
ALPHA = 1e-3


def _value(rng, scale):
  return collections.OrderedDict(
      w=(scale * rng.standard_normal((4, 3))).astype(np.float32),
      b=(scale * rng.standard_normal(3)).astype(np.float32))


def _flat(value):
  return np.concatenate([np.asarray(value['w'], np.float64).ravel(),
                         np.asarray(value['b'], np.float64).ravel()])


def _np_clip(value, clip):
  v = _flat(value)
  norm = np.linalg.norm(v)
  return v if norm <= clip else v * clip / norm


def _clients(seed=0):
  rng = np.random.default_rng(seed)
  # Norms around 0.3 .. 3: some inside a clip of 1, some outside.
  return [_value(rng, s) for s in (0.1, 0.5, 0.08, 0.9)]


def _server(noise=0.0, clip=1.0, expected=5.0, **kwargs):
  return dp_server.ServerDPFactory(
      noise_multiplier=noise, clip=clip, expected_clients_per_round=expected,
      **kwargs).create(VALUE_TYPE)


def test_clip_bounds_the_norm_and_leaves_updates_inside_the_ball(tff_worker):
  clip_fn = clipping.build_clip_fn(VALUE_TYPE)
  rng = np.random.default_rng(1)
  clip = 0.7
  scales = [1e-3, 0.05, 0.1, 0.19, 0.21, 0.5, 3.0, 1e3, 1e18]
  for scale in scales:
    value = _value(rng, scale)
    out = clip_fn(value, clip)
    v, got = _flat(value), _flat(out['value'])
    norm = np.linalg.norm(v)
    np.testing.assert_allclose(out['norm'], norm, rtol=1e-6)
    # float32 rounding of the rescaled entries: at most a few ulp over.
    assert np.linalg.norm(got) <= clip * (1 + 1e-6)
    if norm <= clip:
      assert np.array_equal(got, v)  # bit for bit
      assert out['clipped'] == 0.0
    else:
      np.testing.assert_allclose(got, v * clip / norm, rtol=1e-5)
      np.testing.assert_allclose(np.linalg.norm(got), clip, rtol=1e-6)
      assert out['clipped'] == 1.0
    assert out['nonfinite'] == 0.0
  # Exactly on the boundary: unchanged, not counted as clipped.
  on = collections.OrderedDict(w=np.zeros((4, 3), np.float32),
                               b=np.array([0.0, 0.5, 0.0], np.float32))
  out = clip_fn(on, 0.5)
  assert np.array_equal(_flat(out['value']), _flat(on))
  assert out['clipped'] == 0.0


def test_noise_free_server_dp_is_the_clipped_sum_over_expected_clients(
    tff_worker):
  clients = _clients()
  process = _server(noise=0.0, clip=1.0, expected=5.0)
  output = process.next(process.initialize(), clients)
  expected = sum(_np_clip(c, 1.0) for c in clients) / 5.0
  np.testing.assert_allclose(_flat(output.result), expected, rtol=1e-5,
                             atol=1e-7)
  norms = [np.linalg.norm(_flat(c)) for c in clients]
  m = output.measurements
  assert m['clipped_fraction'] == pytest.approx(np.mean(np.array(norms) > 1))
  assert 0 < m['clipped_fraction'] < 1  # the case exercises both branches
  assert m['clip'] == 1.0 and m['noise_stddev'] == 0.0
  assert m['nonfinite_clients'] == 0.0


def test_noise_free_client_dp_is_the_clipped_mean(tff_worker):
  clients = _clients()
  process = dp_client.ClientDPFactory(noise_multiplier=0.0,
                                      clip=1.0).create(VALUE_TYPE)
  output = process.next(process.initialize(), clients)
  expected = np.mean([_np_clip(c, 1.0) for c in clients], axis=0)
  np.testing.assert_allclose(_flat(output.result), expected, rtol=1e-5,
                             atol=1e-7)


def test_noise_free_server_dp_equals_tff_gaussian_fixed(tff_worker):
  clients = _clients(seed=3)
  ours = _server(noise=0.0, clip=0.8, expected=3.0)
  theirs = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
      noise_multiplier=0.0, clients_per_round=3.0, clip=0.8).create(VALUE_TYPE)
  a = ours.next(ours.initialize(), clients).result
  b = theirs.next(theirs.initialize(), clients).result
  np.testing.assert_allclose(_flat(a), _flat(b), rtol=1e-6, atol=1e-8)


def test_server_noise_has_the_distribution_of_tff_gaussian_fixed(tff_worker):
  # Both add N(0, (z C)^2) to the clipped sum and divide by m: the noise of
  # the two (result minus the clipped mean) must be the same distribution.
  # Two-sample KS on 3 x 15 coordinates per aggregator, false-alarm ALPHA.
  z, clip, m = 1.3, 0.5, 3.0
  clients = _clients(seed=4)[:3]
  mean = sum(_np_clip(c, clip) for c in clients) / m
  ours = _server(noise=z, clip=clip, expected=m, noise_seed=11)
  theirs = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
      noise_multiplier=z, clients_per_round=m, clip=clip).create(VALUE_TYPE)
  ours_noise, theirs_noise = [], []
  state_a, state_b = ours.initialize(), theirs.initialize()
  for _ in range(40):
    out_a = ours.next(state_a, clients)
    out_b = theirs.next(state_b, clients)
    state_a, state_b = out_a.state, out_b.state
    ours_noise.append(_flat(out_a.result) - mean)
    theirs_noise.append(_flat(out_b.result) - mean)
  ours_noise = np.concatenate(ours_noise)
  theirs_noise = np.concatenate(theirs_noise)
  assert stats.ks_2samp(ours_noise, theirs_noise).pvalue > ALPHA
  std = z * clip / m
  assert stats.kstest(ours_noise, 'norm', args=(0, std)).pvalue > ALPHA
  assert stats.kstest(theirs_noise, 'norm', args=(0, std)).pvalue > ALPHA


@pytest.mark.parametrize('mode', ['server', 'client'])
def test_a_nonfinite_client_does_not_poison_the_aggregate(tff_worker, mode):
  clients = _clients(seed=5)[:2]
  nan = _value(np.random.default_rng(0), 1.0)
  nan['w'][1, 2] = np.nan
  inf = _value(np.random.default_rng(1), 1.0)
  inf['b'][0] = -np.inf
  all_clients = clients + [nan, inf]
  if mode == 'server':
    process = _server(noise=0.0, clip=1.0, expected=4.0)
  else:
    process = dp_client.ClientDPFactory(noise_multiplier=0.0,
                                        clip=1.0).create(VALUE_TYPE)
  output = process.next(process.initialize(), all_clients)
  # The broken clients count as zero updates (zero is inside the clip ball).
  expected = sum(_np_clip(c, 1.0) for c in clients) / 4.0
  np.testing.assert_allclose(_flat(output.result), expected, rtol=1e-5,
                             atol=1e-7)
  assert output.measurements['nonfinite_clients'] == 2.0
  # With noise the result stays finite too.
  noisy = (_server(noise=1.0, clip=1.0, expected=4.0) if mode == 'server'
           else dp_client.ClientDPFactory(noise_multiplier=1.0,
                                          clip=1.0).create(VALUE_TYPE))
  assert np.all(np.isfinite(
      _flat(noisy.next(noisy.initialize(), all_clients).result)))


def test_adaptive_clip_takes_geometric_steps_towards_the_quantile(tff_worker):
  # Ten clients with update norms 1..10, no noise: b_t is the exact fraction
  # with norm <= C_t and C_{t+1} = C_t exp(-0.2 (b_t - gamma)).
  norms = np.arange(1.0, 11.0)
  clients = [collections.OrderedDict(w=np.zeros((4, 3), np.float32),
                                     b=np.array([n, 0, 0], np.float32))
             for n in norms]
  gamma, clip = 0.8, 2.0
  process = _server(noise=0.0, clip=clip, expected=10.0, adaptive=True,
                    target_quantile=gamma)
  state = process.initialize()
  for _ in range(20):
    output = process.next(state, clients)
    b = np.mean(norms <= clip)
    next_clip = clip * np.exp(-0.2 * (b - gamma))
    m = output.measurements
    assert m['clip'] == pytest.approx(clip, rel=1e-5)
    assert m['unclipped_fraction'] == pytest.approx(b)
    assert m['next_clip'] == pytest.approx(next_clip, rel=1e-5)
    # This round's updates are clipped with this round's clip.
    expected_b0 = np.minimum(norms, clip).sum() / 10.0
    assert output.result['b'][0] == pytest.approx(expected_b0, rel=1e-5)
    state, clip = output.state, float(output.state['clip'])
  # Starting far below, the clip has climbed to the 0.8-quantile: between
  # the 8th and 9th norm (8 <= C < 9 gives b = 0.8, a fixed point).
  assert 7.5 < clip < 9


def test_server_noise_is_a_pure_function_of_seed_and_round(tff_worker):
  clients = _clients(seed=6)
  a, b, c = (_server(noise=1.0, noise_seed=s) for s in (7, 7, 8))
  out_a1 = a.next(a.initialize(), clients)
  out_b1 = b.next(b.initialize(), clients)
  out_a2 = a.next(out_a1.state, clients)
  out_c1 = c.next(c.initialize(), clients)
  assert np.array_equal(_flat(out_a1.result), _flat(out_b1.result))
  assert not np.allclose(_flat(out_a1.result), _flat(out_a2.result))
  assert not np.allclose(_flat(out_a1.result), _flat(out_c1.result))
  # Resuming from a saved state draws the same noise as the straight run.
  resumed = b.next(out_a1.state, clients)
  assert np.array_equal(_flat(resumed.result), _flat(out_a2.result))


def test_empty_round(tff_worker):
  # Server-level DP still releases noise / m (the mechanism does not reveal
  # that nobody was sampled); client-level averages nothing to zero.
  server = _server(noise=1.0, clip=2.0, expected=4.0, noise_seed=3)
  out = server.next(server.initialize(), [])
  noise = _flat(out.result)
  assert np.all(np.isfinite(noise)) and np.any(noise != 0)
  assert out.measurements['clipped_fraction'] == 0.0
  client = dp_client.ClientDPFactory(noise_multiplier=1.0,
                                     clip=2.0).create(VALUE_TYPE)
  out = client.next(client.initialize(), [])
  assert np.array_equal(_flat(out.result), np.zeros(15))


def test_type_signatures_place_state_and_result_at_the_server():
  for process in (_server(adaptive=True),
                  dp_client.ClientDPFactory(noise_multiplier=1.0,
                                            clip=1.0).create(VALUE_TYPE)):
    assert process.initialize.type_signature.result.placement is tff.SERVER
    sig = process.next.type_signature
    assert sig.parameter[1].placement is tff.CLIENTS
    assert sig.result.result.placement is tff.SERVER
    assert sig.result.result.member.is_equivalent_to(VALUE_TYPE)
    assert 'clipped_fraction' in dir(sig.result.measurements.member)


def test_bad_arguments_are_rejected_with_one_line():
  with pytest.raises(ValueError, match=r'clip=0.0 must be > 0'):
    dp_server.ServerDPFactory(noise_multiplier=1.0, clip=0.0,
                              expected_clients_per_round=3.0)
  with pytest.raises(ValueError, match=r'noise_multiplier=-1.0 must be >= 0'):
    dp_client.ClientDPFactory(noise_multiplier=-1.0, clip=1.0)
  with pytest.raises(ValueError, match=r'--dp_noise_multiplier=1.0 is too'
                     r' large for adaptive clipping with 10 expected'):
    dp_server.ServerDPFactory(noise_multiplier=1.0, clip=1.0,
                              expected_clients_per_round=10.0, adaptive=True)
  with pytest.raises(TypeError, match='structure of float tensors'):
    dp_server.ServerDPFactory(
        noise_multiplier=1.0, clip=1.0, expected_clients_per_round=3.0,
    ).create(tff.TensorType(np.int32, [3]))
  with pytest.raises(TypeError, match='structure of float tensors'):
    dp_client.ClientDPFactory(noise_multiplier=1.0, clip=1.0).create(
        tff.TensorType(np.int32, [3]))


def test_adaptive_noise_split_keeps_the_total_noise_multiplier():
  # Update noise z_D and count noise 2 sigma_b compose to the total z:
  # z^-2 = z_D^-2 + (2 sigma_b)^-2 (Andrew et al. 2021, Sec. 3.1).
  z, m = 0.8, 100.0
  z_d, sigma_b = adaptive_clipping.noise_split(z, m)
  assert sigma_b == pytest.approx(m / 20)
  assert z_d**-2 + (2 * sigma_b)**-2 == pytest.approx(z**-2)
  assert z_d > z
