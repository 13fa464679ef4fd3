"""Epsilon of the run's accountant against independent dp_accounting
computations, its monotonicity, and the calibration CLI."""

import math

import dp_accounting
import numpy as np
import pytest

from tff_research.cli import calibrate
from tff_research.privacy import accounting

DELTA = 1e-5


def _poisson(q):
  return accounting.Sampling('poisson', 1000, probability=q)


def _independent_epsilon(event, rounds, delta, relation=None, pld=False):
  relation = relation or dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
  if pld:
    acc = dp_accounting.pld.PLDAccountant(neighboring_relation=relation)
  else:
    acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
  return acc.compose(
      dp_accounting.SelfComposedDpEvent(event, rounds)).get_epsilon(delta)


@pytest.mark.parametrize('q,sigma,rounds,delta', [
    (0.01, 1.1, 100, 1e-5),
    (0.05, 1.5, 30, 1e-5),
    (0.2, 2.0, 10, 1e-6),
    (1.0, 3.0, 5, 1e-3),
])
def test_poisson_server_epsilon_equals_dp_accounting(q, sigma, rounds, delta):
  acc = accounting.PrivacyAccountant(
      mode='server', noise_multiplier=sigma, delta=delta, sampling=_poisson(q))
  event = dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(sigma))
  assert acc.epsilon(rounds) == pytest.approx(
      _independent_epsilon(event, rounds, delta), rel=1e-9)
  assert acc.epsilon_pld(rounds) == pytest.approx(
      _independent_epsilon(event, rounds, delta, pld=True), rel=1e-6)
  # PLD is the tighter bound of the two.
  assert acc.epsilon_pld(rounds) <= acc.epsilon(rounds) * (1 + 1e-6)


def test_incremental_pld_equals_a_fresh_composition():
  acc = accounting.PrivacyAccountant(
      mode='server', noise_multiplier=2.0, delta=DELTA, sampling=_poisson(0.05))
  incremental = [acc.epsilon_pld(t) for t in (5, 12, 20)]
  fresh = [accounting.PrivacyAccountant(
      mode='server', noise_multiplier=2.0, delta=DELTA,
      sampling=_poisson(0.05)).epsilon_pld(t) for t in (5, 12, 20)]
  np.testing.assert_allclose(incremental, fresh, rtol=1e-6)


@pytest.mark.parametrize('n,k,sigma,rounds', [(100, 10, 1.0, 20),
                                              (50, 25, 2.0, 5)])
def test_fixed_size_server_epsilon_is_sampling_without_replacement(
    n, k, sigma, rounds):
  # Replace-one adjacency: one client swapped moves the clipped sum by up to
  # 2C, so the Gaussian's multiplier relative to that sensitivity is z / 2.
  sampling = accounting.Sampling('fixed', n, clients_per_round=k)
  acc = accounting.PrivacyAccountant(
      mode='server', noise_multiplier=sigma, delta=DELTA, sampling=sampling)
  event = dp_accounting.SampledWithoutReplacementDpEvent(
      n, k, dp_accounting.GaussianDpEvent(sigma / 2))
  assert acc.epsilon(rounds) == pytest.approx(_independent_epsilon(
      event, rounds, DELTA, dp_accounting.NeighboringRelation.REPLACE_ONE),
                                              rel=1e-9)
  assert acc.epsilon_pld(rounds) is None  # PLD has no such event
  assert not acc.pld_applies


@pytest.mark.parametrize('sigma,participations', [(2.0, 1), (4.0, 10),
                                                  (10.0, 50)])
def test_client_level_epsilon_is_local_gaussian_composition(
    sigma, participations):
  acc = accounting.PrivacyAccountant(mode='client', noise_multiplier=sigma,
                                     delta=DELTA)
  event = dp_accounting.GaussianDpEvent(sigma / 2)
  assert acc.epsilon(participations) == pytest.approx(
      _independent_epsilon(event, participations, DELTA), rel=1e-9)
  assert acc.epsilon_pld(participations) == pytest.approx(
      _independent_epsilon(event, participations, DELTA, pld=True), rel=1e-6)


def test_single_gaussian_local_epsilon_matches_the_classic_bound_order():
  # Hand check: one Gaussian release with multiplier s = 10 (sigma 20) has
  # epsilon <= sqrt(2 ln(1.25 / delta)) / s (Dwork & Roth Thm A.1, valid for
  # epsilon < 1), and the RDP bound is at most that.
  acc = accounting.PrivacyAccountant(mode='client', noise_multiplier=20.0,
                                     delta=DELTA)
  classic = math.sqrt(2 * math.log(1.25 / DELTA)) / 10
  assert 0.2 < acc.epsilon(1) <= classic


def test_epsilon_grows_with_rounds_and_q_and_falls_with_sigma():
  def eps(q=0.05, sigma=1.0, rounds=50):
    return accounting.PrivacyAccountant(
        mode='server', noise_multiplier=sigma, delta=DELTA,
        sampling=_poisson(q)).epsilon(rounds)
  by_rounds = [eps(rounds=t) for t in (1, 10, 50, 200)]
  by_q = [eps(q=q) for q in (0.01, 0.05, 0.2, 1.0)]
  by_sigma = [eps(sigma=s) for s in (0.5, 1.0, 2.0, 4.0)]
  assert np.all(np.diff(by_rounds) > 0)
  assert np.all(np.diff(by_q) > 0)
  assert np.all(np.diff(by_sigma) < 0)


def test_no_noise_is_no_privacy():
  for mode, sampling in [('server', _poisson(0.1)),
                         ('server', accounting.Sampling('fixed', 10, 3)),
                         ('client', None)]:
    acc = accounting.PrivacyAccountant(mode=mode, noise_multiplier=0.0,
                                       delta=DELTA, sampling=sampling)
    assert acc.epsilon(0) == 0.0
    assert acc.epsilon(1) == math.inf
    assert acc.epsilon(7) == math.inf
    if acc.pld_applies:
      assert acc.epsilon_pld(1) == math.inf


def test_max_count_is_the_last_count_within_budget():
  acc = accounting.PrivacyAccountant(
      mode='server', noise_multiplier=1.0, delta=DELTA, sampling=_poisson(0.1))
  eps = [acc.epsilon(t) for t in range(0, 61)]
  for target in (0.5, 2.0, 3.3, 100.0):
    brute = max(t for t in range(0, 61) if eps[t] <= target)
    assert acc.max_count(target, 60) == brute


def test_bad_arguments():
  with pytest.raises(ValueError, match=r'delta=0.0 must be in \(0, 1\)'):
    accounting.PrivacyAccountant(mode='client', noise_multiplier=1.0,
                                 delta=0.0)
  with pytest.raises(ValueError, match="DP mode 'local' is not valid"):
    accounting.PrivacyAccountant(mode='local', noise_multiplier=1.0,
                                 delta=DELTA)
  with pytest.raises(ValueError, match=r'clients_per_round=0 must be in \[1,'
                     r' 10\]'):
    accounting.Sampling('fixed', 10, clients_per_round=0)
  with pytest.raises(ValueError, match=r'probability 1.5 must be in \(0, 1\]'):
    accounting.Sampling('poisson', 10, probability=1.5)


@pytest.mark.parametrize('mode,sampling,target,count', [
    ('client', None, 5.0, 10),
    ('server', accounting.Sampling('poisson', 1, probability=0.01), 2.0, 100),
])
def test_calibrated_noise_multiplier_is_the_smallest_that_meets_the_budget(
    mode, sampling, target, count):
  tol = 1e-4
  z = accounting.calibrate_noise_multiplier(
      target_epsilon=target, count=count, mode=mode, delta=DELTA,
      sampling=sampling, tol=tol)

  def eps(z):
    return accounting.PrivacyAccountant(
        mode=mode, noise_multiplier=z, delta=DELTA,
        sampling=sampling).epsilon(count)
  assert eps(z) <= target
  assert eps(z - 2 * tol) > target


def test_calibrate_cli_prints_the_flag_and_rejects_bad_flags(capsys):
  assert calibrate.main(['calibrate', '--target_epsilon=4', '--rounds=20',
                         '--dp=client']) == 0
  out = capsys.readouterr().out
  assert out.startswith('--dp_noise_multiplier=')
  z = float(out.split()[0].split('=')[1])
  eps = accounting.PrivacyAccountant(mode='client', noise_multiplier=z,
                                     delta=DELTA).epsilon(20)
  assert 3.99 < eps <= 4.0
  for argv, message in [
      (['--rounds=20'], '--target_epsilon=None is not valid'),
      (['--target_epsilon=1', '--rounds=0'], '--rounds=0 is not valid'),
      (['--target_epsilon=1', '--rounds=5', '--sampling=poisson'],
       '--sampling=poisson needs --client_fraction'),
      (['--target_epsilon=1', '--rounds=5', '--clients_per_round=3'],
       '--num_clients=None is not valid'),
      (['--target_epsilon=1', '--rounds=5', '--num_clients=9',
        '--clients_per_round=3', '--accountant=pld'],
       '--accountant=pld does not handle --sampling=fixed'),
      (['--target_epsilon=1', '--rounds=5', '--dp=client',
        '--client_fraction=0.1'], '--client_fraction does not apply to'),
      (['--target_epsilon=1', '--rounds=5', '--bogus'],
       "Unknown command line flag 'bogus'"),
  ]:
    for name in calibrate.FLAGS:
      calibrate.FLAGS[name].present = 0
    calibrate.FLAGS.unparse_flags()
    assert calibrate.main(['calibrate'] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err, err
    assert err.count('\n') == 1
