"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates").

In every coordinate j, the server sorts the k clients' values, removes the
b = floor(beta k) largest and the b smallest, and averages the remaining
k - 2b:

    trmean_beta(x_1, ..., x_k)_j = 1 / (k - 2b) * sum_{i in U_j} x_{i,j},

U_j the middle k - 2b values of coordinate j. beta (`trim_fraction`) is in
[0, 1/2), so at least one value remains; beta = 0 is the mean. It tolerates
a beta fraction of Byzantine clients in every coordinate; the count b is
`int(beta * k)`, as `scipy.stats.trim_mean` cuts.

`kept_share[p]` is the fraction of the d coordinates in which position p's
value was among the averaged ones, so `kept_clients` = k - 2b (the values
averaged per coordinate). Ties are broken by position (a stable sort), so
identical values are kept from the middle positions.

Type signature of the created process (unweighted, stateless; V the update
type, C the capacity):

    next: (<<>@SERVER, {V}@CLIENTS> -> <state=<>@SERVER, result=V@SERVER,
           measurements=<excluded_clients=float32, kept_clients=float32,
                         kept_share=float32[C]>@SERVER>)
"""

from __future__ import annotations

import tensorflow as tf

from tff_research.aggregators import collection
from tff_research.aggregators import spec


def trim(updates: tf.Tensor, num_trimmed: tf.Tensor
         ) -> tuple[tf.Tensor, tf.Tensor, dict[str, tf.Tensor]]:
  """A coordinate-wise `collection.Rule`: (mean of the middle values per
  coordinate float32[d], kept share float32[k], {kept_clients: k - 2b}) of
  `updates` float32[k, d], b = `num_trimmed` removed from each end of every
  coordinate. `kept_clients` is given exactly: the sum of the k shares
  carries float32 rounding."""
  k = tf.shape(updates)[0]
  order = tf.argsort(updates, axis=0, stable=True)
  middle = order[num_trimmed:k - num_trimmed]
  values = tf.experimental.numpy.take_along_axis(updates, middle, axis=0)
  coordinates = tf.cast(tf.shape(updates)[1], tf.float32)
  kept = tf.math.divide_no_nan(
      tf.math.bincount(middle, minlength=k, maxlength=k, dtype=tf.float32),
      coordinates)
  averaged = tf.cast(tf.shape(middle)[0], tf.float32)
  return collection.mean_of_rows(values), kept, {collection.KEPT: averaged}


def num_trimmed(num_updates: tf.Tensor, trim_fraction: float) -> tf.Tensor:
  """b = int(beta * k), in float64 as `scipy.stats.trim_mean`."""
  return tf.cast(tf.floor(
      trim_fraction * tf.cast(num_updates, tf.float64)), tf.int32)


def trimmed_mean(updates: tf.Tensor, trim_fraction: float
                 ) -> tuple[tf.Tensor, tf.Tensor, dict[str, tf.Tensor]]:
  """The beta-trimmed mean of `updates` float32[k, d], as `trim`."""
  return trim(updates, num_trimmed(tf.shape(updates)[0], trim_fraction))


class TrimmedMeanFactory(collection.CollectingFactory):
  """Coordinate-wise beta-trimmed mean of the entered updates."""

  def __init__(self, trim_fraction: float,
               capacity: int = collection.DEFAULT_CAPACITY):
    super().__init__(capacity)
    self._trim_fraction = TRIM_FRACTION.check(trim_fraction)

  def rule(self, updates):
    return trimmed_mean(updates, self._trim_fraction)


TRIM_FRACTION = spec.Parameter(
    'trim_fraction', float, 0.1,
    'With --robust_aggregation=trimmed_mean: beta, the fraction of the'
    ' largest and of the smallest values removed in every coordinate.',
    low=0.0, high=0.5, high_open=True)

SPEC = spec.AggregatorSpec(
    name='trimmed_mean',
    paper='Yin et al. 2018',
    summary='coordinate-wise beta-trimmed mean over the collected updates',
    build=lambda p, capacity: TrimmedMeanFactory(p['trim_fraction'],
                                                 capacity),
    parameters=(TRIM_FRACTION,),
    server_dp_reason='a trimmed mean is no sum of clipped updates: removing'
    ' one client can change which values are averaged in every coordinate',
    collects_updates=True,
)
