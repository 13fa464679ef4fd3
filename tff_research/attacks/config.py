"""`AttackConfig`: the simulated attack of a run, one frozen value.

`--attack=none|label_flip|sign_flip|gaussian|backdoor` with
`--malicious_fraction`, `--malicious_per_round`, `--attack_scale` and
`--backdoor_target`. Ranges are
checked when the value is built (one line); `seed` is the run's (set by
`run.config.ExperimentConfig`, never a flag of its own), so the malicious
clients (`malicious(client_ids)`) and the Gaussian noise are pure in the
run's seed and survive a resume.

Where each attack acts:

* data (`poison`): `label_flip` and `backdoor` transform a malicious
  client's examples before preprocessing (the run's client data path);
* update (`update_fn`): `sign_flip`, `gaussian` and a boosted `backdoor`
  (`attack_scale` != 1) transform the update inside the client work
  (`client_work.with_update_attack`);
* evaluation: `backdoor` reports `attack/backdoor_success` on evaluation
  rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from tff_research.attacks import NAMES
from tff_research.attacks import backdoor
from tff_research.attacks import client_work
from tff_research.attacks import gaussian
from tff_research.attacks import label_flip
from tff_research.attacks import selection

# The fraction of a backdoor attacker's examples that carry the trigger
# (Bagdasaryan et al. 2020 mix poisoned and clean examples in every batch).
BACKDOOR_POISON_FRACTION = 0.5
FLAGS = ('attack', 'malicious_fraction', 'malicious_per_round',
         'attack_scale', 'backdoor_target')
# How many attackers a round has: 'sampled' = whatever uniform client
# sampling draws (hypergeometric); 'exact' = round(fraction x round size).
PER_ROUND = ('sampled', 'exact')
# flag -> (the attacks it applies to, as the refusal names them)
APPLIES = {
    'malicious_fraction': NAMES[1:],
    'malicious_per_round': NAMES[1:],
    'attack_scale': ('sign_flip', 'gaussian', 'backdoor'),
    'backdoor_target': ('backdoor',),
}


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """The attack: its kind, how many attackers, how hard they push.

  Attributes:
    kind: one of `attacks.NAMES`; 'none' = every client honest.
    malicious_fraction: the fraction of the training clients that attack,
      in [0, 1] (`selection.malicious_clients`).
    scale: sign_flip's s (-s u), gaussian's standard deviation, backdoor's
      model-replacement boost gamma (1 = no boost); > 0.
    backdoor_target: the class triggered examples are relabelled to.
    seed: the run's seed.
    per_round: 'sampled': a round samples its clients uniformly, so its
      number of attackers is hypergeometric; 'exact': every round samples
      exactly `round_count(k)` of the malicious clients and k - that many
      honest ones (`sampling.stratified_sample_clients`), the Byzantine
      model of f attackers among a round's n (Blanchard et al. 2017).
  """

  kind: str = 'none'
  malicious_fraction: float = 0.0
  scale: float = 1.0
  backdoor_target: int = 0
  seed: int = 0
  per_round: str = 'sampled'

  def __post_init__(self):
    _require(self.kind in NAMES, f'--attack={self.kind} is not valid; valid:'
             f' {", ".join(NAMES)}')
    selection.num_malicious(0, self.malicious_fraction)  # Its range check.
    _require(self.per_round in PER_ROUND,
             f'--malicious_per_round={self.per_round} is not valid; valid:'
             f' {", ".join(PER_ROUND)}')
    _require(self.scale > 0, f'--attack_scale={self.scale} is not valid:'
             ' must be > 0')
    _require(not isinstance(self.backdoor_target, bool)
             and self.backdoor_target >= 0,
             f'--backdoor_target={self.backdoor_target} is not valid: must be'
             ' a class index >= 0')

  @property
  def active(self) -> bool:
    return self.kind != 'none'

  @property
  def attacks_updates(self) -> bool:
    """Whether malicious clients change what they send (the client work
    must be wrapped)."""
    return self.kind in ('sign_flip', 'gaussian') or (
        self.kind == 'backdoor' and self.scale != 1.0)

  @property
  def exact_per_round(self) -> bool:
    return self.active and self.per_round == 'exact'

  def round_count(self, clients_per_round: int) -> int:
    """With 'exact': the attackers of every round of k clients,
    round(fraction x k) (halves up, as for the malicious set)."""
    return selection.num_malicious(clients_per_round, self.malicious_fraction)

  def sampling_refusal(self, sampling: str, dp: bool) -> Optional[str]:
    """Why 'exact' cannot run with this client sampling, or None."""
    if not self.exact_per_round:
      return None
    if sampling != 'fixed':
      return ('--malicious_per_round=exact needs --sampling=fixed: a Poisson'
              ' round has no fixed size to take a fraction of')
    if dp:
      return ('--malicious_per_round=exact does not apply with --dp: the'
              ' privacy accountant assumes every client is sampled with the'
              ' same probability, and stratified sampling gives attackers'
              ' and honest clients different ones')
    return None

  def check_classes(self, num_classes: int) -> None:
    """ValueError (one line) if the backdoor target is not a class."""
    if self.kind == 'backdoor':
      _require(self.backdoor_target < num_classes,
               f'--backdoor_target={self.backdoor_target} is not valid: must'
               f' be in [0, {num_classes}) (the dataset has {num_classes}'
               ' classes)')

  def malicious(self, client_ids: Sequence[str]) -> tuple[str, ...]:
    """The malicious training clients (none without an attack)."""
    if not self.active:
      return ()
    return selection.malicious_clients(client_ids, self.malicious_fraction,
                                       self.seed)

  def poison(self, num_classes: int
             ) -> Optional[Callable[[tf.data.Dataset], tf.data.Dataset]]:
    """A malicious client's data transform (elements before
    preprocessing), or None if the attack leaves data alone."""
    if self.kind == 'label_flip':
      return lambda ds: label_flip.flip_labels(ds, num_classes)
    if self.kind == 'backdoor':
      return lambda ds: backdoor.poison(ds, self.backdoor_target,
                                        BACKDOOR_POISON_FRACTION)
    return None

  def update_fn(self) -> Optional[client_work.UpdateFn]:
    """The update transform of a malicious client, or None."""
    if not self.attacks_updates:
      return None
    return client_work.update_attack(self.kind, self.scale)

  def client_flags(self, malicious, round_num: int,
                   client_ids: Sequence[str]) -> list[tuple[bool, np.ndarray]]:
    """Each client's (flag, Gaussian noise seed int64[2]) in round
    `round_num`; `malicious` is a set of ids."""
    return [(cid in malicious, gaussian.noise_seed(self.seed, round_num, cid))
            for cid in client_ids]

  def client_inputs(self, malicious, round_num: int,
                    client_ids: Sequence[str]) -> list[tf.data.Dataset]:
    """Each client's `client_work.attack_input` in round `round_num`
    (`client_flags`)."""
    return [client_work.attack_input(flag, seed) for flag, seed in
            self.client_flags(malicious, round_num, client_ids)]
