"""The interface between the training loop and a federated algorithm.

`tff.learning.templates.LearningProcess.next` takes (server state, client
data) only. Algorithms with per-client state (SCAFFOLD's control variates,
clustered FL's assignments) also need to know *which* clients take part, so
the training loop talks to every algorithm through `FederatedAlgorithm`, and
TFF's own processes are adapted by `LearningProcessAlgorithm`.

State returned by `initialize`/`next` must be a structure that
`tff.program.FileProgramStateManager` can save and load with the initial
state as its template, so checkpoints hold everything needed to resume.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.algorithms import client_metrics
from tff_research.algorithms import cohort_client_work
from tff_research.aggregators import excluding_mean as robust_aggregation
from tff_research.attacks import client_work as attack_client_work
from tff_research.attacks import config as attack_config
from tff_research.attacks import metrics as attack_metrics
from tff_research.attacks import selection


class FederatedAlgorithm(abc.ABC):
  """A federated training algorithm driven round by round by the loop.

  A new algorithm implements two methods, as a FedJAX algorithm does
  (`init`/`apply`):

      initialize: () -> state
      next: (state, round, client ids [K], client datasets [K])
            -> (state, metrics)

  Everything else the loop may ask is an optional capability with a
  default: the model to evaluate (`get_model_weights`: the state's
  `global_model_weights`, as in TFF's `LearningAlgorithmState`), which model
  evaluates which client (`eval_model_groups`: the global one) and which
  models a client that never trained chooses from (`candidate_models`: the
  global one), budget
  planning (`plan_rounds`: every round), costly reports (`report`: none),
  communication size (`bytes_per_client`: the model down, an update up),
  empty rounds (`runs_empty_rounds`: skipped) and the attack axis
  (`set_attack`, `round_mask`). `next` and every query are pure functions
  of their arguments (no call history).
  """

  # Whether a round in which no client reports still runs `next` (server
  # DP adds its noise to the empty sum); otherwise the loop skips it.
  runs_empty_rounds: bool = False
  # How many cohorts an algorithm that trains cohorts of clients (one TFF
  # client, one call each) packs a round's clients into: one per TFF
  # worker (`registry.build_algorithm` sets it); others ignore it.
  cohorts: int = 1
  # The run's attack and its malicious training clients (`set_attack`).
  attack: attack_config.AttackConfig = attack_config.AttackConfig()
  malicious: frozenset[str] = frozenset()

  def set_attack(self, attack: attack_config.AttackConfig,
                 client_ids: Sequence[str]) -> None:
    """Sets the attack and its malicious clients among `client_ids`."""
    self.attack = attack
    self.malicious = frozenset(attack.malicious(client_ids))

  def round_mask(self, client_ids: Sequence[str]):
    """The malicious positions of a round run on one machine (positions
    are the round's client order), or None without an attack."""
    if not self.attack.active:
      return None
    return selection.round_mask(client_ids, self.malicious)

  def with_attack_inputs(self, round_num: int, client_ids: Sequence[str],
                         data: Sequence[Any]) -> list[Any]:
    """Each client's data beside its attack input (flag and noise seed),
    as a client work wrapped by `attacks.client_work.with_update_attack`
    takes it."""
    return [attack_client_work.attacked_data(d, a)
            for d, a in zip(data, self.attack.client_inputs(
                self.malicious, round_num, client_ids))]

  @abc.abstractmethod
  def initialize(self) -> Any:
    """Returns the initial (server and per-client) state."""

  @abc.abstractmethod
  def next(
      self,
      state: Any,
      round_num: int,
      client_ids: Sequence[str],
      client_datasets: Sequence[tf.data.Dataset],
  ) -> tuple[Any, Mapping[str, Any]]:
    """Runs one round on the given clients; returns (new state, metrics).

    Metrics hold at least `train` with `loss`, `sparse_categorical_accuracy`
    and `num_examples` averaged over the clients' examples.
    """

  def get_model_weights(self, state: Any) -> tff.learning.models.ModelWeights:
    """The global model to evaluate/export: by default the state's
    `global_model_weights`; a state that keeps it elsewhere overrides this."""
    weights = getattr(state, 'global_model_weights', None)
    if not isinstance(weights, tff.learning.models.ModelWeights):
      raise NotImplementedError(
          f'{type(self).__name__}: its state has no global_model_weights;'
          ' define get_model_weights(state)')
    return weights

  def eval_model_groups(
      self, state: Any, client_ids: Sequence[str]
  ) -> list[tuple[tff.learning.models.ModelWeights, list[int]]]:
    """Which model evaluates which held-out client.

    Returns (model weights, indices into `client_ids`) pairs covering every
    client once. One global model by default; clustered FL returns one group
    per cluster.
    """
    return [(self.get_model_weights(state), list(range(len(client_ids))))]

  def candidate_models(
      self, state: Any
  ) -> tuple[list[tff.learning.models.ModelWeights], int]:
    """(the models a client that never trained may be evaluated with, the
    index of the one for a client that cannot choose). The global model by
    default; clustered FL offers each cluster's model, and a held-out
    client takes the one of least loss on its own data
    (`evaluation.model_choice`, as IFCA assigns a new client)."""
    return [self.get_model_weights(state)], 0

  def plan_rounds(
      self, state: Any, start_round: int, total_rounds: int, sampler: Any
  ) -> tuple[int, Optional[str]]:
    """(last round to run, why it is before `total_rounds` or None).

    `sampler` is the run's `sampling.ClientSampler`. Only a budgeted
    algorithm (DP with a target epsilon) stops early.
    """
    del state, start_round, sampler
    return total_rounds, None

  def report(self, state: Any, round_num: int) -> Mapping[str, Any]:
    """Metric groups too costly for every round, computed on evaluation
    rounds and the last round (DP's PLD epsilon)."""
    del state, round_num
    return {}

  def bytes_per_client(self, state: Any) -> tuple[int, int]:
    """(bytes sent to, bytes sent from) one participating client per round.

    By default the server sends the model weights and the client returns a
    model-sized update; algorithms that move more (SCAFFOLD's control
    variates) override this.
    """
    weights = self.get_model_weights(state)
    size = sum(
        np.asarray(w).nbytes
        for w in tf.nest.flatten((weights.trainable, weights.non_trainable))
    )
    trainable = sum(np.asarray(w).nbytes for w in weights.trainable)
    return size, trainable


class LearningProcessAlgorithm(FederatedAlgorithm):
  """Adapts a `tff.learning.templates.LearningProcess`.

  A process whose client work trains cohorts (`cohort_client_work`) gets
  each round's clients packed into `cohorts` cohorts of contiguous clients
  (one per TFF worker: each runs its cohort in one call). A process whose
  client work reads attack inputs (`attacks.client_work.with_update_attack`)
  gets each client's flag and noise seed beside its data.
  """

  def __init__(self, process: tff.learning.templates.LearningProcess,
               cohorts: int = 1):
    self.process = process
    self.cohorts = max(1, int(cohorts))
    self._takes_cohorts = cohort_client_work.takes_cohorts(process)
    self._takes_member_attacks = cohort_client_work.takes_member_attacks(
        process)
    self._takes_attack = attack_client_work.takes_attack(process)

  def initialize(self):
    return self.process.initialize()

  def client_data(self, round_num, client_ids, datasets) -> list[Any]:
    """The round's client data as the process takes it (attack inputs,
    cohorts)."""
    data = list(datasets)
    if self._takes_attack:
      data = self.with_attack_inputs(round_num, client_ids, data)
    if self._takes_cohorts:
      attacks = (self.attack.client_flags(self.malicious, round_num,
                                          client_ids)
                 if self._takes_member_attacks else None)
      data = cohort_client_work.pack(
          data, cohort_client_work.split_cohorts(len(data), self.cohorts),
          attacks)
    return data

  def next(self, state, round_num, client_ids, client_datasets):
    output = self.process.next(
        state, self.client_data(round_num, client_ids, client_datasets))
    work = collections.OrderedDict(output.metrics['client_work'])
    aggregator = output.metrics.get('aggregator')
    if cohort_client_work.EXCLUDED in work:
      # The cohort client work counts the excluded non-finite updates.
      aggregator = {robust_aggregation.MEASUREMENT: work.pop(
          cohort_client_work.EXCLUDED)}
    attack = work.pop(attack_client_work.ATTACK, None)
    # The mask collected in the round lines up with the rule's positions on
    # workers too; without it (no attacked client work) the ids give it.
    mask = (self.round_mask(client_ids) if attack is None
            else attack['malicious_mask'])
    metrics = client_metrics.unpack(work)
    metrics.update(attack_metrics.round_groups(aggregator, len(client_ids),
                                               mask))
    return output.state, metrics

  def get_model_weights(self, state):
    # TFF's composed processes keep the global model as the first field of
    # their state (`LearningAlgorithmState`); reading it here saves the
    # runtime call `process.get_model_weights` makes, which ships the whole
    # state to the worker and the model back (twice per round: the
    # communication hook and the divergence guard ask for it).
    try:
      return super().get_model_weights(state)
    except NotImplementedError:
      return self.process.get_model_weights(state)
