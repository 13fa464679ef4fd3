"""The attack's round metrics that need the run: who was malicious, and
whether a backdoor took.

`AttackHook` (a round hook, `hooks.py`) adds to the `attack` group

* every round, `malicious_clients`: how many of the round's reporting
  clients are malicious (the algorithm adds `kept_malicious`, how many of
  them its rule kept: `attacks.metrics`);
* on evaluation rounds of a backdoor run, `backdoor_success`: the fraction
  of triggered held-out examples whose true label is not the target that
  the model classifies as the target (Bagdasaryan et al. 2020). It is the
  held-out accuracy on `attacks.backdoor.triggered_test_set` of every
  evaluation client (labels set to the target), evaluated with the same
  model(s) as the run's evaluation (its `MODEL_GROUPS`).
"""

from __future__ import annotations

import collections
from collections.abc import Collection

from tff_research import evaluation
from tff_research.evaluation import per_client
from tff_research.attacks import backdoor
from tff_research.attacks import config as attack_config
from tff_research.attacks import metrics as attack_metrics
from tff_research.data import preprocessing
from tff_research.run import client_split as client_split_lib
from tff_research.run import held_out_evaluation

GROUP = attack_metrics.ATTACK


class AttackHook:
  """`attack/malicious_clients` every round, `attack/backdoor_success` on
  evaluation rounds of a backdoor run."""

  def __init__(self, algorithm, attack: attack_config.AttackConfig,
               malicious: Collection[str],
               split: client_split_lib.ClientSplit, model_fn,
               num_classes: int, batch_size: int, parts: int = 1):
    self._algorithm = algorithm
    self._malicious = frozenset(malicious)
    self._eval_ids = split.eval_client_ids
    self._triggered = None
    if attack.kind == 'backdoor':
      self._evaluator = evaluation.Evaluator(model_fn, num_classes,
                                             parts=parts)
      self._triggered = per_client.DatasetSource([
          preprocessing.preprocess_for_eval(backdoor.triggered_test_set(
              split.raw_eval_dataset(cid), attack.backdoor_target),
                                            batch_size)
          for cid in self._eval_ids])

  def before_round(self, record):
    count = sum(c in self._malicious for c in record.reporting)
    return {GROUP: collections.OrderedDict(malicious_clients=float(count))}

  def on_evaluation(self, record, result):
    if self._triggered is None:
      return {}
    # The evaluation's own choice of model per client (held-out clients of
    # a clustered run choose theirs on data this hook does not have).
    groups = result.get(held_out_evaluation.MODEL_GROUPS) or (
        self._algorithm.eval_model_groups(record.state, self._eval_ids))
    success = self._evaluator.evaluate_groups(groups, self._triggered)
    return {GROUP: collections.OrderedDict(
        backdoor_success=success['accuracy'])}
