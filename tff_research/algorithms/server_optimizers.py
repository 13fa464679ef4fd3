"""Adaptive federated optimization (Reddi et al. 2021, "Adaptive Federated
Optimization", ICLR; arXiv:2003.00295): FedAvgM, FedAdam, FedYogi, FedAdagrad.

All four are FedAvg (`fed_avg.build_fed_avg`) whose server optimizer is not
plain SGD. Each round the clients run local SGD from the global model x_t and
the server aggregates their deltas into Delta_t (example-weighted or uniform
mean). TFF's finalizer hands the server optimizer the *negated* delta as the
gradient, so "x - lr * step(-Delta)" below is the paper's "x + eta * ...".
Vector operations are per coordinate.

FedAvgM (Hsu et al. 2019), `tff.learning.optimizers.build_sgdm(eta, beta)`:

    v_t = beta * v_{t-1} + Delta_t;            x_{t+1} = x_t + eta * v_t

FedAdam (Reddi et al. Algorithm 2, with Kingma & Ba's bias correction, as in
`tff.learning.optimizers.build_adam` and the Keras Adam the authors ran):

    m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t
    v_t = beta_2 v_{t-1} + (1 - beta_2) Delta_t^2
    x_{t+1} = x_t + eta * sqrt(1 - beta_2^t) / (1 - beta_1^t)
                    * m_t / (sqrt(v_t) + tau)

FedYogi: as FedAdam (`build_yogi`, initial v = 0 as in the authors' runs)
except

    v_t = v_{t-1} - (1 - beta_2) Delta_t^2 sign(v_{t-1} - Delta_t^2)

FedAdagrad (`build_adagrad`): Algorithm 2 with beta_1 = 0 (the authors' runs
used Keras Adagrad, which has no momentum) and v_{-1} = tau^2. TFF's Adagrad
adds tau inside the square root rather than after it:

    v_t = v_{t-1} + Delta_t^2,  v_{-1} = tau^2;  x_{t+1} = x_t + eta * Delta_t / sqrt(v_t)

Defaults (`PAPER_DEFAULTS`) are the best EMNIST-CNN values of Reddi et al.,
as released with the paper (google-research/federated,
optimization/docs/hyperparameters.md): server learning rates 10^0 (FedAvg),
10^-0.5 (FedAvgM, beta = 0.9), 10^-2.5 (FedAdam, FedYogi: beta_1 = 0.9,
beta_2 = 0.999, tau = 10^-4), 10^-1 (FedAdagrad, tau = 10^-2). The paper's
best client learning rate is 10^-1 for FedAvg and 10^-1.5 for the others
(`PAPER_CLIENT_LEARNING_RATES`).

Type signature of every returned `tff.learning.templates.LearningProcess`
(as `fed_avg.build_fed_avg`; only the finalizer state F differs: the server
optimizer's hyperparameters and moment estimates):

    initialize: ( -> <global_model_weights=M, distributor=<>, client_work=<>,
                  aggregator=A, finalizer=F>@SERVER)
    next: (<S@SERVER, {B*}@CLIENTS> -> <state=S@SERVER, metrics=Mt@SERVER>)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Optional

import tensorflow_federated as tff

from tff_research.algorithms import base
from tff_research.algorithms import fed_avg
from tff_research.algorithms import hyperparameters as hp
from tff_research.algorithms import spec

ModelFn = Callable[[], tff.learning.models.VariableModel]

# algorithm -> its server optimizer's hyperparameters and their defaults.
PAPER_DEFAULTS: dict[str, dict[str, float]] = {
    'fedavg': {'learning_rate': 1.0},
    'fedavgm': {'learning_rate': 10**-0.5, 'momentum': 0.9},
    'fedadam': {'learning_rate': 10**-2.5, 'beta_1': 0.9, 'beta_2': 0.999,
                'epsilon': 1e-4},
    'fedyogi': {'learning_rate': 10**-2.5, 'beta_1': 0.9, 'beta_2': 0.999,
                'epsilon': 1e-4},
    'fedadagrad': {'learning_rate': 10**-1, 'epsilon': 1e-2},
}
PAPER_CLIENT_LEARNING_RATES: dict[str, float] = {
    'fedavg': 10**-1,
    'fedavgm': 10**-1.5,
    'fedadam': 10**-1.5,
    'fedyogi': 10**-1.5,
    'fedadagrad': 10**-1.5,
}
ALGORITHMS = tuple(PAPER_DEFAULTS)


def build_server_optimizer(
    algorithm: str,
    *,
    learning_rate: Optional[float] = None,
    momentum: Optional[float] = None,
    beta_1: Optional[float] = None,
    beta_2: Optional[float] = None,
    epsilon: Optional[float] = None,
) -> tff.learning.optimizers.Optimizer:
  """The server optimizer of `algorithm`; None = `PAPER_DEFAULTS`.

  Raises ValueError for an unknown algorithm or a hyperparameter it does not
  use (e.g. `momentum` for fedadam).
  """
  if algorithm not in PAPER_DEFAULTS:
    raise ValueError(
        f'unknown server-optimizer algorithm {algorithm!r}; valid:'
        f' {", ".join(ALGORITHMS)}'
    )
  given = dict(learning_rate=learning_rate, momentum=momentum, beta_1=beta_1,
               beta_2=beta_2, epsilon=epsilon)
  used = PAPER_DEFAULTS[algorithm]
  for name, value in given.items():
    if value is not None and name not in used:
      raise ValueError(
          f'{name}={value} does not apply to {algorithm}; its server'
          f' optimizer takes {", ".join(used)}'
      )
  h = {name: used[name] if given[name] is None else float(given[name])
       for name in used}
  if algorithm == 'fedavg':
    return tff.learning.optimizers.build_sgdm(learning_rate=h['learning_rate'])
  if algorithm == 'fedavgm':
    return tff.learning.optimizers.build_sgdm(
        learning_rate=h['learning_rate'], momentum=h['momentum'])
  if algorithm == 'fedadam':
    return tff.learning.optimizers.build_adam(
        learning_rate=h['learning_rate'], beta_1=h['beta_1'],
        beta_2=h['beta_2'], epsilon=h['epsilon'])
  if algorithm == 'fedyogi':
    return tff.learning.optimizers.build_yogi(
        learning_rate=h['learning_rate'], beta_1=h['beta_1'],
        beta_2=h['beta_2'], epsilon=h['epsilon'],
        initial_preconditioner_value=0.0)
  # fedadagrad: v_{-1} = tau^2 and nothing added inside the root, so the
  # denominator is sqrt(tau^2 + sum Delta^2) (see the module docstring).
  return tff.learning.optimizers.build_adagrad(
      learning_rate=h['learning_rate'],
      initial_preconditioner_value=h['epsilon']**2, epsilon=0.0)


def build_fed_adaptive(
    algorithm: str,
    model_fn: ModelFn,
    *,
    server_hyperparameters: Optional[Mapping[str, float]] = None,
    **fed_avg_arguments,
) -> tff.learning.templates.LearningProcess:
  """FedAvg with `algorithm`'s server optimizer (`build_server_optimizer`
  with `server_hyperparameters`: FedAvgM, Hsu et al. 2019; FedAdam,
  FedYogi, FedAdagrad, Reddi et al. 2021 Algorithm 2, `epsilon` being the
  paper's tau). `fed_avg_arguments` are the other arguments of
  `fed_avg.build_fed_avg` (client optimizer, weighting, aggregators, ...)."""
  return fed_avg.build_fed_avg(
      model_fn,
      server_optimizer=build_server_optimizer(
          algorithm, **(server_hyperparameters or {})),
      **fed_avg_arguments)


def _unit_interval(v):
  return 0 <= v < 1


SERVER_MOMENTUM = spec.Hyperparameter(
    'server_momentum', float, 0.9,
    'fedavgm: server momentum beta in [0, 1) (default 0.9).',
    valid=_unit_interval, valid_text='must be in [0, 1)')
SERVER_BETA_1 = spec.Hyperparameter(
    'server_beta_1', float, 0.9,
    'fedadam|fedyogi: first-moment decay in [0, 1) (default 0.9).',
    valid=_unit_interval, valid_text='must be in [0, 1)')
SERVER_BETA_2 = spec.Hyperparameter(
    'server_beta_2', float, 0.999,
    'fedadam|fedyogi: second-moment decay in [0, 1) (default 0.999).',
    valid=_unit_interval, valid_text='must be in [0, 1)')
SERVER_EPSILON = spec.Hyperparameter(
    'server_epsilon', float, 1e-4,
    'fedadam|fedyogi|fedadagrad: adaptivity tau > 0 (default 1e-4 for'
    ' fedadam/fedyogi, 1e-2 for fedadagrad; Reddi et al. EMNIST).',
    valid=lambda v: v > 0, valid_text='must be > 0')
# Server-optimizer argument -> its hyperparameter.
_HYPERPARAMETERS = {
    'learning_rate': hp.SERVER_LEARNING_RATE,
    'momentum': SERVER_MOMENTUM,
    'beta_1': SERVER_BETA_1,
    'beta_2': SERVER_BETA_2,
    'epsilon': SERVER_EPSILON,
}
_PAPERS = {
    'fedavgm': 'Hsu et al. 2019; Reddi et al. 2021',
    'fedadam': 'Reddi et al. 2021',
    'fedyogi': 'Reddi et al. 2021',
    'fedadagrad': 'Reddi et al. 2021',
}


def _spec(algorithm: str) -> spec.AlgorithmSpec:
  used = PAPER_DEFAULTS[algorithm]

  def build(config, model_fn, client_ids):
    return base.LearningProcessAlgorithm(build_fed_adaptive(
        algorithm, model_fn,
        server_hyperparameters={
            arg: config.values[_HYPERPARAMETERS[arg].name] for arg in used},
        **fed_avg.config_arguments(config, client_ids)))

  return spec.AlgorithmSpec(
      name=algorithm,
      paper=_PAPERS[algorithm],
      summary=f'FedAvg with TFF\'s {_OPTIMIZER_NAMES[algorithm]} server'
      ' optimizer, paper defaults',
      build=build,
      hyperparameters=(*hp.CLIENT,
                       *(_HYPERPARAMETERS[arg] for arg in used)),
      defaults={_HYPERPARAMETERS[arg].name: value
                for arg, value in used.items()},
      dp_capable=True,
      update_attacks=True,
      comparison_client_learning_rate=PAPER_CLIENT_LEARNING_RATES[algorithm],
  )


_OPTIMIZER_NAMES = {'fedavgm': '`build_sgdm`', 'fedadam': '`build_adam`',
                    'fedyogi': '`build_yogi`', 'fedadagrad': '`build_adagrad`'}
SPECS = tuple(_spec(a) for a in ('fedavgm', 'fedadam', 'fedyogi',
                                 'fedadagrad'))
