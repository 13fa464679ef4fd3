"""Differentially private training of a FedAvg-family algorithm.

DP enters a `tff.learning` algorithm as its `model_aggregator`
(`tff_research.privacy`: server-level DP-FedAvg, McMahan et al. 2018, or
client-level local DP), so any algorithm built from TFF's composer (FedAvg,
FedProx, FedAvgM, FedAdam, ...) becomes private by swapping one component.
`PrivateAlgorithm` wraps such a `base.LearningProcessAlgorithm` and adds what
the loop needs around it:

* metrics group `robustness` each round: `excluded_clients`, the clients
  whose update was non-finite (as every algorithm reports it);
* metrics group `dp` each round: the aggregator's clipping statistics (clip,
  clipped_fraction, nonfinite_clients, noise_stddev, and with adaptive
  clipping next_clip / unclipped_fraction), `epsilon` at `delta` (RDP) and,
  and, on the loop's evaluation rounds and last round (`report`),
  `epsilon_pld`;
* the privacy budget: `plan_rounds` tells the loop the last round that stays
  within `target_epsilon`, so training stops before the round that would
  exceed it;
* empty rounds (Poisson sampling can draw no client): with server-level DP
  the round still runs, so the model receives the pure-noise update the
  mechanism prescribes (skipping it would reveal that nobody was sampled);
  with client-level DP nothing is released and the loop skips it.

Privacy state. Server-level epsilon is a function of the round number alone
(every round is the same sampled Gaussian mechanism, recorded in
hparams.json), so it is recomputed, never stored. Client-level epsilon is the
local guarantee of the most-participating client, so each client's number of
participations is kept in the checkpointed state, as a fixed-shape int32
array indexed by position in the training clients:

    state = {'process': <LearningAlgorithmState>, 'participation': int32[N]}
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from tff_research.algorithms import base
from tff_research.algorithms import client_metrics
from tff_research.aggregators import excluding_mean as robust_aggregation
from tff_research.attacks import client_work as attack_client_work
from tff_research.attacks import metrics as attack_metrics
from tff_research.privacy import dp_config

_CLIPPED = 'clipped_count'


class PrivateAlgorithm(base.FederatedAlgorithm):
  """A `LearningProcessAlgorithm` whose model aggregator is DP, with
  accounting (see the module docstring)."""

  def __init__(
      self,
      inner: base.LearningProcessAlgorithm,
      config: dp_config.DPConfig,
      client_ids: Sequence[str],
  ):
    if not isinstance(inner, base.LearningProcessAlgorithm):
      raise ValueError(
          f'DP needs a LearningProcess-based algorithm (its model_aggregator'
          f' becomes the DP aggregator), not {type(inner).__name__}'
      )
    self.inner = inner
    self.process = inner.process
    self.config = config
    self.accountant = config.accountant()
    self._index = {cid: i for i, cid in enumerate(client_ids)}
    self._num_clients = len(client_ids)
    # A round without clients still runs: server DP adds its noise.
    self.runs_empty_rounds = config.mode == 'server'

  def initialize(self):
    return {
        'process': self.inner.initialize(),
        'participation': np.zeros(self._num_clients, np.int32),
    }

  def _participation_after(self, participation, client_ids):
    counts = np.array(participation, np.int32, copy=True)
    for cid in client_ids:
      counts[self._index[cid]] += 1
    return counts

  def _spent(self, round_num: int, participation) -> int:
    """Compositions the accountant must count: rounds (server), or the
    participations of the most-participating client (client)."""
    if self.config.mode == 'server':
      return round_num
    return int(np.max(participation, initial=0))

  def next(self, state, round_num, client_ids, client_datasets):
    output = self.process.next(state['process'], self.inner.client_data(
        round_num, client_ids, client_datasets))
    participation = self._participation_after(
        state['participation'], client_ids
    )
    work = collections.OrderedDict(output.metrics['client_work'])
    attack = work.pop(attack_client_work.ATTACK, None)
    metrics = client_metrics.unpack(work)
    aggregator = output.metrics['aggregator']
    bound = None
    if _CLIPPED in aggregator:
      # --robust_aggregation=norm_bound: TFF's clipping_factory in front of
      # DP, its inner (DP) measurements under `clipping`.
      bound, aggregator = aggregator, aggregator['clipping']
    dp = collections.OrderedDict(
        (k, np.asarray(v)) for k, v in aggregator.items()
    )
    # Clients whose update was non-finite (zeroed): the metric every
    # algorithm reports (robust_aggregation), not a DP statistic; the
    # malicious clients under an attack (no kept positions under DP).
    metrics.update(attack_metrics.round_groups(
        {robust_aggregation.MEASUREMENT: dp.pop(
            robust_aggregation.MEASUREMENT)}, len(client_ids),
        None if attack is None else attack['malicious_mask']))
    if bound is not None:
      metrics[attack_metrics.ROBUSTNESS][attack_metrics.CLIPPED] = float(
          np.asarray(bound[_CLIPPED]))
    spent = self._spent(round_num, participation)
    dp['epsilon'] = self.accountant.epsilon(spent)
    if self.config.mode == 'client':
      dp['max_participations'] = spent
    metrics['dp'] = dp
    return {'process': output.state, 'participation': participation}, metrics

  def get_model_weights(self, state):
    return self.inner.get_model_weights(state['process'])

  def report(self, state, round_num):
    """PLD epsilon (tighter than RDP, seconds to compute) after `round_num`."""
    if not self.accountant.pld_applies:
      return {}
    spent = self._spent(round_num, state['participation'])
    return {'dp': {'epsilon_pld': self.accountant.epsilon_pld(spent)}}

  def check_sampling(
      self,
      method: str,
      clients_per_round: Optional[int],
      probability: Optional[float],
  ) -> None:
    """Raises ValueError unless the loop samples as the accountant assumes."""
    if self.config.mode != 'server':
      return  # The local guarantee does not depend on the sampling.
    assumed = self.accountant.sampling
    actual = (
        (method, probability) if method == 'poisson'
        else (method, clients_per_round)
    )
    expected = (
        (assumed.method, assumed.probability) if assumed.method == 'poisson'
        else (assumed.method, assumed.clients_per_round)
    )
    if actual != expected:
      raise ValueError(
          f'the training loop samples clients as {actual} but the privacy'
          f' accountant assumes {expected}; build both from the same flags'
      )

  def plan_rounds(
      self,
      state: Any,
      start_round: int,
      total_rounds: int,
      sampler: Any,
  ) -> tuple[int, Optional[str]]:
    """(last round to run, message if the budget stops training early).

    Rounds after `start_round` run while the epsilon they leave stays within
    `target_epsilon`. Server-level: the RDP epsilon after r rounds. Client
    level: the local epsilon of the most-participating client, replaying the
    (pure, seeded) client sampling `sampler.sample(r)` of the coming rounds.
    Raises ValueError if `sampler` does not sample as the accountant assumes.
    """
    self.check_sampling(sampler.method, sampler.clients_per_round,
                        sampler.probability)
    sample_round = sampler.sample
    target = self.config.target_epsilon
    final = total_rounds
    if target is not None:
      if self.config.mode == 'server':
        final = self.accountant.max_count(target, total_rounds)
      else:
        allowed = self.accountant.max_count(target, total_rounds)
        counts = np.asarray(state['participation'])
        final = start_round
        for r in range(start_round + 1, total_rounds + 1):
          counts = self._participation_after(counts, sample_round(r))
          if counts.max(initial=0) > allowed:
            break
          final = r
    if final >= total_rounds:
      return total_rounds, None
    if self.config.mode == 'server':
      would = self.accountant.epsilon(final + 1)
      what = f'{final + 1} rounds'
    else:
      counts = np.asarray(state['participation'])
      for r in range(start_round + 1, final + 2):
        counts = self._participation_after(counts, sample_round(r))
      would = self.accountant.epsilon(int(counts.max()))
      what = (
          f'its most-participating client at {int(counts.max())}'
          ' participations (local DP)'
      )
    return final, (
        f'privacy budget: stopping before round {final + 1} of {total_rounds}:'
        f' {what} would reach epsilon {would:.4g} >'
        f' --dp_target_epsilon={target:g} at delta {self.config.delta:g}'
        f' ({self.accountant.describe()})'
    )
