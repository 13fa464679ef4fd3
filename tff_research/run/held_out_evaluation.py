"""The held-out evaluation of a run: when it happens and what it reports."""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np

from tff_research import evaluation
from tff_research.evaluation import model_choice


# The result's key holding which model evaluated which client (hooks that
# evaluate the same clients with the same models read it).
MODEL_GROUPS = 'model_groups'


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


class EvalModels:
  """Which model evaluates each evaluation client of a run's split.

  A client the algorithm knows is evaluated with the model it assigns
  (`eval_model_groups`: the global model, or its cluster's). A held-out
  client that must choose (`ClientSplit.chooses_model`: clustered FL) takes
  the candidate model of least loss on its train split
  (`model_choice.choose_by_loss`, IFCA) and is evaluated on its test split.

      groups: state -> ([(ModelWeights, [client index])], {name: count})
  """

  def __init__(self, algorithm, split, evaluator: evaluation.Evaluator):
    self._algorithm = algorithm
    self._eval_ids = split.eval_client_ids
    self._evaluator = evaluator
    # Built once: the evaluator keeps each source's sequences.
    self._selection = (split.selection_datasets() if split.chooses_model
                       else None)

  def groups(self, state):
    """(model groups covering every evaluation client once, the count of
    held-out clients each cluster's model evaluates: `heldout_size_{k}`,
    and how many took the default model: `heldout_by_default`)."""
    if self._selection is None:
      return self._algorithm.eval_model_groups(state, self._eval_ids), {}
    models, default = self._algorithm.candidate_models(state)
    choice = model_choice.choose_by_loss(self._evaluator, models,
                                         self._selection, default)
    sizes = collections.OrderedDict(
        (f'heldout_size_{k}', int(n))
        for k, n in enumerate(choice.counts(len(models))))
    sizes['heldout_by_default'] = int(choice.by_default.sum())
    return model_choice.groups(models, choice.choice), sizes

  def evaluate(self, state, clients) -> tuple[dict[str, Any], list]:
    """(the evaluator's result on `clients`, each with its model, with the
    per-group metrics and the held-out sizes; the model groups)."""
    groups, sizes = self.groups(state)
    result = self._evaluator.evaluate_groups(groups, clients)
    result.update(group_metrics(groups, result))
    result.update(sizes)
    return result, groups


class HeldOutEvaluation:
  """Evaluates the algorithm's model(s) on the run's held-out clients every
  `every` rounds and after the last, in one federated pass (and, for
  held-out clients that choose among several models, one pass per model
  over their selection data first: `EvalModels`)."""

  def __init__(self, algorithm, model_fn, split, every: int, num_classes: int,
               parts: int = 1):
    self._every = every
    self._models = EvalModels(
        algorithm, split,
        evaluation.Evaluator(model_fn, num_classes, parts=parts))
    self._clients = split.eval_datasets()

  def due(self, round_num: int, final_round: int) -> bool:
    return round_num % self._every == 0 or round_num == final_round

  def __call__(self, state) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the `eval` group, the full result incl. per-client arrays, the
    confusion matrix and the model groups under `MODEL_GROUPS`)."""
    start = time.monotonic()
    result, groups = self._models.evaluate(state, self._clients)
    result['seconds'] = time.monotonic() - start
    group = collections.OrderedDict(
        (k, v) for k, v in result.items()
        if not k.startswith('per_client') and k != 'confusion_matrix')
    result[MODEL_GROUPS] = groups
    group['per_client_accuracy'] = result['per_client_accuracy']
    group['per_client_loss'] = result['per_client_loss']
    return group, result
