"""Hyperparameters shared by several algorithms, and the client optimizer.

Each is declared once here; an algorithm's spec lists the ones it uses and
may override their default (`AlgorithmSpec.defaults`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow_federated as tff

from tff_research.algorithms.spec import Hyperparameter


def _positive(v):
  return v > 0


def _unit_interval(v):
  return 0 <= v < 1


CLIENT_OPTIMIZERS = ('sgd', 'sgdm', 'adam')

CLIENT_OPTIMIZER = Hyperparameter(
    'client_optimizer', str, 'sgd', 'Client optimizer.',
    choices=CLIENT_OPTIMIZERS)
CLIENT_LEARNING_RATE = Hyperparameter(
    'client_learning_rate', float, 0.1, 'Client learning rate (eta_l).',
    valid=_positive, valid_text='must be > 0')
CLIENT_MOMENTUM = Hyperparameter(
    'client_momentum', float, 0.9,
    'With --client_optimizer=sgdm: client momentum (default 0.9).',
    valid=_unit_interval, valid_text='must be in [0, 1)',
    applies=lambda h: h.get('client_optimizer') == 'sgdm',
    applies_text='--client_optimizer=sgdm')
SERVER_LEARNING_RATE = Hyperparameter(
    'server_learning_rate', float, 1.0,
    "Server learning rate (eta_g); 1.0 = plain model averaging. When not"
    " given, the algorithm's default (docs/algorithms.md).",
    valid=_positive, valid_text='must be > 0')

# The local optimizer of the FedAvg family.
CLIENT = (CLIENT_OPTIMIZER, CLIENT_LEARNING_RATE, CLIENT_MOMENTUM)


def build_client_optimizer(
    h: Mapping[str, Any]) -> tff.learning.optimizers.Optimizer:
  """The client optimizer of resolved hyperparameters `h`.

  TFF re-initializes it for every client and round, so Adam's moments and
  SGDM's velocity never carry over between rounds.
  """
  name, lr = h['client_optimizer'], h['client_learning_rate']
  if name == 'sgd':
    return tff.learning.optimizers.build_sgdm(learning_rate=lr)
  if name == 'sgdm':
    return tff.learning.optimizers.build_sgdm(
        learning_rate=lr, momentum=h['client_momentum'])
  return tff.learning.optimizers.build_adam(learning_rate=lr)


def server_sgd(h: Mapping[str, Any]) -> tff.learning.optimizers.Optimizer:
  return tff.learning.optimizers.build_sgdm(
      learning_rate=h['server_learning_rate'])
