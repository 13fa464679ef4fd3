"""Statistics for multi-seed studies: t intervals, paired t-tests, a table, a plot.

A study runs every algorithm with the same seeds s = 1..n, so a metric gives
one value per (algorithm, seed). Two algorithms run with the same seed share
the data partition, client sampling and initialisation, so their results are
*paired* by seed, and the paired test is the right comparison.

Formulas (x_1..x_n the values, n >= 2):

* sample mean and standard deviation
      xbar = (1/n) sum_i x_i,   s = sqrt( sum_i (x_i - xbar)^2 / (n - 1) ),
* Student-t confidence interval at level c (`mean_ci`)
      xbar -+ t_{(1+c)/2, n-1} * s / sqrt(n),
  with t_{q, nu} the q-quantile of Student's t with nu degrees of freedom
  (`scipy.stats.t.ppf`); it equals `scipy.stats.t.interval(c, n - 1, xbar,
  s / sqrt(n))`;
* paired comparison of a and b (`paired_comparison`), d_i = a_i - b_i:
      dbar -+ t_{(1+c)/2, n-1} * s_d / sqrt(n)      (CI of the mean difference)
      T = dbar / (s_d / sqrt(n)),  p = 2 * (1 - F_{n-1}(|T|))
  with F_nu Student's t CDF: the two-sided paired t-test, identical to
  `scipy.stats.ttest_rel(a, b)`.

Edge cases (documented, tested):

* n = 1: no variance estimate, so the interval bounds, T and p are NaN (the
  mean / mean difference is still returned). Tables print `n/a`.
* zero variance (all x_i equal, or all d_i equal; n >= 2): the interval
  collapses to the point (half-width 0). For the paired test, as
  `scipy.stats.ttest_rel`: T = +-inf and p = 0 if dbar != 0, and T = p = NaN
  if every difference is 0 (a and b identical).
* n = 0, non-finite values, or a confidence outside (0, 1): ValueError.

`markdown_table` renders one row per algorithm (mean +- half-width of the t
interval, the interval, n) and, against a named baseline, the paired mean
difference with its interval and p-value. `plot_curves` draws the mean curve
of each algorithm over rounds with its t band to a PNG (matplotlib's Agg
canvas, no display needed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats


def _check_confidence(confidence: float) -> float:
  c = float(confidence)
  if not 0.0 < c < 1.0:
    raise ValueError(f'confidence={confidence!r} is not valid: must be in (0, 1)')
  return c


def _as_values(values, name: str = 'values') -> np.ndarray:
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != 1:
    raise ValueError(f'{name} must be one-dimensional, got shape {x.shape}')
  if x.size == 0:
    raise ValueError(f'{name} is empty: need at least one value')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} contains non-finite values: {x.tolist()}')
  return x


def _t_quantile(confidence: float, df: int) -> float:
  """t_{(1+c)/2, df}: the two-sided critical value."""
  return float(stats.t.ppf((1.0 + confidence) / 2.0, df))


def _half_width(x: np.ndarray, confidence: float) -> float:
  """t_{(1+c)/2, n-1} * s / sqrt(n); NaN for n = 1, 0 for zero variance."""
  n = x.size
  if n < 2:
    return math.nan
  if np.all(x == x[0]):
    return 0.0
  s = float(np.std(x, ddof=1))
  return _t_quantile(confidence, n - 1) * s / math.sqrt(n)


def mean_ci(values: Sequence[float],
            confidence: float = 0.95) -> tuple[float, float, float]:
  """(xbar, low, high): the mean and its Student-t confidence interval.

  low, high = xbar -+ t_{(1+c)/2, n-1} s / sqrt(n) (module docstring); equal
  to `scipy.stats.t.interval(c, n - 1, loc=xbar, scale=s / sqrt(n))`.
  n = 1 gives (x_1, NaN, NaN); zero variance gives (xbar, xbar, xbar).

  Raises:
    ValueError: no values, non-finite values, or confidence not in (0, 1).
  """
  c = _check_confidence(confidence)
  x = _as_values(values)
  mean = float(np.mean(x))
  h = _half_width(x, c)
  return mean, mean - h, mean + h


@dataclasses.dataclass(frozen=True)
class PairedComparison:
  """Paired two-sided t-test of a against b (differences d = a - b).

  Attributes:
    mean_difference: dbar = mean(a - b).
    low, high: dbar -+ t_{(1+c)/2, n-1} s_d / sqrt(n) (NaN for n = 1).
    t_statistic: dbar / (s_d / sqrt(n)) (scipy.stats.ttest_rel's statistic).
    p_value: 2 (1 - F_{n-1}(|T|)) (scipy.stats.ttest_rel's p-value).
    n: number of pairs.
    confidence: c, the level of [low, high].
  """

  mean_difference: float
  low: float
  high: float
  t_statistic: float
  p_value: float
  n: int
  confidence: float

  @property
  def half_width(self) -> float:
    return (self.high - self.low) / 2.0


def paired_comparison(a: Sequence[float], b: Sequence[float],
                      confidence: float = 0.95) -> PairedComparison:
  """Paired t-test and CI of mean(a - b); a[i] and b[i] share seed i.

  Equals `scipy.stats.ttest_rel(a, b)` (statistic, two-sided p-value). See
  the module docstring for n = 1 and zero-variance differences.

  Raises:
    ValueError: a and b of different lengths, empty, non-finite, or
      confidence not in (0, 1).
  """
  c = _check_confidence(confidence)
  a = _as_values(a, 'a')
  b = _as_values(b, 'b')
  if a.shape != b.shape:
    raise ValueError(
        f'paired comparison needs equally many values (one per seed), got'
        f' {a.size} and {b.size}')
  d = a - b
  n = d.size
  dbar = float(np.mean(d))
  h = _half_width(d, c)
  if n < 2:
    t_stat = p = math.nan
  elif np.all(d == d[0]):
    if dbar == 0.0:
      t_stat = p = math.nan
    else:
      t_stat, p = math.copysign(math.inf, dbar), 0.0
  else:
    se = float(np.std(d, ddof=1)) / math.sqrt(n)
    if se > 0:
      t_stat = dbar / se
      p = float(2.0 * stats.t.sf(abs(t_stat), n - 1))
    else:  # A spread so small it underflows: as constant differences.
      t_stat = math.copysign(math.inf, dbar) if dbar else math.nan
      p = 0.0 if dbar else math.nan
  return PairedComparison(
      mean_difference=dbar, low=dbar - h, high=dbar + h,
      t_statistic=float(t_stat), p_value=float(p), n=int(n), confidence=c)


def _fmt(x: float, digits: int) -> str:
  return 'n/a' if not math.isfinite(x) else f'{x:.{digits}f}'


def _fmt_p(p: float) -> str:
  if not math.isfinite(p):
    return 'n/a'
  return '< 0.001' if p < 1e-3 else f'{p:.3f}'


def markdown_table(
    results: Mapping[str, Sequence[float]],
    *,
    baseline: str | None = None,
    confidence: float = 0.95,
    metric: str = 'accuracy',
    digits: int = 3,
) -> str:
  """A GitHub-markdown table of per-algorithm means over seeds.

  Args:
    results: algorithm -> one value per seed (seed order must be the same
      for every algorithm: values are paired by position).
    baseline: with a name from `results`, adds the paired comparison
      `algorithm - baseline` (mean difference, its CI, paired t-test p).
    confidence: level of every interval.
    metric: the metric's name, for the header.
    digits: decimals of the values.

  Rows, in the order of `results`:
    | algorithm | n | metric (mean +- h) | c CI | diff vs baseline [CI] | p |
  where h = t_{(1+c)/2, n-1} s / sqrt(n) is the interval's half-width.

  Raises:
    ValueError: an unknown baseline, no results, or (for the paired column)
      an algorithm with a different number of seeds than the baseline.
  """
  c = _check_confidence(confidence)
  if not results:
    raise ValueError('markdown_table needs at least one algorithm')
  if baseline is not None and baseline not in results:
    raise ValueError(
        f'baseline {baseline!r} is not one of the algorithms:'
        f' {", ".join(results)}')
  level = f'{100 * c:g}%'
  header = ['algorithm', 'n', f'{metric} (mean ± {level} half-width)',
            f'{level} CI']
  if baseline is not None:
    header += [f'Δ vs {baseline} [{level} CI]', 'p (paired t)']
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join(['---'] * len(header)) + '|']
  for name, values in results.items():
    mean, low, high = mean_ci(values, c)
    h = (high - low) / 2.0
    row = [str(name), str(len(values)),
           f'{_fmt(mean, digits)} ± {_fmt(h, digits)}',
           f'[{_fmt(low, digits)}, {_fmt(high, digits)}]']
    if baseline is not None:
      if name == baseline:
        row += ['(baseline)', '']
      else:
        cmp = paired_comparison(values, results[baseline], c)
        row += [f'{cmp.mean_difference:+.{digits}f} [{_fmt(cmp.low, digits)},'
                f' {_fmt(cmp.high, digits)}]', _fmt_p(cmp.p_value)]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines) + '\n'


def curve_band(
    series: Sequence[Sequence[tuple[float, float]]],
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Per-round mean and t interval over seeds.

  Args:
    series: one [(round, value), ...] list per seed. Rounds need not be the
      same for every seed: each round uses the seeds that report it.

  Returns:
    (rounds, mean, low, high, n) arrays over the sorted union of rounds;
    low = high = NaN where only one seed reports the round.
  """
  c = _check_confidence(confidence)
  by_round: dict[float, list[float]] = {}
  for seed_series in series:
    for r, v in seed_series:
      by_round.setdefault(float(r), []).append(float(v))
  if not by_round:
    raise ValueError('curve_band needs at least one (round, value) point')
  rounds = np.array(sorted(by_round))
  cis = [mean_ci(by_round[r], c) for r in rounds]
  mean, low, high = (np.array(x) for x in zip(*cis))
  n = np.array([len(by_round[r]) for r in rounds])
  return rounds, mean, low, high, n


def plot_curves(
    curves: Mapping[str, Sequence[Sequence[tuple[float, float]]]],
    path: str,
    *,
    confidence: float = 0.95,
    ylabel: str = 'held-out accuracy',
    xlabel: str = 'round',
    title: str | None = None,
) -> str:
  """Writes a PNG of mean value against round, one band per algorithm.

  Args:
    curves: algorithm -> per-seed lists of (round, value) (`curve_band`).
    path: the PNG file to write (parent directory must exist).
    confidence: level of the Student-t band (mean -+ t s / sqrt(n) at each
      round, over the seeds reporting it; no band where n = 1).

  Returns:
    `path`.
  """
  # The object-oriented API on an Agg canvas: no pyplot global state, no
  # display, whatever backend the process has selected.
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  if not curves:
    raise ValueError('plot_curves needs at least one algorithm')
  c = _check_confidence(confidence)
  fig = figure.Figure(figsize=(6.4, 4.0), dpi=120)
  backend_agg.FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for name, series in curves.items():
    rounds, mean, low, high, n = curve_band(series, c)
    (line,) = ax.plot(rounds, mean, marker='.' if len(rounds) < 30 else None,
                      label=f'{name} (n={int(n.max())})')
    band = np.isfinite(low)
    if band.any():
      ax.fill_between(rounds, np.where(band, low, mean),
                      np.where(band, high, mean), where=band,
                      color=line.get_color(), alpha=0.2, linewidth=0)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title or f'mean over seeds, {100 * c:g}% t band')
  ax.grid(True, alpha=0.3)
  ax.legend(loc='best')
  fig.tight_layout()
  fig.savefig(path, format='png')
  return path
