"""What an aggregator declares about itself: `AggregatorSpec` and `Parameter`.

Every aggregator module exports its `SPEC` (or `SPECS`), and
`aggregators/registry.py` lists them: the names, parameters, defaults,
validation and the combination rules (example weighting, server DP, round
size) all come from the specs, so adding an aggregator is its module plus one
registry line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import math
from typing import Any, Optional

import tensorflow_federated as tff

# build(resolved parameters, capacity) -> the aggregation factory
Builder = Callable[[Mapping[str, Any], int], tff.aggregators.AggregationFactory]
# check(resolved parameters, clients per round or None) -> one-line error
Check = Callable[[Mapping[str, Any], Optional[int]], Optional[str]]


@dataclasses.dataclass(frozen=True)
class Parameter:
  """One parameter of an aggregator: flag name, type, default and range.

  The range is data (`low`, `high`, each inclusive unless `*_open`), so the
  docs and the error give it as an interval.

  Attributes:
    name: the name, also the flag's (`--name`) and the hparams.json key.
    type: float or int.
    default: the default; None means "derived each round", said in `help`.
    help: one sentence for `--helpfull`.
    low: the smallest valid value (None: unbounded).
    high: the largest valid value (None: unbounded).
    low_open: `low` itself is not valid.
    high_open: `high` itself is not valid.
  """

  name: str
  type: type
  default: Any
  help: str
  low: Optional[float] = None
  high: Optional[float] = None
  low_open: bool = False
  high_open: bool = False

  @property
  def range_text(self) -> str:
    """The valid range as a phrase: `in [0, 0.5)`, `>= 1` or `any`."""
    if self.low is not None and self.high is not None:
      return (f'in {"(" if self.low_open else "["}{self.low:g}, {self.high:g}'
              f'{")" if self.high_open else "]"}')
    if self.low is not None:
      return f'{">" if self.low_open else ">="} {self.low:g}'
    if self.high is not None:
      return f'{"<" if self.high_open else "<="} {self.high:g}'
    return 'any'

  def error(self, value: Any) -> Optional[str]:
    """One line naming `value` and the valid values, or None if valid."""
    if value is None and self.default is None:
      return None
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or (self.type is int and not isinstance(value, int)):
      article = 'an' if self.type is int else 'a'
      return (f'--{self.name}={value!r} is not valid: must be {article}'
              f' {self.type.__name__} {self.range_text}')
    below = self.low is not None and (
        value < self.low or (self.low_open and value == self.low))
    above = self.high is not None and (
        value > self.high or (self.high_open and value == self.high))
    if below or above or math.isnan(value):
      return f'--{self.name}={value} is not valid: must be {self.range_text}'
    return None

  def check(self, value: Any) -> Any:
    """`value` as `type` (None stays None); ValueError (one line) if not
    valid."""
    error = self.error(value)
    if error:
      raise ValueError(error)
    return value if value is None else self.type(value)


@dataclasses.dataclass(frozen=True)
class AggregatorSpec:
  """An aggregator's name, paper, builder, parameters and soundness.

  Attributes:
    name: the `--robust_aggregation` value.
    paper: the paper it implements ("Yin et al. 2018").
    summary: how it is built, one line (the docs table).
    build: `build(parameters, capacity) -> tff.aggregators factory`, with
      the resolved parameters and the most clients a round can have.
    parameters: the parameters it takes.
    weighted: accepts example weighting (`--weight_by_size`); a rule that
      selects or ranks whole updates has no place for a weight.
    server_dp: sound under server-level DP (`--dp=server`), whose noise is
      calibrated to the sensitivity of a sum of clipped updates.
    server_dp_reason: why not, for the error (when `server_dp` is False).
    collects_updates: the server holds every update of the round
      (`collection.CollectingFactory`): memory grows with clients x model.
    mergeable: runs split across TFF workers (merge concatenates or sums).
    check: combination rules beyond single ranges (Krum's round size).
  """

  name: str
  paper: str
  summary: str
  build: Builder
  parameters: tuple[Parameter, ...] = ()
  weighted: bool = False
  server_dp: bool = False
  server_dp_reason: str = ''
  collects_updates: bool = False
  mergeable: bool = True
  check: Optional[Check] = None
