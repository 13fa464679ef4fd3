"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous
Networks", MLSys; arXiv:1812.06127).

FedAvg whose clients minimise their loss plus a proximal term keeping them
near the global model x they started from,

    h_i(y) = F_i(y) + (mu / 2) ||y - x||^2,

so each local step uses the gradient g + mu * (y - x). mu = 0 is FedAvg; a
larger mu shortens the client updates and so limits client drift under
heterogeneous data. The server step is FedAvg's (SGD with
`server_learning_rate`, 1.0 = average of client models).

Why not `tff.learning.algorithms.build_weighted_fed_prox`: in TFF 0.87 its
client work (`templates/proximal_client_work.py`) adds
`mu * (initial - current)` to the gradient, i.e. it descends
F_i(y) - (mu / 2) ||y - x||^2 and pushes clients *away* from the global
model (tests/test_algorithms_fed_prox_sgd.py pins this against numpy).
Here FedProx is `fed_avg.build_fed_avg` with the client optimizer wrapped by
`proximal_optimizer`, which adds the proximal gradient with the paper's sign
before the wrapped optimizer's step, exactly where TFF's client work adds
its own; nothing else of FedAvg changes.

`DEFAULT_PROXIMAL_STRENGTH` = 1 is the mu Li et al. report for FEMNIST (and
MNIST) (litian96/FedProx, plot_final_e20.py); their README notes mu must be
tuned per dataset.

Type signature (as `fed_avg.build_fed_avg`; the client work's state holds
the client optimizer's hyperparameters plus `proximal_strength`):

    initialize: ( -> <global_model_weights=M, distributor=<>, client_work=C,
                  aggregator=A, finalizer=F>@SERVER)
    next: (<S@SERVER, {B*}@CLIENTS> -> <state=S@SERVER, metrics=Mt@SERVER>)

The reported training loss is the model's loss F_i, without the proximal
term.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import tensorflow as tf
import tensorflow_federated as tff

from tff_research.algorithms import base
from tff_research.algorithms import fed_avg
from tff_research.algorithms import hyperparameters as hp
from tff_research.algorithms import spec

DEFAULT_PROXIMAL_STRENGTH = 1.0


def build_fed_prox(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    *,
    client_optimizer: tff.learning.optimizers.Optimizer,
    proximal_strength: float = DEFAULT_PROXIMAL_STRENGTH,
    **fed_avg_arguments,
) -> tff.learning.templates.LearningProcess:
  """FedProx as a `LearningProcess`, example-weighted or uniform: FedAvg
  whose client optimizer adds the proximal term.

  Args:
    model_fn: builds a fresh `tff.learning.models.VariableModel`.
    client_optimizer: local optimizer (e.g. `build_sgdm(eta_l)`).
    proximal_strength: mu >= 0.
    **fed_avg_arguments: the other arguments of `fed_avg.build_fed_avg`
      (server optimizer, weighting, model and metrics aggregators, cohort
      and attack capacities, the update attack).

  Raises:
    ValueError: if `proximal_strength` is negative.
  """
  if proximal_strength < 0:
    raise ValueError(
        f'proximal_strength={proximal_strength} is not valid: mu must be >= 0'
        ' (0 = FedAvg)'
    )
  return fed_avg.build_fed_avg(
      model_fn,
      client_optimizer=proximal_optimizer(client_optimizer, proximal_strength),
      **fed_avg_arguments)


_MU_KEY = 'proximal_strength'


class _ProximalOptimizer(tff.learning.optimizers.Optimizer):
  """`inner` stepping on g + mu (w - w_0); see `proximal_optimizer`."""

  def __init__(self, inner: tff.learning.optimizers.Optimizer,
               proximal_strength: float):
    self._inner = inner
    self._mu = float(proximal_strength)

  def initialize(self, specs: Any) -> collections.OrderedDict:
    return collections.OrderedDict(
        inner=self._inner.initialize(specs),
        proximal_strength=self._mu,
        step=0,
        anchor=tf.nest.map_structure(
            lambda s: tf.zeros(s.shape, s.dtype), specs),
    )

  def next(self, state, weights, gradients):
    # TFF re-initializes the client optimizer for every client and round and
    # its first step sees the broadcast global model: that is the anchor.
    first = tf.equal(state['step'], 0)
    anchor = tf.nest.map_structure(
        lambda a, w: tf.where(first, w, a), state['anchor'], weights)
    mu = state[_MU_KEY]
    gradients = tf.nest.map_structure(
        lambda g, w, a: None if g is None else g + tf.cast(mu, g.dtype) * (
            w - a),
        gradients, weights, anchor)
    inner_state, weights = self._inner.next(state['inner'], weights, gradients)
    return collections.OrderedDict(
        inner=inner_state, proximal_strength=mu, step=state['step'] + 1,
        anchor=anchor,
    ), weights

  def get_hparams(self, state) -> collections.OrderedDict:
    hparams = collections.OrderedDict(self._inner.get_hparams(state['inner']))
    hparams[_MU_KEY] = state[_MU_KEY]
    return hparams

  def set_hparams(self, state, hparams) -> collections.OrderedDict:
    hparams = collections.OrderedDict(hparams)
    mu = hparams.pop(_MU_KEY)
    return collections.OrderedDict(
        inner=self._inner.set_hparams(state['inner'], hparams),
        proximal_strength=mu, step=state['step'], anchor=state['anchor'],
    )


def proximal_optimizer(
    inner: tff.learning.optimizers.Optimizer, proximal_strength: float
) -> tff.learning.optimizers.Optimizer:
  """`inner` applied to the FedProx gradient g + mu * (w - w_0).

  w_0 is the weights of the optimizer's first step after `initialize`, which
  in TFF's client work is the global model the client received. With mu = 0
  the steps are `inner`'s.
  """
  return _ProximalOptimizer(inner, proximal_strength)


PROXIMAL_STRENGTH = spec.Hyperparameter(
    'proximal_strength', float, DEFAULT_PROXIMAL_STRENGTH,
    'fedprox: proximal term mu >= 0 (default 1.0, Li et al. 2020 FEMNIST;'
    ' 0 = FedAvg).',
    valid=lambda v: v >= 0, valid_text='must be >= 0 (0 = FedAvg)')


def _build(config, model_fn, client_ids):
  return base.LearningProcessAlgorithm(build_fed_prox(
      model_fn, proximal_strength=config.proximal_strength,
      server_optimizer=hp.server_sgd(config.values),
      **fed_avg.config_arguments(config, client_ids)))


SPEC = spec.AlgorithmSpec(
    name='fedprox',
    paper='Li et al. 2020',
    summary='FedAvg with a proximal client optimizer (TFF 0.87\'s own FedProx'
    ' adds the proximal gradient with the wrong sign; pinned by a test)',
    build=_build,
    hyperparameters=(*hp.CLIENT, hp.SERVER_LEARNING_RATE, PROXIMAL_STRENGTH),
    dp_capable=True,
    update_attacks=True,
    # FedProx is FedAvg plus the proximal term: FedAvg's client rate.
    comparison_client_learning_rate=10**-1,
)
