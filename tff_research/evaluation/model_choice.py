"""Which of several models evaluates a client that never trained.

A clustered run has one model per cluster, and a client held out of
training has no cluster. IFCA (Ghosh et al. 2020, "An Efficient Framework
for Clustered Federated Learning", Algorithm 1) estimates a client's
cluster identity as the cluster whose model has the least loss on the
client's data; a new client is assigned the same way. Here the loss is
computed on *selection* data disjoint from the data the client is then
evaluated on (`run.client_split.ClientSplit`: its train split chooses, its
test split is reported), so the choice cannot flatter the reported metric.

The losses come from the held-out evaluation's own per-client pass
(`per_client.Evaluator`), one pass per model over the selection data, so
the selection data is read where evaluation reads it (by the worker, for
an array store) and only the evaluated clients' data is read.

    choose_by_loss: (Evaluator, [M] * K, EvalSource of n clients, int)
                    -> <choice=int64[n], by_default=bool[n]>
    groups:         ([M] * K, int64[n]) -> [(M, [int])] * K
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow_federated as tff

from tff_research.evaluation import per_client

Weights = tff.learning.models.ModelWeights


@dataclasses.dataclass(frozen=True)
class Choice:
  """Each client's model: `choice[i]` indexes the candidate models;
  `by_default[i]` marks a client that could not choose (no selection
  example, or no model with a finite loss) and took the default."""

  choice: np.ndarray
  by_default: np.ndarray

  def counts(self, num_models: int) -> np.ndarray:
    """int64 [num_models]: how many clients each model evaluates."""
    return np.bincount(self.choice, minlength=num_models)


def choose_by_loss(evaluator: per_client.Evaluator, models: Sequence[Weights],
                   selection: per_client.EvalSource, default: int) -> Choice:
  """Client i takes argmin_k of model k's example-weighted loss on its
  selection data (ties: the lowest k); `default` for a client that cannot
  choose. With one model nothing is evaluated."""
  n = selection.num_clients
  if not 0 <= default < len(models):
    raise ValueError(f'default={default} is not one of the {len(models)}'
                     ' models')
  if len(models) == 1:
    return Choice(np.zeros(n, np.int64), np.zeros(n, bool))
  losses, counts = [], None
  for weights in models:
    result = evaluator.evaluate(weights, selection)
    losses.append(np.asarray(result['per_client_loss'], np.float64))
    counts = np.asarray(result['per_client_num_examples'])
  # [n, K]; a diverged model's NaN loss must never win the argmin.
  table = np.stack(losses, axis=1)
  table = np.where(np.isfinite(table), table, np.inf)
  by_default = (counts == 0) | np.all(np.isinf(table), axis=1)
  choice = np.argmin(table, axis=1).astype(np.int64)
  choice[by_default] = default
  return Choice(choice, by_default)


def groups(models: Sequence[Weights],
           choice: np.ndarray) -> list[tuple[Weights, list[int]]]:
  """(model k, the clients that chose it) for every model, as
  `FederatedAlgorithm.eval_model_groups` returns them."""
  choice = np.asarray(choice)
  return [(weights, np.flatnonzero(choice == k).tolist())
          for k, weights in enumerate(models)]
