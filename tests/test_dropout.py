"""Client dropout (--dropout_rate): the sampler's statistics and the loop."""

import csv

import numpy as np
import pytest
from scipy import stats

from tff_research.cli import flags
from tff_research.data import sampling
from tff_research.run import training
from tests import fl_testing

# Every statistical test here fails a correct implementation with probability
# ALPHA (its false-alarm rate).
ALPHA = 1e-3


def _binomial_gof_pvalue(counts, k, q):
  """Chi-square goodness of fit of `counts` (values in 0..k) to Binomial(k,
  q), with bins of expected count < 5 pooled into their neighbour."""
  observed = np.bincount(counts, minlength=k + 1).astype(float)
  expected = stats.binom.pmf(np.arange(k + 1), k, q) * len(counts)
  obs, exp, o, e = [], [], 0.0, 0.0
  for i in range(k + 1):
    o, e = o + observed[i], e + expected[i]
    if e >= 5:
      obs.append(o)
      exp.append(e)
      o = e = 0.0
  obs[-1] += o
  exp[-1] += e
  exp = np.asarray(exp) * sum(obs) / sum(exp)
  return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize('k,p', [(10, 0.3), (2, 0.9), (25, 0.5)])
def test_reporting_count_is_binomial(k, p):
  rounds = 3000
  counts = np.array([
      sampling.report_mask(k, r, seed=7, dropout_rate=p).sum()
      for r in range(1, rounds + 1)])
  assert _binomial_gof_pvalue(counts, k, 1 - p) > ALPHA
  # The test has power: the same counts reject a dropout rate 0.05 off
  # (false alarm of a correct sampler is the ALPHA above, not this).
  assert _binomial_gof_pvalue(counts, k, 1 - p + 0.05) < ALPHA


def test_dropout_is_pure_in_seed_and_round_and_leaves_sampling_alone():
  selected = [f'c{i}' for i in range(8)]
  a = sampling.reporting_clients(selected, 5, seed=1, dropout_rate=0.5)
  assert a == sampling.reporting_clients(selected, 5, seed=1, dropout_rate=0.5)
  assert set(a) <= set(selected)
  masks = {tuple(sampling.report_mask(8, r, seed=1, dropout_rate=0.5))
           for r in range(1, 30)}
  assert len(masks) > 20  # Rounds differ.
  assert sampling.reporting_clients(selected, 5, seed=1,
                                    dropout_rate=0.0) == selected
  # Dropout has its own stream: client sampling is the same with or without.
  ids = [f'c{i}' for i in range(20)]
  before = sampling.sample_clients(ids, 3, seed=1, clients_per_round=5)
  sampling.report_mask(5, 3, seed=1, dropout_rate=0.5)
  assert sampling.sample_clients(ids, 3, seed=1, clients_per_round=5) == before


@pytest.mark.parametrize('rate', [-0.1, 0.95, True, '0.5'])
def test_bad_dropout_rate_is_rejected(rate):
  with pytest.raises(sampling.SamplingError, match='dropout_rate must be in'):
    sampling.report_mask(3, 1, seed=0, dropout_rate=rate)


def test_dropout_flag_is_validated():
  with pytest.raises(flags.FlagError,
                     match=r'--dropout_rate=0.95 is not valid: must be in'
                     r' \[0, 0.9\]'):
    flags.config_from_argv(['--experiment_name=x', '--dropout_rate=0.95'])


class _Recording:
  """Delegates to an algorithm and records which rounds called `next`."""

  def __init__(self, inner):
    self._inner = inner
    self.next_rounds = []

  def next(self, state, round_num, client_ids, client_datasets):
    self.next_rounds.append((round_num, list(client_ids)))
    return self._inner.next(state, round_num, client_ids, client_datasets)

  def __getattr__(self, name):
    return getattr(self._inner, name)


def test_dropout_0_9_two_clients_20_rounds(tff_worker, tmp_path, monkeypatch):
  built = []
  build = training.algorithms.build_algorithm

  def recording_build(*args, **kwargs):
    built.append(_Recording(build(*args, **kwargs)))
    return built[-1]

  monkeypatch.setattr(training.algorithms, 'build_algorithm',
                      recording_build)
  rows = fl_testing.run_experiment(
      dict(model='linear', num_clients=6, clients_per_round=2,
           dropout_rate=0.9, client_learning_rate=0.01, total_rounds=20,
           eval_every=20, rounds_per_checkpoint=20, batch_size=10,
           progress=False, seed=3), tmp_path, 'drop')
  assert [r['round'] for r in rows] == list(range(1, 21))
  with open(tmp_path / 'drop' / 'metrics.csv', newline='') as f:
    logged = list(csv.DictReader(f))
  reported = [int(r['participation_reported']) for r in logged]
  # The loop's reporting clients are exactly the sampler's.
  expected = [
      int(sampling.report_mask(2, r, seed=3, dropout_rate=0.9).sum())
      for r in range(1, 21)]
  assert reported == expected
  assert 0 in reported  # Seed 3 has rounds where everyone dropped ...
  assert any(reported)  # ... and rounds where someone reported.
  # The algorithm ran exactly on the rounds with reports: an all-dropped
  # round leaves the state (the model) as it was.
  assert [r for r, _ in built[0].next_rounds] == [
      r for r, n in zip(range(1, 21), reported) if n]
  assert all(len(ids) == n for (_, ids), n in zip(
      built[0].next_rounds, [n for n in reported if n]))
  for row, n in zip(logged, reported):
    assert int(row['participation_selected']) == 2
    assert float(row['participation_reported_percent']) == 100.0 * n / 2
    assert bool(row['train_loss']) == (n > 0)
    assert bool(row['client_loss_mean']) == (n > 0)
    # Dropped clients received the model but sent nothing back.
    assert float(row['communication_kb_down']) == pytest.approx(2 * 7850 * 4 / 1024)
    assert float(row['communication_kb_up']) == pytest.approx(n * 7850 * 4 / 1024)
  assert 0.0 <= float(logged[-1]['eval_accuracy']) <= 1.0
