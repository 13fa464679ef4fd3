"""Client sampling and per-round random streams as pure functions of the seed.

Deriving every per-round random choice from ``(seed, round_num, purpose)``
rather than from a stateful generator makes a run reproducible *and* resumable:
round ``t`` samples the same clients whether the run started at round 0 or was
restored from a checkpoint at round ``t - 1``, and adding a new random consumer
(client dropout, Poisson sampling for DP) does not shift any existing stream.
Uniform sampling of ``k`` clients without replacement per round is the
FedAvg protocol of McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data" (their ``C * K`` clients per round).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
import zlib

import numpy as np


class SamplingError(ValueError):
  """Invalid client-sampling request."""


def _check_nonneg_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise SamplingError(f'{name} must be a non-negative int, got {value!r}')
  return int(value)


def round_rng(seed: int, round_num: int, purpose: str) -> np.random.Generator:
  """An independent ``np.random.Generator`` for ``(seed, round_num, purpose)``.

  The entropy is ``[seed, round_num, crc32(purpose)]`` fed to
  ``np.random.SeedSequence``, whose hashing makes streams for different
  tuples statistically independent (O'Neill's seed-sequence mixing).

  Args:
    seed: non-negative experiment seed.
    round_num: non-negative round index.
    purpose: a short name of the consumer, e.g. ``'clients'``, ``'dropout'``.
  """
  seed = _check_nonneg_int('seed', seed)
  round_num = _check_nonneg_int('round_num', round_num)
  if not isinstance(purpose, str) or not purpose:
    raise SamplingError(f'purpose must be a non-empty str, got {purpose!r}')
  tag = zlib.crc32(purpose.encode('utf-8'))
  return np.random.default_rng(np.random.SeedSequence([seed, round_num, tag]))


def resolve_clients_per_round(
    num_clients: int,
    clients_per_round: int | None = None,
    client_fraction: float | None = None,
) -> int:
  """Turns exactly one of ``clients_per_round`` / ``client_fraction`` into k.

  ``client_fraction`` in ``(0, 1]`` maps to ``max(1, round(fraction * n))``.

  Raises:
    SamplingError (a ValueError): both or neither set, or out of range.
  """
  if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
    raise SamplingError(f'num_clients must be an int >= 1, got {num_clients!r}')
  if (clients_per_round is None) == (client_fraction is None):
    raise SamplingError(
        'set exactly one of clients_per_round and client_fraction, got '
        f'clients_per_round={clients_per_round!r}, client_fraction={client_fraction!r}')
  if clients_per_round is not None:
    if (isinstance(clients_per_round, bool) or
        not isinstance(clients_per_round, (int, np.integer)) or
        not 1 <= clients_per_round <= num_clients):
      raise SamplingError(
          f'clients_per_round must be an int in [1, {num_clients}] (the number of '
          f'clients), got {clients_per_round!r}')
    return int(clients_per_round)
  if not (isinstance(client_fraction, (int, float, np.floating)) and 0.0 < client_fraction <= 1.0):
    raise SamplingError(f'client_fraction must be in (0, 1], got {client_fraction!r}')
  return max(1, int(round(client_fraction * num_clients)))


def sample_clients(
    client_ids: Sequence[str],
    round_num: int,
    *,
    seed: int,
    clients_per_round: int,
) -> list[str]:
  """Uniformly samples ``clients_per_round`` distinct clients for a round.

  A pure function of ``(client_ids, round_num, seed, clients_per_round)``
  using the ``round_rng(seed, round_num, 'clients')`` stream. The result keeps
  the order of ``client_ids`` (aggregation is order-independent up to float
  rounding, and a canonical order makes logs comparable across runs).
  """
  ids = list(client_ids)
  if not ids:
    raise SamplingError('client_ids is empty; there is nothing to sample from')
  if (isinstance(clients_per_round, bool) or
      not isinstance(clients_per_round, (int, np.integer)) or
      not 1 <= clients_per_round <= len(ids)):
    raise SamplingError(
        f'clients_per_round must be an int in [1, {len(ids)}] (the number of '
        f'clients), got {clients_per_round!r}')
  rng = round_rng(seed, round_num, 'clients')
  chosen = np.sort(rng.choice(len(ids), size=int(clients_per_round), replace=False))
  return [ids[j] for j in chosen]



def stratified_sample_clients(
    client_ids: Sequence[str],
    round_num: int,
    *,
    seed: int,
    clients_per_round: int,
    marked: Collection[str],
    marked_per_round: int,
) -> list[str]:
  """Samples exactly ``marked_per_round`` of the ``marked`` clients and
  ``clients_per_round - marked_per_round`` of the others, each uniformly
  without replacement.

  Uniform sampling gives a round a hypergeometric number of marked clients;
  this fixes it, as the Byzantine threat model assumes (f of the n clients of
  every round are malicious: Blanchard et al. 2017, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent"; Yin et al. 2018). A pure
  function of its arguments on the ``round_rng(seed, round_num,
  'stratified_clients')`` stream; the result keeps the order of
  ``client_ids``.

  Raises:
    SamplingError: a stratum has fewer clients than it must give.
  """
  ids = list(client_ids)
  marked = set(marked)
  inside = [i for i, c in enumerate(ids) if c in marked]
  outside = [i for i, c in enumerate(ids) if c not in marked]
  if len(inside) != len(marked):
    raise SamplingError('marked has clients that are not in client_ids')
  k = _check_nonneg_int('clients_per_round', clients_per_round)
  m = _check_nonneg_int('marked_per_round', marked_per_round)
  if m > min(k, len(inside)) or k - m > len(outside):
    raise SamplingError(
        f'cannot sample {m} of {len(inside)} marked and {k - m} of'
        f' {len(outside)} other clients for a round of {k}')
  rng = round_rng(seed, round_num, 'stratified_clients')
  chosen = np.concatenate([
      rng.choice(np.asarray(inside, np.int64), size=m, replace=False),
      rng.choice(np.asarray(outside, np.int64), size=k - m, replace=False)])
  return [ids[j] for j in np.sort(chosen)]

# --- Poisson sampling and round sizes (what DP accounting assumes) ---

SAMPLING_METHODS = ('fixed', 'poisson')
# Clients per round when neither clients_per_round nor client_fraction is set
# (capped at the number of clients).
DEFAULT_CLIENTS_PER_ROUND = 10


def fixed_round_size(
    num_clients: int,
    clients_per_round: int | None = None,
    client_fraction: float | None = None,
) -> int:
  """k for `--sampling=fixed`: `resolve_clients_per_round`, defaulting to
  ``min(DEFAULT_CLIENTS_PER_ROUND, num_clients)`` when neither is set."""
  if clients_per_round is None and client_fraction is None:
    clients_per_round = min(DEFAULT_CLIENTS_PER_ROUND, int(num_clients))
  return resolve_clients_per_round(
      num_clients, clients_per_round=clients_per_round,
      client_fraction=client_fraction)


def poisson_sample_clients(
    client_ids: Sequence[str],
    round_num: int,
    *,
    seed: int,
    probability: float,
) -> list[str]:
  """Includes each client independently with ``probability`` q.

  Poisson sampling is what the privacy analysis of DP-FedAvg (McMahan et al.
  2018) and the sampled Gaussian mechanism assume: the round size is
  Binomial(n, q), so it varies and can be 0 (an empty round, probability
  (1 - q)^n). A pure function of ``(client_ids, round_num, seed,
  probability)`` on its own ``round_rng(seed, round_num, 'poisson')`` stream;
  the result keeps the order of ``client_ids``.
  """
  ids = list(client_ids)
  if not ids:
    raise SamplingError('client_ids is empty; there is nothing to sample from')
  if (isinstance(probability, bool) or
      not isinstance(probability, (int, float, np.floating)) or
      not 0.0 < probability <= 1.0):
    raise SamplingError(
        f'probability must be in (0, 1] (the client fraction), got {probability!r}')
  rng = round_rng(seed, round_num, 'poisson')
  keep = rng.random(len(ids)) < probability
  return [c for c, k in zip(ids, keep) if k]


def sample_round(
    client_ids: Sequence[str],
    round_num: int,
    *,
    seed: int,
    method: str,
    clients_per_round: int | None = None,
    probability: float | None = None,
) -> list[str]:
  """The clients of round ``round_num``: ``sample_clients`` (exactly
  ``clients_per_round``) for ``method='fixed'``, ``poisson_sample_clients``
  (each with ``probability``) for ``method='poisson'``."""
  if method == 'fixed':
    return sample_clients(client_ids, round_num, seed=seed,
                          clients_per_round=clients_per_round)
  if method == 'poisson':
    return poisson_sample_clients(client_ids, round_num, seed=seed,
                                  probability=probability)
  raise SamplingError(
      f'sampling method {method!r} is not valid; valid: {", ".join(SAMPLING_METHODS)}')


# --- Client dropout (clients that fail to report, as real ones do) ---

MAX_DROPOUT_RATE = 0.9


def report_mask(
    num_selected: int, round_num: int, *, seed: int, dropout_rate: float
) -> np.ndarray:
  """Which of a round's ``num_selected`` clients report back (bool array).

  Each selected client independently fails to report with probability
  ``dropout_rate`` (the "silent" failures of Bonawitz et al. 2019, "Towards
  Federated Learning at Scale: System Design"), so the number reporting is
  Binomial(num_selected, 1 - dropout_rate). A pure function of
  ``(seed, round_num)`` on its own ``round_rng(seed, round_num, 'dropout')``
  stream: dropout never shifts which clients are sampled.
  """
  num_selected = _check_nonneg_int('num_selected', num_selected)
  if (isinstance(dropout_rate, bool) or
      not isinstance(dropout_rate, (int, float, np.floating)) or
      not 0.0 <= dropout_rate <= MAX_DROPOUT_RATE):
    raise SamplingError(
        f'dropout_rate must be in [0, {MAX_DROPOUT_RATE}], got {dropout_rate!r}')
  if dropout_rate == 0.0:
    return np.ones(num_selected, bool)
  rng = round_rng(seed, round_num, 'dropout')
  return rng.random(num_selected) >= dropout_rate


def reporting_clients(
    selected: Sequence[str], round_num: int, *, seed: int, dropout_rate: float
) -> list[str]:
  """The clients of ``selected`` that report (``report_mask``), in order."""
  mask = report_mask(len(selected), round_num, seed=seed,
                     dropout_rate=dropout_rate)
  return [c for c, keep in zip(selected, mask) if keep]
