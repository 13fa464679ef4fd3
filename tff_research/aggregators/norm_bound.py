"""Norm bounding (Sun et al. 2019, "Can You Really Backdoor Federated
Learning?"): every client update is projected onto the L2 ball of
radius M (`norm_bound`) before the mean,

    Delta = sum_i w_i * Delta_i * min(1, M / ||Delta_i||_2) / sum_i w_i,

which caps what one boosted (model-replacement) update can do to the round.
Built on TFF's `tff.aggregators.clipping_factory(M, inner)` with the
project's non-finite-excluding mean
(`excluding_mean.ExcludingMeanFactory`) as the inner mean, so exclusion
and its count are exactly the plain mean's. It is a sum of bounded updates:
mergeable, and sound before server DP. TFF's `zeroing_factory` (drop an
update above the norm) is not used: Sun et al. bound, they do not drop.

Which updates it kept: every client also sends its update's norm (one
float), collected in position order (`collection.SumRuleFactory`), and
`kept_share[p]` = min(1, M / ||Delta_p||) is the factor position p's update
kept (0 for an excluded client); `kept_clients` is their sum,
`clipped_clients` how many were scaled down.

Type signatures of the created process (V the update type, W = float32, C
the capacity, S the state of `clipping_factory`'s process):

    weighted:   next: (<S@SERVER, {V}@CLIENTS, {W}@CLIENTS> ->
                       <state=S@SERVER, result=V@SERVER,
                        measurements=<excluded_clients=float32,
                          clipped_clients=float32, kept_clients=float32,
                          kept_share=float32[C]>@SERVER>)
    unweighted: next: (<S@SERVER, {V}@CLIENTS> -> (same))
"""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff

from tff_research.aggregators import collection
from tff_research.aggregators import excluding_mean
from tff_research.aggregators import spec


def global_norm(value) -> tf.Tensor:
  """The L2 norm of the whole update, float32; accumulated in float64 so a
  finite update with entries near 1e20 does not overflow to inf."""
  return tf.cast(tf.sqrt(tf.add_n([
      tf.reduce_sum(tf.square(tf.cast(t, tf.float64)))
      for t in tf.nest.flatten(value)])), tf.float32)


class NormBoundFactory(collection.SumRuleFactory):
  """Mean of the updates clipped to L2 norm <= `norm_bound`, non-finite ones
  excluded and counted; weighted or uniform as `create` is called."""

  width = 1

  def __init__(self, norm_bound: float,
               capacity: int = collection.DEFAULT_CAPACITY):
    super().__init__(capacity)
    self._norm_bound = NORM_BOUND.check(norm_bound)

  def inner(self, weighted):
    mean = (excluding_mean.ExcludingMeanFactory() if weighted
            else collection.UniformExcludingMean())
    return tff.aggregators.clipping_factory(self._norm_bound, mean)

  def row(self, value):
    return global_norm(value)[tf.newaxis]

  def share(self, rows):
    norms = rows[:, 0]
    # A zero update (possible with weights) is inside the ball: kept whole.
    return tf.where(norms > 0, tf.minimum(1.0, self._norm_bound / norms), 1.0)

  def measurements(self, inner):
    return collections.OrderedDict([
        (collection.EXCLUDED, inner['clipping'][collection.EXCLUDED]),
        ('clipped_clients', tf.cast(inner['clipped_count'], tf.float32)),
    ])


NORM_BOUND = spec.Parameter(
    'norm_bound', float, 1.0,
    'With --robust_aggregation=norm_bound: M, the L2 norm every client'
    ' update is clipped to before the mean.', low=0.0, low_open=True)

SPEC = spec.AggregatorSpec(
    name='norm_bound',
    paper='Sun et al. 2019',
    summary='`tff.aggregators.clipping_factory` around the non-finite-'
    'excluding mean',
    build=lambda p, capacity: NormBoundFactory(p['norm_bound'], capacity),
    parameters=(NORM_BOUND,),
    weighted=True,
    server_dp=True,
)
