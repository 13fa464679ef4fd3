"""tff_research.studies.statistics against textbook values and scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from tff_research.studies import statistics

# Student (1908) / Cushny & Peebles: extra hours of sleep of 10 patients under
# two drugs (R's `sleep` data). The textbook paired t-test (R:
# t.test(extra ~ group, data = sleep, paired = TRUE)) gives t = -4.0621,
# df = 9, p = 0.002833, 95% CI of the mean difference [-2.4599, -0.7001].
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_paired_comparison_matches_the_textbook_sleep_data():
  cmp = statistics.paired_comparison(SLEEP_1, SLEEP_2)
  assert cmp.n == 10 and cmp.confidence == 0.95
  assert cmp.mean_difference == pytest.approx(-1.58)
  assert cmp.t_statistic == pytest.approx(-4.0621, abs=1e-4)
  assert cmp.p_value == pytest.approx(0.002833, abs=1e-6)
  assert cmp.low == pytest.approx(-2.4598858, abs=1e-6)
  assert cmp.high == pytest.approx(-0.7001142, abs=1e-6)
  assert cmp.half_width == pytest.approx((cmp.high - cmp.low) / 2)
  ref = stats.ttest_rel(SLEEP_1, SLEEP_2)
  assert cmp.t_statistic == pytest.approx(ref.statistic, rel=1e-12)
  assert cmp.p_value == pytest.approx(ref.pvalue, rel=1e-10)
  with pytest.raises(dataclasses_frozen_error()):
    cmp.n = 3  # frozen


def dataclasses_frozen_error():
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.FrozenInstanceError


def test_mean_ci_matches_scipy_t_interval():
  x = np.array(SLEEP_2)
  mean, low, high = statistics.mean_ci(x)
  ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(),
                         scale=stats.sem(x))
  assert mean == pytest.approx(2.33)
  assert (low, high) == pytest.approx(ref, rel=1e-12)
  # By hand: t_{0.975, 9} = 2.262157, s = 2.002249.
  h = 2.262157 * 2.002249 / math.sqrt(10)
  assert (low, high) == pytest.approx((2.33 - h, 2.33 + h), abs=1e-5)
  mean, low, high = statistics.mean_ci(x, confidence=0.9)
  assert (low, high) == pytest.approx(
      stats.t.interval(0.9, 9, loc=x.mean(), scale=stats.sem(x)), rel=1e-12)


def _check_against_scipy(a, b, confidence):
  a, b = np.asarray(a, float), np.asarray(b, float)
  cmp = statistics.paired_comparison(a, b, confidence)
  ref = stats.ttest_rel(a, b)
  d = a - b
  assert cmp.mean_difference == pytest.approx(d.mean(), rel=1e-12, abs=1e-12)
  if np.std(d, ddof=1) > 1e-9 * max(1.0, np.abs(d).max()):
    assert cmp.t_statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert cmp.p_value == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-12)
    lo, hi = stats.t.interval(confidence, len(d) - 1, loc=d.mean(),
                              scale=stats.sem(d))
    # Tolerance on the scale of the interval (low may be near 0; scipy takes
    # the lower quantile as ppf((1-c)/2), equal to -ppf((1+c)/2) to ~1e-9).
    tol = 1e-7 * (abs(d.mean()) + (hi - lo))
    assert (cmp.low, cmp.high) == pytest.approx((lo, hi), abs=tol)
    mean, low, high = statistics.mean_ci(d, confidence)
    assert (low, high) == pytest.approx((cmp.low, cmp.high), rel=1e-12,
                                        abs=1e-12)


def test_random_arrays_agree_with_scipy():
  # Seeded property check that needs no extra package (the hypothesis
  # version below explores more shapes when hypothesis is installed).
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(2, 40))
    a = rng.normal(rng.normal(), rng.uniform(0.01, 3), n)
    b = a + rng.normal(rng.normal(0, 0.5), rng.uniform(0.01, 2), n)
    _check_against_scipy(a, b, float(rng.uniform(0.5, 0.999)))


# scipy warns when the differences are nearly constant (hypothesis finds
# such arrays; the zero-variance test makes them): agreement is asserted.
@pytest.mark.filterwarnings('ignore:Precision loss occurred:RuntimeWarning')
def test_hypothesis_arrays_agree_with_scipy():
  hypothesis = pytest.importorskip(
      'hypothesis', reason='hypothesis is not installed (uv run --with'
      ' hypothesis pytest tests/test_statistics.py)')
  from hypothesis import strategies as st  # pylint: disable=g-import-not-at-top
  from hypothesis.extra import numpy as hnp  # pylint: disable=g-import-not-at-top

  finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False,
                     allow_subnormal=False, width=64)

  @hypothesis.given(
      st.integers(2, 30).flatmap(lambda n: st.tuples(
          hnp.arrays(np.float64, n, elements=finite),
          hnp.arrays(np.float64, n, elements=finite))),
      st.floats(0.5, 0.999))
  @hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
  def check(ab, confidence):
    _check_against_scipy(ab[0], ab[1], confidence)

  check()


# scipy warns when the differences are nearly constant (hypothesis finds
# such arrays; the zero-variance test makes them): agreement is asserted.
@pytest.mark.filterwarnings('ignore:Precision loss occurred:RuntimeWarning')
def test_one_seed_and_zero_variance():
  # n = 1: no variance estimate, so no interval and no test.
  mean, low, high = statistics.mean_ci([0.8])
  assert mean == 0.8 and math.isnan(low) and math.isnan(high)
  one = statistics.paired_comparison([0.8], [0.7])
  assert one.mean_difference == pytest.approx(0.1)
  assert all(math.isnan(x) for x in (one.low, one.high, one.t_statistic,
                                     one.p_value))
  assert one.n == 1
  # Zero variance: the interval is the point.
  assert statistics.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
  # Constant nonzero difference: as scipy, t = inf and p = 0.
  const = statistics.paired_comparison([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
  ref = stats.ttest_rel([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
  assert const.t_statistic == ref.statistic == math.inf
  assert const.p_value == ref.pvalue == 0.0
  assert (const.low, const.high) == (1.0, 1.0)
  neg = statistics.paired_comparison([1.0, 2.0], [2.0, 3.0])
  assert neg.t_statistic == -math.inf and neg.p_value == 0.0
  # Identical arrays: as scipy, t and p are NaN; the difference is 0.
  same = statistics.paired_comparison([0.1, 0.7], [0.1, 0.7])
  assert same.mean_difference == 0.0 and (same.low, same.high) == (0.0, 0.0)
  assert math.isnan(same.t_statistic) and math.isnan(same.p_value)


def test_bad_inputs_are_errors():
  with pytest.raises(ValueError, match='empty'):
    statistics.mean_ci([])
  with pytest.raises(ValueError, match='non-finite'):
    statistics.mean_ci([1.0, float('nan')])
  with pytest.raises(ValueError, match=r'confidence=1.0 is not valid'):
    statistics.mean_ci([1.0, 2.0], confidence=1.0)
  with pytest.raises(ValueError, match='equally many values'):
    statistics.paired_comparison([1.0, 2.0], [1.0])
  with pytest.raises(ValueError, match='one-dimensional'):
    statistics.mean_ci([[1.0, 2.0]])


def test_aggregate_markdown_rows_paired_and_holm_columns():
  results = {'fedavg': SLEEP_1, 'fedprox': SLEEP_2, 'single': [0.5]}
  per_seed = {a: {s: {'accuracy': v} for s, v in enumerate(vals)}
              for a, vals in results.items()}
  agg = statistics.aggregate_seeds(per_seed, ['accuracy'], baseline='fedavg')
  lines = statistics.aggregate_markdown(agg, digits=2).strip().split('\n')
  assert lines[:2] == ['### accuracy', '']
  # 'single' has one seed: its paired test has no p-value, so the family
  # Holm adjusts over is fedprox alone (m = 1).
  assert lines[2] == ('| algorithm | n | accuracy (mean ± 95% half-width) |'
                      ' 95% CI | Δ vs fedavg [95% CI] | p (paired t) |'
                      ' p (Holm, m=1) |')
  assert lines[3] == '|---|---|---|---|---|---|---|'
  mean1, low1, high1 = statistics.mean_ci(SLEEP_1)
  assert lines[4] == (f'| fedavg | 10 | {mean1:.2f} ± {(high1 - low1) / 2:.2f}'
                      f' | [{low1:.2f}, {high1:.2f}] | (baseline) |  |  |')
  # fedprox - fedavg = +1.58 [0.70, 2.46], p = 0.003 (the sleep data).
  assert lines[5] == ('| fedprox | 10 | 2.33 ± 1.43 | [0.90, 3.76] |'
                      ' +1.58 [0.70, 2.46] (n=10) | 0.003 | 0.003 |')
  assert lines[6] == ('| single | 1 | 0.50 ± n/a | [n/a, n/a] |'
                      ' -0.20 [n/a, n/a] (n=1) | n/a | n/a |')
  # A metric the baseline never has (epsilon without noise): no Δ columns.
  per_seed['fedavg'] = {s: {'accuracy': v, 'epsilon': None}
                        for s, v in enumerate(SLEEP_1)}
  per_seed['fedprox'] = {s: {'accuracy': v, 'epsilon': 4.0}
                         for s, v in enumerate(SLEEP_2)}
  agg = statistics.aggregate_seeds(per_seed, ['epsilon'], baseline='fedavg')
  lines = statistics.aggregate_markdown(agg).strip().split('\n')
  assert lines[2] == ('| algorithm | n | epsilon (mean ± 95% half-width) |'
                      ' 95% CI |')
  assert lines[4] == '| fedprox | 10 | 4.000 ± 0.000 | [4.000, 4.000] |'


def test_report_rounds_are_budget_fractions_every_curve_evaluated():
  # Evaluated at 5, 10, 15, 20 and every 10 after, to 200: the first
  # evaluated rounds >= 20, 50, 100, 150, 200.
  grid = [5, 10, 15] + list(range(20, 201, 10))
  curve = [(r, 0.5) for r in grid]
  assert statistics.report_rounds([curve, curve]) == (20, 50, 100, 150, 200)
  # A seed that stopped at round 60 bounds T: 0.1 * 60 -> 10, 15 -> 15,
  # 30, 45 -> 50, 60.
  short = [(r, 0.5) for r in grid if r <= 60]
  assert statistics.report_rounds([curve, short]) == (10, 15, 30, 50, 60)
  # Only rounds both evaluated count; fractions landing on one round merge.
  assert statistics.report_rounds([[(1, 0.1), (2, 0.2)], [(2, 0.3)]]) == (2,)
  assert statistics.report_rounds([[(1, 0.1)], [(2, 0.3)]]) == ()
  assert statistics.report_rounds([]) == ()


def test_holm_adjusted_matches_hand_values():
  # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, then
  # 0.04 * 1 = 0.04 < 0.06, so the step-down keeps 0.06.
  assert statistics.holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx(
      [0.03, 0.06, 0.06, 0.02])
  # NaN is not a test: m = 2.
  out = statistics.holm_adjusted([math.nan, 0.02, 0.5])
  assert math.isnan(out[0]) and out[1:] == pytest.approx([0.04, 0.5])
  assert statistics.holm_adjusted([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
  assert statistics.holm_adjusted([0.2]) == [0.2]  # m = 1: unchanged
  assert statistics.holm_adjusted([]) == []
  with pytest.raises(ValueError, match='p-values must be in'):
    statistics.holm_adjusted([0.5, 1.5])


def test_holm_keeps_the_family_wise_false_alarm_rate():
  """Four true null hypotheses (uniform p-values), 4,000 simulated families:
  raw p < 0.05 rejects something in about 1 - 0.95^4 = 18.5 % of them, Holm
  in at most 5 %. The test fails if Holm's count exceeds the 0.999 quantile
  of Binomial(4000, 0.05) (false alarm < 0.001), or if the raw count is
  below the 0.001 quantile of Binomial(4000, 0.185)."""
  rng = np.random.default_rng(0)
  p = rng.uniform(size=(4000, 4))
  holm = sum(min(statistics.holm_adjusted(row)) < 0.05 for row in p)
  raw = int(np.sum(p.min(axis=1) < 0.05))
  assert holm <= stats.binom.ppf(0.999, 4000, 0.05)
  assert raw >= stats.binom.ppf(0.001, 4000, 1 - 0.95**4)


def test_aggregate_seeds_holm_family_is_one_metric_against_the_baseline():
  rng = np.random.default_rng(1)
  base = rng.normal(0.8, 0.02, size=5)
  results = {'fedavg': base, 'a': base + 0.03 + rng.normal(0, 0.01, 5),
             'b': base + rng.normal(0, 0.01, 5),
             'c': base - 0.01 + rng.normal(0, 0.01, 5)}
  per_seed = {k: {s: {'acc': v[s], 'loss': -v[s]} for s in range(5)}
              for k, v in results.items()}
  agg = statistics.aggregate_seeds(per_seed, ['acc', 'loss'],
                                   baseline='fedavg')
  raw = [stats.ttest_rel(results[k], base).pvalue for k in 'abc']
  assert [agg.get(k, 'acc').paired.p_value for k in 'abc'] == pytest.approx(raw)
  assert [agg.get(k, 'acc').p_holm for k in 'abc'] == pytest.approx(
      statistics.holm_adjusted(raw))
  assert {agg.get(k, m).holm_m for k in 'abc' for m in ('acc', 'loss')} == {3}
  # The loss is a second family: the same three tests, adjusted on their own
  # (not over six).
  assert [agg.get(k, 'loss').p_holm for k in 'abc'] == pytest.approx(
      statistics.holm_adjusted(raw))
  assert math.isnan(agg.get('fedavg', 'acc').p_holm)
  saved = agg.to_json()['metrics']['acc']['a']['paired']
  assert saved['p_holm'] == pytest.approx(statistics.holm_adjusted(raw)[0])
  assert saved['holm_m'] == 3


def test_curve_band_aligns_rounds_across_seeds():
  seeds = [[(1, 0.1), (2, 0.5), (3, 0.7)],
           [(1, 0.3), (2, 0.7)],
           [(2, 0.6), (3, 0.9)]]
  rounds, mean, low, high, n = statistics.curve_band(seeds)
  assert rounds.tolist() == [1, 2, 3] and n.tolist() == [2, 3, 2]
  np.testing.assert_allclose(mean, [0.2, 0.6, 0.8])
  ref = stats.t.interval(0.95, 2, loc=0.6, scale=stats.sem([0.5, 0.7, 0.6]))
  np.testing.assert_allclose([low[1], high[1]], ref)
  _, _, low, _, _ = statistics.curve_band([[(5, 1.0)]])
  assert math.isnan(low[0])


def test_plot_curves_writes_a_nontrivial_png(tmp_path):
  rng = np.random.default_rng(0)
  rounds = np.arange(1, 41)
  curves = {
      name: [list(zip(rounds, top * (1 - np.exp(-rounds / 10))
                      + 0.02 * rng.standard_normal(40)))
             for _ in range(5)]
      for name, top in (('fedavg', 0.6), ('clustered', 0.9))}
  curves['one seed'] = [list(zip(rounds, np.full(40, 0.3)))]
  path = statistics.plot_curves(curves, str(tmp_path / 'curves.png'),
                                title='test')
  data = (tmp_path / 'curves.png').read_bytes()
  assert path == str(tmp_path / 'curves.png')
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  assert len(data) > 10_000
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  image = matplotlib.image.imread(str(tmp_path / 'curves.png'))
  assert image.shape[:2] == (480, 768)
  # Not blank: many distinct colours (lines, bands, text).
  colours = np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3),
                      axis=0)
  assert len(colours) > 50
  with pytest.raises(ValueError, match='at least one algorithm'):
    statistics.plot_curves({}, str(tmp_path / 'x.png'))


def test_plot_curves_draws_beside_an_algorithm_without_evaluations(tmp_path):
  # Every seed of 'diverged' stopped before its first evaluation.
  curves = {'mean': [[(5, 0.4), (10, 0.6)], [(5, 0.5), (10, 0.7)]],
            'diverged': [[], [], []]}
  statistics.plot_curves(curves, str(tmp_path / 'a.png'))
  alone = statistics.plot_curves({'diverged': [[]]}, str(tmp_path / 'b.png'))
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  drawn, empty = (matplotlib.image.imread(str(tmp_path / f))
                  for f in ('a.png', alone))
  # The curve is there beside the empty one, and only there.
  assert np.abs(drawn - empty).max() > 0.5


def test_parse_seeds_counts_lists_and_one_line_errors():
  assert statistics.parse_seeds('3') == (0, 1, 2)
  assert statistics.parse_seeds('2', base_seed=5) == (5, 6)
  assert statistics.parse_seeds('0,1,2') == (0, 1, 2)
  assert statistics.parse_seeds(' 7, 3 ', base_seed=9) == (7, 3)
  assert statistics.parse_seeds('4,') == (4,)
  for bad, why in (('0', 'give a count N >= 1'), ('a,b', 'give a count'),
                   ('-1,2', 'give a count'), ('x', 'give a count'),
                   ('1,1', 'names a seed twice')):
    with pytest.raises(ValueError, match=f'^--seeds={bad} is not valid: {why}'):
      statistics.parse_seeds(bad)
  assert statistics.seed_run_name('fedavg', 3) == 'fedavg_seed3'


def test_aggregate_seeds_on_fake_per_seed_results_matches_scipy():
  """Per-seed results of a made-up 4-seed study, no training: every cell is
  the textbook t interval and paired test of the values given."""
  acc = {'fedavg': [0.80, 0.82, 0.78, 0.84], 'fedprox': [0.83, 0.84, 0.80,
                                                         0.88]}
  rounds = {'fedavg': [10, None, 12, 8], 'fedprox': [8, 9, None, 6]}
  results = {a: {s: {'final_accuracy': acc[a][s], 'rounds': rounds[a][s]}
                 for s in range(4)} for a in acc}
  agg = statistics.aggregate_seeds(results, ['final_accuracy', 'rounds'],
                                   baseline='fedavg')
  assert agg.seeds == (0, 1, 2, 3) and agg.baseline == 'fedavg'
  base = agg.get('fedavg', 'final_accuracy')
  # mean 0.81, s = sqrt(0.002 / 3), t_{0.975,3} = 3.182446
  assert base.mean == pytest.approx(0.81)
  half = 3.182446305284263 * math.sqrt(0.002 / 3) / 2
  assert (base.low, base.high) == pytest.approx((0.81 - half, 0.81 + half))
  assert base.paired is None
  prox = agg.get('fedprox', 'final_accuracy')
  # d = 0.03, 0.02, 0.02, 0.04: dbar = 0.0275, s_d = 0.0095743.
  ref = stats.ttest_rel(acc['fedprox'], acc['fedavg'])
  assert prox.paired.mean_difference == pytest.approx(0.0275)
  assert prox.paired.t_statistic == pytest.approx(ref.statistic)
  assert prox.paired.t_statistic == pytest.approx(
      0.0275 / (np.std([0.03, 0.02, 0.02, 0.04], ddof=1) / 2))
  assert prox.paired.p_value == pytest.approx(ref.pvalue)
  # t = 0.0275 / (0.0095743 / 2) = 5.7446 on 3 df: p = 0.010477.
  assert prox.paired.t_statistic == pytest.approx(5.744563, abs=1e-6)
  assert prox.paired.p_value == pytest.approx(0.010477, abs=1e-6)
  # Missing values: fedavg has rounds at seeds 0, 2, 3; fedprox at 0, 1, 3;
  # the pair uses only seeds 0 and 3 (differences -2, -2).
  r = agg.get('fedprox', 'rounds')
  assert r.seeds == (0, 1, 3) and r.mean == pytest.approx(23 / 3)
  assert r.paired.n == 2 and r.paired.mean_difference == -2.0
  assert r.paired.p_value == 0.0  # constant difference, as ttest_rel
  table = statistics.aggregate_markdown(agg)
  lines = table.splitlines()
  assert '### final_accuracy' in lines
  assert lines[2] == ('| algorithm | n | final_accuracy (mean ± 95%'
                      ' half-width) | 95% CI | Δ vs fedavg [95% CI] |'
                      ' p (paired t) | p (Holm, m=1) |')
  assert lines[4] == (f'| fedavg | 4 | 0.810 ± {half:.3f} | [{0.81 - half:.3f},'
                      f' {0.81 + half:.3f}] | (baseline) |  |  |')
  # 0.8375 and 0.0275 are 0.83749.. and 0.02749.. in binary: 3 decimals
  # round them down.
  assert lines[5].startswith('| fedprox | 4 | 0.837 ± ')
  assert lines[5].endswith(
      f'| +0.027 [{prox.paired.low:.3f}, {prox.paired.high:.3f}] (n=4) |'
      ' 0.010 | 0.010 |')
  assert statistics.per_seed_markdown(results, 'rounds').splitlines()[2] == (
      '| fedavg | 10.0000 | - | 12.0000 | 8.0000 |')
  saved = agg.to_json()
  assert saved['metrics']['final_accuracy']['fedprox']['paired'][
      'p_value'] == pytest.approx(ref.pvalue)
  with pytest.raises(ValueError, match='--baseline=fedyogi is not valid'):
    statistics.aggregate_seeds(results, ['rounds'], baseline='fedyogi')


def test_write_image_summary_is_readable_by_tensorboard(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  png = statistics.plot_curves({'a': [[(1, 0.1), (2, 0.2)], [(1, 0.2),
                                                             (2, 0.4)]]},
                               str(tmp_path / 'c.png'))
  statistics.write_image_summary(png, str(tmp_path), 'study/curves')
  acc = event_accumulator.EventAccumulator(
      str(tmp_path), size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  (event,) = acc.Tensors('study/curves')
  width, height = event.tensor_proto.string_val[:2]
  assert (int(width), int(height)) == (768, 480)
  assert event.tensor_proto.string_val[2][:8] == b'\x89PNG\r\n\x1a\n'


def test_late_climb_windows_and_test_match_hand_values_and_scipy():
  # T = 8: the quarter (6, 8] (rounds 7, 8) minus the quarter (4, 6]
  # (rounds 5, 6). Seed k rises by `rise[k]` per round after round 4, so its
  # climb is exactly 2 * rise[k]; rounds 1-4 and the longer seed's rounds 9
  # and 10 are outside both windows and must not count.
  rise = [0.1, 0.05, 0.15]
  series = []
  for k, r in enumerate(rise):
    rounds = range(1, 11 if k == 1 else 9)
    series.append([(t, (9.0 if t <= 4 or t > 8 else 0.0) + r * max(t - 4, 0))
                   for t in rounds])
  cmp, t = statistics.late_climb(series)
  assert t == 8
  climbs = [2 * r for r in rise]
  assert cmp.n == 3
  assert cmp.mean_difference == pytest.approx(0.2)
  ref = stats.ttest_1samp(climbs, 0.0)
  assert cmp.t_statistic == pytest.approx(ref.statistic, rel=1e-9)
  assert cmp.p_value == pytest.approx(ref.pvalue, rel=1e-9)
  low, high = stats.t.interval(0.95, 2, loc=0.2, scale=stats.sem(climbs))
  assert (cmp.low, cmp.high) == pytest.approx((low, high))
  # A flat curve: every climb 0, no test possible (as ttest_rel).
  flat, _ = statistics.late_climb([[(t, 0.5) for t in range(1, 9)]] * 2)
  assert flat.mean_difference == 0 and math.isnan(flat.p_value)
  # A window without an evaluation, or a seed without any: None.
  assert statistics.late_climb([[(10, 0.1), (20, 0.2)]]) is None
  assert statistics.late_climb([[(t, 0.1) for t in range(1, 9)], []]) is None
  assert statistics.late_climb([]) is None


def test_late_climb_of_noise_has_its_stated_false_alarm_rate():
  # Curves that stopped rising (i.i.d. noise around a constant): "no climb"
  # is true, so p < 0.05 must occur in 5 % of the studies. 2,000 studies of
  # 3 seeds: the count of alarms is Binomial(2000, 0.05) (mean 100, sd 9.7);
  # [65, 135] holds it with probability > 0.999.
  rng = np.random.default_rng(0)
  alarms = 0
  for _ in range(2000):
    series = [[(t, 0.9 + 0.01 * rng.standard_normal()) for t in
               range(10, 201, 10)] for _ in range(3)]
    cmp, _ = statistics.late_climb(series)
    alarms += cmp.p_value < 0.05
  assert 65 <= alarms <= 135, alarms
