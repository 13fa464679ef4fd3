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

import numpy as np


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


class StopRun(Exception):
  """A hook ends the run: `message` (one line) after keeping `state` as the
  checkpoint of round `round_num` (None: keep what is on disk)."""

  def __init__(self, message: str, round_num: int, state: Any):
    super().__init__(message)
    self.round_num = round_num
    self.state = state


def _finite(value) -> bool:
  return bool(np.all(np.isfinite(np.asarray(value, np.float64))))


class DivergenceGuard:
  """Stops a run whose global model is no longer finite.

  A model is non-finite when a weight is, or when its loss is: on the
  reporting clients' data at the start of a round (the dashboard's
  `client_loss`), or on the held-out data. A round whose every reporting
  client sent a non-finite update (all excluded by the aggregator, so the
  round counted no example) also means the model can no longer train.
  The run stops with one line naming the round and what to lower, after
  keeping the last finite model as a checkpoint, so metrics never show the
  0.0 losses of a round that trained on nothing.
  """

  def __init__(self, algorithm, suggestions: dict[str, Any]):
    self._algorithm = algorithm
    self._suggestions = suggestions
    self._previous: Optional[tuple[int, Any]] = None  # (round, state)

  def start(self, start_round: int, state) -> None:
    del start_round, state
    self._previous = None

  def _stop(self, diverged_round: int, why: str, kept: tuple[int, Any]):
    lower = ' or '.join(f'--{k} (now {v:g})'
                        for k, v in self._suggestions.items())
    kept_text = (f'kept the last finite model, round {kept[0]}, as the latest'
                 ' checkpoint' if kept[0] else 'no round before it was'
                 ' finite, so nothing was checkpointed')
    raise StopRun(
        f'the global model diverged at round {diverged_round} ({why});'
        f' {kept_text}; lower {lower} and re-run with a new'
        ' --experiment_name', kept[0], kept[1])

  def after_round(self, record: RoundRecord):
    before = (record.round_num - 1, record.state_before)
    start_loss = record.metrics.get('client_loss', {}).get('mean')
    if start_loss is not None and not _finite(start_loss):
      if self._previous is None:
        raise StopRun(
            f'the model restored at round {before[0]} is not finite (its'
            f' training loss is {start_loss}); re-run with a new'
            ' --experiment_name', None, None)
      self._stop(before[0], f'its training loss is {start_loss}',
                 self._previous)
    weights = self._algorithm.get_model_weights(record.state)
    if not all(_finite(w) for w in weights.trainable):
      self._stop(record.round_num, 'a weight is not finite', before)
    train = record.metrics.get('train', {})
    if record.reporting and 'num_examples' in train and (
        float(np.asarray(train['num_examples'])) == 0):
      self._stop(record.round_num,
                 f'every one of its {len(record.reporting)} client updates'
                 ' was non-finite', before)
    self._previous = before
    return {}

  def on_evaluation(self, record: RoundRecord, result):
    if not _finite(result['loss']):
      self._stop(record.round_num,
                 f'its held-out loss is {result["loss"]}',
                 (record.round_num - 1, record.state_before))
    return {}
