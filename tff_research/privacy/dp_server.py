"""Server-level (central) differential privacy: DP-FedAvg's aggregation.

McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models" (DP-FedAvg, Algorithm 1 with the fixed-denominator estimator
f_tilde_f): every client's update is clipped to L2 norm <= C on the client;
the trusted server sums the clipped updates, adds Gaussian noise
N(0, (z C)^2 I) to the sum and divides by the *expected* number of clients
per round m (not the realised count, which would reveal whether a given
client took part):

    Delta = (sum_{i in S_t} clip_C(Delta_i) + N(0, z^2 C^2 I)) / m.

With Poisson sampling of clients (probability q = m / N) this is the
sampled Gaussian mechanism with noise multiplier z per round, which
`tff_research.privacy.accounting` composes. With `adaptive=True` the clip
follows the gamma-quantile of update norms (`adaptive_clipping`, Andrew et
al. 2021) and z is split between the update and the clipped count.

Noise is drawn with `tf.random.stateless_normal` from a seed kept in the
aggregator's state, advanced every round: a run's noise is a pure function of
its seed and round, and a resumed run draws exactly the noise the
uninterrupted run would have. (A deployment must keep that seed secret; see
docs/privacy.md.)

Type signatures of the created `tff.templates.AggregationProcess`, for a
model-update type V:

    initialize: ( -> <clip=float32, seed=int64[2]>@SERVER)
    next: (<state@SERVER, {V}@CLIENTS> ->
           <state=<clip, seed>@SERVER, result=V@SERVER,
            measurements=<clip, clipped_fraction, nonfinite_clients,
                          excluded_clients, noise_stddev[, next_clip,
                          unclipped_fraction]>@SERVER>)

`clipped_fraction`, `nonfinite_clients` and `excluded_clients` (non-finite
or all-zero updates: TFF's client work zeroes a non-finite delta before the
aggregator sees it) are exact counts over the clients
of the round: simulation diagnostics, not part of the private release (a
deployment would log only the noised estimate `unclipped_fraction`).
"""

from __future__ import annotations

import collections
from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_research.privacy import adaptive_clipping
from tff_research.privacy import clipping
from tff_research.data import sampling


class ServerDPFactory(tff.aggregators.UnweightedAggregationFactory):
  """Central DP mean: clip on clients, noise once on the server's sum."""

  def __init__(
      self,
      *,
      noise_multiplier: float,
      clip: float,
      expected_clients_per_round: float,
      noise_seed: int = 0,
      adaptive: bool = False,
      target_quantile: float = 0.5,
      clip_learning_rate: float = adaptive_clipping.DEFAULT_CLIP_LEARNING_RATE,
      clipped_count_stddev: Optional[float] = None,
  ):
    """Configures the mechanism.

    Args:
      noise_multiplier: z >= 0, the total noise multiplier (the one the
        accountant uses); the noise std on the sum is z * C.
      clip: the L2 clip C > 0 (the initial clip with `adaptive`).
      expected_clients_per_round: m > 0, the fixed denominator.
      noise_seed: seed of the server's noise stream.
      adaptive: adapt the clip towards `target_quantile` of update norms.
      target_quantile: gamma in (0, 1), with `adaptive`.
      clip_learning_rate: eta_C >= 0, with `adaptive`.
      clipped_count_stddev: sigma_b, with `adaptive`; default m / 20.
    """
    if not noise_multiplier >= 0:
      raise ValueError(f'noise_multiplier={noise_multiplier} must be >= 0')
    if not clip > 0:
      raise ValueError(f'clip={clip} must be > 0')
    if not expected_clients_per_round > 0:
      raise ValueError(
          f'expected_clients_per_round={expected_clients_per_round} must be'
          ' > 0'
      )
    if adaptive and not 0 < target_quantile < 1:
      raise ValueError(f'target_quantile={target_quantile} must be in (0, 1)')
    self._clip = float(clip)
    self._expected = float(expected_clients_per_round)
    self._seed = int(noise_seed)
    self._adaptive = bool(adaptive)
    self._target_quantile = float(target_quantile)
    self._clip_learning_rate = float(clip_learning_rate)
    if adaptive:
      self._value_noise_multiplier, self._count_stddev = (
          adaptive_clipping.noise_split(
              noise_multiplier, self._expected, clipped_count_stddev
          )
      )
    else:
      self._value_noise_multiplier, self._count_stddev = (
          float(noise_multiplier), 0.0,
      )

  def create(self, value_type) -> tff.templates.AggregationProcess:
    clipping.check_value_type(value_type)

    @tff.tensorflow.computation
    def initial_state():
      return collections.OrderedDict(
          clip=tf.constant(self._clip, tf.float32),
          seed=tf.constant([self._seed, 0], tf.int64),
      )

    state_type = initial_state.type_signature.result

    @tff.tensorflow.computation(state_type)
    def current_clip(state):
      return state['clip']

    client_fn = _client_fn(value_type)
    server_fn = self._server_fn(
        value_type, client_fn.type_signature.result[2], state_type)

    @tff.federated_computation
    def init_fn():
      return tff.federated_eval(initial_state, tff.SERVER)

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
    )
    def next_fn(state, value):
      clip = tff.federated_broadcast(tff.federated_map(current_clip, state))
      clipped, below, stats = tff.federated_map(client_fn, (value, clip))
      mean, new_state, measurements = tff.federated_map(
          server_fn,
          (
              tff.federated_sum(clipped),
              tff.federated_sum(below),
              tff.federated_sum(stats),
              state,
          ),
      )
      return tff.templates.MeasuredProcessOutput(
          state=new_state, result=mean, measurements=measurements
      )

    return tff.templates.AggregationProcess(init_fn, next_fn)

  def _server_fn(self, value_type, stats_type, state_type):
    """(sum of clipped updates, sum of b_i - 1/2, clipping stats, state) ->
    (noised mean, next state, measurements), in TensorFlow."""
    expected = self._expected
    value_nm = self._value_noise_multiplier
    count_stddev = self._count_stddev
    adaptive = self._adaptive
    target_quantile = self._target_quantile
    clip_lr = self._clip_learning_rate

    @tff.tensorflow.computation(value_type, tf.float32, stats_type, state_type)
    def server_fn(value_sum, below_sum, stats, state):
      clip = state['clip']
      seeds = tf.random.experimental.stateless_split(state['seed'], num=3)
      flat = tf.nest.flatten(value_sum)
      if value_nm > 0:
        flat = _with_gaussian_noise(flat, seeds[0], value_nm * clip)
      mean = tf.nest.pack_sequence_as(
          value_sum, [t / tf.cast(expected, t.dtype) for t in flat]
      )
      measurements = collections.OrderedDict(
          clip=clip,
          clipped_fraction=tf.math.divide_no_nan(
              stats['clipped'], stats['clients']
          ),
          nonfinite_clients=stats['nonfinite'],
          excluded_clients=stats['excluded'],
          noise_stddev=value_nm * clip / expected,
      )
      next_clip = clip
      if adaptive:
        noised_below = below_sum
        if count_stddev > 0:
          noised_below += count_stddev * tf.random.stateless_normal(
              [], seed=seeds[1]
          )
        next_clip, unclipped = adaptive_clipping.geometric_update(
            clip, noised_below, expected, target_quantile, clip_lr
        )
        measurements['next_clip'] = next_clip
        measurements['unclipped_fraction'] = unclipped
      new_state = collections.OrderedDict(clip=next_clip, seed=seeds[2])
      return mean, new_state, measurements

    return server_fn


def _client_fn(value_type):
  """(update, clip) -> (clipped update, b_i - 1/2, clipping stats)."""

  @tff.tensorflow.computation(value_type, tf.float32)
  def client_fn(value, clip):
    # `excluded` updates add nothing to the sum, and the denominator is
    # the fixed m.
    clipped, norm, stats = clipping.clip_with_counts(value, clip)
    # b_i - 1/2 (see adaptive_clipping): sensitivity 1/2 per client.
    below = tf.cast(norm <= clip, tf.float32) - 0.5
    return clipped, below, stats

  return client_fn


def _with_gaussian_noise(flat, seed, stddev):
  """Each tensor of `flat` plus N(0, stddev^2) noise, from one stateless
  stream per tensor split off `seed`."""
  noise_seeds = tf.random.experimental.stateless_split(seed, num=len(flat))
  return [
      t + tf.random.stateless_normal(
          tf.shape(t), seed=noise_seeds[i], stddev=stddev, dtype=t.dtype
      )
      for i, t in enumerate(flat)
  ]


def noise_seed_from(seed: int) -> int:
  """The server noise seed of a run: a pure function of the run's --seed."""
  return int(sampling.round_rng(seed, 0, 'dp_noise').integers(2**62))

