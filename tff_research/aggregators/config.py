"""`AggregationConfig`: the configured robust rule, one frozen value.

The aggregation axis of a run: `--robust_aggregation` and the parameters of
its rule (`--trim_fraction`, `--byzantine_clients`, `--multi_krum_m`,
`--norm_bound`), resolved against the registered specs
(`registry.resolve`) when the value is built, so an invalid name or a
parameter the rule does not take fails there with one line. The
combinations with the rest of the run (example weighting, DP, round size)
are `registry.validate`'s, called by whoever holds those values
(`algorithms.AlgorithmConfig`, `run.config.ExperimentConfig`).

`compose(dp_factory, capacity)` is the model aggregator of a run: the
robust rule, then DP (see its docstring).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any, Optional

import tensorflow_federated as tff

from tff_research.aggregators import collection
from tff_research.aggregators import registry

FLAG = 'robust_aggregation'
DEFAULT = 'mean'
COMPOSES_WITH_DP = ('mean', 'norm_bound')
_DP_REFUSAL = (
    '--robust_aggregation={name} is not valid with --dp={dp}: the DP'
    ' aggregator clips, noises and sums the updates inside its own process,'
    ' so only a sum-based rule composes with it; valid with --dp: '
    + '|'.join(COMPOSES_WITH_DP))


@dataclasses.dataclass(frozen=True, init=False)
class AggregationConfig:
  """A registered aggregator and its resolved parameters.

  Attributes:
    name: the `--robust_aggregation` value.
    parameters: ((name, value), ...) of every parameter the rule takes,
      defaults filled, sorted by name.
  """

  name: str
  parameters: tuple[tuple[str, Any], ...]

  def __init__(self, name: str = DEFAULT,
               parameters: Optional[Mapping[str, Any]] = None,
               lenient: bool = False):
    given = dict(parameters or {})
    if lenient:
      # A recorded run: values of parameters its rule does not take are
      # dropped (hparams.json records every parameter, None if unused).
      own = {p.name for p in registry.get_spec(name).parameters}
      given = {k: v for k, v in given.items() if k in own}
    values = registry.resolve(name, given)
    object.__setattr__(self, 'name', name)
    object.__setattr__(self, 'parameters', tuple(sorted(values.items())))

  @property
  def values(self) -> dict[str, Any]:
    return dict(self.parameters)

  @property
  def spec(self):
    return registry.get_spec(self.name)

  @property
  def is_mean(self) -> bool:
    return self.name == DEFAULT

  def refusal(self, *, weighted: bool, dp: Optional[str] = None,
              clients_per_round: Optional[int] = None) -> Optional[str]:
    """None, or the one-line refusal: `registry.validate`'s, then the
    composition with DP (`compose`)."""
    refusal = registry.validate(self.name, self.values, weighted=weighted,
                                dp=dp, clients_per_round=clients_per_round)
    if refusal is None and dp not in (None, 'none') and (
        self.name not in COMPOSES_WITH_DP):
      return _DP_REFUSAL.format(name=self.name, dp=dp)
    return refusal

  def factory(self, capacity: int = collection.DEFAULT_CAPACITY
              ) -> tff.aggregators.AggregationFactory:
    return registry.build(self.name, self.values, capacity=capacity)

  def compose(self, dp_factory=None,
              capacity: int = collection.DEFAULT_CAPACITY
              ) -> tff.aggregators.AggregationFactory:
    """The model aggregator: this rule, then `dp_factory` (None: no DP).

    Without DP it is the rule's factory (the mean is the non-finite-
    excluding mean, with the positions it kept). With DP:

    * `mean`: the DP factory alone (DP is a mean; it zeroes non-finite
      updates and counts them itself);
    * `norm_bound`: TFF's `clipping_factory(M, dp_factory)`, every update
      projected onto the ball of radius M before DP clips (to C) and
      noises; a sum of bounded updates, sound under either DP level;
    * any other rule: refused (ValueError). Under server DP the registry
      refuses it already; under client DP the rule would have to run on
      the clients' noised releases, which the client-DP factory sums
      inside its own process.
    """
    if dp_factory is None:
      return self.factory(capacity)
    if self.is_mean:
      return dp_factory
    if self.name == 'norm_bound':
      return tff.aggregators.clipping_factory(self.values['norm_bound'],
                                              dp_factory)
    raise ValueError(_DP_REFUSAL.format(name=self.name, dp='client'))


def parameter_names() -> tuple[str, ...]:
  """Every registered aggregator parameter (each is a flag)."""
  return tuple(registry.all_parameters())
