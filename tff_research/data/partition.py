"""Partitioning a centrally held labelled dataset into simulated FL clients.

All functions are pure functions of their arguments and ``seed`` (every random
draw comes from one ``np.random.default_rng(seed)``), so a partition can be
reproduced from the experiment config alone.

Generative process of :func:`partition`
---------------------------------------
Let ``N`` examples with labels in ``0..C-1`` be split over ``K`` clients.

0. **IID shortcut.** With ``dirichlet_alpha=None``, ``data_balance=1`` and no
   missing classes, the examples are randomly permuted and cut into ``K``
   contiguous chunks (``np.array_split``): a uniformly random partition whose
   sizes differ by at most one. Steps 1-5 below are the general process.
1. **Allowed classes.** With ``missing_classes = (g_0, ..., g_{G-1})``,
   client ``i`` may not hold any example of group ``g_{i mod G}``; its allowed
   set is ``A_i = {0..C-1} \\ g_{i mod G}``. Without missing classes
   ``A_i`` is every class. (The "pathological" label-missing non-IID setting
   in the spirit of McMahan et al. 2017, "Communication-Efficient Learning of
   Deep Networks from Decentralized Data", with explicit class groups.)
2. **Target sizes (quantity skew).** ``n_i = 1 + round_apportion(N - K, q)``
   where ``q = w / sum(w)`` and ``w_i = exp(sigma * z_i)``, ``z_i ~ N(0, 1)``,
   i.e. log-normal client sizes as in FedLab's unbalanced partitions (Zeng et
   al. 2021, "FedLab: A Flexible Federated Learning Framework"). The
   ``data_balance`` mapping is ``sigma = 2 * (1 - data_balance)``:

   * ``data_balance = 1`` -> ``sigma = 0`` -> all sizes equal (differ by at
     most one, the remainder going to randomly chosen clients);
   * ``data_balance = 0.5`` -> ``sigma = 1`` -> coefficient of variation of
     the weights ``sqrt(e - 1) ~ 1.3``;
   * ``data_balance = 0`` -> ``sigma = 2`` -> CV ``sqrt(e^4 - 1) ~ 7.3``: a
     few clients hold most of the data, the smallest hold one example.

   The leading ``1 +`` guarantees every client a non-empty target.
   ``round_apportion`` is largest-remainder rounding (ties broken at random),
   so the targets sum exactly to ``N``.
3. **Label proportions (label skew).** With ``dirichlet_alpha = a``, client
   ``i`` draws ``p_i ~ Dir(a * 1)`` over its allowed classes ``A_i`` (zero
   elsewhere), as in Hsu et al. 2019, "Measuring the Effects of Non-Identical
   Data Distribution for Federated Visual Classification": ``a -> 0`` gives
   one class per client, ``a -> inf`` gives the global class distribution. Note
   Hsu et al. use a *uniform* prior; we centre on uniform too, so with a very
   large ``a`` on an unbalanced dataset the proportions tend to uniform and
   are then bounded by what is available (step 4). Without ``dirichlet_alpha``
   ``p_i`` is the global label distribution restricted to ``A_i`` and
   renormalised (IID within the allowed classes).
4. **Fill without replacement subject to availability.** Each client with an
   unmet target ``d_i`` requests ``Multinomial(d_i, p_i)`` examples restricted
   to classes that still have examples left (renormalised; uniform over its
   remaining allowed classes if ``p_i`` puts numerically zero mass there). A
   class whose requests exceed its remaining count is shared out by a
   multivariate-hypergeometric draw (i.e. the remaining examples are dealt
   uniformly at random among the requests) and is then exhausted. Repeat until
   all targets are met or no client can take anything more; every round either
   meets all targets or exhausts at least one class, so at most ``C + 1``
   rounds are needed. The realised composition therefore deviates from
   ``p_i`` only when a class runs out, as it must when sampling without
   replacement.
5. **Leftovers.** If missing-class constraints made some targets infeasible,
   examples may remain; each remaining example of class ``c`` goes to a client
   allowing ``c``, chosen with probability proportional to the client's current
   size (so quantity skew is preserved). Examples of a class no client allows
   are dropped. Finally the concrete examples of each class are shuffled and
   dealt to the clients according to the counts.

Every client ends with at least one example, or a ``ValueError`` is raised.
"""

from __future__ import annotations

from collections.abc import Sequence
import math

import numpy as np

# sigma of the log-normal size distribution at data_balance = 0 (see above).
_MAX_SIZE_SIGMA = 2.0


class PartitionError(ValueError):
  """Invalid partitioning request (bad parameter or infeasible constraint)."""


def _check_seed(seed) -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise PartitionError(f'seed must be a non-negative int, got {seed!r}')
  return int(seed)


def _apportion(total: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Largest-remainder rounding of ``total * weights / sum(weights)``.

  Returns non-negative ints summing exactly to ``total``; ties among equal
  fractional parts are broken uniformly at random (so with equal weights the
  ``total % K`` extra units go to random clients, not always the first ones).
  """
  weights = np.asarray(weights, np.float64)
  quotas = total * weights / weights.sum()
  counts = np.floor(quotas).astype(np.int64)
  rest = int(total - counts.sum())
  if rest > 0:
    frac = quotas - counts
    # lexsort sorts by the last key first: largest fraction, then random key.
    order = np.lexsort((rng.random(len(weights)), -frac))
    counts[order[:rest]] += 1
  return counts


def _validate_labels(labels, num_classes):
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise PartitionError(f'labels must be 1-D, got shape {labels.shape}')
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise PartitionError(f'labels must be integers, got dtype {labels.dtype}')
  labels = labels.astype(np.int64)
  if labels.size and labels.min() < 0:
    raise PartitionError(f'labels must be >= 0, got min label {labels.min()}')
  inferred = int(labels.max()) + 1 if labels.size else 0
  if num_classes is None:
    num_classes = inferred
  elif num_classes < inferred:
    raise PartitionError(
        f'num_classes={num_classes} but labels go up to {inferred - 1}; '
        f'num_classes must be >= {inferred}')
  return labels, int(num_classes)


def partition(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    *,
    seed: int,
    dirichlet_alpha: float | None = None,
    data_balance: float = 1.0,
    missing_classes: Sequence[Sequence[int]] | None = None,
    num_classes: int | None = None,
) -> list[np.ndarray]:
  """Splits example indices into ``num_clients`` disjoint client shards.

  See the module docstring for the exact generative process.

  Args:
    labels: 1-D integer labels of the pooled dataset.
    num_clients: number of clients ``K >= 1``.
    seed: non-negative int; the partition is a pure function of it.
    dirichlet_alpha: concentration ``> 0`` of the per-client label
      distribution (Hsu et al. 2019); ``None`` = IID labels.
    data_balance: in ``[0, 1]``; 1 = equal client sizes, 0 = log-normal sizes
      with ``sigma = 2``.
    missing_classes: label groups; client ``i`` holds no example of group
      ``i % len(missing_classes)``.
    num_classes: number of classes; defaults to ``max(labels) + 1``.

  Returns:
    ``num_clients`` sorted int64 arrays of indices into ``labels``, pairwise
    disjoint, each non-empty.

  Raises:
    PartitionError (a ValueError): invalid arguments or infeasible constraints.
  """
  seed = _check_seed(seed)
  labels, num_classes = _validate_labels(labels, num_classes)
  n = labels.size
  num_clients = _check_arguments(n, num_clients, dirichlet_alpha, data_balance)
  groups = _validate_groups(missing_classes, num_classes)
  rng = np.random.default_rng(seed)

  if dirichlet_alpha is None and data_balance == 1.0 and groups is None:
    perm = rng.permutation(n)
    return [np.sort(chunk).astype(np.int64) for chunk in np.array_split(perm, num_clients)]

  class_counts = np.bincount(labels, minlength=num_classes)
  allowed = _allowed_classes(groups, num_clients, class_counts)

  # Step 2: target sizes.
  sigma = _MAX_SIZE_SIGMA * (1.0 - float(data_balance))
  if sigma == 0.0:
    weights = np.ones(num_clients)
  else:
    weights = np.exp(sigma * rng.standard_normal(num_clients))
  targets = 1 + _apportion(n - num_clients, weights, rng)

  # Step 3: label proportions.
  if dirichlet_alpha is None:
    props = allowed * class_counts[None, :].astype(np.float64)
  else:
    props = np.zeros((num_clients, num_classes))
    for i in range(num_clients):
      idx = np.flatnonzero(allowed[i])
      props[i, idx] = rng.dirichlet(np.full(idx.size, float(dirichlet_alpha)))

  counts = _fill(targets, props, allowed, class_counts, rng)
  return _draw_examples(labels, counts, rng)


def _check_arguments(n: int, num_clients, dirichlet_alpha,
                     data_balance) -> int:
  """`num_clients` as an int; PartitionError for any invalid argument."""
  if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
    raise PartitionError(f'num_clients must be an int >= 1, got {num_clients!r}')
  num_clients = int(num_clients)
  if num_clients > n:
    raise PartitionError(
        f'num_clients={num_clients} exceeds the number of examples ({n}); '
        'every client needs at least one example')
  if dirichlet_alpha is not None and not (
      isinstance(dirichlet_alpha, (int, float, np.floating)) and
      math.isfinite(dirichlet_alpha) and dirichlet_alpha > 0):
    raise PartitionError(
        f'dirichlet_alpha must be a finite number > 0 or None, got {dirichlet_alpha!r}')
  if not (isinstance(data_balance, (int, float, np.floating)) and 0.0 <= data_balance <= 1.0):
    raise PartitionError(f'data_balance must be in [0, 1], got {data_balance!r}')
  return num_clients


def _allowed_classes(groups, num_clients: int,
                     class_counts: np.ndarray) -> np.ndarray:
  """[client, class] -> whether the client may hold the class (Step 1);
  PartitionError when a client's allowed classes have no example."""
  allowed = np.ones((num_clients, class_counts.size), bool)
  if groups is None:
    return allowed
  for i in range(num_clients):
    allowed[i, list(groups[i % len(groups)])] = False
  available = (allowed * class_counts[None, :]).sum(axis=1)
  empty = np.flatnonzero(available == 0)
  if empty.size:
    i = int(empty[0])
    raise PartitionError(
        f'client {i} may only hold classes {np.flatnonzero(allowed[i]).tolist()} '
        f'(missing group {list(groups[i % len(groups)])}) but the data has no '
        'example of them')
  return allowed


def _fill(targets: np.ndarray, props: np.ndarray, allowed: np.ndarray,
          class_counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """[client, class] example counts (Steps 4 and 5)."""
  num_classes = class_counts.size
  # Step 4: fill without replacement subject to availability.
  remaining = class_counts.astype(np.int64).copy()
  counts = np.zeros(allowed.shape, np.int64)
  deficit = targets.astype(np.int64).copy()
  for _ in range(num_classes + 2):
    open_classes = remaining > 0
    can_take = (allowed & open_classes[None, :]).any(axis=1)
    deficit[~can_take] = 0  # stuck: all of the client's allowed classes are gone
    if not deficit.any():
      break
    active = np.flatnonzero(deficit > 0)
    w = props[active] * open_classes[None, :]
    # p_i may underflow to exactly 0 on the open classes for tiny alpha;
    # fall back to uniform over the client's remaining allowed classes.
    zero = w.sum(axis=1) <= 0
    w[zero] = (allowed[active][zero] & open_classes[None, :]).astype(np.float64)
    w /= w.sum(axis=1, keepdims=True)
    request = np.zeros_like(counts)
    request[active] = rng.multinomial(deficit[active], w)
    grant = request.copy()
    for c in np.flatnonzero(request.sum(axis=0) > remaining):
      grant[:, c] = rng.multivariate_hypergeometric(request[:, c], int(remaining[c]))
    counts += grant
    remaining -= grant.sum(axis=0)
    deficit -= grant.sum(axis=1)

  # Step 5: leftovers go to clients allowing the class, proportional to size.
  for c in np.flatnonzero(remaining > 0):
    takers = np.flatnonzero(allowed[:, c])
    if takers.size == 0:
      continue  # no client may hold class c: dropped (documented)
    sizes = counts[takers].sum(axis=1).astype(np.float64) + 1e-12
    counts[takers, c] += rng.multinomial(int(remaining[c]), sizes / sizes.sum())
    remaining[c] = 0
  return counts


def _draw_examples(labels: np.ndarray, counts: np.ndarray,
                   rng: np.random.Generator) -> list[np.ndarray]:
  """Each client's sorted example indices: `counts[i, c]` of class c's
  examples, drawn without replacement; PartitionError for an empty client."""
  per_client: list[list[np.ndarray]] = [[] for _ in range(counts.shape[0])]
  for c in range(counts.shape[1]):
    pool = rng.permutation(np.flatnonzero(labels == c))
    bounds = np.concatenate([[0], np.cumsum(counts[:, c])])
    for i in np.flatnonzero(counts[:, c]):
      per_client[i].append(pool[bounds[i]:bounds[i + 1]])
  result = [np.sort(np.concatenate(parts)).astype(np.int64) if parts
            else np.zeros(0, np.int64) for parts in per_client]
  sizes = np.array([r.size for r in result])
  if (sizes == 0).any():
    i = int(np.flatnonzero(sizes == 0)[0])
    raise PartitionError(
        f'client {i} received no example (its allowed classes were exhausted by '
        'other clients); use fewer clients or fewer missing classes')
  return result


def _validate_groups(missing_classes, num_classes):
  if missing_classes is None:
    return None
  groups = tuple(tuple(int(c) for c in g) for g in missing_classes)
  if not groups:
    raise PartitionError('missing_classes must contain at least one group, got ()')
  for g in groups:
    if not g:
      raise PartitionError(f'missing_classes groups must be non-empty, got {groups}')
    bad = [c for c in g if not 0 <= c < num_classes]
    if bad:
      raise PartitionError(
          f'missing_classes label {bad[0]} is out of range; valid labels are '
          f'0..{num_classes - 1}')
    if len(set(g)) == num_classes:
      raise PartitionError(
          f'missing_classes group {list(g)} removes every class; a client must keep '
          'at least one')
  return groups


def parse_missing_classes(text: str) -> tuple[tuple[int, ...], ...] | None:
  """Parses a flag value such as ``"1,3,7;2,5,8;4,6,9"``.

  Groups are separated by ``;`` and labels within a group by ``,``;
  whitespace is ignored. An empty (or all-whitespace) string means ``None``.

  Raises:
    PartitionError (a ValueError): on an empty group, a non-integer or
      negative label, or a label repeated within a group.
  """
  if text is None or not text.strip():
    return None
  groups = []
  for k, part in enumerate(text.split(';')):
    items = [s.strip() for s in part.split(',')]
    if not part.strip() or any(not s for s in items):
      raise PartitionError(
          f'missing_classes {text!r}: group {k} ({part!r}) has an empty entry; '
          'expected e.g. "1,3,7;2,5,8"')
    group = []
    for s in items:
      try:
        v = int(s)
      except ValueError:
        raise PartitionError(
            f'missing_classes {text!r}: {s!r} is not an integer label; '
            'expected e.g. "1,3,7;2,5,8"') from None
      if v < 0:
        raise PartitionError(f'missing_classes {text!r}: label {v} must be >= 0')
      group.append(v)
    if len(set(group)) != len(group):
      raise PartitionError(f'missing_classes {text!r}: group {k} repeats a label')
    groups.append(tuple(group))
  return tuple(groups)


def heldout_split(
    client_ids: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
  """Holds out a seeded random subset of clients, e.g. for held-out evaluation.

  The number held out is ``round(fraction * n)``, at least 1 when
  ``fraction > 0`` and at most ``n - 1`` so that training keeps a client.
  Both returned lists keep the order of ``client_ids``.

  Args:
    client_ids: the client ids (distinct).
    fraction: in ``[0, 1)``.
    seed: non-negative int.

  Returns:
    ``(train_ids, heldout_ids)``.
  """
  seed = _check_seed(seed)
  ids = list(client_ids)
  n = len(ids)
  if len(set(ids)) != n:
    raise PartitionError('client_ids must be distinct')
  if not (isinstance(fraction, (int, float, np.floating)) and 0.0 <= fraction < 1.0):
    raise PartitionError(f'heldout fraction must be in [0, 1), got {fraction!r}')
  if fraction == 0:
    return ids, []
  if n < 2:
    raise PartitionError(
        f'cannot hold out clients from {n} client(s) with fraction={fraction}: '
        'need at least 2 so that one remains for training')
  k = min(max(1, int(round(fraction * n))), n - 1)
  held = set(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())
  return ([c for j, c in enumerate(ids) if j not in held],
          [c for j, c in enumerate(ids) if j in held])
