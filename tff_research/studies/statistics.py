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
  `scipy.stats.ttest_rel(a, b)`;
* Holm's step-down adjustment (`holm_adjusted`; Holm 1979, "A simple
  sequentially rejective multiple test procedure"): the m paired tests of
  one metric against the baseline are one family. With p_(1) <= ... <=
  p_(m) sorted, the adjusted values are
      p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)),
  and rejecting where p~ < alpha keeps the chance of any false rejection
  in the family <= alpha (for any dependence between the tests), where the
  raw p-values would give up to m alpha.

Edge cases (documented, tested):

* n = 1: no variance estimate, so the interval bounds, T and p are NaN (the
  mean / mean difference is still returned). Tables print `n/a`.
* zero variance (all x_i equal, or all d_i equal; n >= 2): the interval
  collapses to the point (half-width 0). For the paired test, as
  `scipy.stats.ttest_rel`: T = +-inf and p = 0 if dbar != 0, and T = p = NaN
  if every difference is 0 (a and b identical).
* n = 0, non-finite values, or a confidence outside (0, 1): ValueError.

`parse_seeds` turns a `--seeds` value into the seed list; `aggregate_seeds`
reduces per-(algorithm, seed) metric values to the per-metric intervals and
paired comparisons with their Holm-adjusted p-values (`SeedAggregate`), and
`aggregate_markdown` renders them, one table per metric plus the per-seed
values.

`late_climb` measures whether a curve is still rising at the end of the
runs (the mean over the last quarter of the rounds minus that over the
quarter before, paired over seeds): the check that a study's budget is long
enough. `report_rounds` picks the rounds at which a report compares curves
(about 1/10, 1/4, 1/2, 3/4 and all of the budget).

`plot_curves` draws the mean curve
of each algorithm over rounds with its t band to a PNG (matplotlib's Agg
canvas, no display needed); `write_image_summary` puts that PNG into a
TensorBoard event file of the study's directory.
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


def format_p(p: float) -> str:
  """A p-value for a table: 3 decimals, '< 0.001', or 'n/a' (NaN)."""
  if not math.isfinite(p):
    return 'n/a'
  return '< 0.001' if p < 1e-3 else f'{p:.3f}'


def format_interval(low: float, high: float, digits: int = 3) -> str:
  """'[-0.003, 0.027]' ('n/a' for NaN bounds)."""
  return f'[{_fmt(low, digits)}, {_fmt(high, digits)}]'


def format_difference(cmp: PairedComparison, digits: int = 3) -> str:
  """'+0.012 [-0.003, 0.027]': a paired mean difference and its interval."""
  return (f'{cmp.mean_difference:+.{digits}f}'
          f' {format_interval(cmp.low, cmp.high, digits)}')


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
  """Holm-adjusted p-values (module docstring), in the order given.

  NaN entries (tests without a p-value, e.g. one seed) stay NaN and are not
  counted in m (as R's `p.adjust(p, "holm")` defines it).

  Raises:
    ValueError: a p-value outside [0, 1].
  """
  p = np.asarray(p_values, dtype=float).reshape(-1)
  if np.any((p < 0) | (p > 1)):
    raise ValueError(f'p-values must be in [0, 1], got {p_values!r}')
  out = np.full(p.shape, math.nan)
  finite = np.flatnonzero(np.isfinite(p))
  m = finite.size
  order = finite[np.argsort(p[finite], kind='stable')]
  running = 0.0
  for i, k in enumerate(order):
    running = max(running, min(1.0, (m - i) * p[k]))
    out[k] = running
  return out.tolist()


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


REPORT_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)


def report_rounds(series: Sequence[Sequence[tuple[float, float]]],
                  fractions: Sequence[float] = REPORT_FRACTIONS
                  ) -> tuple[float, ...]:
  """The rounds at which to compare curves: for each fraction f, the first
  round >= f T that *every* curve of `series` evaluated, T the last such
  round (so 20, 50, 100, 150, 200 for 200 rounds evaluated every 10).
  Distinct and increasing; () if the curves share no evaluated round."""
  if not series:
    return ()
  common = set.intersection(*(set(r for r, _ in s) for s in series))
  if not common:
    return ()
  ordered = sorted(common)
  last = ordered[-1]
  picked = []
  for f in fractions:
    r = next(r for r in ordered if r >= f * last)
    if r not in picked:
      picked.append(r)
  return tuple(picked)


def late_climb(
    series: Sequence[Sequence[tuple[float, float]]],
    confidence: float = 0.95,
) -> tuple[PairedComparison, float] | None:
  """Whether a curve is still rising at the end of its runs (the budget).

  With T the last round evaluated by every seed's run, each seed's climb is
  the mean of its values at rounds in (3T/4, T] minus the mean at rounds in
  (T/2, 3T/4] (two windows of T/4, so a 200-round run compares rounds
  151-200 with 101-150). Paired over seeds, `paired_comparison(late, mid)`
  gives the mean climb, its interval and the paired t-test of "no climb"
  (= the one-sample t-test of the climbs against 0); an interval that
  includes 0 says the curve has stopped rising within what the seeds can
  resolve.

  Args:
    series: one [(round, value), ...] list per seed.

  Returns:
    (the comparison, T), or None if some seed has no value in one window.
  """
  if not series or not all(series):
    return None
  t = min(max(r for r, _ in s) for s in series)
  late, mid = [], []
  for seed_series in series:
    late_v = [v for r, v in seed_series if 0.75 * t < r <= t]
    mid_v = [v for r, v in seed_series if 0.5 * t < r <= 0.75 * t]
    if not late_v or not mid_v:
      return None
    late.append(float(np.mean(late_v)))
    mid.append(float(np.mean(mid_v)))
  return paired_comparison(late, mid, confidence), float(t)


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

  An algorithm with no point (every seed stopped before its first
  evaluation, as a diverged run is) has no line; the title names it.

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
  empty = [name for name, series in curves.items() if not any(series)]
  for name, series in curves.items():
    if name in empty:
      continue
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
  ax.set_title((title or f'mean over seeds, {100 * c:g}% t band') + (
      f'\nno evaluation: {", ".join(empty)}' if empty else ''))
  ax.grid(True, alpha=0.3)
  if len(empty) < len(curves):
    ax.legend(loc='best')
  fig.tight_layout()
  fig.savefig(path, format='png')
  return path


# --- seeds ---------------------------------------------------------------------


def parse_seeds(text: str, base_seed: int = 0,
                flag: str = '--seeds') -> tuple[int, ...]:
  """The seeds a `--seeds` value names.

  `N` (one integer >= 1): the N seeds base_seed, ..., base_seed + N - 1
  (`--seed` offsets them). `a,b,c`: exactly these seeds (distinct integers
  >= 0; a one-element list needs the trailing comma `5,` or use `--seed=5
  --seeds=1`). Raises ValueError with one line naming the value and what is
  valid.
  """
  raw = str(text).strip()
  valid = (f'give a count N >= 1 (N seeds from --seed={base_seed}) or a'
           ' comma-separated list of distinct seeds >= 0, e.g. 3 or 0,1,2')
  if ',' not in raw:
    try:
      count = int(raw)
    except ValueError:
      count = 0
    if count < 1:
      raise ValueError(f'{flag}={text} is not valid: {valid}')
    return tuple(range(base_seed, base_seed + count))
  parts = [p.strip() for p in raw.split(',')]
  if parts and parts[-1] == '':
    parts = parts[:-1]
  try:
    seeds = tuple(int(p) for p in parts)
  except ValueError:
    seeds = ()
  if not seeds or any(s < 0 for s in seeds):
    raise ValueError(f'{flag}={text} is not valid: {valid}')
  if len(set(seeds)) != len(seeds):
    raise ValueError(f'{flag}={text} is not valid: names a seed twice')
  return seeds


def seed_run_name(name: str, seed: int) -> str:
  """The run directory name of `name` at `seed`: `{name}_seed{seed}`."""
  return f'{name}_seed{seed}'


@dataclasses.dataclass(frozen=True)
class MetricSummary:
  """One (algorithm, metric) over seeds: mean, t interval, paired test."""

  algorithm: str
  metric: str
  seeds: tuple[int, ...]
  values: tuple[float, ...]
  mean: float
  low: float
  high: float
  # Against the baseline on the same seeds (None for the baseline itself).
  paired: PairedComparison | None = None
  # paired.p_value, Holm-adjusted over the metric's family of `holm_m`
  # comparisons against the baseline (NaN where p is).
  p_holm: float = math.nan
  holm_m: int = 0

  def to_json(self) -> dict:
    out = dict(seeds=list(self.seeds), values=list(self.values),
               mean=self.mean, ci=[self.low, self.high])
    if self.paired is not None:
      p = self.paired
      out['paired'] = dict(mean_difference=p.mean_difference,
                           ci=[p.low, p.high], t=p.t_statistic,
                           p_value=p.p_value, n=p.n,
                           p_holm=self.p_holm, holm_m=self.holm_m)
    return out


@dataclasses.dataclass(frozen=True)
class SeedAggregate:
  """Every (algorithm, metric) summary of a multi-seed study."""

  metrics: tuple[str, ...]
  algorithms: tuple[str, ...]
  seeds: tuple[int, ...]
  baseline: str | None
  confidence: float
  summaries: Mapping[tuple[str, str], MetricSummary]

  def get(self, algorithm: str, metric: str) -> MetricSummary:
    return self.summaries[(algorithm, metric)]

  def to_json(self) -> dict:
    return dict(
        seeds=list(self.seeds), baseline=self.baseline,
        confidence=self.confidence,
        metrics={m: {a: self.summaries[(a, m)].to_json()
                     for a in self.algorithms if (a, m) in self.summaries}
                 for m in self.metrics})


def aggregate_seeds(
    results: Mapping[str, Mapping[int, Mapping[str, float | None]]],
    metrics: Sequence[str],
    *,
    baseline: str | None = None,
    confidence: float = 0.95,
) -> SeedAggregate:
  """Means, t intervals and paired tests of per-seed results.

  Args:
    results: algorithm -> seed -> metric -> value. A value that is None or
      non-finite (e.g. "rounds to target" of a run that never reached it) is
      left out of that metric's summary; for the paired test only seeds where
      both the algorithm and the baseline have a value are paired.
    metrics: the metrics to summarise, in table order.
    baseline: an algorithm of `results`; every other algorithm gets
      `paired_comparison(its values, baseline's values)` over the shared
      seeds (same seed = same partition, sampling and initialisation), and
      its p-value Holm-adjusted over that metric's comparisons.
    confidence: level of every interval.

  Raises:
    ValueError: no results, or an unknown baseline (one line).
  """
  c = _check_confidence(confidence)
  if not results:
    raise ValueError('aggregate_seeds needs at least one algorithm')
  if baseline is not None and baseline not in results:
    raise ValueError(
        f'--baseline={baseline} is not valid: give one of the compared'
        f' algorithms ({", ".join(results)})')

  def finite(seed_values, metric):
    out = {}
    for seed, row in seed_values.items():
      v = row.get(metric)
      if v is not None and math.isfinite(float(v)):
        out[seed] = float(v)
    return out

  summaries = {}
  all_seeds = sorted({s for r in results.values() for s in r})
  for metric in metrics:
    base = finite(results[baseline], metric) if baseline is not None else {}
    for name, seed_values in results.items():
      vals = finite(seed_values, metric)
      if not vals:
        continue
      seeds = tuple(sorted(vals))
      x = [vals[s] for s in seeds]
      mean, low, high = mean_ci(x, c)
      paired = None
      if baseline is not None and name != baseline:
        common = [s for s in seeds if s in base]
        if common:
          paired = paired_comparison([vals[s] for s in common],
                                     [base[s] for s in common], c)
      summaries[(name, metric)] = MetricSummary(
          name, metric, seeds, tuple(x), mean, low, high, paired)
    family = [k for k, v in summaries.items()
              if k[1] == metric and v.paired is not None]
    raw = [summaries[k].paired.p_value for k in family]
    m = sum(math.isfinite(p) for p in raw)
    for k, adjusted in zip(family, holm_adjusted(raw)):
      summaries[k] = dataclasses.replace(summaries[k], p_holm=adjusted,
                                         holm_m=m)
  return SeedAggregate(tuple(metrics), tuple(results), tuple(all_seeds),
                       baseline, c, summaries)


def aggregate_markdown(agg: SeedAggregate, *, digits: int = 3,
                       labels: Mapping[str, str] | None = None,
                       label: str = 'algorithm') -> str:
  """One table per metric: n, mean ± half-width, the interval and, against
  the baseline, the paired mean difference with its interval (over the
  seeds both have), its p-value and the Holm-adjusted one (the family: this
  metric's m comparisons against the baseline). A metric with no seed
  shared with the baseline gets no comparison columns."""
  c = agg.confidence
  level = f'{100 * c:g}%'
  out = []
  for metric in agg.metrics:
    title = (labels or {}).get(metric, metric)
    rows = [a for a in agg.algorithms if (a, metric) in agg.summaries]
    if not rows:
      continue
    header = [label, 'n', f'{title} (mean ± {level} half-width)',
              f'{level} CI']
    # A metric the baseline has no value of (e.g. the epsilon of a run
    # without noise) has nothing to pair: no comparison columns.
    paired = agg.baseline is not None and any(
        agg.summaries[(a, metric)].paired is not None for a in rows)
    if paired:
      m = max(agg.summaries[(a, metric)].holm_m for a in rows)
      header += [f'Δ vs {agg.baseline} [{level} CI]', 'p (paired t)',
                 f'p (Holm, m={m})']
    lines = [f'### {title}', '', '| ' + ' | '.join(header) + ' |',
             '|' + '|'.join(['---'] * len(header)) + '|']
    for name in rows:
      s = agg.summaries[(name, metric)]
      h = (s.high - s.low) / 2.0
      row = [name, str(len(s.values)),
             f'{_fmt(s.mean, digits)} ± {_fmt(h, digits)}',
             format_interval(s.low, s.high, digits)]
      if paired:
        if name == agg.baseline:
          row += ['(baseline)', '', '']
        elif s.paired is None:
          row += ['n/a (no seed where both have a value)', 'n/a', 'n/a']
        else:
          p = s.paired
          row += [f'{format_difference(p, digits)} (n={p.n})',
                  format_p(p.p_value), format_p(s.p_holm)]
      lines.append('| ' + ' | '.join(row) + ' |')
    out.append('\n'.join(lines))
  return '\n\n'.join(out) + '\n'


def per_seed_markdown(
    results: Mapping[str, Mapping[int, Mapping[str, float | None]]],
    metric: str, *, digits: int = 4, label: str = 'algorithm') -> str:
  """The raw values behind an aggregate: one row per algorithm, one column
  per seed ('-' where the value is missing)."""
  seeds = sorted({s for r in results.values() for s in r})
  lines = ['| ' + label + ' | ' + ' | '.join(f'seed {s}' for s in seeds)
           + ' |', '|---' * (len(seeds) + 1) + '|']
  for name, seed_values in results.items():
    cells = []
    for s in seeds:
      v = seed_values.get(s, {}).get(metric)
      cells.append('-' if v is None or not math.isfinite(float(v))
                   else f'{float(v):.{digits}f}')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_image_summary(png_path: str, logdir: str, tag: str,
                        step: int = 0) -> None:
  """Writes the PNG at `png_path` as a TensorBoard image summary `tag` into an
  event file of `logdir` (the study's directory, so TensorBoard shows the
  band plot next to the runs)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with open(png_path, 'rb') as f:
    image = tf.image.decode_png(f.read(), channels=4)
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    tf.summary.image(tag, image[tf.newaxis], step=step)
  writer.flush()
  writer.close()
