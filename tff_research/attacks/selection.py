"""Which training clients are malicious, and how many of them a rule kept.

The malicious clients are a fixed subset of the training clients, drawn once
per run: round(fraction * N) of the N training clients, uniformly without
replacement from the stream `sampling.round_rng(seed, 0, 'malicious_clients')`
over the ids in sorted order. It is a pure function of (seed, the set of
training client ids, fraction): the same in every round, after a resume and
whatever order the ids come in, so a run's attackers are reproducible.

An aggregator of `tff_research.aggregators` reports `kept_share`
(float32[capacity]) per position. `kept_malicious(kept_share, mask)` sums it
over the malicious positions: how many malicious clients (or, for a
coordinate-wise rule, how many clients' worth of malicious values) the rule
kept. The mask must be in the same positions: `client_work.
with_update_attack` collects it in the round's own computation
(`malicious_mask` of its measurements), which lines up with `kept_share`
on one machine and split across workers alike; on one machine only,
`round_mask(round_client_ids, malicious)` gives it from the ids (positions
are then the round's client order).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
import math

import numpy as np

from tff_research.data import sampling

PURPOSE = 'malicious_clients'


def num_malicious(num_clients: int, fraction: float) -> int:
  """round(fraction * N), halves rounded up."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(
        f'--malicious_fraction={fraction} is not valid: must be in [0, 1]')
  return int(math.floor(fraction * num_clients + 0.5))


def malicious_clients(client_ids: Sequence[str], fraction: float,
                      seed: int) -> tuple[str, ...]:
  """The malicious subset of the training clients, sorted by id.

  Args:
    client_ids: every training client (distinct ids, any order).
    fraction: the fraction of them that are malicious, in [0, 1].
    seed: the run's seed (>= 0).
  """
  ids = sorted(client_ids)
  if len(set(ids)) != len(ids):
    raise ValueError('client_ids has duplicates; give each training client'
                     ' once')
  count = num_malicious(len(ids), fraction)
  rng = sampling.round_rng(seed, 0, PURPOSE)
  chosen = np.sort(rng.choice(len(ids), size=count, replace=False))
  return tuple(ids[i] for i in chosen)


def round_mask(round_client_ids: Sequence[str],
               malicious: Collection[str]) -> np.ndarray:
  """bool[n]: whether the round's i-th client is malicious."""
  malicious = set(malicious)
  return np.array([c in malicious for c in round_client_ids], dtype=bool)


def kept_malicious(kept_share, mask) -> float:
  """Sum of an aggregator's `kept_share` over the positions `mask` marks
  malicious (`mask` as long as the round or padded to the capacity)."""
  share = np.asarray(kept_share, np.float64)
  mask = np.asarray(mask, bool)
  if share.shape[0] < mask.shape[0]:
    raise ValueError(f'kept_share has {share.shape[0]} positions for a mask of'
                     f' {mask.shape[0]}: build the aggregator with a capacity'
                     ' >= the most clients per round')
  return float(share[:mask.shape[0]][mask].sum())
