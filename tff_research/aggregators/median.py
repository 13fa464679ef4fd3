"""Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates").

In every coordinate j the server takes the median of the k clients' values,

    med(x_1, ..., x_k)_j = median{x_{1,j}, ..., x_{k,j}},

the mean of the two middle values when k is even (numpy's convention). It
is the trimmed mean (`trimmed_mean.trim`) that removes b = floor((k - 1) / 2)
values from each end: one value remains for odd k, two for even k. It
tolerates fewer than half Byzantine clients in every coordinate.

`kept_share[p]` is the fraction of coordinates in which position p's value
is a middle value, so `kept_clients` is 1 (k odd) or 2 (k even). Ties are
broken by position (a stable sort).

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
from tff_research.aggregators import trimmed_mean


def coordinate_median(updates: tf.Tensor
                      ) -> tuple[tf.Tensor, tf.Tensor, dict[str, tf.Tensor]]:
  """The coordinate-wise median of `updates` float32[k, d] (zeros for
  k = 0), as `trimmed_mean.trim`."""
  k = tf.shape(updates)[0]
  return trimmed_mean.trim(updates, tf.maximum(k - 1, 0) // 2)


class MedianFactory(collection.CollectingFactory):
  """Coordinate-wise median of the entered updates."""

  def rule(self, updates):
    return coordinate_median(updates)


SPEC = spec.AggregatorSpec(
    name='median',
    paper='Yin et al. 2018',
    summary='coordinate-wise median over the collected updates',
    build=lambda p, capacity: MedianFactory(capacity),
    server_dp_reason='a median is no sum of clipped updates, so the noise'
    ' calibrated to a sum bounds nothing',
    collects_updates=True,
)
