"""A round's robustness and attack metrics, from the aggregator's and the
attacked client work's measurements.

Groups (TensorBoard `group/name`, metrics.csv `group_name`):

* `robustness`: `excluded_clients` (non-finite updates left out),
  `kept_clients` (how many clients' worth of updates the rule kept: whole
  updates for Krum, values per coordinate for the median and trimmed mean,
  the kept factors for norm bounding), `trimmed_clients` (the entered
  updates it did not keep: reporting - excluded - kept) and, for norm
  bounding, `clipped_clients`;
* `attack`: `malicious_clients` (malicious clients among the reporting
  ones) and `kept_malicious` (`selection.kept_malicious` of the rule's
  `kept_share` over the malicious positions).

A rule that reports no `kept_share` (the DP aggregators, the cohort mean)
gives only what it has.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from tff_research.aggregators import collection
from tff_research.aggregators import excluding_mean
from tff_research.attacks import selection

ROBUSTNESS = excluding_mean.GROUP
ATTACK = 'attack'
CLIPPED = 'clipped_clients'


def _float(x) -> float:
  return float(np.asarray(x))


def round_groups(aggregator: Any, num_clients: int,
                 malicious_mask: Optional[np.ndarray] = None
                 ) -> dict[str, collections.OrderedDict]:
  """The `robustness` and `attack` groups of one round.

  Args:
    aggregator: the model aggregator's measurements (None or not a mapping:
      nothing to read).
    num_clients: the round's reporting clients.
    malicious_mask: bool or float per position (the client work's
      `malicious_mask`, or `selection.round_mask` on one machine); None
      without an attack.
  """
  out = dict(excluding_mean.robustness_group(aggregator))
  if isinstance(aggregator, Mapping) and collection.KEPT in aggregator:
    group = out.setdefault(ROBUSTNESS, collections.OrderedDict())
    excluded = group.get(excluding_mean.MEASUREMENT, 0.0)
    kept = _float(aggregator[collection.KEPT])
    group['kept_clients'] = kept
    group['trimmed_clients'] = max(0.0, num_clients - excluded - kept)
    if CLIPPED in aggregator:
      group[CLIPPED] = _float(aggregator[CLIPPED])
  if malicious_mask is not None:
    mask = np.asarray(malicious_mask, np.float64) > 0.5
    attack = collections.OrderedDict(malicious_clients=float(mask.sum()))
    if isinstance(aggregator, Mapping) and collection.KEPT_SHARE in aggregator:
      attack['kept_malicious'] = selection.kept_malicious(
          aggregator[collection.KEPT_SHARE], mask)
    out[ATTACK] = attack
  return out
