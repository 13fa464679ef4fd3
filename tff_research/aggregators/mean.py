"""The mean (McMahan et al. 2017's FedAvg aggregation), excluding non-finite
client updates: `excluding_mean.ExcludingMeanFactory`, the pipeline's
aggregator without DP, plus the positions it kept, so every rule of the
registry reports the same `kept_share` and an attack layer counts kept
malicious clients the same way for all of them.

    Delta = sum_{i entered} w_i Delta_i / sum_{i entered} w_i

(w_i = 1 uniformly). `kept_share[p]` is 1 for every entered position, 0 for
an excluded one; `kept_clients` = the entered clients. A sum: mergeable and
sound under server DP (which replaces it with its own clipped, noised sum).

Type signatures of the created process (V the update type, W = float32, C
the capacity, S the state of TFF's `MeanFactory`):

    weighted:   next: (<S@SERVER, {V}@CLIENTS, {W}@CLIENTS> ->
                       <state=S@SERVER, result=V@SERVER,
                        measurements=<excluded_clients=float32,
                          kept_clients=float32,
                          kept_share=float32[C]>@SERVER>)
    unweighted: next: (<S@SERVER, {V}@CLIENTS> -> (same))
"""

from __future__ import annotations

from tff_research.aggregators import collection
from tff_research.aggregators import excluding_mean
from tff_research.aggregators import spec


class MeanFactory(collection.SumRuleFactory):
  """The non-finite-excluding mean with the positions it kept."""

  def inner(self, weighted):
    del weighted  # ExcludingMeanFactory is both kinds.
    return excluding_mean.ExcludingMeanFactory()


SPEC = spec.AggregatorSpec(
    name='mean',
    paper='McMahan et al. 2017',
    summary='`excluding_mean.ExcludingMeanFactory` (the mean without'
    ' non-finite updates)',
    build=lambda p, capacity: MeanFactory(capacity),
    weighted=True,
    server_dp=True,
)
