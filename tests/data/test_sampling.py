"""Tests for tff_research.data.sampling."""

import numpy as np
import pytest
from scipy import stats

from tff_research.data import sampling

IDS = [f'client_{i:04d}' for i in range(20)]


def test_same_seed_and_round_same_clients():
  a = sampling.sample_clients(IDS, 3, seed=1, clients_per_round=5)
  assert a == sampling.sample_clients(IDS, 3, seed=1, clients_per_round=5)
  assert len(a) == 5 and len(set(a)) == 5 and set(a) <= set(IDS)
  assert a == [c for c in IDS if c in a]  # order of client_ids preserved


def test_rounds_and_seeds_differ():
  rounds = [tuple(sampling.sample_clients(IDS, r, seed=1, clients_per_round=5)) for r in range(20)]
  # P(two given rounds coincide) = 1/C(20,5) = 6.5e-5; 20 distinct of 20 is
  # near-certain, so require at least 19 distinct.
  assert len(set(rounds)) >= 19
  assert sampling.sample_clients(IDS, 0, seed=1, clients_per_round=5) != \
      sampling.sample_clients(IDS, 0, seed=2, clients_per_round=5)


def test_selection_counts_are_uniform_chi_square():
  # R rounds of k of n: each client's count ~ Binomial(R, k/n), the counts
  # summing to R k. For sampling without replacement,
  # sum (O-E)^2 / (E (1 - k/n)) ~ chi2(n - 1) asymptotically. False-alarm
  # rate 1e-3 (deterministic with the fixed seed).
  n, k, rounds = len(IDS), 5, 2000
  counts = dict.fromkeys(IDS, 0)
  for r in range(rounds):
    for c in sampling.sample_clients(IDS, r, seed=123, clients_per_round=k):
      counts[c] += 1
  obs = np.array(list(counts.values()), float)
  expected = rounds * k / n
  stat = ((obs - expected) ** 2).sum() / (expected * (1 - k / n))
  assert stat < stats.chi2.ppf(1 - 1e-3, n - 1), stat
  assert obs.sum() == rounds * k


def test_round_rng_streams():
  a = sampling.round_rng(0, 5, 'dropout').integers(1 << 30, size=4)
  assert np.array_equal(a, sampling.round_rng(0, 5, 'dropout').integers(1 << 30, size=4))
  for other in [(0, 5, 'poisson'), (0, 6, 'dropout'), (1, 5, 'dropout')]:
    assert not np.array_equal(a, sampling.round_rng(*other).integers(1 << 30, size=4))
  with pytest.raises(ValueError, match='purpose must be a non-empty str'):
    sampling.round_rng(0, 0, '')
  with pytest.raises(ValueError, match='round_num must be a non-negative int, got -1'):
    sampling.round_rng(0, -1, 'x')


def test_resolve_clients_per_round():
  assert sampling.resolve_clients_per_round(100, clients_per_round=10) == 10
  assert sampling.resolve_clients_per_round(100, client_fraction=0.1) == 10
  assert sampling.resolve_clients_per_round(100, client_fraction=0.001) == 1
  assert sampling.resolve_clients_per_round(7, client_fraction=1.0) == 7
  assert sampling.resolve_clients_per_round(20, client_fraction=0.33) == 7  # round(6.6)
  for kwargs, match in [
      (dict(), 'set exactly one of clients_per_round and client_fraction'),
      (dict(clients_per_round=2, client_fraction=0.1), 'set exactly one'),
      (dict(clients_per_round=101), r'clients_per_round must be an int in \[1, 100\].*got 101'),
      (dict(clients_per_round=0), r'in \[1, 100\]'),
      (dict(client_fraction=0.0), r'client_fraction must be in \(0, 1\], got 0.0'),
      (dict(client_fraction=1.5), 'client_fraction must be in'),
  ]:
    with pytest.raises(ValueError, match=match):
      sampling.resolve_clients_per_round(100, **kwargs)


def test_sample_clients_errors():
  with pytest.raises(ValueError, match=r'clients_per_round must be an int in \[1, 20\]'):
    sampling.sample_clients(IDS, 0, seed=0, clients_per_round=21)
  with pytest.raises(ValueError, match='client_ids is empty'):
    sampling.sample_clients([], 0, seed=0, clients_per_round=1)


# --- stratified sampling (--malicious_per_round=exact) ---

MARKED = frozenset(IDS[::4])  # 5 of the 20


def test_stratified_rounds_have_exactly_the_marked_count_and_are_pure():
  for r in range(50):
    chosen = sampling.stratified_sample_clients(
        IDS, r, seed=3, clients_per_round=8, marked=MARKED, marked_per_round=2)
    assert len(chosen) == 8 and len(set(chosen)) == 8
    assert sum(c in MARKED for c in chosen) == 2
    assert chosen == [c for c in IDS if c in chosen]  # order of client_ids
    assert chosen == sampling.stratified_sample_clients(
        list(IDS), r, seed=3, clients_per_round=8, marked=set(MARKED),
        marked_per_round=2)
  assert sampling.stratified_sample_clients(
      IDS, 0, seed=3, clients_per_round=8, marked=MARKED,
      marked_per_round=2) != sampling.stratified_sample_clients(
          IDS, 0, seed=4, clients_per_round=8, marked=MARKED,
          marked_per_round=2)


def test_stratified_sampling_is_uniform_within_each_stratum_chi_square():
  # Within a stratum of n clients giving k a round, each count ~ R k / n;
  # the statistic of test_selection_counts_are_uniform_chi_square ~
  # chi2(n - 1). False-alarm rate 1e-3 per stratum (fixed seed).
  rounds, k, m = 2000, 8, 2
  counts = dict.fromkeys(IDS, 0)
  for r in range(rounds):
    for c in sampling.stratified_sample_clients(
        IDS, r, seed=11, clients_per_round=k, marked=MARKED,
        marked_per_round=m):
      counts[c] += 1
  for stratum, per_round in ((MARKED, m), (set(IDS) - MARKED, k - m)):
    obs = np.array([counts[c] for c in stratum], float)
    n = len(stratum)
    expected = rounds * per_round / n
    stat = ((obs - expected) ** 2).sum() / (expected * (1 - per_round / n))
    assert stat < stats.chi2.ppf(1 - 1e-3, n - 1), (n, stat)
    assert obs.sum() == rounds * per_round


@pytest.mark.parametrize('k, m, line', [
    (8, 6, 'cannot sample 6 of 5 marked and 2 of 15 other clients'),
    (18, 2, 'cannot sample 2 of 5 marked and 16 of 15 other clients'),
])
def test_stratified_sampling_refuses_a_stratum_too_small(k, m, line):
  with pytest.raises(sampling.SamplingError, match=line):
    sampling.stratified_sample_clients(IDS, 0, seed=0, clients_per_round=k,
                                       marked=MARKED, marked_per_round=m)
  with pytest.raises(sampling.SamplingError, match='not in client_ids'):
    sampling.stratified_sample_clients(IDS, 0, seed=0, clients_per_round=2,
                                       marked={'nobody'}, marked_per_round=1)
