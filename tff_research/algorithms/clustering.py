"""The numpy side of clustered FL: similarities, bipartitions, purity.

Clients are compared through their model updates Delta_i computed from the
same model (their cluster's model, or a split's base model):

* `cosine`: alpha_ij = <Delta_i, Delta_j> / (|Delta_i| |Delta_j|), Sattler et
  al. 2020, "Clustered Federated Learning: Model-Agnostic Distributed
  Multitask Optimization Under Privacy Constraints" (IEEE TNNLS). The
  dissimilarity is d_ij = 1 - alpha_ij in [0, 2].
* `l2`: d_ij = |Delta_i - Delta_j|, the Euclidean distance between the
  clients' locally trained models (Ghosh et al. 2020, "An Efficient Framework
  for Clustered Federated Learning" (IFCA), and Ghosh et al. 2019, where
  clients are grouped by the distance between their models).

A cluster is split by `bipartition`: the two groups of complete-linkage
agglomerative clustering on d (Sattler et al.'s choice for approximating
argmin_{c1, c2} max_{i in c1, j in c2} alpha_ij), accepted only if its
*separation gap* is positive,

    gap = min_{i, j in different groups} d_ij - max_{i, j in the same group} d_ij,

i.e. every cross-group pair is farther apart than every within-group pair
(for cosine: Sattler et al.'s separation gap g(alpha) = min intra alpha -
max cross alpha > 0), and both groups hold at least `min_size` clients (no
singleton outliers split off). `divisive_clustering` applies bipartitions
greedily, largest normalised gap (gap / max d) first, until no candidate has a
positive gap or `max_clusters` is reached.

Sattler et al.'s split rule (`split_decision`, rule 'sattler', the default
of clustered FedAvg). Their Algorithm 1 splits a cluster c only

1. near a stationary point of the cluster's joint objective where the
   clients still disagree:  |mean_i Delta_i| < eps_1  and
   max_i |Delta_i| > eps_2  (congruent clients have small updates there,
   incongruent ones keep large updates that cancel in the mean);
2. into the bipartition minimising the largest cross-group similarity,
   c1, c2 = argmin max_{i in c1, j in c2} alpha_ij (complete linkage into 2
   groups, as their code); and
3. only if it is provably correct for the assumed gradient approximation
   error gamma_max (|grad r_i - grad R_{I(i)}| <= gamma_max |grad r_i|: each
   client's update is within angle arcsin(gamma_max) of its distribution's,
   so same-distribution pairs have alpha >= 1 - 2 gamma_max^2; Sattler et
   al., Separation Theorem): the split is accepted if

       gamma_bound = sqrt((1 - alpha_max_cross) / 2) > gamma_max,

   i.e. alpha_max_cross < 1 - 2 gamma_max^2. gamma_bound is the largest
   approximation error under which the split would still separate every
   pair of incongruent clients.

   With real writers' noisy updates (about 100 examples each) every pairwise
   cosine is small (0.0-0.3), and the max over hundreds of cross pairs does
   not separate congruent from incongruent federations (measured,
   docs/clustered.md). The default statistic ('group_mean') therefore
   applies the same bound to the two groups' weighted mean updates, whose
   approximation error shrinks with the number of clients averaged:
   gamma_bound = sqrt((1 - cos(m_1, m_2)) / 2). 'pairwise_max' is the
   paper's statistic verbatim.

For `l2` the same rule uses the relative L2 distance of cross pairs,
gamma_bound = min_cross |Delta_i - Delta_j| / (|Delta_i| + |Delta_j|): two
updates within relative error gamma of one vector are at most
gamma (|Delta_i| + |Delta_j|) apart, and for unit vectors this is exactly
sqrt((1 - alpha_ij) / 2), the cosine criterion. Unlike cosine it also
separates aligned updates of different magnitudes.

Random projection (`sketch`, the numpy twin of the TF client-side
projection): the clustering step compares each client's most recent update
over a window of rounds, so updates are stored per client. A CNN update has
1.2 M floats (4.8 MB); 200 clients would be ~1 GB of state. They are stored
as a signed fold to `dim` coordinates, S(x)_b = sum_{j = b mod dim} s_j x_j
with fixed random signs s_j (a CountSketch with buckets j mod dim). It is
linear, E[<Sx, Sy>] = <x, y>, and for dense updates inner products, norms and
hence cosines are preserved up to O(1/sqrt(dim)) (Johnson-Lindenstrauss-type
sparse projections: Weinberger et al. 2009, Kane & Nelson 2014). Measured on
real CNN client updates (FEMNIST writers, 24 k coordinates of each): at
dim = 4096 the pairwise cosine error is 0.018 on average (max 0.088 over
1,770 pairs), norms within 3 %. The split decision uses the cosine of group
mean updates, where this error averages out further.

Everything here is deterministic numpy so it can be tested by hand.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial import distance

METRICS = ('cosine', 'l2')
# 'sattler': Sattler et al.'s Algorithm 1 (stationarity, complete-linkage
# bipartition, gamma_max separation criterion); 'gap': the positive
# separation gap of every pair (the rule before, stricter under noise).
SPLIT_RULES = ('sattler', 'gap')


def _check_metric(metric: str) -> None:
  if metric not in METRICS:
    raise ValueError(
        f'clustering metric {metric!r} is not valid; valid: {", ".join(METRICS)}'
    )


def flatten(update: Sequence[np.ndarray]) -> np.ndarray:
  """One model update (a list of tensors) as a float64 vector."""
  return np.concatenate(
      [np.asarray(t, np.float64).ravel() for t in update]
  ) if len(update) else np.zeros(0)


def cosine_similarity(vectors: np.ndarray) -> np.ndarray:
  """[n, n] cosine similarities of the rows; a zero row is similar to nothing
  (0) but itself (1)."""
  v = np.asarray(vectors, np.float64)
  norms = np.linalg.norm(v, axis=1)
  unit = v / np.where(norms > 0, norms, 1.0)[:, None]
  sim = np.clip(unit @ unit.T, -1.0, 1.0)
  np.fill_diagonal(sim, 1.0)
  return sim


def dissimilarity(vectors: np.ndarray, metric: str) -> np.ndarray:
  """[n, n] symmetric dissimilarities with zero diagonal: 1 - cosine or L2."""
  _check_metric(metric)
  v = np.asarray(vectors, np.float64)
  if metric == 'cosine':
    d = 1.0 - cosine_similarity(v)
  else:
    d = distance.squareform(distance.pdist(v)) if len(v) > 1 else np.zeros(
        (len(v), len(v)))
  d = np.maximum((d + d.T) / 2, 0.0)
  np.fill_diagonal(d, 0.0)
  return d


@dataclasses.dataclass(frozen=True)
class Bipartition:
  """Two groups (indices into the dissimilarity matrix) and their gap."""

  first: np.ndarray
  second: np.ndarray
  gap: float             # min cross-group d - max within-group d
  normalized_gap: float  # gap / max d (scale-free, comparable across clusters)


def separation_gap(d: np.ndarray, labels: np.ndarray) -> float:
  """min_{labels differ} d_ij - max_{labels equal} d_ij (diagonal included)."""
  labels = np.asarray(labels)
  same = labels[:, None] == labels[None, :]
  if same.all():
    raise ValueError('separation_gap needs at least two groups')
  return float(d[~same].min() - d[same].max())


def bipartition(d: np.ndarray) -> Bipartition | None:
  """Complete-linkage split of the clients of `d` into two groups.

  Returns None for fewer than two clients or if all are identical. The first
  group contains client 0, so the result is a deterministic function of `d`.
  """
  n = len(d)
  if n < 2 or not np.any(d > 0):
    return None
  tree = hierarchy.linkage(
      distance.squareform(d, checks=False), method='complete'
  )
  labels = hierarchy.fcluster(tree, 2, criterion='maxclust')
  if len(np.unique(labels)) < 2:
    return None
  first = np.flatnonzero(labels == labels[0])
  second = np.flatnonzero(labels != labels[0])
  gap = separation_gap(d, labels == labels[0])
  return Bipartition(first, second, gap, gap / float(d.max()))


@dataclasses.dataclass(frozen=True)
class Split:
  """Cluster `parent` gave the clients `moved` to the new cluster `child`."""

  parent: int
  child: int
  stayed: np.ndarray  # indices (into the clustering step's clients)
  moved: np.ndarray


def divisive_clustering(
    d: np.ndarray,
    clusters: Sequence[int],
    weights: Sequence[float],
    *,
    num_clusters: int,
    max_clusters: int,
    min_size: int = 2,
) -> tuple[np.ndarray, list[Split], float]:
  """Greedily splits clusters whose clients separate with a positive gap.

  Only clients in the same cluster are compared (their updates start from the
  same model); entries of `d` across clusters are never read.

  Args:
    d: [n, n] dissimilarities of the step's clients.
    clusters: current cluster of each client (ids < num_clusters).
    weights: client weights; of a split, the group with more weight keeps the
      parent's id (ties: the group holding the lower client index).
    num_clusters: clusters that exist now (new ids start here).
    max_clusters: K, the most clusters there may ever be.
    min_size: fewest clients each side of a split must hold.

  Returns:
    (new cluster of each client, the splits in the order made, the best
    normalised gap among the candidates examined first: a diagnostic of how
    close the federation is to splitting; NaN if no cluster had 2 * min_size
    clients).
  """
  clusters = np.array(clusters, np.int64)
  weights = np.asarray(weights, np.float64)
  if min_size < 1:
    raise ValueError(f'min_size must be >= 1, got {min_size}')
  candidates = {}  # cluster id -> (member indices, Bipartition or None)

  def examine(members):
    if len(members) < 2 * min_size:
      return None
    return bipartition(d[np.ix_(members, members)])

  for c in np.unique(clusters):
    members = np.flatnonzero(clusters == c)
    candidates[int(c)] = (members, examine(members))
  gaps = [b.normalized_gap for _, b in candidates.values() if b is not None]
  best_gap = max(gaps) if gaps else float('nan')

  splits = []
  while num_clusters < max_clusters:
    eligible = [
        (b.normalized_gap, -c, c) for c, (m, b) in candidates.items()
        if b is not None and b.gap > 0
        and min(len(b.first), len(b.second)) >= min_size
    ]
    if not eligible:
      break
    _, _, c = max(eligible)
    members, b = candidates[c]
    first, second = members[b.first], members[b.second]
    w_first, w_second = weights[first].sum(), weights[second].sum()
    if w_second > w_first:
      first, second = second, first
    child = num_clusters
    num_clusters += 1
    clusters[second] = child
    splits.append(Split(c, child, np.sort(first), np.sort(second)))
    candidates[c] = (np.sort(first), examine(np.sort(first)))
    candidates[child] = (np.sort(second), examine(np.sort(second)))
  return clusters, splits, best_gap


def prefers_second(
    update: np.ndarray, first: np.ndarray, second: np.ndarray, metric: str
) -> bool:
  """Whether `update` is closer to the reference `second` than to `first`
  (cosine: larger similarity; l2: smaller distance; ties keep `first`)."""
  _check_metric(metric)
  if metric == 'cosine':
    sim = cosine_similarity(np.stack([update, first, second]))
    return bool(sim[0, 2] > sim[0, 1])
  return bool(
      np.linalg.norm(update - second) < np.linalg.norm(update - first)
  )


def purity(assignments: Sequence[int], truth: Sequence[int]) -> float:
  """sum_k max_g |{i: a_i = k, t_i = g}| / n: the fraction of clients in the
  majority true group of their cluster (1.0 = every cluster is pure)."""
  a = np.asarray(assignments)
  t = np.asarray(truth)
  if a.shape != t.shape or a.size == 0:
    raise ValueError(
        f'purity needs equally long non-empty arrays, got {a.shape} and'
        f' {t.shape}'
    )
  total = 0
  for k in np.unique(a):
    _, counts = np.unique(t[a == k], return_counts=True)
    total += counts.max()
  return total / a.size


def similarity_image(
    d: np.ndarray,
    metric: str,
    order: Sequence[int],
    comparable: np.ndarray,
    cell: int | None = None,
) -> np.ndarray:
  """RGB uint8 [H, W, 3] picture of the pairwise similarity matrix.

  Rows/columns follow `order` (e.g. sorted by new cluster, so clusters show
  as blocks). Colour: cosine similarity in [-1, 1] (red = -1, white = 0,
  blue = +1); for l2, 1 - d / max d in [0, 1]. Pairs that were not compared
  (`comparable` False: updates from different cluster models) are grey.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  _check_metric(metric)
  order = np.asarray(order)
  n = len(order)
  if metric == 'cosine':
    values = 1.0 - d
    unit = (values + 1.0) / 2.0
  else:
    scale = d.max() if d.size and d.max() > 0 else 1.0
    unit = 1.0 - d / scale
  unit = unit[np.ix_(order, order)]
  rgb = matplotlib.colormaps['RdBu'](np.clip(unit, 0.0, 1.0))[..., :3]
  rgb[~comparable[np.ix_(order, order)]] = 0.5
  cell = cell or max(1, 128 // max(n, 1))
  rgb = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
  return (rgb * 255).round().astype(np.uint8)


# --- Sattler et al.'s split rule ---------------------------------------------

# Split decision codes (logged as `clusters/split_decision_k`).
SPLIT = 1
TOO_FEW_CLIENTS = -1   # fewer than 2 * min_size clients compared
NOT_STATIONARY = -2    # |mean update| >= eps_1 (split_mean_norm_max)
SMALL_UPDATES = -3     # max |update| <= eps_2 (split_max_norm_min)
NOT_SEPARATED = -4     # gamma_bound <= gamma_max ('sattler') or gap <= 0
SMALL_SIDE = -5        # a side of the bipartition has < min_size clients
CLUSTER_CAP = -6       # K clusters exist already
DECISION_NAMES = {
    SPLIT: 'split',
    TOO_FEW_CLIENTS: 'too few clients compared',
    NOT_STATIONARY: 'not stationary (mean update norm >= eps_1)',
    SMALL_UPDATES: 'updates small (max update norm <= eps_2)',
    NOT_SEPARATED: 'not separated (separation criterion failed)',
    SMALL_SIDE: 'one side too small',
    CLUSTER_CAP: 'cluster cap K reached',
}


SEPARATION_STATISTICS = ('group_mean', 'pairwise_max')


def _relative_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """|a_i - b_j| / (|a_i| + |b_j|) for rows a_i, b_j (0 where both are 0)."""
  na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
  denom = na[:, None] + nb[None, :]
  dist = distance.cdist(a, b)
  return np.where(denom > 0, dist / np.where(denom > 0, denom, 1.0), 0.0)


def cross_similarities(vectors: np.ndarray, first: np.ndarray,
                       second: np.ndarray,
                       weights: Sequence[float] | None = None
                       ) -> tuple[float, float]:
  """(alpha_max_cross, alpha_mean_cross) of the bipartition (first, second).

  alpha_max_cross = max_{i in first, j in second} cos(Delta_i, Delta_j)
  (Sattler et al.'s statistic); alpha_mean_cross = cos(m_1, m_2), the cosine
  of the two groups' weighted mean updates.
  """
  v = np.asarray(vectors, np.float64)
  w = (np.ones(len(v)) if weights is None
       else np.asarray(weights, np.float64))
  a, b = v[np.asarray(first)], v[np.asarray(second)]
  cross = cosine_similarity(np.concatenate([a, b]))[:len(a), len(a):]
  m1 = w[first] @ a / w[first].sum()
  m2 = w[second] @ b / w[second].sum()
  return float(cross.max()), float(cosine_similarity(np.stack([m1, m2]))[0, 1])


def gamma_bound(vectors: np.ndarray, first: np.ndarray, second: np.ndarray,
                metric: str, weights: Sequence[float] | None = None,
                statistic: str = 'group_mean') -> float:
  """The separation criterion's value of the bipartition (module doc).

  statistic 'pairwise_max' (Sattler et al.'s, over client pairs):
    cosine: sqrt((1 - alpha_max_cross) / 2);
    l2: min_cross |Delta_i - Delta_j| / (|Delta_i| + |Delta_j|).
  statistic 'group_mean' (the same bound for the groups' weighted mean
  updates m_1, m_2, whose sampling noise is averaged over the clients):
    cosine: sqrt((1 - cos(m_1, m_2)) / 2);
    l2: |m_1 - m_2| / (|m_1| + |m_2|).
  For unit vectors the l2 and cosine values coincide.
  """
  _check_metric(metric)
  if statistic not in SEPARATION_STATISTICS:
    raise ValueError(
        f'separation statistic {statistic!r} is not valid; valid:'
        f' {", ".join(SEPARATION_STATISTICS)}')
  v = np.asarray(vectors, np.float64)
  w = (np.ones(len(v)) if weights is None
       else np.asarray(weights, np.float64))
  a, b = v[np.asarray(first)], v[np.asarray(second)]
  if statistic == 'group_mean':
    a = (w[first] @ a / w[first].sum())[None]
    b = (w[second] @ b / w[second].sum())[None]
  if metric == 'cosine':
    alpha = cosine_similarity(np.concatenate([a, b]))[:len(a), len(a):].max()
    return math.sqrt(max(0.0, (1.0 - float(alpha)) / 2.0))
  return float(_relative_distance(a, b).min())


@dataclasses.dataclass(frozen=True)
class SplitDecision:
  """What a clustering step found for one cluster (`split_decision`)."""

  code: int                 # SPLIT or the first failed condition
  num_clients: int          # updates compared
  mean_norm: float          # |weighted mean of the updates|
  max_norm: float           # max_i |Delta_i|
  bipartition: Bipartition | None  # complete-linkage split (indices)
  alpha_max_cross: float    # max cross-pair cosine (NaN: no bipartition)
  alpha_mean_cross: float   # cosine of the two groups' mean updates
  gamma_bound: float        # criterion value (NaN: no bipartition)
  margin: float             # gamma_bound - gamma_max ('sattler'), or the
                            # normalised gap ('gap'): > 0 passes

  @property
  def split(self) -> bool:
    return self.code == SPLIT

  @property
  def reason(self) -> str:
    return DECISION_NAMES[self.code]


def split_decision(
    vectors: np.ndarray,
    weights: Sequence[float],
    *,
    metric: str,
    rule: str = 'sattler',
    mean_norm_max: float = math.inf,
    max_norm_min: float = 0.0,
    gamma_max: float = 0.775,
    separation: str = 'group_mean',
    min_size: int = 2,
    can_split: bool = True,
) -> SplitDecision:
  """Whether one cluster's client updates call for a split (module doc).

  Args:
    vectors: [n, p] updates of the cluster's clients, all computed from the
      cluster's model (or projections of them, `sketch`).
    weights: client weights of the mean update (examples, or 1).
    metric: 'cosine' or 'l2' (bipartition and criterion).
    rule: 'sattler' (stationarity + gamma_max criterion) or 'gap' (positive
      separation gap; the norm thresholds are not applied).
    mean_norm_max: eps_1: split only if |mean update| < eps_1.
    max_norm_min: eps_2: split only if max |update| > eps_2.
    gamma_max: assumed relative gradient approximation error in [0, 1).
    separation: 'group_mean' or 'pairwise_max' (`gamma_bound`).
    min_size: fewest clients each side must hold.
    can_split: False if the cluster cap is reached (diagnostics only).

  Returns:
    A `SplitDecision`; its code names the first condition that failed, in
    the order too few clients, stationarity (eps_1, eps_2), separation,
    side size, cluster cap.
  """
  _check_metric(metric)
  if rule not in SPLIT_RULES:
    raise ValueError(
        f'split rule {rule!r} is not valid; valid: {", ".join(SPLIT_RULES)}')
  v = np.asarray(vectors, np.float64)
  w = np.asarray(weights, np.float64)
  n = len(v)
  nan = float('nan')
  if n == 0:
    return SplitDecision(TOO_FEW_CLIENTS, 0, nan, nan, None, nan, nan, nan,
                         nan)
  total = w.sum()
  mean = (w @ v) / total if total > 0 else v.mean(axis=0)
  mean_norm = float(np.linalg.norm(mean))
  max_norm = float(np.linalg.norm(v, axis=1).max())
  b = bipartition(dissimilarity(v, metric)) if n >= 2 else None
  if b is not None:
    bound = gamma_bound(v, b.first, b.second, metric, w, separation)
    alpha_max, alpha_mean = cross_similarities(v, b.first, b.second, w)
    margin = bound - gamma_max if rule == 'sattler' else b.normalized_gap
  else:
    bound = alpha_max = alpha_mean = margin = nan
  if n < 2 * min_size:
    code = TOO_FEW_CLIENTS
  elif rule == 'sattler' and not mean_norm < mean_norm_max:
    code = NOT_STATIONARY
  elif rule == 'sattler' and not max_norm > max_norm_min:
    code = SMALL_UPDATES
  elif b is None or not margin > 0 or (rule == 'gap' and not b.gap > 0):
    code = NOT_SEPARATED
  elif min(len(b.first), len(b.second)) < min_size:
    code = SMALL_SIDE
  elif not can_split:
    code = CLUSTER_CAP
  else:
    code = SPLIT
  return SplitDecision(code, n, mean_norm, max_norm, b, alpha_max,
                       alpha_mean, bound, margin)


# --- Random projection of updates ----------------------------------------------

_SIGN_STREAM = 0x5A77  # second word of the stateless seed of the signs


def projection_signs(size: int, seed: int):
  """[size] float32 tf.Tensor of fixed random signs +-1 (stateless Philox:
  the same in graph and eager mode, in every process)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  bits = tf.random.stateless_uniform(
      [size], seed=tf.constant([seed, _SIGN_STREAM], tf.int64), minval=0,
      maxval=2, dtype=tf.int32)
  return tf.cast(1 - 2 * bits, tf.float32)


def sketch_dim(size: int, dim: int) -> int:
  """Length of a stored update: `dim`, or `size` (exact) if dim is 0 or
  not smaller than the update."""
  if dim < 0:
    raise ValueError(f'projection dim must be >= 0, got {dim}')
  return size if dim == 0 or size <= dim else dim


def sketch_tf(flat, dim: int, seed: int):
  """The signed fold of a flat float tf.Tensor (module docstring):
  S(x)_b = sum_{j = b mod dim} s_j x_j, or x itself if not smaller."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  size = int(flat.shape[0])
  out = sketch_dim(size, dim)
  flat = tf.cast(flat, tf.float32)
  if out == size:
    return flat
  padded = -(-size // out) * out
  signed = flat * projection_signs(size, seed)
  signed = tf.pad(signed, [[0, padded - size]])
  return tf.reduce_sum(tf.reshape(signed, [-1, out]), axis=0)


def sketch(vector: np.ndarray, dim: int, seed: int) -> np.ndarray:
  """numpy twin of `sketch_tf` (same signs), float64."""
  v = np.asarray(vector, np.float64).ravel()
  out = sketch_dim(v.size, dim)
  if out == v.size:
    return v.copy()
  signs = np.asarray(projection_signs(v.size, seed), np.float64)
  padded = np.zeros(-(-v.size // out) * out)
  padded[:v.size] = v * signs
  return padded.reshape(-1, out).sum(axis=0)
