"""What an algorithm declares about itself: `AlgorithmSpec` and `Hyperparameter`.

Every algorithm module exports one `SPEC`, and `algorithms/registry.py` lists
them. Everything outside the module is derived from the spec: the absl flags
of the binaries (`program/flags.py`), validation and defaults
(`registry.AlgorithmConfig`), the comparison binary's algorithm list and the
docs table (`registry.markdown_table`). So adding an algorithm is its module
plus one line in the registry, and each rule is checked in one place: a
hyperparameter's range in its `Hyperparameter`, a combination rule in its
spec's `check`.

A hyperparameter used by several algorithms (`server_learning_rate`, ...) is
one `Hyperparameter` object shared by their specs (`hyperparameters.py`); a
spec's `defaults` overrides its default for that algorithm (Reddi et al.'s
server learning rates, say).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any, Optional

# (config, model_fn, training client ids) -> base.FederatedAlgorithm
Builder = Callable[[Any, Callable[[], Any], Sequence[str]], Any]


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
  """One hyperparameter: its flag, type, default, valid range and help.

  Attributes:
    name: the name, also the flag's (`--name`) and the hparams.json key.
    type: float, int, str or bool.
    default: the default where no spec overrides it.
    help: one sentence for `--helpfull`.
    valid: predicate of a valid value (None: every value of `type`).
    valid_text: what `valid` accepts, for the error ("must be > 0").
    choices: the valid values of a str hyperparameter.
    applies: predicate on the other resolved hyperparameters: whether this
      one is used at all (`client_momentum` only with
      `client_optimizer=sgdm`); None = always, when the spec lists it.
    applies_text: the condition of `applies`, for the error.
  """

  name: str
  type: type
  default: Any
  help: str
  valid: Optional[Callable[[Any], bool]] = None
  valid_text: str = ''
  choices: tuple[Any, ...] = ()
  applies: Optional[Callable[[Mapping[str, Any]], bool]] = None
  applies_text: str = ''

  def check(self, value: Any) -> Any:
    """Returns `value` converted to `type`; ValueError (one line) if invalid."""
    if self.choices and value not in self.choices:
      raise ValueError(
          f'--{self.name}={value!r} is not valid; valid:'
          f' {", ".join(map(str, self.choices))}'
      )
    if self.type is float and isinstance(value, int) and not isinstance(
        value, bool):
      value = float(value)
    if not isinstance(value, self.type) or (
        self.type is int and isinstance(value, bool)):
      raise ValueError(
          f'--{self.name}={value!r} is not valid: must be a'
          f' {self.type.__name__}'
      )
    if self.valid is not None and not self.valid(value):
      raise ValueError(f'--{self.name}={value} is not valid: {self.valid_text}')
    return value


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
  """Everything the rest of the pipeline may know about an algorithm.

  Attributes:
    name: the `--algorithm` value.
    paper: the paper it implements ("McMahan et al. 2017").
    summary: how it is built, one line (the docs table).
    build: `build(config, model_fn, client_ids) -> base.FederatedAlgorithm`
      with `config` a `registry.AlgorithmConfig` (validated) and
      `client_ids` every training client in a fixed order.
    hyperparameters: the hyperparameters it uses.
    defaults: name -> this algorithm's default, overriding the shared one.
    check: combination rules beyond single ranges; raises ValueError (one
      line). Called with the resolved config.
    fixed_training: training settings the algorithm admits only one value
      of (FedSGD: `client_epochs=1`), name -> (value, why).
    per_client_state: keeps state per client (SCAFFOLD's control variates):
      needs the training client ids, and `build` takes a fourth argument,
      the `client_state.Tables` its rows live in.
    dp_capable: DP can replace its model aggregator (`--dp`).
    update_attacks: its client work can be wrapped by an update attack
      (`--attack=sign_flip|gaussian` or a boosted backdoor:
      `attacks.client_work.with_update_attack`).
    clusterable: clustered FL can run it per cluster (`--clustering`).
    distributed: its rounds are mergeable (may run on remote workers).
    comparison_client_learning_rate: the client learning rate the
      comparison study uses for it (None: the shared default or unused).
    docs: where it is documented.
  """

  name: str
  paper: str
  summary: str
  build: Builder
  hyperparameters: tuple[Hyperparameter, ...] = ()
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  check: Optional[Callable[[Any], None]] = None
  fixed_training: Mapping[str, tuple[Any, str]] = dataclasses.field(
      default_factory=dict)
  per_client_state: bool = False
  dp_capable: bool = False
  update_attacks: bool = False
  clusterable: bool = False
  distributed: bool = True
  comparison_client_learning_rate: Optional[float] = None
  docs: str = 'docs/algorithms.md'

  def uses(self, name: str) -> bool:
    return any(h.name == name for h in self.hyperparameters)

  def default(self, hyperparameter: Hyperparameter) -> Any:
    return self.defaults.get(hyperparameter.name, hyperparameter.default)
