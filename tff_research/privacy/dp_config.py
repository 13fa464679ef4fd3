"""`DPConfig`: the DP mechanism of a run, its budget and the sampling it
assumes, and the `tff.aggregators` factory that implements it
(`dp_server`: central DP-FedAvg, McMahan et al. 2018; `dp_client`: local
DP)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow_federated as tff

from tff_research.data import sampling as sampling_lib
from tff_research.privacy import accounting
from tff_research.privacy import dp_client
from tff_research.privacy import dp_server


@dataclasses.dataclass(frozen=True)
class DPConfig:
  """The DP mechanism, its budget and the client sampling it assumes.

  Attributes:
    mode: 'server' (central DP-FedAvg) or 'client' (local DP).
    clip: L2 clip C (the initial clip with `adaptive_clipping`).
    noise_multiplier: z; noise std z * C (on the sum for server, per client
      for client).
    delta: the delta epsilon is reported at.
    target_epsilon: stop before the round that would exceed it; None = no
      budget.
    adaptive_clipping: adapt C to `target_quantile` of update norms
      (server only).
    target_quantile: gamma for adaptive clipping.
    sampling: 'fixed' or 'poisson' (what the training loop does).
    clients_per_round / client_fraction: as the training flags.
    seed: the run's seed (the server noise seed derives from it).
    num_clients: N, set by `algorithms.build_algorithm` from the training
      clients.
  """

  mode: str
  clip: float
  noise_multiplier: float
  delta: float = 1e-5
  target_epsilon: Optional[float] = None
  adaptive_clipping: bool = False
  target_quantile: float = 0.5
  sampling: str = 'fixed'
  clients_per_round: Optional[int] = None
  client_fraction: Optional[float] = None
  seed: int = 0
  num_clients: Optional[int] = None

  def __post_init__(self):
    if self.mode not in accounting.MODES:
      raise ValueError(
          f'--dp={self.mode!r} is not valid; valid: none,'
          f' {", ".join(accounting.MODES)}'
      )
    if self.clip is None or not self.clip > 0:
      raise ValueError(
          f'--dp_clip={self.clip} is not valid: --dp={self.mode} needs an L2'
          ' clip norm > 0')
    if self.noise_multiplier is None or not self.noise_multiplier >= 0:
      raise ValueError(
          f'--dp_noise_multiplier={self.noise_multiplier} is not valid:'
          f' --dp={self.mode} needs a noise multiplier >= 0')
    if not 0 < self.delta < 1:
      raise ValueError(f'--dp_delta={self.delta} is not valid: must be in (0, 1)')
    if self.target_epsilon is not None:
      if not self.target_epsilon > 0:
        raise ValueError(
            f'--dp_target_epsilon={self.target_epsilon} is not valid: must'
            ' be > 0')
      if self.noise_multiplier == 0:
        raise ValueError(
            f'--dp_target_epsilon={self.target_epsilon} cannot be met with'
            ' --dp_noise_multiplier=0 (epsilon is infinite); set a noise'
            ' multiplier > 0')
    if self.adaptive_clipping and self.mode != 'server':
      raise ValueError(
          '--dp_adaptive_clipping applies only to --dp=server (Andrew et al.'
          " estimate the quantile from the server's noised count)"
      )
    if not 0 < self.target_quantile < 1:
      raise ValueError(
          f'--dp_target_quantile={self.target_quantile} is not valid: must be'
          ' in (0, 1)'
      )

  def client_sampling(self) -> accounting.Sampling:
    """The sampling of the run's `num_clients` training clients."""
    if self.num_clients is None:
      raise ValueError('DPConfig.num_clients is not set')
    if self.sampling == 'poisson':
      return accounting.Sampling(
          'poisson', self.num_clients, probability=self.client_fraction
      )
    return accounting.Sampling(
        'fixed', self.num_clients,
        clients_per_round=sampling_lib.fixed_round_size(
            self.num_clients, self.clients_per_round, self.client_fraction
        ),
    )

  def accountant(self) -> accounting.PrivacyAccountant:
    return accounting.PrivacyAccountant(
        mode=self.mode,
        noise_multiplier=self.noise_multiplier,
        delta=self.delta,
        sampling=self.client_sampling() if self.mode == 'server' else None,
    )

  def model_aggregator(self) -> tff.aggregators.UnweightedAggregationFactory:
    """The DP aggregation factory (`dp_client`, `dp_server`)."""
    if self.mode == 'client':
      return dp_client.ClientDPFactory(
          noise_multiplier=self.noise_multiplier, clip=self.clip
      )
    return dp_server.ServerDPFactory(
        noise_multiplier=self.noise_multiplier,
        clip=self.clip,
        expected_clients_per_round=(
            self.client_sampling().expected_clients_per_round
        ),
        noise_seed=dp_server.noise_seed_from(self.seed),
        adaptive=self.adaptive_clipping,
        target_quantile=self.target_quantile,
    )
