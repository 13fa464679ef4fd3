"""The clients of each round: selected, and those that report back.

Both are pure functions of (seed, round) (`data.sampling`), so a resumed run
samples exactly what the uninterrupted run would have. Under
`--malicious_per_round=exact` a round samples a fixed number of the run's
malicious clients and the rest from the honest ones
(`sampling.stratified_sample_clients`).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Optional

from tff_research.attacks import config as attack_config
from tff_research.data import sampling
from tff_research.run import config as config_lib


@dataclasses.dataclass(frozen=True)
class ClientSampler:
  """Samples a round's cohort from `client_ids`.

  Attributes:
    client_ids: the training clients, in a fixed order.
    seed: the run's seed.
    method: 'fixed' (exactly `clients_per_round`) or 'poisson' (each client
      with `probability`).
    clients_per_round: with 'fixed'.
    probability: with 'poisson'.
    dropout_rate: probability that a selected client does not report.
    malicious: with `malicious_per_round`, the malicious clients.
    malicious_per_round: how many of `malicious` every round samples
      (None: the round samples uniformly from all clients).
  """

  client_ids: tuple[str, ...]
  seed: int
  method: str = 'fixed'
  clients_per_round: Optional[int] = None
  probability: Optional[float] = None
  dropout_rate: float = 0.0
  malicious: frozenset[str] = frozenset()
  malicious_per_round: Optional[int] = None

  @classmethod
  def from_config(cls, client_ids: Sequence[str],
                  training: config_lib.TrainConfig, seed: int,
                  attack: Optional[attack_config.AttackConfig] = None):
    """The sampler of a run (`attack`: the run's, for
    `--malicious_per_round=exact`).

    Under 'exact' a round of k takes m = round(f k) of the M = round(f N)
    malicious clients: m <= M and k - m <= N - M for every k <= N, since
    x - round(f x) does not decrease in x for f <= 1.
    """
    cpr = None
    if training.sampling != 'poisson':
      cpr = sampling.fixed_round_size(
          len(client_ids), training.clients_per_round, training.client_fraction)
    malicious, per_round = frozenset(), None
    if attack is not None and attack.exact_per_round:
      malicious = frozenset(attack.malicious(client_ids))
      per_round = attack.round_count(cpr)
    return cls(tuple(client_ids), seed, training.sampling, cpr,
               training.client_fraction, training.dropout_rate, malicious,
               per_round)

  def sample(self, round_num: int) -> list[str]:
    """The clients selected for `round_num`."""
    if self.malicious_per_round is not None:
      return sampling.stratified_sample_clients(
          self.client_ids, round_num, seed=self.seed,
          clients_per_round=self.clients_per_round, marked=self.malicious,
          marked_per_round=self.malicious_per_round)
    return sampling.sample_round(
        self.client_ids, round_num, seed=self.seed, method=self.method,
        clients_per_round=self.clients_per_round,
        probability=self.probability)

  def reporting(self, selected: Sequence[str], round_num: int) -> list[str]:
    """The clients of `selected` that report in `round_num` (dropout)."""
    return sampling.reporting_clients(
        selected, round_num, seed=self.seed, dropout_rate=self.dropout_rate)
