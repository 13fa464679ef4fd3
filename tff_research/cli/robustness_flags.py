"""The robustness study's command line (`experiments/robustness_study.py`):
the base config of its train.py flags, and its grid.

The study sets `--robust_aggregation`, `--attack`, `--malicious_fraction`
and the weighting itself for every run; the rules' parameters
(`--trim_fraction`, ...) and the attack's settings (`--attack_scale`,
`--backdoor_target`, `--malicious_per_round`) are given once and reach
every run they apply to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from tff_research import attacks
from tff_research.aggregators import config as aggregation_config
from tff_research.aggregators import registry as aggregator_registry
from tff_research.cli import flags

DEFAULT_AGGREGATORS = ('mean', 'median', 'trimmed_mean', 'krum', 'multi_krum',
                       'bulyan', 'norm_bound')
SET_BY_STUDY = ('robust_aggregation', 'attack', 'malicious_fraction',
                'weight_by_size')
_ATTACK_SETTINGS = ('attack_scale', 'backdoor_target', 'malicious_per_round')


def base_config(given: Mapping[str, Any]):
  """(the config of `given` without the study's axes, the given rule
  parameters). Raises FlagError (one line)."""
  for name in SET_BY_STUDY:
    if name in given:
      raise flags.FlagError(
          f'--{name} is set by robustness_study.py for each run; use'
          ' --aggregators, --attacks and --malicious_fractions')
  parameters = {k: v for k, v in given.items()
                if k in aggregation_config.parameter_names()}
  settings = {k: v for k, v in given.items() if k in _ATTACK_SETTINGS}
  rest = {k: v for k, v in given.items()
          if k not in parameters and k not in settings}
  config = flags.build_config({**rest, 'weight_by_size': False})
  attack = dataclasses.replace(
      config.algorithm.attack,
      scale=float(settings.get('attack_scale', 1.0)),
      backdoor_target=int(settings.get('backdoor_target', 0)),
      per_round=str(settings.get('malicious_per_round', 'sampled')))
  return dataclasses.replace(
      config, algorithm=dataclasses.replace(config.algorithm,
                                            attack=attack)), parameters


def parse_grid(aggregators: Sequence[str], attack_names: Sequence[str],
               fractions: Sequence[str]):
  """(aggregators, attacks, fractions) of the study's list flags; one-line
  ValueError for a value that is not valid."""
  for name in aggregators:
    aggregator_registry.get_spec(name)
  for name in attack_names:
    if name not in attacks.NAMES:
      raise ValueError(f'--attacks={",".join(attack_names)} is not valid:'
                       f' {name!r} is none of {", ".join(attacks.NAMES)}')
  try:
    values = [float(f) for f in fractions]
  except ValueError:
    values = [-1.0]
  if not values or any(not 0 <= f <= 1 for f in values):
    raise ValueError(f'--malicious_fractions={",".join(fractions)} is not'
                     ' valid: give fractions in [0, 1]')
  return tuple(aggregators), tuple(attack_names), tuple(values)
