"""Bulyan (El Mhamdi, Guerraoui and Rouault 2018, "The Hidden Vulnerability
of Distributed Learning in Byzantium").

With k updates of which at most f (`byzantine_clients`) are Byzantine:

1. selection: theta = k - 2f times, Krum (`krum.krum_scores`, neighbours
   |R| - f - 2 among the updates R not yet selected) picks the best-scored
   update of R, which moves to the selection set S;
2. aggregation: in every coordinate j, the beta = theta - 2f values of S
   closest to S's coordinate-wise median (`median.coordinate_median`) are
   averaged.

Krum alone can be steered coordinate by coordinate (a Byzantine update close
in L2 and far in one coordinate); the second step bounds every coordinate
by honest values. The guarantee needs k >= 4f + 3 (the registry refuses a
configured round size that breaks it). With fewer updates entered (excluded
clients) theta and beta are clamped to at least 1, and the rule still runs
without the bound.

Squared distances are computed once, in float64, from direct differences
(`krum.squared_distances`). Ties (in score, and in distance to the median)
are broken by position. `kept_share[p]` is the fraction of the d
coordinates in which position p's value was averaged, so `kept_clients` =
beta, as for the trimmed mean.

Type signature of the created process (unweighted, stateless; V the update
type, C the capacity):

    next: (<<>@SERVER, {V}@CLIENTS> -> <state=<>@SERVER, result=V@SERVER,
           measurements=<excluded_clients=float32, kept_clients=float32,
                         kept_share=float32[C]>@SERVER>)
"""

from __future__ import annotations

import tensorflow as tf

from tff_research.aggregators import collection
from tff_research.aggregators import krum
from tff_research.aggregators import median
from tff_research.aggregators import spec

_INF = float('inf')


def select(updates: tf.Tensor, byzantine_clients: int) -> tf.Tensor:
  """int32[theta]: the positions Bulyan's recursive Krum selects from
  `updates` float32[k, d], in the order selected (theta = max(k - 2f, 1),
  0 when k = 0)."""
  k = tf.shape(updates)[0]
  theta = tf.minimum(tf.maximum(k - 2 * byzantine_clients, 1), k)
  distances = krum.squared_distances(updates)
  off_diagonal = tf.linalg.set_diag(distances,
                                    tf.fill([k], tf.constant(_INF, tf.float64)))

  def step(i, remaining, chosen):
    size = k - i  # |R|
    # Rows and columns of updates already selected are out of R.
    masked = tf.where(remaining[tf.newaxis, :], off_diagonal, _INF)
    nearest = tf.sort(masked, axis=1)[:, :krum.num_neighbours(
        size, byzantine_clients)]
    scores = tf.where(remaining, tf.reduce_sum(nearest, axis=1), _INF)
    best = tf.cast(tf.argmin(scores), tf.int32)  # First of equal scores.
    return (i + 1,
            tf.tensor_scatter_nd_update(remaining, [[best]], [False]),
            chosen.write(i, best))

  _, _, chosen = tf.while_loop(
      lambda i, *_: i < theta, step,
      (tf.constant(0), tf.ones([k], tf.bool),
       tf.TensorArray(tf.int32, size=theta, element_shape=[])))
  return tf.reshape(chosen.stack(), [theta])


def bulyan(updates: tf.Tensor, byzantine_clients: int
           ) -> tuple[tf.Tensor, tf.Tensor, dict[str, tf.Tensor]]:
  """A `collection.Rule`: (Bulyan's aggregate float32[d], kept share
  float32[k], {kept_clients: beta}) of `updates` float32[k, d]."""
  k = tf.shape(updates)[0]
  chosen = select(updates, byzantine_clients)
  selected = tf.gather(updates, chosen)
  theta = tf.shape(chosen)[0]
  beta = tf.minimum(tf.maximum(theta - 2 * byzantine_clients, 1), theta)
  centre, _, _ = median.coordinate_median(selected)
  closest = tf.argsort(tf.abs(selected - centre[tf.newaxis, :]), axis=0,
                       stable=True)[:beta]
  values = tf.experimental.numpy.take_along_axis(selected, closest, axis=0)
  coordinates = tf.cast(tf.shape(updates)[1], tf.float32)
  kept = tf.math.divide_no_nan(
      tf.math.bincount(tf.gather(chosen, closest), minlength=k, maxlength=k,
                       dtype=tf.float32), coordinates)
  return (collection.mean_of_rows(values), kept,
          {collection.KEPT: tf.cast(tf.shape(closest)[0], tf.float32)})


class BulyanFactory(collection.CollectingFactory):
  """Bulyan of the entered updates."""

  def __init__(self, byzantine_clients: int,
               capacity: int = collection.DEFAULT_CAPACITY):
    super().__init__(capacity)
    self._f = krum.BYZANTINE_CLIENTS.check(byzantine_clients)

  def rule(self, updates):
    return bulyan(updates, self._f)


def _check(p, clients_per_round):
  f = p['byzantine_clients']
  if clients_per_round is not None and not 4 * f + 3 <= clients_per_round:
    return (f'--byzantine_clients={f} is not valid with'
            f' --clients_per_round={clients_per_round}: Bulyan needs at least'
            f' 4f + 3 = {4 * f + 3} clients per round')
  return None


SPEC = spec.AggregatorSpec(
    name='bulyan',
    paper='El Mhamdi et al. 2018',
    summary='recursive Krum selects k - 2f updates; in every coordinate the'
    ' k - 4f of them closest to their median are averaged',
    build=lambda p, capacity: BulyanFactory(p['byzantine_clients'], capacity),
    parameters=(krum.BYZANTINE_CLIENTS,),
    server_dp_reason='Bulyan selects updates by their distances to the'
    ' others and values by their distance to a median, so one client can'
    ' change what is averaged',
    collects_updates=True,
    check=_check,
)
