"""Federated Averaging (McMahan et al. 2017, "Communication-Efficient Learning
of Deep Networks from Decentralized Data").

Each round the server broadcasts the global model x; every sampled client runs
`--client_epochs` of local SGD (lr eta_l) and returns its model delta
Delta_i = y_i - x; the server applies an optimizer step to x with the
aggregated delta (weighted by the client's number of examples, or uniformly),
here `tff.learning.optimizers.build_sgdm(server_learning_rate)`, so with a
server learning rate of 1.0 the new model is the (weighted) mean of the client
models.

Type signature of the returned `tff.learning.templates.LearningProcess`:

    initialize: ( -> <global_model_weights=M, distributor=<>, client_work=<>,
                  aggregator=A, finalizer=F>@SERVER)
    next: (<S@SERVER, {B*}@CLIENTS> -> <state=S@SERVER, metrics=Mt@SERVER>)

where M is the model's `ModelWeights` type and B its batch type.

With the plain mean as the model aggregator (no DP), the round's clients
run in cohorts, one TFF client and one call each, composed from TFF's own
distributor, aggregator (the cohorts' weighted mean) and finalizer with
`cohort_client_work` (why and how: its docstring); the client data is then

    {<batches=<B, int32>*, members=int32*>}@CLIENTS

and `base.LearningProcessAlgorithm` packs each round's clients into it.

With a rule that needs every update (`--robust_aggregation=median|
trimmed_mean|krum|multi_krum`, no DP) the clients run in cohorts too: each
cohort sends its members' updates as one table, the rule runs over the
concatenated tables (`CollectingFactory.create_for_tables`), and an update
attack transforms the malicious members' updates inside their cohort (the
cohort data then also carries `attacks=<malicious=bool, seed=int64[2]>*`).
Per client, each client's row is one more append to the rule's accumulator,
and TFF's runtime holds every intermediate accumulator until the call ends:
K^2 / 2 model-sized rows (6 GB at 50 clients of the EMNIST CNN).

With another rule (`norm_bound`, or `mean` under an attack) or DP the model
aggregator is `AlgorithmConfig.model_aggregator()`, given to TFF's
builders. With an attack (`--attack`) the process is then TFF's FedAvg
composition with TFF's `build_model_delta_client_work` wrapped by
`attacks.client_work.with_update_attack` (the malicious clients' update
transform, and the malicious mask collected beside the rule's kept
positions); each client's data is then `<data=B*, attack=A*>`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import tensorflow_federated as tff
# `as_weighted_aggregator`, as TFF's `build_unweighted_fed_avg` uses it: TFF
# exports no name for it.
from tensorflow_federated.python.aggregators import factory_utils

from tff_research.algorithms import base
from tff_research.algorithms import client_metrics
from tff_research.algorithms import cohort_client_work
from tff_research.algorithms import hyperparameters as hp
from tff_research.algorithms import spec
from tff_research.aggregators import collection
from tff_research.attacks import client_work as attack_client_work


def build_fed_avg(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    *,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: Optional[tff.learning.optimizers.Optimizer] = None,
    weighted: bool = True,
    model_aggregator: Optional[tff.aggregators.AggregationFactory] = None,
    metrics_aggregator=None,
    cohort_capacity: Optional[int] = None,
    attack_capacity: Optional[int] = None,
    update_fn: Optional[attack_client_work.UpdateFn] = None,
) -> tff.learning.templates.LearningProcess:
  """FedAvg as a `LearningProcess`, example-weighted or uniform.

  Args:
    model_fn: builds a fresh `tff.learning.models.VariableModel`.
    client_optimizer: local optimizer (e.g. `build_sgdm(eta_l)`).
    server_optimizer: applied to the averaged delta; defaults to SGD with
      learning rate 1.0 (plain model averaging).
    weighted: weight clients by number of examples (True) or uniformly.
    model_aggregator: aggregation of client deltas; TFF's mean by default.
    metrics_aggregator: aggregation of the clients' training metrics
      (`tff.learning.metrics.sum_then_finalize` by default; the pipeline's
      algorithms use `client_metrics.for_clients`).
    cohort_capacity: with no `model_aggregator`, the round's clients run in
      cohorts of up to this many (the number of training clients); the
      non-finite-excluding mean and the per-client metrics table are then
      the cohort client work's, and `metrics_aggregator` is not used. With a
      collecting rule as the `model_aggregator` (`aggregators.collection.
      CollectingFactory`: median, trimmed mean, Krum), the cohorts send
      their members' updates as tables to the rule
      (`create_for_tables`), and `update_fn` attacks the malicious members'.
    attack_capacity: when set, the client work reads every client's attack
      input and reports the malicious mask (of up to this many clients);
      `update_fn` (None: none) transforms the malicious clients' updates
      (`attacks.client_work.with_update_attack`).
    update_fn: see `attack_capacity`.
  """
  if server_optimizer is None:
    server_optimizer = tff.learning.optimizers.build_sgdm(learning_rate=1.0)
  if cohort_capacity is not None and model_aggregator is None:
    return _build_cohort_fed_avg(model_fn, client_optimizer, server_optimizer,
                                 weighted, cohort_capacity)
  if cohort_capacity is not None and isinstance(
      model_aggregator, collection.CollectingFactory):
    return _build_cohort_rule(model_fn, client_optimizer, server_optimizer,
                              model_aggregator, cohort_capacity, update_fn)
  if attack_capacity is not None:
    client_work = attack_client_work.with_update_attack(
        tff.learning.templates.build_model_delta_client_work(
            model_fn, client_optimizer,
            tff.learning.ClientWeighting.NUM_EXAMPLES if weighted
            else tff.learning.ClientWeighting.UNIFORM,
            metrics_aggregator=metrics_aggregator),
        update_fn, attack_capacity)
    aggregator = model_aggregator or tff.aggregators.MeanFactory()
    return _compose(model_fn, client_work, _weighted(
        aggregator if weighted else
        factory_utils.as_weighted_aggregator(aggregator)), server_optimizer)
  if weighted:
    return tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=client_optimizer,
        server_optimizer_fn=server_optimizer,
        model_aggregator=model_aggregator,
        metrics_aggregator=metrics_aggregator,
    )
  return tff.learning.algorithms.build_unweighted_fed_avg(
      model_fn,
      client_optimizer_fn=client_optimizer,
      server_optimizer_fn=server_optimizer,
      model_aggregator=model_aggregator,
      metrics_aggregator=metrics_aggregator,
  )


def _weighted(factory: tff.aggregators.WeightedAggregationFactory):
  """(the trainable weights' type T -> `factory`'s process for T with
  float32 weights)."""
  return lambda value_type: factory.create(value_type,
                                           tff.TensorType(np.float32))


def _compose(model_fn, client_work, aggregator, server_optimizer):
  """TFF's FedAvg composition around `client_work`; `aggregator(T)` is
  the aggregation process of the updates, T the trainable weights' type."""

  @tff.tensorflow.computation
  def initial_weights():
    return tff.learning.models.ModelWeights.from_model(model_fn())

  weights_type = initial_weights.type_signature.result
  return tff.learning.templates.compose_learning_process(
      initial_weights,
      tff.learning.templates.build_broadcast_process(weights_type),
      client_work, aggregator(weights_type.trainable),
      tff.learning.templates.build_apply_optimizer_finalizer(
          server_optimizer, weights_type),
  )


def _build_cohort_fed_avg(model_fn, client_optimizer, server_optimizer,
                          weighted, capacity):
  """TFF's FedAvg composition with the cohort client work."""
  return _compose(
      model_fn,
      cohort_client_work.build_cohort_client_work(
          model_fn, client_optimizer, weighted=weighted, capacity=capacity),
      # The cohorts' means weighted by their weights: the clients' mean. A
      # round whose every client was left out averages to a zero update.
      _weighted(tff.aggregators.MeanFactory(no_nan_division=True)),
      server_optimizer)


def _build_cohort_rule(model_fn, client_optimizer, server_optimizer, rule,
                       capacity, update_fn):
  """TFF's FedAvg composition with the cohort client work sending its
  members' updates to the collecting `rule` (uniform: the rules that
  collect take no weight)."""
  return _compose(
      model_fn,
      cohort_client_work.build_cohort_client_work(
          model_fn, client_optimizer, weighted=False, capacity=capacity,
          rows=True, update_fn=update_fn),
      rule.create_for_tables, server_optimizer)


def config_arguments(config, client_ids) -> dict[str, Any]:
  """The `build_fed_avg` arguments every FedAvg-based spec takes from its
  validated `registry.AlgorithmConfig`: client optimizer, weighting, and
  either the model aggregator (`config.model_aggregator()`: the robust
  rule, then DP) with per-client metrics over the training clients
  `client_ids` and, with an attack, the attacked client work; or, with the
  plain mean, no DP, no attack and known clients, cohorts of up to
  `len(client_ids)` clients (FedProx and the adaptive server optimizers
  build on FedAvg with these too)."""
  client_optimizer = hp.build_client_optimizer(config.values)
  capacity = len(client_ids)
  rule = config.model_aggregator(capacity)
  if capacity and cohort_client_work.in_cohorts(config, rule):
    if not isinstance(rule, collection.CollectingFactory):
      return dict(client_optimizer=client_optimizer, weighted=config.weighted,
                  cohort_capacity=capacity)
    # A rule that needs every update gets them as the cohorts' tables.
    return dict(client_optimizer=client_optimizer, weighted=config.weighted,
                model_aggregator=rule, cohort_capacity=capacity,
                update_fn=config.attack.update_fn())
  arguments = dict(
      client_optimizer=client_optimizer,
      weighted=config.weighted,
      model_aggregator=rule,
      metrics_aggregator=client_metrics.for_clients(client_ids),
  )
  if config.attack.active:
    arguments.update(attack_capacity=capacity or collection.DEFAULT_CAPACITY,
                     update_fn=config.attack.update_fn())
  return arguments


def _build(config, model_fn, client_ids):
  return base.LearningProcessAlgorithm(build_fed_avg(
      model_fn, server_optimizer=hp.server_sgd(config.values),
      **config_arguments(config, client_ids)))


SPEC = spec.AlgorithmSpec(
    name='fedavg',
    paper='McMahan et al. 2017',
    summary='`tff.learning.algorithms.build_weighted_fed_avg` /'
    ' `build_unweighted_fed_avg`',
    build=_build,
    hyperparameters=(*hp.CLIENT, hp.SERVER_LEARNING_RATE),
    dp_capable=True,
    update_attacks=True,
    clusterable=True,
    comparison_client_learning_rate=10**-1,
    docs='README.md',
)
