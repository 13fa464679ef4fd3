"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with
Adversaries: Byzantine Tolerant Gradient Descent").

With k updates of which at most f (`byzantine_clients`) are Byzantine, the
score of update i is the sum of its squared L2 distances (over the whole
flattened update) to its k - f - 2 nearest other updates,

    s(i) = sum_{i -> j} ||V_i - V_j||^2,

i -> j ranging over those neighbours. Krum returns the update of least score.
Multi-Krum returns the mean of the m (`multi_krum_m`) updates of least
scores (m = 1 is Krum; the paper's experiments take m = k - f, the default
here).
The guarantee needs 2f + 2 < k. When excluded clients leave fewer updates
than that, the neighbour count is clamped to [1, k - 1] and the rule still
runs: it selects, but the bound no longer holds (the registry refuses a
configured round size that breaks it).

Scores are computed in float64 from direct differences (no Gram matrix, so
near-identical updates do not cancel). Ties in score are broken by position
(a stable sort): identical honest updates give position 0's. Split across
workers positions are permuted (`collection`), so only a tie between
*different* updates with equal scores can select differently there; the
rules' results are otherwise independent of the order, which is what
`federated_aggregate`'s commutative merge asks of them. `kept_share`
is 1 at the selected positions and 0 elsewhere; `kept_clients` = m.

Type signature of the created process (unweighted, stateless; V the update
type, C the capacity):

    next: (<<>@SERVER, {V}@CLIENTS> -> <state=<>@SERVER, result=V@SERVER,
           measurements=<excluded_clients=float32, kept_clients=float32,
                         kept_share=float32[C]>@SERVER>)
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tff_research.aggregators import collection
from tff_research.aggregators import spec


def squared_distances(updates: tf.Tensor) -> tf.Tensor:
  """float64[k, k] of ||V_i - V_j||^2 for `updates` float32[k, d]."""
  x = tf.cast(updates, tf.float64)
  k = tf.shape(x)[0]

  def rows():
    return tf.map_fn(lambda row: tf.reduce_sum(tf.square(x - row), axis=1),
                     x, fn_output_signature=tf.float64)

  # In a graph, map_fn over no rows fails to stack its empty result.
  return tf.reshape(
      tf.cond(k > 0, rows, lambda: tf.zeros([0, 0], tf.float64)), [k, k])


def num_neighbours(k: tf.Tensor, byzantine_clients: int) -> tf.Tensor:
  """k - f - 2, clamped to [1, k - 1] (0 when k <= 1)."""
  return tf.minimum(tf.maximum(k - byzantine_clients - 2, 1),
                    tf.maximum(k - 1, 0))


def krum_scores(updates: tf.Tensor, byzantine_clients: int) -> tf.Tensor:
  """Krum's score s(i) float64[k] of every row of `updates` float32[k, d]."""
  k = tf.shape(updates)[0]
  distances = tf.linalg.set_diag(
      squared_distances(updates),
      tf.fill([k], tf.constant(float('inf'), tf.float64)))
  nearest = tf.sort(distances, axis=1)[:, :num_neighbours(k, byzantine_clients)]
  return tf.reduce_sum(nearest, axis=1)


def multi_krum(updates: tf.Tensor, byzantine_clients: int,
               num_selected: Optional[int]) -> tuple[tf.Tensor, tf.Tensor]:
  """(mean of the m best-scored rows float32[d], kept share float32[k]);
  `num_selected` None means m = k - f; m is clamped to [1, k]."""
  k = tf.shape(updates)[0]
  m = k - byzantine_clients if num_selected is None else num_selected
  m = tf.minimum(tf.maximum(m, 1), k)
  selected = tf.argsort(krum_scores(updates, byzantine_clients),
                        stable=True)[:m]
  kept = tf.reduce_sum(tf.one_hot(selected, k, dtype=tf.float32), axis=0)
  return collection.mean_of_rows(tf.gather(updates, selected)), kept


class KrumFactory(collection.CollectingFactory):
  """Multi-Krum of the entered updates; Krum with `num_selected=1`."""

  def __init__(self, byzantine_clients: int, num_selected: Optional[int] = 1,
               capacity: int = collection.DEFAULT_CAPACITY):
    super().__init__(capacity)
    self._f = BYZANTINE_CLIENTS.check(byzantine_clients)
    self._m = MULTI_KRUM_M.check(num_selected)

  def rule(self, updates):
    aggregate, kept = multi_krum(updates, self._f, self._m)
    return aggregate, kept, {}


BYZANTINE_CLIENTS = spec.Parameter(
    'byzantine_clients', int, 1,
    'With --robust_aggregation=krum|multi_krum|bulyan: f, the most'
    ' Byzantine clients per round the rule must tolerate (Krum needs 2f + 2'
    ' < clients per round, Bulyan 4f + 3 <= clients per round).', low=0)
MULTI_KRUM_M = spec.Parameter(
    'multi_krum_m', int, None,
    'With --robust_aggregation=multi_krum: m, how many best-scored updates'
    ' are averaged (default: the round\'s updates minus f).', low=1)

_REASON = ('Krum selects whole updates by their distances to the others, so'
           ' one client can change which updates are averaged')


def _check(p, clients_per_round):
  if clients_per_round is None:
    return None
  f = p['byzantine_clients']
  if not 2 * f + 2 < clients_per_round:
    return (f'--byzantine_clients={f} is not valid with'
            f' --clients_per_round={clients_per_round}: Krum needs more than'
            f' 2f + 2 = {2 * f + 2} clients per round')
  m = p.get('multi_krum_m')
  if m is not None and m > clients_per_round - f:
    return (f'--multi_krum_m={m} is not valid with --clients_per_round='
            f'{clients_per_round} and --byzantine_clients={f}: must be <='
            f' {clients_per_round - f} (more would always average in a'
            ' Byzantine update)')
  return None


SPECS = (
    spec.AggregatorSpec(
        name='krum',
        paper='Blanchard et al. 2017',
        summary='the collected update of least Krum score',
        build=lambda p, capacity: KrumFactory(p['byzantine_clients'], 1,
                                              capacity),
        parameters=(BYZANTINE_CLIENTS,),
        server_dp_reason=_REASON,
        collects_updates=True,
        check=_check,
    ),
    spec.AggregatorSpec(
        name='multi_krum',
        paper='Blanchard et al. 2017',
        summary='the mean of the m collected updates of least Krum score',
        build=lambda p, capacity: KrumFactory(
            p['byzantine_clients'], p['multi_krum_m'], capacity),
        parameters=(BYZANTINE_CLIENTS, MULTI_KRUM_M),
        server_dp_reason=_REASON,
        collects_updates=True,
        check=_check,
    ),
)
