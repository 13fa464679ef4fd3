"""Client-level (local) differential privacy: each client noises its own update.

The trust model of local DP (e.g. Truex et al. 2020, "LDP-Fed"; the Gaussian
mechanism of Dwork & Roth 2014, Appendix A): nothing leaves a client before it
is private. Each client clips its update to L2 norm <= C and adds
N(0, (z C)^2 I) itself; the server only averages what it receives,

    Delta = (1 / |S_t|) sum_{i in S_t} (clip_C(Delta_i) + N_i(0, z^2 C^2 I)),

so the mean of n clients carries noise of std z C / sqrt(n) per coordinate
(against z C / n for the same z at server level: local DP pays a factor
sqrt(n)). Any two updates inside the clip ball differ by at most 2C, so one
release is a Gaussian mechanism with noise multiplier z / 2 towards *any*
adversary, the server included; `tff_research.privacy.accounting` composes it
over the rounds a client takes part in.

The noise comes from the client's own unseeded `tf.random.normal`, on
purpose: a seed the server knows or could recompute (the run's --seed, a
broadcast value) would let it subtract the noise and void the local
guarantee. Client-level runs are therefore not bit-reproducible, and a
resumed run's model differs from the uninterrupted run's by noise; its
sampling, shuffling, initialisation, participation counts and epsilon still
continue exactly. (A seeded variant needs each client's own key, which an
aggregator cannot have: TFF gives it the update only, no client identity.
Seeding from a fingerprint of the update instead makes clients with equal
updates, e.g. every zeroed non-finite one, draw equal noise: the releases
would then reveal which updates are equal, and the mean of n such clients
would keep noise z C instead of z C / sqrt(n).)

Type signatures of the created `tff.templates.AggregationProcess`, for a
model-update type V:

    initialize: ( -> <clip=float32>@SERVER)
    next: (<state@SERVER, {V}@CLIENTS> ->
           <state=<clip>@SERVER, result=V@SERVER,
            measurements=<clip, clipped_fraction, nonfinite_clients,
                          excluded_clients, noise_stddev>@SERVER>)

`noise_stddev` is the per-client noise std z C. An empty round averages to
zero (no update). `excluded_clients` counts the clients whose update carried
no signal: non-finite here, or zeroed already by TFF's client work (which
replaces a non-finite delta by zeros before any aggregator sees it, so
`nonfinite_clients` alone misses them). They are not dropped from the mean:
their noise-only release is indistinguishable from any other, and a flag
saying "my update diverged" would be a non-private release of its own.
"""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff

from tff_research.privacy import clipping


class ClientDPFactory(tff.aggregators.UnweightedAggregationFactory):
  """Local DP mean: clip and noise on every client, plain mean on the server."""

  def __init__(self, *, noise_multiplier: float, clip: float):
    """Configures the mechanism.

    Args:
      noise_multiplier: z >= 0; each client's noise std is z * C.
      clip: the L2 clip C > 0.
    """
    if not noise_multiplier >= 0:
      raise ValueError(f'noise_multiplier={noise_multiplier} must be >= 0')
    if not clip > 0:
      raise ValueError(f'clip={clip} must be > 0')
    self._noise_multiplier = float(noise_multiplier)
    self._clip = float(clip)

  def create(self, value_type) -> tff.templates.AggregationProcess:
    clipping.check_value_type(value_type)
    noise_multiplier = self._noise_multiplier

    @tff.tensorflow.computation
    def initial_state():
      return collections.OrderedDict(clip=tf.constant(self._clip, tf.float32))

    state_type = initial_state.type_signature.result

    @tff.tensorflow.computation(state_type)
    def current_clip(state):
      return state['clip']

    @tff.tensorflow.computation(value_type, tf.float32)
    def client_fn(value, clip):
      clipped, _, stats = clipping.clip_with_counts(value, clip)
      if noise_multiplier > 0:
        clipped = tf.nest.map_structure(
            lambda t: t + tf.random.normal(
                tf.shape(t), stddev=noise_multiplier * clip, dtype=t.dtype
            ),
            clipped,
        )
      return clipped, stats

    stats_type = client_fn.type_signature.result[1]

    @tff.tensorflow.computation(value_type, stats_type, state_type)
    def server_fn(value_sum, stats, state):
      clip = state['clip']
      # divide_no_nan: an empty round averages to zero, not NaN.
      mean = tf.nest.map_structure(
          lambda t: tf.math.divide_no_nan(t, tf.cast(stats['clients'], t.dtype)),
          value_sum,
      )
      measurements = collections.OrderedDict(
          clip=clip,
          clipped_fraction=tf.math.divide_no_nan(
              stats['clipped'], stats['clients']
          ),
          nonfinite_clients=stats['nonfinite'],
          excluded_clients=stats['excluded'],
          noise_stddev=noise_multiplier * clip,
      )
      return mean, measurements

    @tff.federated_computation
    def init_fn():
      return tff.federated_eval(initial_state, tff.SERVER)

    @tff.federated_computation(
        init_fn.type_signature.result,
        tff.FederatedType(value_type, tff.CLIENTS),
    )
    def next_fn(state, value):
      clip = tff.federated_broadcast(tff.federated_map(current_clip, state))
      noised, stats = tff.federated_map(client_fn, (value, clip))
      mean, measurements = tff.federated_map(
          server_fn,
          (tff.federated_sum(noised), tff.federated_sum(stats), state),
      )
      return tff.templates.MeasuredProcessOutput(
          state=state, result=mean, measurements=measurements
      )

    return tff.templates.AggregationProcess(init_fn, next_fn)
