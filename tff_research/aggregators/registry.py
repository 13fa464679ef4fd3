"""The model aggregators (`SPECS`), their parameters, validation and builder.

Each aggregator module exports its `spec.AggregatorSpec`; the loop below
registers them. Adding an aggregator is its module plus one line there (or
`register(spec)`, as the tests do).

* `resolve(name, given)`: the aggregator's parameters with defaults, one
  line (ValueError) for an unknown name, a parameter it does not take or a
  value out of range;
* `validate(name, parameters, weighted=..., dp=..., clients_per_round=...)`:
  None, or one line naming the unsound combination: example weighting with a
  rule that takes none (Krum by size), a rule under server DP whose noise
  assumes a sum (a median), a round too small for Krum's f, plus every error
  of `resolve`;
* `build(name, parameters, capacity=...)`: the `tff.aggregators` factory.

Client-level DP (`dp='client'`) is sound with every rule: each client's
release is private on its own and any server rule is post-processing (the
wiring must then apply the rule to the noised updates).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import tensorflow_federated as tff

from tff_research.aggregators import bulyan
from tff_research.aggregators import collection
from tff_research.aggregators import krum
from tff_research.aggregators import mean
from tff_research.aggregators import median
from tff_research.aggregators import norm_bound
from tff_research.aggregators import spec as spec_lib
from tff_research.aggregators import trimmed_mean

SPECS: dict[str, spec_lib.AggregatorSpec] = {}
DP_MODES = ('none', 'server', 'client')


def all_parameters() -> dict[str, spec_lib.Parameter]:
  """Every parameter of every registered aggregator, by name."""
  return {p.name: p for s in SPECS.values() for p in s.parameters}


def register(spec: spec_lib.AggregatorSpec) -> spec_lib.AggregatorSpec:
  """Adds `spec`; a name or a parameter name declared twice is an error."""
  if spec.name in SPECS and SPECS[spec.name] is not spec:
    raise ValueError(f'aggregator {spec.name!r} is registered twice')
  for parameter in spec.parameters:
    known = all_parameters().get(parameter.name)
    if known is not None and known is not parameter:
      raise ValueError(
          f'parameter {parameter.name!r} of {spec.name!r} is declared twice:'
          ' share one Parameter object')
  SPECS[spec.name] = spec
  return spec


for _spec in (mean.SPEC, median.SPEC, trimmed_mean.SPEC, *krum.SPECS,
              bulyan.SPEC, norm_bound.SPEC):
  register(_spec)


def names() -> tuple[str, ...]:
  return tuple(SPECS)


def get_spec(name: str) -> spec_lib.AggregatorSpec:
  try:
    return SPECS[name]
  except KeyError:
    raise ValueError(f'--robust_aggregation={name} is not valid; valid:'
                     f' {", ".join(SPECS)}') from None


def _users(parameter: str) -> str:
  return '|'.join(s.name for s in SPECS.values()
                  if any(p.name == parameter for p in s.parameters))


def resolve(name: str, given: Optional[Mapping[str, Any]] = None
            ) -> dict[str, Any]:
  """Every parameter of `name`: the given values (checked) or defaults.

  A given value of None is "not given". Raises ValueError (one line).
  """
  spec = get_spec(name)
  given = {k: v for k, v in (given or {}).items() if v is not None}
  own = {p.name: p for p in spec.parameters}
  for key, value in given.items():
    if key not in own:
      if key not in all_parameters():
        raise ValueError(
            f'{key!r} is not a parameter of any aggregator; known:'
            f' {", ".join(sorted(all_parameters()))}')
      raise ValueError(
          f'--{key}={value} does not apply to --robust_aggregation={name};'
          f' it applies to --robust_aggregation={_users(key)}')
  return {p.name: p.check(given.get(p.name, p.default))
          for p in spec.parameters}


def validate(name: str, parameters: Optional[Mapping[str, Any]] = None, *,
             weighted: bool, dp: Optional[str] = None,
             clients_per_round: Optional[int] = None) -> Optional[str]:
  """None if `name` with these settings is sound, else a one-line error.

  Args:
    name: the `--robust_aggregation` value.
    parameters: its given parameters (`resolve` fills the defaults).
    weighted: client updates are weighted by example counts.
    dp: None (or 'none'), 'server' or 'client'.
    clients_per_round: the configured round size, when fixed (Krum's bound
      2f + 2 < n is checked only then).
  """
  try:
    spec = get_spec(name)
    values = resolve(name, parameters)
  except ValueError as e:
    return str(e)
  if dp is not None and dp not in DP_MODES:
    return f'--dp={dp} is not valid; valid: {", ".join(DP_MODES)}'
  if weighted and not spec.weighted:
    return (f'--robust_aggregation={name} is not valid with --weight_by_size:'
            ' it selects or ranks whole updates and takes no example weight;'
            ' add --noweight_by_size')
  if dp == 'server' and not spec.server_dp:
    sound = ', '.join(s.name for s in SPECS.values() if s.server_dp)
    return (f'--robust_aggregation={name} is not valid with --dp=server:'
            ' server DP calibrates its noise to the sensitivity of a sum of'
            f' clipped updates, and {spec.server_dp_reason}; valid with'
            f' --dp=server: {sound}')
  if spec.check is not None:
    return spec.check(values, clients_per_round)
  return None


def build(name: str, parameters: Optional[Mapping[str, Any]] = None, *,
          capacity: int = collection.DEFAULT_CAPACITY
          ) -> tff.aggregators.AggregationFactory:
  """The factory of `name` with `parameters` (defaults filled).

  Args:
    name: a registered aggregator.
    parameters: its parameters; ValueError (one line) if invalid.
    capacity: the most clients a round can have (the length of
      `kept_share`): the number of training clients bounds every round.
  """
  spec = get_spec(name)
  return spec.build(resolve(name, parameters), capacity)


def markdown_table() -> str:
  """A docs table of the registered aggregators, from their specs."""
  def mark(flag):
    return 'yes' if flag else '-'
  lines = ['| `--robust_aggregation` | paper | how | parameters |'
           ' `--weight_by_size` | `--dp=server` | collects updates |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  for s in SPECS.values():
    parameters = ', '.join(
        f'`--{p.name}` {p.range_text}'
        + ('' if p.default is None else f' (default {p.default})')
        for p in s.parameters) or '-'
    lines.append(f'| `{s.name}` | {s.paper} | {s.summary} | {parameters} |'
                 f' {mark(s.weighted)} | {mark(s.server_dp)} |'
                 f' {mark(s.collects_updates)} |')
  return '\n'.join(lines)
