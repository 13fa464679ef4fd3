"""Statistical tests of the DP noise scale (false-alarm rate stated per test).

On all-zero updates an aggregate is pure noise, so its coordinates must be
i.i.d. N(0, s^2) with
  * server-level DP: s = z C / m (noise z C on the sum, divided by m clients);
  * client-level DP: s = z C / sqrt(n) (n clients' own N(0, (z C)^2), averaged).
A one-sample Kolmogorov-Smirnov test must accept s and reject 2/3 s and 3/2 s
(the scale errors a missing or doubled factor of sqrt 2 / 1.5 would make).
With D = 3,000 coordinates the KS power against those scales is ~1: the
critical distance at ALPHA is 1.95 / sqrt(D) = 0.036, the distance between
N(0, s) and N(0, 1.5 s) is 0.10.
"""

import collections

import numpy as np
from scipy import stats
import tensorflow_federated as tff

from tff_research.privacy import adaptive_clipping
from tff_research.privacy import dp_client
from tff_research.privacy import dp_server

# False-alarm rate of each acceptance; for the seeded server noise the
# outcome is fixed, for the clients' unseeded noise it is the per-run rate.
ALPHA = 1e-3
VALUE_TYPE = tff.to_type(collections.OrderedDict(
    w=tff.TensorType(np.float32, [50, 50]), b=tff.TensorType(np.float32, [500])))
D = 3000


def _zeros(n):
  return [collections.OrderedDict(w=np.zeros((50, 50), np.float32),
                                  b=np.zeros(500, np.float32))
          for _ in range(n)]


def _flat(value):
  return np.concatenate([np.asarray(value['w']).ravel(),
                         np.asarray(value['b']).ravel()]).astype(np.float64)


def _check_scale(samples, std):
  assert samples.shape == (D,)
  assert stats.kstest(samples, 'norm', args=(0, std)).pvalue > ALPHA
  for wrong in (2 / 3 * std, 3 / 2 * std):
    assert stats.kstest(samples, 'norm', args=(0, wrong)).pvalue < ALPHA


def test_server_noise_std_is_z_clip_over_expected_clients(tff_worker):
  z, clip, n = 1.3, 0.5, 4
  process = dp_server.ServerDPFactory(
      noise_multiplier=z, clip=clip, expected_clients_per_round=float(n),
      noise_seed=5).create(VALUE_TYPE)
  output = process.next(process.initialize(), _zeros(n))
  _check_scale(_flat(output.result), z * clip / n)
  assert output.measurements['noise_stddev'] == np.float32(z * clip / n)


def test_adaptive_server_noise_uses_the_larger_update_multiplier(tff_worker):
  # Adaptive clipping spends part of z on the count: the update noise is
  # z_Delta C / m with z_Delta > z (adaptive_clipping.noise_split).
  z, clip, m = 0.8, 0.5, 40.0
  z_delta, _ = adaptive_clipping.noise_split(z, m)
  process = dp_server.ServerDPFactory(
      noise_multiplier=z, clip=clip, expected_clients_per_round=m,
      noise_seed=6, adaptive=True).create(VALUE_TYPE)
  output = process.next(process.initialize(), _zeros(3))
  _check_scale(_flat(output.result), z_delta * clip / m)


def test_client_noise_mean_has_std_z_clip_over_sqrt_n(tff_worker):
  # Also shows the clients' noise is independent: identical noise on every
  # client would leave the mean with std z C, rejected as > 3/2 of it.
  z, clip, n = 1.3, 0.5, 9
  process = dp_client.ClientDPFactory(noise_multiplier=z,
                                      clip=clip).create(VALUE_TYPE)
  output = process.next(process.initialize(), _zeros(n))
  _check_scale(_flat(output.result), z * clip / np.sqrt(n))
  assert output.measurements['noise_stddev'] == np.float32(z * clip)
