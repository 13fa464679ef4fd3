"""The held-out evaluation of a run: when it happens and what it reports."""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from tff_research import evaluation


def group_metrics(groups, result) -> dict[str, Any]:
  """Example-weighted accuracy and loss of each evaluation group, when an
  algorithm evaluates clients with several models (clustered FL: group g =
  cluster g)."""
  out = collections.OrderedDict()
  if len(groups) < 2:
    return out
  n = np.asarray(result['per_client_num_examples'], np.float64)
  for g, (_, indices) in enumerate(groups):
    indices = list(indices)
    total = n[indices].sum() if indices else 0.0
    if total <= 0:
      continue
    for metric in ('accuracy', 'loss'):
      values = np.asarray(result[f'per_client_{metric}'])[indices]
      out[f'group{g}_{metric}'] = float(np.dot(values, n[indices]) / total)
    out[f'group{g}_clients'] = len(indices)
  return out


class HeldOutEvaluation:
  """Evaluates the algorithm's model(s) on the run's held-out clients every
  `every` rounds and after the last, in one federated pass."""

  def __init__(self, algorithm, model_fn, split, every: int, num_classes: int,
               parts: int = 1):
    self._algorithm = algorithm
    self._split = split
    self._every = every
    self._evaluator = evaluation.Evaluator(model_fn, num_classes, parts=parts)
    self._clients = split.eval_datasets()

  def due(self, round_num: int, final_round: int) -> bool:
    return round_num % self._every == 0 or round_num == final_round

  def __call__(self, state) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the `eval` group, the full result incl. per-client arrays and the
    confusion matrix)."""
    start = time.monotonic()
    groups = self._algorithm.eval_model_groups(state,
                                               self._split.eval_client_ids)
    result = self._evaluator.evaluate_groups(groups, self._clients)
    result.update(group_metrics(groups, result))
    result['seconds'] = time.monotonic() - start
    group = collections.OrderedDict(
        (k, v) for k, v in result.items()
        if not k.startswith('per_client') and k != 'confusion_matrix')
    group['per_client_accuracy'] = result['per_client_accuracy']
    group['per_client_loss'] = result['per_client_loss']
    return group, result
