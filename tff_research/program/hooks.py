"""Round hooks: what the loop adds to a round beyond the algorithm's metrics.

A hook has any of `start(start_round, state)`, `before_round(record)`,
`after_round(record)` and `on_evaluation(record, result)`; each of the last
three returns metric groups (`{group: {name: value}}`) merged into the
round's. The dashboard's hook is `dashboard.DashboardHook`.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Optional


@dataclasses.dataclass
class RoundRecord:
  """What hooks see of a round."""

  round_num: int
  selected: list[str]
  reporting: list[str]
  state_before: Any
  state: Any = None
  metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


def call(hooks, method: str, *args) -> dict[str, Any]:
  """Merged groups of `method` over the hooks that have it."""
  out: dict[str, Any] = {}
  for hook in hooks:
    fn = getattr(hook, method, None)
    if fn is None:
      continue
    for group, values in (fn(*args) or {}).items():
      out.setdefault(group, collections.OrderedDict()).update(values)
  return out


class CommunicationHook:
  """`communication` group: KB down (every selected client receives the
  model, also those that then drop out), up (reporting clients), their sum
  and the running total, from the algorithm's real tensor sizes."""

  def __init__(self, algorithm, run_directory):
    self._algorithm = algorithm
    self._run_directory = run_directory
    self._cumulative_kb: Optional[float] = None

  def start(self, start_round: int, state) -> None:
    del state
    self._cumulative_kb = self._run_directory.last_logged(
        start_round, 'communication_cumulative_kb') or 0.0

  def after_round(self, record: RoundRecord):
    down, up = self._algorithm.bytes_per_client(record.state)
    kb_down = down * len(record.selected) / 1024
    kb_up = up * len(record.reporting) / 1024
    self._cumulative_kb += kb_down + kb_up
    return {'communication': collections.OrderedDict(
        kb_down=kb_down, kb_up=kb_up, kb_total=kb_down + kb_up,
        cumulative_kb=self._cumulative_kb)}
