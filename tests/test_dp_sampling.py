"""Poisson client sampling in tff_research.data.sampling (what DP-FedAvg's
accounting assumes)."""

import numpy as np
import pytest
from scipy import stats

from tff_research.data import sampling

IDS = [f'client_{i:04d}' for i in range(20)]
# False-alarm rate of each statistical check (fixed seeds: deterministic).
ALPHA = 1e-3


def test_poisson_sampling_is_pure_and_keeps_order():
  a = sampling.poisson_sample_clients(IDS, 4, seed=3, probability=0.3)
  assert a == sampling.poisson_sample_clients(IDS, 4, seed=3, probability=0.3)
  assert a == [c for c in IDS if c in a]
  rounds = {tuple(sampling.poisson_sample_clients(IDS, r, seed=3,
                                                  probability=0.3))
            for r in range(30)}
  assert len(rounds) >= 29  # P(two rounds coincide) is ~1e-5 each
  # Its own stream: the fixed-size sampler's choices do not leak into it.
  assert sampling.sample_round(IDS, 4, seed=3, method='poisson',
                               probability=0.3) == a


def test_each_client_is_included_independently_with_probability_q():
  # R rounds: each client's count ~ Binomial(R, q), independent across
  # clients, so sum (O - Rq)^2 / (R q (1 - q)) ~ chi2(n) (approximately).
  q, rounds = 0.2, 2000
  counts = dict.fromkeys(IDS, 0)
  sizes = []
  for r in range(rounds):
    chosen = sampling.poisson_sample_clients(IDS, r, seed=7, probability=q)
    sizes.append(len(chosen))
    for c in chosen:
      counts[c] += 1
  obs = np.array(list(counts.values()), float)
  stat = ((obs - rounds * q) ** 2).sum() / (rounds * q * (1 - q))
  assert stat < stats.chi2.ppf(1 - ALPHA, len(IDS)), stat
  # Round sizes vary as Binomial(n, q): the variance is n q (1 - q), not 0.
  sizes = np.array(sizes)
  assert sizes.min() < 4 < sizes.max()
  assert stats.chi2.sf(sizes.var() * rounds / (20 * q * (1 - q)),
                       rounds - 1) > ALPHA / 2


def test_empty_rounds_happen_at_rate_one_minus_q_to_the_n():
  ids, q, rounds = IDS[:5], 0.2, 2000
  empty = sum(not sampling.poisson_sample_clients(ids, r, seed=1,
                                                  probability=q)
              for r in range(rounds))
  p_empty = (1 - q) ** 5  # 0.328
  assert stats.binomtest(empty, rounds, p_empty).pvalue > ALPHA


def test_sample_round_dispatches_and_validates():
  fixed = sampling.sample_round(IDS, 2, seed=0, method='fixed',
                                clients_per_round=4)
  assert fixed == sampling.sample_clients(IDS, 2, seed=0, clients_per_round=4)
  with pytest.raises(ValueError, match="sampling method 'bernoulli' is not"
                     ' valid; valid: fixed, poisson'):
    sampling.sample_round(IDS, 2, seed=0, method='bernoulli')
  with pytest.raises(ValueError, match=r'probability must be in \(0, 1\]'
                     r' \(the client fraction\), got 0.0'):
    sampling.poisson_sample_clients(IDS, 0, seed=0, probability=0.0)
  with pytest.raises(ValueError, match='client_ids is empty'):
    sampling.poisson_sample_clients([], 0, seed=0, probability=0.5)


def test_fixed_round_size_defaults_to_ten_capped_at_n():
  assert sampling.fixed_round_size(100) == 10
  assert sampling.fixed_round_size(6) == 6
  assert sampling.fixed_round_size(100, clients_per_round=7) == 7
  assert sampling.fixed_round_size(100, client_fraction=0.25) == 25
