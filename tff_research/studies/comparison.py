"""Several algorithms, one federation, one budget: runs, summaries, tables.

Each algorithm is an ordinary run (`training.train`, exactly what
`experiments/train.py` does with that config) in `LOGDIR/NAME/<algorithm>/`,
its config derived from the command line's with `dataclasses.replace`; the
tables go to `LOGDIR/NAME/comparison.md` (and every summary to
`comparison.json`). Re-running resumes every run; a larger `total_rounds`
extends them. Two studies share this machinery:

* `run_comparison` (`experiments/compare_algorithms.py`): every algorithm of
  `registry.SPECS` with its own paper defaults and its spec's
  `comparison_client_learning_rate` (Reddi et al. 2021's EMNIST-CNN values).
  Setting an algorithm hyperparameter on the command line is therefore an
  error: a single value would not mean the same thing for every algorithm.
  Table: final and best held-out accuracy, the first evaluated round
  reaching the target, and wall time (rounds + evaluations, summed from each
  run's metrics.csv, so a resumed or extended comparison reports the whole
  run).
* `run_drift_comparison` (`experiments/scaffold_vs_fedavg.py`):
  SCAFFOLD against FedAvg and FedProx with the hyperparameters given on the
  command line (Karimireddy et al. 2020 motivate control variates by client
  drift under label skew). Table: rounds and MB of communication to the
  target, final / last-evaluations mean / best accuracy, seconds per round,
  and the held-out accuracy curves side by side.

Both take `seeds` (`--seeds`): every algorithm then runs once per seed, in
`LOGDIR/NAME/<algorithm>_seed{s}/` (`statistics.seed_run_name`), and the
report gives, per algorithm and metric, the mean over seeds with its Student-t
95 % interval and the paired comparison against `baseline` (mean
difference, interval, paired t-test p). The pairing is real: a seed fixes the
partition, the client sampling of every round, the shuffling and the model
initialisation, for every algorithm alike, so algorithm A and the baseline at
seed s saw the same clients in the same rounds, and the per-seed difference
removes that shared variation (the classic argument for a paired design,
e.g. Dror et al. 2018, "The Hitchhiker's Guide to Testing Statistical
Significance in NLP"). The report also draws held-out accuracy against round,
mean line and t band per algorithm, as `accuracy_curves.png` and as an image
summary in the study directory's TensorBoard events. Without `seeds`, one run
per algorithm at `config.seed` in `LOGDIR/NAME/<algorithm>/` (the layout of
the single-seed tables in the README, which re-running still reuses).

`run_comparison` also takes `tune` (`TuneConfig`, `--tune`): a small grid of
client and server learning rates around each algorithm's paper defaults,
every point trained on the *training* clients only and scored on a
validation split carved out of them (`--validation_fraction`,
`run/validation_split.py`), never on the
held-out evaluation data. Reddi et al. 2021 ("Adaptive Federated
Optimization", Sec. 5 and App. D) tune eta_l and eta per optimizer on a
log10 grid before comparing, because one learning rate favours whichever
optimizer it happens to suit; the choice is recorded in the report and in
`LOGDIR/NAME/tuning.json`.

Every configuration is built (and so validated) before any run trains.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
import dataclasses
import itertools
import json
import math
import os
from typing import Any, Optional

from tff_research.algorithms import registry
from tff_research.run import config as config_lib
from tff_research.run import run_directory
from tff_research.studies import statistics

TABLE_NAME = 'comparison.md'
JSON_NAME = 'comparison.json'
PLOT_NAME = 'accuracy_curves.png'
TUNING_NAME = 'tuning.json'
TUNE_DIR = 'tune'
DEFAULT_BASELINE = 'fedavg'
# Half-decades around the paper default, as Reddi et al.'s log10 grid.
DEFAULT_TUNE_FACTORS = (10**-0.5, 1.0, 10**0.5)
TUNED_PARAMETERS = ('client_learning_rate', 'server_learning_rate')
DRIFT_ALGORITHMS = ('scaffold', 'fedavg', 'fedprox')
# Under strong skew the curve oscillates round to round; the mean of the
# last evaluations is steadier than the final one.
LAST_EVALS = 4


def compared_algorithms() -> tuple[str, ...]:
  """The default algorithm list of `run_comparison`: every registered one."""
  return tuple(registry.SPECS)


def per_algorithm_flags() -> tuple[str, ...]:
  """Flags the comparison sets per algorithm (an error on its command line)."""
  return ('algorithm', 'weight_by_size', *registry.all_hyperparameters())


def client_learning_rate(algorithm: str) -> Optional[float]:
  """The client learning rate `algorithm` is compared with (None: unused)."""
  return registry.get_spec(algorithm).comparison_client_learning_rate


def check_algorithms(names: Sequence[str], flag: str = '--algorithms') -> None:
  """ValueError (one line) unless `names` are distinct registered algorithms."""
  valid = ','.join(registry.SPECS)
  if not names or any(a not in registry.SPECS for a in names):
    raise ValueError(
        f'{flag}={",".join(names)} is not valid: give a comma separated'
        f' subset of {valid}')
  if len(set(names)) != len(names):
    raise ValueError(f'{flag}={",".join(names)} names an algorithm twice')


def check_target(target_accuracy: float) -> None:
  if not 0 < target_accuracy <= 1:
    raise ValueError(
        f'--target_accuracy={target_accuracy} is not valid: must be in (0, 1]')


def check_given(given: Collection[str]) -> None:
  """ValueError (one line) for a per-algorithm flag given to the comparison."""
  forbidden = set(per_algorithm_flags())
  for name in given:
    if name in forbidden:
      raise ValueError(
          f'--{name} cannot be set for a comparison: each algorithm runs with'
          ' its paper defaults (docs/algorithms.md); use experiments/train.py'
          ' for other settings')


def _variant(config: config_lib.ExperimentConfig, algorithm: str,
             **changes) -> config_lib.ExperimentConfig:
  """`config` as run LOGDIR/NAME/<algorithm>/ of `algorithm`."""
  return dataclasses.replace(
      config, algorithm=config.algorithm.replace(algorithm=algorithm,
                                                 **changes),
      logdir=config.run_dir, experiment_name=algorithm)


def paper_default_configs(
    config: config_lib.ExperimentConfig, names: Sequence[str]
) -> dict[str, config_lib.ExperimentConfig]:
  """algorithm -> its run of `config`, with the spec's comparison client
  learning rate and its paper defaults otherwise."""
  run_directory.check_name(config.experiment_name)
  out = {}
  for algorithm in names:
    lr = client_learning_rate(algorithm)
    changes = {} if lr is None else {'client_learning_rate': lr}
    out[algorithm] = _variant(config, algorithm, **changes)
  return out


def given_hyperparameter_configs(
    config: config_lib.ExperimentConfig,
    names: Sequence[str],
    given: Mapping[str, Any],
) -> dict[str, config_lib.ExperimentConfig]:
  """algorithm -> its run of `config`, with the algorithm hyperparameters of
  `given` (what the command line set), each of which must apply to it."""
  run_directory.check_name(config.experiment_name)
  hyperparameters = registry.all_hyperparameters()
  changes = {k: v for k, v in given.items() if k in hyperparameters}
  return {a: _variant(config, a, **changes) for a in names}


def train_all(configs: Mapping[str, config_lib.ExperimentConfig], *,
              log=print) -> None:
  """Trains (or resumes) every config, one after the other."""
  from tff_research.run import training  # pylint: disable=g-import-not-at-top
  for label, config in configs.items():
    log(f'=== {label}: {config.run_dir} ===')
    training.train(config, log=log)


# --- summaries -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """What the tables report about one finished run."""

  algorithm: str  # the run's label: its algorithm in a comparison
  rounds: int
  final_accuracy: float
  best_accuracy: float
  rounds_to_target: Optional[int]
  train_seconds: float
  eval_seconds: float
  hyperparameters: str = ''
  # (round, held-out accuracy) of every evaluated round.
  curve: tuple[tuple[int, float], ...] = ()
  # Cumulative communication at `rounds_to_target`, in MB.
  mb_to_target: Optional[float] = None
  timed_rounds: int = 0  # rows with round_seconds
  last_row: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def wall_seconds(self) -> float:
    return self.train_seconds + self.eval_seconds

  @property
  def seconds_per_round(self) -> float:
    """Mean training seconds per round (evaluation excluded)."""
    return (self.train_seconds / self.timed_rounds if self.timed_rounds
            else math.nan)

  @property
  def last_mean_accuracy(self) -> float:
    last = self.curve[-LAST_EVALS:]
    return sum(a for _, a in last) / len(last) if last else math.nan

  def to_json(self) -> dict[str, Any]:
    return dict(
        rounds=self.rounds, curve=[list(p) for p in self.curve],
        rounds_to_target=self.rounds_to_target,
        mb_to_target=self.mb_to_target, final_accuracy=self.final_accuracy,
        last_mean_accuracy=self.last_mean_accuracy,
        best_accuracy=self.best_accuracy,
        seconds_per_round=self.seconds_per_round,
        wall_seconds=self.wall_seconds, hyperparameters=self.hyperparameters)


def summarize_metrics(
    label: str,
    rows: Sequence[Mapping[str, Any]],
    target_accuracy: Optional[float],
    hyperparameters: str = '',
    source: str = 'metrics.csv',
) -> RunSummary:
  """The summary of metric rows (`run_directory.read_metrics`).

  Raises ValueError if no round was evaluated.
  """
  curve = tuple((r['round'], r['eval_accuracy']) for r in rows
                if r.get('eval_accuracy') is not None)
  if not curve:
    raise ValueError(f'{source} has no evaluated round')
  reached = None
  if target_accuracy is not None:
    reached = next((rd for rd, acc in curve if acc >= target_accuracy), None)
  mb = None
  if reached is not None:
    kb = next((r.get('communication_cumulative_kb') for r in rows
               if r['round'] == reached), None)
    mb = None if kb is None else kb / 1024
  seconds = [r['round_seconds'] for r in rows
             if r.get('round_seconds') is not None]
  return RunSummary(
      algorithm=label,
      rounds=rows[-1]['round'],
      final_accuracy=curve[-1][1],
      best_accuracy=max(acc for _, acc in curve),
      rounds_to_target=reached,
      train_seconds=sum(seconds),
      eval_seconds=sum(r.get('eval_seconds') or 0.0 for r in rows),
      hyperparameters=hyperparameters,
      curve=curve,
      mb_to_target=mb,
      timed_rounds=len(seconds),
      last_row=dict(rows[-1]),
  )


_SHORT_NAMES = {
    'client_learning_rate': 'eta_l', 'server_learning_rate': 'eta',
    'server_momentum': 'beta', 'server_beta_1': 'beta_1',
    'server_beta_2': 'beta_2', 'server_epsilon': 'tau',
    'proximal_strength': 'mu',
}


def hyperparameter_text(algorithm: registry.AlgorithmConfig) -> str:
  """'eta_l=10^-1.5, eta=10^-2.5, ...': the values the algorithm uses."""
  values = algorithm.values
  parts = []
  for name, short in _SHORT_NAMES.items():
    value = values.get(name)
    if value is None:
      continue
    if value > 0 and name.endswith('learning_rate'):
      exponent = math.log10(value)
      if abs(exponent * 2 - round(exponent * 2)) < 1e-9:
        parts.append(f'{short}=10^{exponent:g}')
        continue
    parts.append(f'{short}={value:g}')
  return ', '.join(parts)


def summarize_run(run_dir: str,
                  target_accuracy: Optional[float] = None) -> RunSummary:
  """The summary of the run in `run_dir` (its hparams.json and metrics.csv).

  Raises ValueError (one line) if it has no evaluated round or no readable
  hparams.json.
  """
  directory = run_directory.RunDirectory(run_dir)
  config = directory.recorded_config()
  return summarize_metrics(
      config.algorithm.algorithm, directory.metrics(), target_accuracy,
      hyperparameters=hyperparameter_text(config.algorithm),
      source=directory.metrics_path)


# --- tables --------------------------------------------------------------------


def comparison_markdown(
    summaries: Sequence[RunSummary],
    *,
    description: str,
    budget: str,
    target_accuracy: float,
) -> str:
  """`run_comparison`'s table, best final accuracy first."""
  lines = [
      f'# Algorithm comparison: {description}',
      '',
      f'Budget (identical for every algorithm): {budget}.',
      '',
      f'| algorithm | final held-out accuracy | best | rounds to'
      f' {target_accuracy:g} | wall time (s) | hyperparameters |',
      '|---|---|---|---|---|---|',
  ]
  for s in sorted(summaries, key=lambda s: -s.final_accuracy):
    reached = (str(s.rounds_to_target) if s.rounds_to_target is not None
               else f'not in {s.rounds}')
    lines.append(
        f'| {s.algorithm} | {s.final_accuracy:.4f} | {s.best_accuracy:.4f} |'
        f' {reached} | {s.wall_seconds:.0f} | {s.hyperparameters} |'
    )
  lines += [
      '',
      'Held-out accuracy is the example-weighted accuracy on the evaluation'
      ' clients (`--eval_on`); "rounds to" is the first *evaluated* round at'
      ' or above the target (resolution `--eval_every`). Wall time sums the'
      " runs' round and evaluation seconds from metrics.csv on a shared"
      ' machine: compare it within a table, not across machines.',
      '',
  ]
  return '\n'.join(lines)


def curve_markdown(summaries: Sequence[RunSummary], target: float) -> str:
  """`run_drift_comparison`'s table and the accuracy curves side by side."""
  fmt = lambda v, spec: '-' if v is None else format(v, spec)  # pylint: disable=unnecessary-lambda-assignment
  lines = [
      f'| algorithm | rounds to {target:g} | MB to {target:g} | final acc |'
      f' mean acc, last {LAST_EVALS} evals | best acc | s/round |',
      '|---|---|---|---|---|---|---|',
  ]
  for s in summaries:
    lines.append(
        f'| {s.algorithm} | {fmt(s.rounds_to_target, "d")}'
        f' | {fmt(s.mb_to_target, ".1f")} | {s.final_accuracy:.4f}'
        f' | {s.last_mean_accuracy:.4f} | {s.best_accuracy:.4f}'
        f' | {s.seconds_per_round:.1f} |'
    )
  rounds = sorted({rd for s in summaries for rd, _ in s.curve})
  lines += [
      '',
      '| round | ' + ' | '.join(s.algorithm for s in summaries) + ' |',
      '|---' * (len(summaries) + 1) + '|',
  ]
  for rd in rounds:
    cells = []
    for s in summaries:
      acc = dict(s.curve).get(rd)
      cells.append('-' if acc is None else f'{acc:.4f}')
    lines.append(f'| {rd} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def data_description(config: config_lib.ExperimentConfig) -> str:
  data = config.data
  if data.dataset == 'digits' or config_lib.repartitions(data):
    skew = (f'Dirichlet alpha={data.dirichlet_alpha:g}'
            if data.dirichlet_alpha else 'IID labels')
    return (f'{data.dataset} re-partitioned into {data.num_clients} clients'
            f' ({skew})')
  return f'{data.dataset}, natural writer split'


def budget_text(config: config_lib.ExperimentConfig) -> str:
  t, e = config.training, config.evaluation
  sampled = (f'{t.clients_per_round} clients/round'
             if t.clients_per_round is not None else
             f'{t.client_fraction:g} of clients/round'
             if t.client_fraction is not None else 'default clients/round')
  return (
      f'{t.total_rounds} rounds, {sampled}, {t.client_epochs} local'
      f' epoch(s), batch {t.batch_size}, model {config.model}, seed'
      f' {config.seed}, evaluation every {e.eval_every} rounds on {e.eval_on}'
      + (f' ({e.max_eval_clients} fixed clients)' if e.max_eval_clients
         else ' (all clients)')
  )


def _write(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_comparison_table(
    root: str,
    algorithm_names: Sequence[str],
    target_accuracy: float,
    *,
    curves: bool = False,
) -> tuple[str, list[RunSummary]]:
  """(Re)writes ROOT/comparison.md and .json from the runs ROOT/<algorithm>/.

  `curves`: `curve_markdown` (the drift comparison's table), else
  `comparison_markdown`. Returns (path of comparison.md, summaries).
  """
  summaries = [summarize_run(os.path.join(root, a), target_accuracy)
               for a in algorithm_names]
  if curves:
    table = curve_markdown(summaries, target_accuracy)
  else:
    first = run_directory.RunDirectory(
        os.path.join(root, algorithm_names[0])).recorded_config()
    table = comparison_markdown(
        summaries, description=data_description(first),
        budget=budget_text(first), target_accuracy=target_accuracy)
  path = os.path.join(root, TABLE_NAME)
  _write(path, table)
  _write(os.path.join(root, JSON_NAME), json.dumps(
      {s.algorithm: s.to_json() for s in summaries}, indent=2) + '\n')
  return path, summaries


# --- seeds ---------------------------------------------------------------------

# metric -> its header in the multi-seed tables.
METRIC_LABELS = {
    'final_accuracy': 'final held-out accuracy',
    'last_mean_accuracy': f'mean held-out accuracy, last {LAST_EVALS} evals',
    'best_accuracy': 'best held-out accuracy',
    'rounds_to_target': 'rounds to target (runs that reached it)',
    'mb_to_target': 'MB to target (runs that reached it)',
    'seconds_per_round': 'seconds per round',
    'wall_seconds': 'wall time (s)',
    'dp_epsilon': 'epsilon (RDP)',
    'dp_epsilon_pld': 'epsilon (PLD)',
    'purity_all': 'cluster purity (all clients)',
}
COMPARISON_METRICS = ('final_accuracy', 'best_accuracy', 'rounds_to_target',
                      'wall_seconds')
DRIFT_METRICS = ('final_accuracy', 'last_mean_accuracy', 'best_accuracy',
                 'rounds_to_target', 'mb_to_target', 'seconds_per_round')


def check_baseline(baseline: Optional[str], names: Sequence[str]) -> str:
  """The baseline of a multi-seed study: `baseline`, else fedavg if compared,
  else the first algorithm. ValueError (one line) for one not compared."""
  if baseline is None:
    return DEFAULT_BASELINE if DEFAULT_BASELINE in names else names[0]
  if baseline not in names:
    raise ValueError(
        f'--baseline={baseline} is not valid: give one of the compared'
        f' algorithms ({",".join(names)})')
  return baseline


def seeded_configs(
    configs: Mapping[str, config_lib.ExperimentConfig], seeds: Sequence[int]
) -> dict[str, dict[int, config_lib.ExperimentConfig]]:
  """label -> seed -> `config` at that seed, run `<name>_seed{s}`.

  Only the seed changes (`ExperimentConfig` derives the data and DP seeds
  from it), so runs of one seed differ only in their algorithm.
  """
  return {
      label: {s: dataclasses.replace(
          c, seed=s,
          experiment_name=statistics.seed_run_name(c.experiment_name, s))
              for s in seeds}
      for label, c in configs.items()}


def flatten_seeded(seeded):
  """label -> seed -> config as one `train_all` mapping."""
  return {f'{label} (seed {s})': c for label, by_seed in seeded.items()
          for s, c in by_seed.items()}


def seed_metrics(summary: RunSummary) -> dict[str, Optional[float]]:
  """The per-seed numbers a multi-seed table aggregates."""
  return dict(
      final_accuracy=summary.final_accuracy,
      last_mean_accuracy=summary.last_mean_accuracy,
      best_accuracy=summary.best_accuracy,
      rounds_to_target=(None if summary.rounds_to_target is None
                        else float(summary.rounds_to_target)),
      mb_to_target=summary.mb_to_target,
      seconds_per_round=summary.seconds_per_round,
      wall_seconds=summary.wall_seconds)


Curves = Mapping[str, Mapping[int, Sequence[tuple[float, float]]]]


def seeds_report(
    results: Mapping[str, Mapping[int, Mapping[str, Optional[float]]]],
    curves: Curves,
    *,
    metrics: Sequence[str],
    baseline: Optional[str],
    title: str,
    preamble: str = '',
    confidence: float = 0.95,
    root: Optional[str] = None,
    label: str = 'algorithm',
) -> tuple[str, statistics.SeedAggregate]:
  """The multi-seed markdown report of per-seed results (no training).

  `results`: label -> seed -> metric -> value; `curves`: label -> seed ->
  [(round, held-out accuracy)] (the accuracy at fixed rounds is paired by
  these seeds). With `root`, also writes ROOT/PLOT_NAME and its TensorBoard
  image summary (`comparison/accuracy_curves`) in ROOT. Returns (markdown,
  aggregate).
  """
  agg = statistics.aggregate_seeds(results, metrics, baseline=baseline,
                                   confidence=confidence)
  level = f'{100 * agg.confidence:g}%'
  lines = [f'# {title}', '']
  if preamble:
    lines += [preamble, '']
  lines += [
      f'Seeds: {", ".join(map(str, agg.seeds))} (n = {len(agg.seeds)}). Each'
      f' cell: mean over seeds ± half-width of the {level} Student-t'
      ' interval (t_{0.975, n-1} s / sqrt(n)).'
      + (f' Δ: the paired difference {label} - {baseline} over the seeds'
         ' both ran (same seed = same partition, client sampling, shuffling'
         ' and initialisation), its interval and the two-sided paired t-test'
         ' p-value (scipy.stats.ttest_rel); p (Holm): that p-value adjusted'
         ' for the m comparisons against the baseline in the same table'
         ' (Holm 1979), the one to read when asking which of them differ'
         ' from it.' if baseline else ''),
      '',
      statistics.aggregate_markdown(agg, labels=METRIC_LABELS, label=label),
      '### per seed: final held-out accuracy', '',
      statistics.per_seed_markdown(results, 'final_accuracy', label=label),
      fixed_rounds_markdown(curves, baseline, confidence, label=label),
      climb_markdown(curves, confidence, label=label),
  ]
  if root is not None and any(curves.values()):
    png = os.path.join(root, PLOT_NAME)
    statistics.plot_curves(
        {k: list(v.values()) for k, v in curves.items() if v}, png,
        confidence=confidence,
        title=f'mean over {len(agg.seeds)} seeds, {level} Student-t band')
    statistics.write_image_summary(png, root, 'comparison/accuracy_curves')
    lines += [f'![held-out accuracy, mean and {level} band]({PLOT_NAME})', '']
  return '\n'.join(lines), agg


def fixed_rounds_markdown(
    curves: Curves,
    baseline: Optional[str],
    confidence: float = 0.95,
    *,
    label: str = 'algorithm',
) -> str:
  """Held-out accuracy at the rounds `statistics.report_rounds` picks
  (about 1/10, 1/4, 1/2, 3/4 and all of the budget): mean over seeds and
  its interval, and against `baseline` the paired difference per round
  with its p-value and the Holm-adjusted one (the family: that round's
  comparisons). '' if no round was evaluated by every run."""
  rounds = statistics.report_rounds(
      [c for by_seed in curves.values() for c in by_seed.values()])
  if not rounds:
    return ''
  names = {r: f'round {r:g}' for r in rounds}
  results = {
      name: {seed: {names[r]: dict(curve)[r] for r in rounds}
             for seed, curve in by_seed.items()}
      for name, by_seed in curves.items() if by_seed}
  if baseline not in results:
    baseline = None
  agg = statistics.aggregate_seeds(results, list(names.values()),
                                   baseline=baseline, confidence=confidence)
  level = f'{100 * agg.confidence:g}%'
  head = '| ' + ' | '.join(names.values()) + ' |'
  rule = '|---' * len(rounds) + '|'
  lines = ['### held-out accuracy at fixed rounds', '',
           f'Mean over seeds [{level} Student-t interval], at rounds every'
           ' run evaluated.', '', f'| {label} | n ' + head, '|---|---' + rule]
  for name in results:
    cells = []
    for metric in names.values():
      s = agg.get(name, metric)
      cells.append(f'{s.mean:.3f} {statistics.format_interval(s.low, s.high)}')
    lines.append(f'| {name} | {len(results[name])} | ' + ' | '.join(cells)
                 + ' |')
  if baseline is not None:
    lines += ['', f'Paired against {baseline} (same seeds): Δ [{level} CI],'
              ' p (paired t) and p (Holm over the other'
              f' {len(results) - 1} at that round).', '',
              f'| {label} ' + head, '|---' + rule]
    for name in results:
      if name == baseline:
        continue
      cells = []
      for metric in names.values():
        s = agg.get(name, metric)
        cells.append('n/a (no seed in common)' if s.paired is None else
                     f'{statistics.format_difference(s.paired)}, p'
                     f' {statistics.format_p(s.paired.p_value)} (Holm'
                     f' {statistics.format_p(s.p_holm)})')
      lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def climb_markdown(
    curves: Curves,
    confidence: float = 0.95,
    *,
    label: str = 'algorithm',
) -> str:
  """The report's budget check: per label, `statistics.late_climb` of its
  held-out accuracy curves (is it still rising at the end of the runs?)."""
  level = f'{100 * confidence:g}%'
  lines = [
      '### still climbing? held-out accuracy, last quarter of the rounds'
      ' minus the quarter before', '',
      'Per seed: the mean held-out accuracy at the evaluations in'
      ' (3T/4, T] minus that in (T/2, 3T/4], T the last round every seed'
      f' evaluated; the mean over seeds, its {level} interval and the paired'
      ' t-test of "no climb". An interval that includes 0: no rise the seeds'
      ' can resolve, the budget is long enough for this curve.', '',
      f'| {label} | n | rounds | climb [{level} CI] | p (paired t) |',
      '|---|---|---|---|---|']
  for name, by_seed in curves.items():
    series = list(by_seed.values())
    result = statistics.late_climb(series, confidence)
    if result is None:
      lines.append(f'| {name} | {len(series)} | - | n/a (a window without'
                   ' evaluations) | n/a |')
      continue
    c, t = result
    rounds = f'({t / 2:g}, {3 * t / 4:g}] -> ({3 * t / 4:g}, {t:g}]'
    lines.append(f'| {name} | {c.n} | {rounds} |'
                 f' {statistics.format_difference(c)} |'
                 f' {statistics.format_p(c.p_value)} |')
  return '\n'.join(lines) + '\n'


def write_seeds_table(
    root: str,
    run_names: Mapping[str, Mapping[int, str]],
    target_accuracy: float,
    *,
    metrics: Sequence[str],
    baseline: Optional[str],
    title: str,
    preamble: str = '',
    extra_json: Optional[Mapping[str, Any]] = None,
) -> tuple[str, statistics.SeedAggregate]:
  """(Re)writes ROOT/comparison.md, .json and the plot from the runs
  ROOT/<run_names[label][seed]>/. Returns (path of comparison.md, aggregate).
  """
  results, curves, runs = {}, {}, {}
  for label, by_seed in run_names.items():
    results[label], curves[label], runs[label] = {}, {}, {}
    for seed, name in by_seed.items():
      summary = summarize_run(os.path.join(root, name), target_accuracy)
      results[label][seed] = seed_metrics(summary)
      curves[label][seed] = summary.curve
      runs[label][seed] = dict(run=name, **summary.to_json())
  text, agg = seeds_report(results, curves, metrics=metrics,
                           baseline=baseline, title=title, preamble=preamble,
                           root=root)
  path = os.path.join(root, TABLE_NAME)
  _write(path, text)
  _write(os.path.join(root, JSON_NAME), json.dumps(
      dict(aggregate=agg.to_json(), runs=runs, **(extra_json or {})),
      indent=2, default=_json_default) + '\n')
  return path, agg


def _json_default(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  raise TypeError(type(x))


# --- fair tuning ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TuneConfig:
  """The learning-rate grid of `--tune`.

  Attributes:
    factors: each tuned learning rate takes value x factor for its paper
      default value (`comparison_client_learning_rate`, the spec's server
      default); the grid is the product over `TUNED_PARAMETERS` the algorithm
      uses (3 x 3 = 9 runs per algorithm by default, 3 for FedSGD).
    validation_fraction: with `eval_on=test_split`, the fraction of each
      training client's *training* examples held out for validation; with
      `eval_on=heldout_clients`, the fraction of the training clients held
      out as validation clients. The evaluation data of the study (test
      splits, held-out clients) is never used.
    rounds: rounds of every tuning run (None: the study's total_rounds).
  """

  factors: tuple[float, ...] = DEFAULT_TUNE_FACTORS
  validation_fraction: float = 0.2
  rounds: Optional[int] = None

  def __post_init__(self):
    if not self.factors or any(not (f > 0 and math.isfinite(f))
                               for f in self.factors):
      raise ValueError(
          f'--tune_factors={",".join(f"{f:g}" for f in self.factors)} is not'
          ' valid: give positive multipliers of the paper default, e.g.'
          ' 0.316,1,3.16')
    if len(set(self.factors)) != len(self.factors):
      raise ValueError('--tune_factors repeats a value')
    if not 0 < self.validation_fraction < 1:
      raise ValueError(
          f'--tune_validation_fraction={self.validation_fraction} is not'
          ' valid: must be in (0, 1)')
    if self.rounds is not None and self.rounds < 1:
      raise ValueError(f'--tune_rounds={self.rounds} is not valid: must be'
                       ' >= 1 (0 or unset: the study\'s --total_rounds)')


def tune_grid(config: config_lib.ExperimentConfig,
              factors: Sequence[float]) -> list[dict[str, float]]:
  """The grid points of one algorithm's run `config`: dicts of the tuned
  learning rates it uses, the paper default (every factor 1) first so that
  ties keep it."""
  values = config.algorithm.values
  names = [n for n in TUNED_PARAMETERS if values.get(n) is not None]
  ordered = sorted(factors, key=lambda f: (abs(math.log(f)), f))
  points = []
  for combo in itertools.product(ordered, repeat=len(names)):
    points.append({n: float(values[n]) * f for n, f in zip(names, combo)})
  return points


def _point_name(algorithm: str, point: Mapping[str, float]) -> str:
  short = {'client_learning_rate': 'lrc', 'server_learning_rate': 'lrs'}
  return algorithm + ''.join(f'_{short[k]}{v:.4g}' for k, v in point.items())


def _tuning_score(config: config_lib.ExperimentConfig, log) -> float:
  """Mean validation accuracy of the last LAST_EVALS evaluations of a tuning
  run (trained or resumed here); -inf if the run diverged. Steadier than the
  final evaluation alone, as for the drift table."""
  from tff_research.run import training  # pylint: disable=g-import-not-at-top
  marker = os.path.join(config.run_dir, 'diverged.txt')
  if os.path.exists(marker):
    return -math.inf
  log(f'=== tuning {config.experiment_name}: {config.run_dir} ===')
  try:
    training.train(config, log=log)
  except ValueError as e:
    if 'diverged' not in str(e) and 'not finite' not in str(e):
      raise
    # A learning rate too large for the algorithm is a result, not an error;
    # the marker keeps a re-run from training it again.
    log(f'tuning run {config.experiment_name} diverged: {e}')
    _write(marker, str(e) + '\n')
    return -math.inf
  return summarize_run(config.run_dir).last_mean_accuracy


def tune_hyperparameters(
    config: config_lib.ExperimentConfig,
    configs: Mapping[str, config_lib.ExperimentConfig],
    tune: TuneConfig,
    *,
    log=print,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
  """Chooses each algorithm's learning rates on the validation split.

  Every grid point of `tune_grid(configs[a], tune.factors)` is trained in
  `config.run_dir/tune/<algorithm>_lrc<eta_l>_lrs<eta>/` with
  `validation_fraction` set (`run/validation_split.py`: the study's
  training data only; recorded in its hparams.json, so `rebuild_run` and
  `evaluate.py` read the same validation data) at
  `config.seed`, and scored by its mean validation accuracy over the last
  LAST_EVALS evaluations; the best point wins (ties: the paper default, then
  grid order). Writes ROOT/tuning.json. Returns (algorithm -> chosen values,
  the tuning record).
  """
  from tff_research.run import validation_split  # pylint: disable=g-import-not-at-top
  evaluation = dataclasses.replace(
      config.evaluation, validation_fraction=tune.validation_fraction)
  tune_root = os.path.join(config.run_dir, TUNE_DIR)
  record: dict[str, Any] = dict(
      validation='tuning: ' + validation_split.describe(evaluation),
      selection=(f'mean validation accuracy of the last {LAST_EVALS}'
                 ' evaluations; ties keep the paper default'),
      seed=config.seed, factors=list(tune.factors),
      rounds=tune.rounds or config.training.total_rounds, algorithms={})
  tuning_configs = {}
  for algorithm, c in configs.items():
    for point in tune_grid(c, tune.factors):
      tuning_configs[(algorithm, _point_name(algorithm, point))] = (
          point, dataclasses.replace(
              c, logdir=tune_root, experiment_name=_point_name(algorithm,
                                                               point),
              algorithm=c.algorithm.replace(**point), evaluation=evaluation,
              training=dataclasses.replace(
                  c.training,
                  total_rounds=tune.rounds or c.training.total_rounds)))
  chosen = {}
  for algorithm in configs:
    best, best_score, grid = None, -math.inf, []
    for (alg, name), (point, c) in tuning_configs.items():
      if alg != algorithm:
        continue
      score = _tuning_score(c, log)
      grid.append(dict(run=os.path.join(TUNE_DIR, name), values=point,
                       validation_accuracy=(score if math.isfinite(score)
                                            else None)))
      if best is None or score > best_score:
        best, best_score = point, score
    chosen[algorithm] = best
    record['algorithms'][algorithm] = dict(
        chosen=best, paper_default=grid[0]['values'],
        validation_accuracy=best_score if math.isfinite(best_score) else None,
        grid=grid)
  _write(os.path.join(config.run_dir, TUNING_NAME),
         json.dumps(record, indent=2) + '\n')
  return chosen, record


def tuning_markdown(record: Mapping[str, Any]) -> str:
  """The report's section on the tuning: grid, validation, chosen values."""
  lines = [
      f'Tuned (`--tune`): {record["validation"]}; grid = paper default x'
      f' {", ".join(f"{f:g}" for f in record["factors"])} per learning rate,'
      f' {record["rounds"]} rounds at seed {record["seed"]}, selected by'
      f' {record["selection"]} (every point: {TUNING_NAME}).', '',
      '| algorithm | chosen | paper default | validation accuracy |',
      '|---|---|---|---|']
  fmt = lambda v: ', '.join(f'{_SHORT_NAMES[k]}={x:.4g}' for k, x in v.items())  # pylint: disable=unnecessary-lambda-assignment
  for algorithm, r in record['algorithms'].items():
    acc = r['validation_accuracy']
    lines.append(f'| {algorithm} | {fmt(r["chosen"] or {})} |'
                 f' {fmt(r["paper_default"])} |'
                 f' {"diverged" if acc is None else f"{acc:.4f}"} |')
  return '\n'.join(lines)


# --- the two studies -----------------------------------------------------------


def _seed_study(config, configs, seeds, baseline, target_accuracy, *, metrics,
                title, preamble, log, extra_json=None):
  seeded = seeded_configs(configs, seeds)  # Validates every run first.
  train_all(flatten_seeded(seeded), log=log)
  run_names = {a: {s: c.experiment_name for s, c in by_seed.items()}
               for a, by_seed in seeded.items()}
  hyper = '; '.join(f'{a}: {hyperparameter_text(c.algorithm) or "-"}'
                    for a, c in configs.items())
  preamble = (preamble + '\n\n' if preamble else '') + (
      f'Hyperparameters: {hyper}.')
  return write_seeds_table(
      config.run_dir, run_names, target_accuracy, metrics=metrics,
      baseline=baseline, title=title, preamble=preamble,
      extra_json=extra_json)


def _tuned(config, configs, tune, preamble, log):
  """(configs with the learning rates `tune` chose, preamble with the tuning
  section, the report's extra json); unchanged without `tune`."""
  if tune is None:
    return configs, preamble, None
  chosen, record = tune_hyperparameters(config, configs, tune, log=log)
  configs = {a: dataclasses.replace(
      c, algorithm=c.algorithm.replace(**chosen[a]),
      experiment_name=f'{a}_tuned') for a, c in configs.items()}
  return configs, preamble + '\n\n' + tuning_markdown(record), {
      'tuning': record}


def run_comparison(
    config: config_lib.ExperimentConfig,
    algorithm_names: Optional[Sequence[str]] = None,
    *,
    given: Collection[str] = (),
    target_accuracy: float = 0.8,
    seeds: Optional[Sequence[int]] = None,
    baseline: Optional[str] = None,
    tune: Optional[TuneConfig] = None,
    log=print,
):
  """Trains every algorithm with its paper defaults; writes the table.

  Args:
    config: data, model, seed and budget of every run; the runs are
      `config.run_dir/<algorithm>/`.
    algorithm_names: default `compared_algorithms()`.
    given: the flags the command line set; a per-algorithm one is an error.
    target_accuracy: "rounds to" column.
    seeds: run every algorithm at each seed (`<algorithm>_seed{s}`) and
      report means, t intervals and paired comparisons (module docstring).
    baseline: the paired comparisons' reference (default fedavg if
      compared, else the first algorithm); implies the multi-seed report.
    tune: choose each algorithm's learning rates on a validation split of
      the training clients first (`tune_hyperparameters`); the tuned runs
      are `<algorithm>_tuned_seed{s}`. Implies the multi-seed report.
    log: progress lines.

  Returns (path of comparison.md, summaries) for a single-seed comparison,
  (path, `statistics.SeedAggregate`) for the multi-seed report. Raises
  ValueError (one line) before anything is written for an invalid
  comparison.
  """
  names = list(compared_algorithms() if algorithm_names is None
               else algorithm_names)
  check_algorithms(names)
  check_target(target_accuracy)
  check_given(given)
  configs = paper_default_configs(config, names)
  if seeds is None and baseline is None and tune is None:
    train_all(configs, log=log)
    return write_comparison_table(config.run_dir, names, target_accuracy)
  seeds = tuple(seeds) if seeds else (config.seed,)
  baseline = check_baseline(baseline, names)
  seeded_configs(configs, seeds)  # Validate before the tuning trains.
  preamble = (f'Budget (identical for every algorithm and seed):'
              f' {budget_text(config)}.')
  configs, preamble, extra = _tuned(config, configs, tune, preamble, log)
  return _seed_study(
      config, configs, seeds, baseline, target_accuracy,
      metrics=COMPARISON_METRICS,
      title=f'Algorithm comparison: {data_description(config)}',
      preamble=preamble, log=log, extra_json=extra)


def run_drift_comparison(
    config: config_lib.ExperimentConfig,
    algorithm_names: Sequence[str] = DRIFT_ALGORITHMS,
    *,
    given: Mapping[str, Any] = {},  # pylint: disable=dangerous-default-value
    target_accuracy: float = 0.8,
    seeds: Optional[Sequence[int]] = None,
    baseline: Optional[str] = None,
    tune: Optional[TuneConfig] = None,
    log=print,
):
  """Trains every algorithm with the given hyperparameters; writes the
  curves table (see the module docstring).

  `given` (flag -> value set on the command line) must not hold
  `algorithm`: each run sets it. With `seeds` (or `baseline`, default
  fedavg, or `tune`), the multi-seed report of `run_comparison`; `tune`
  chooses the learning rates around the given ones first, as there. Returns (path of
  comparison.md, summaries or aggregate); ValueError (one line) before
  training for bad input.
  """
  names = list(algorithm_names)
  check_algorithms(names, flag='--compare_algorithms')
  check_target(target_accuracy)
  if 'algorithm' in given:
    raise ValueError(
        f'--algorithm={given["algorithm"]} is not valid here: the comparison'
        f' runs every algorithm of {",".join(names)} itself')
  configs = given_hyperparameter_configs(config, names, given)
  if seeds is None and baseline is None and tune is None:
    train_all(configs, log=log)
    return write_comparison_table(config.run_dir, names, target_accuracy,
                                  curves=True)
  seeds = tuple(seeds) if seeds else (config.seed,)
  baseline = check_baseline(baseline, names)
  seeded_configs(configs, seeds)  # Validate before the tuning trains.
  configs, preamble, extra = _tuned(
      config, configs, tune,
      f'{data_description(config)}. Budget (identical for every algorithm'
      f' and seed): {budget_text(config)}. Target accuracy'
      f' {target_accuracy:g}.', log)
  return _seed_study(
      config, configs, seeds, baseline, target_accuracy,
      metrics=DRIFT_METRICS,
      title=f'Client drift: {", ".join(names)}',
      preamble=preamble, log=log, extra_json=extra)
