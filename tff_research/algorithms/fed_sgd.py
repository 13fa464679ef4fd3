"""Federated SGD (McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", the FedSGD baseline).

Each round every sampled client computes the gradient of its mean loss over
all its examples at the global model x (no local steps: batches only bound
memory), the server takes the example-weighted mean and applies one SGD step:

    x_{t+1} = x_t - eta * sum_i n_i g_i(x_t) / sum_i n_i,

which is exactly one full-batch gradient step on the union of the round's
clients' data. There is no client optimizer and no client learning rate;
`eta` is the server learning rate (`DEFAULT_LEARNING_RATE` = 0.1,
`tff.learning.algorithms.build_fed_sgd`'s default). Always example-weighted.

Type signature of the `tff.learning.templates.LearningProcess`:

    initialize: ( -> <global_model_weights=M, distributor=<>, client_work=<>,
                  aggregator=A, finalizer=F>@SERVER)
    next: (<S@SERVER, {B*}@CLIENTS> -> <state=S@SERVER, metrics=Mt@SERVER>)

with the client work's update being the mean gradient (weighted by the
client's number of examples) instead of a model delta.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow_federated as tff

from tff_research.algorithms import base
from tff_research.algorithms import client_metrics
from tff_research.algorithms import hyperparameters as hp
from tff_research.algorithms import spec

DEFAULT_LEARNING_RATE = 0.1


def build_fed_sgd(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    *,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    model_aggregator: Optional[tff.aggregators.WeightedAggregationFactory] = (
        None),
    metrics_aggregator=None,
) -> tff.learning.templates.LearningProcess:
  """FedSGD as a `LearningProcess`.

  Args:
    model_fn: builds a fresh `tff.learning.models.VariableModel`.
    learning_rate: the server's SGD step size eta (> 0).
    model_aggregator: weighted aggregation of client gradients; TFF's
      example-weighted mean by default.
    metrics_aggregator: as `fed_avg.build_fed_avg`'s.

  Raises:
    ValueError: if `learning_rate` is not positive.
  """
  if not learning_rate > 0:
    raise ValueError(
        f'learning_rate={learning_rate} is not valid: FedSGD needs a step'
        ' size > 0'
    )
  return tff.learning.algorithms.build_fed_sgd(
      model_fn,
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(
          learning_rate=learning_rate),
      model_aggregator=model_aggregator,
      metrics_aggregator=(metrics_aggregator
                          or tff.learning.metrics.sum_then_finalize),
  )


def _check(config):
  if not config.weighted:
    raise ValueError(
        '--noweight_by_size is not valid with --algorithm=fedsgd: FedSGD is'
        ' always example-weighted (one full-batch gradient step on the union'
        " of the clients' data)")


def _build(config, model_fn, client_ids):
  return base.LearningProcessAlgorithm(build_fed_sgd(
      model_fn, learning_rate=config.server_learning_rate,
      model_aggregator=config.model_aggregator(len(client_ids)),
      metrics_aggregator=client_metrics.for_clients(client_ids)))


SPEC = spec.AlgorithmSpec(
    name='fedsgd',
    paper='McMahan et al. 2017',
    summary='`tff.learning.algorithms.build_fed_sgd`',
    build=_build,
    # One full-batch gradient per client: no local optimizer.
    hyperparameters=(hp.SERVER_LEARNING_RATE,),
    defaults={'server_learning_rate': DEFAULT_LEARNING_RATE},
    check=_check,
    fixed_training={'client_epochs': (
        1, 'it takes one full-batch gradient per client (no local epochs)')},
)
