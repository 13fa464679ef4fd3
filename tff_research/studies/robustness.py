"""Robust aggregation against attacks: aggregators x attacks x malicious
fraction over seeds (`experiments/robustness_study.py`, docs/robustness.md).

`configs(config, aggregators, attacks, fractions, parameters)` derives one
run per cell from the command line's config: `mean_clean` (the plain mean,
every client honest) always, and `<rule>_<attack>_<fraction>` for every
rule, attack and fraction > 0 (a fraction of 0 or `--attacks=none` is the
rule's clean run, `<rule>_clean`); under `--malicious_per_round=exact` an
attacked cell's label ends in `_exact`, so it never resumes a run whose
rounds sampled their attackers, and the clean runs are shared. Every run is
uniformly weighted (rules
that select or rank updates take no example weight, and the mean is
compared on the same footing). Each rule takes the given rule parameters
that apply to it (`--trim_fraction` to the trimmed mean, ...).

`run_study` trains every cell at every seed (`comparison.seeded_configs`,
runs `PREFIX_<cell>_seed<s>`, resumed or skipped when finished). A run the
divergence guard stops is a result, not an error: it is recorded as
diverged (a `stopped.txt` beside its metrics, so a re-run does not train it
again) and has no final accuracy (an evaluation before it diverged would
flatter it); the table counts the diverged seeds. The report, in
LOGDIR/PREFIX_robustness_<attacks>_<fractions>/comparison.md with the
accuracy plot: per cell the final held-out accuracy and backdoor success
(mean and 95 % Student-t interval over seeds), the paired difference
against the mean under the same attack and fraction (and against the clean
mean), and how many seeds diverged; then the multi-seed report of
`comparison.seeds_report` against `mean_clean`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
import os
from typing import Any, Optional

from tff_research.aggregators import config as aggregation_config
from tff_research.attacks import config as attack_config
from tff_research.run import config as config_lib
from tff_research.run import run_directory
from tff_research.studies import comparison
from tff_research.studies import statistics

CLEAN = 'mean_clean'
STOPPED = 'stopped.txt'
SEED_METRICS = ('final_accuracy', 'backdoor_success')
REPORT_DIR = '{prefix}_robustness_{attacks}_{fractions}'


def per_round_suffix(per_round: str) -> str:
  """What the labels of attacked runs (and the report's directory) end
  in under `--malicious_per_round=per_round`."""
  return '_exact' if per_round == 'exact' else ''


@dataclasses.dataclass(frozen=True)
class Cell:
  """One configuration of the study."""

  rule: str
  attack: str
  fraction: float
  per_round: str = 'sampled'

  @property
  def clean(self) -> bool:
    return self.attack == 'none' or self.fraction == 0

  @property
  def label(self) -> str:
    if self.clean:
      return f'{self.rule}_clean'
    return (f'{self.rule}_{self.attack}_{self.fraction:g}'
            + per_round_suffix(self.per_round))

  def reference(self) -> str:
    """The label of the mean under the same attack and fraction."""
    return dataclasses.replace(self, rule='mean').label


def cells(aggregators: Sequence[str], attacks: Sequence[str],
          fractions: Sequence[float], per_round: str = 'sampled'
          ) -> list[Cell]:
  """`mean_clean`, then every (rule, attack, fraction), each label once."""
  out = {CLEAN: Cell('mean', 'none', 0.0)}
  for attack in attacks:
    for fraction in fractions:
      for rule in aggregators:
        cell = Cell(rule, attack, float(fraction), per_round)
        if cell.clean:
          cell = Cell(rule, 'none', 0.0)
        out.setdefault(cell.label, cell)
  return list(out.values())


def configs(config: config_lib.ExperimentConfig, aggregators, attacks,
            fractions, parameters: Optional[Mapping[str, Any]] = None
            ) -> dict[str, config_lib.ExperimentConfig]:
  """label -> the run of that cell (ValueError, one line, if one is
  invalid: checked for every cell before anything trains)."""
  out = {}
  base = config.algorithm.attack
  for cell in cells(aggregators, attacks, fractions, base.per_round):
    rule = aggregation_config.AggregationConfig(
        cell.rule, parameters or {}, lenient=True)
    # A clean run records the attack flags' defaults, so studies of other
    # attacks share it.
    attack = attack_config.AttackConfig() if cell.clean else (
        attack_config.AttackConfig(
            kind=cell.attack, malicious_fraction=cell.fraction,
            per_round=cell.per_round, scale=base.scale,
            backdoor_target=base.backdoor_target,
            seed=config.seed))
    out[cell.label] = dataclasses.replace(
        config, experiment_name=f'{config.experiment_name}_{cell.label}',
        algorithm=config.algorithm.replace(weighted=False, aggregation=rule,
                                           attack=attack))
  return out


def train_guarded(runs: Mapping[str, config_lib.ExperimentConfig],
                  log=print) -> None:
  """Trains (or resumes) every run; a run the divergence guard stops is
  recorded (`STOPPED`) and not trained again."""
  from tff_research.run import training  # pylint: disable=g-import-not-at-top
  for label, config in runs.items():
    stopped = os.path.join(config.run_dir, STOPPED)
    if os.path.exists(stopped):
      log(f'=== {label}: stopped before ({config.run_dir}); skipped ===')
      continue
    log(f'=== {label}: {config.run_dir} ===')
    try:
      training.train(config, log=log)
    except ValueError as e:
      if 'diverged' not in str(e):
        raise
      log(f'{label}: {e}')
      with open(stopped, 'w') as f:
        f.write(str(e) + '\n')


def run_result(run_dir: str) -> dict[str, Any]:
  """final_accuracy, backdoor_success (last evaluation's; None if not a
  backdoor run), diverged (round or None), curve of one finished run."""
  rows = run_directory.RunDirectory(run_dir).metrics()
  evaluated = [r for r in rows if r.get('eval_accuracy') is not None]
  last = evaluated[-1] if evaluated else {}
  diverged = None
  if os.path.exists(os.path.join(run_dir, STOPPED)):
    diverged = rows[-1]['round'] + 1 if rows else 1
  return dict(
      final_accuracy=None if diverged else last.get('eval_accuracy'),
      backdoor_success=last.get('attack_backdoor_success'),
      diverged=diverged,
      curve=tuple((r['round'], r['eval_accuracy']) for r in evaluated))


def _interval(values) -> str:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return '-'
  mean, low, high = statistics.mean_ci(values)
  if len(values) < 2:
    return f'{mean:.3f}'
  return f'{mean:.3f} [{low:.3f}, {high:.3f}]'


def _versus(results, label, other, metric='final_accuracy') -> str:
  if other == label or other not in results:
    return '-'
  seeds = [s for s in results[label] if s in results[other]
           and results[label][s][metric] is not None
           and results[other][s][metric] is not None]
  if not seeds:
    return '-'
  cmp = statistics.paired_comparison(
      [results[label][s][metric] for s in seeds],
      [results[other][s][metric] for s in seeds])
  return (f'{statistics.format_difference(cmp)}, p'
          f' {statistics.format_p(cmp.p_value)}')


def table(results: Mapping[str, Mapping[int, Mapping[str, Any]]],
          study_cells: Sequence[Cell]) -> str:
  """The per-cell markdown table (module docstring)."""
  lines = ['| rule | attack | malicious | final accuracy | Δ vs mean, same'
           ' attack | Δ vs clean mean | backdoor success | diverged |',
           '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  for cell in study_cells:
    by_seed = results[cell.label]
    diverged = [f'{s}@{r["diverged"]}' for s, r in by_seed.items()
                if r['diverged']]
    lines.append(
        f'| {cell.rule} | {cell.attack} | {cell.fraction:g} |'
        f' {_interval(r["final_accuracy"] for r in by_seed.values())} |'
        f' {_versus(results, cell.label, cell.reference())} |'
        f' {_versus(results, cell.label, CLEAN)} |'
        f' {_interval(r["backdoor_success"] for r in by_seed.values())} |'
        f' {len(diverged)}/{len(by_seed)}'
        + (f' (seed@round: {", ".join(diverged)})' if diverged else '')
        + ' |')
  return '\n'.join(lines)


def run_study(config: config_lib.ExperimentConfig, aggregators, attacks,
              fractions, seeds, parameters=None, log=print) -> str:
  """Trains every cell at every seed; writes and returns the report."""
  runs = configs(config, aggregators, attacks, fractions, parameters)
  per_round = config.algorithm.attack.per_round
  study_cells = cells(aggregators, attacks, fractions, per_round)
  seeded = comparison.seeded_configs(runs, seeds)
  train_guarded(comparison.flatten_seeded(seeded), log=log)
  results = {label: {s: run_result(c.run_dir) for s, c in by_seed.items()}
             for label, by_seed in seeded.items()}
  root = os.path.join(config.logdir, REPORT_DIR.format(
      prefix=config.experiment_name, attacks='_'.join(attacks),
      fractions='_'.join(f'{f:g}' for f in fractions))
      + per_round_suffix(per_round))
  os.makedirs(root, exist_ok=True)
  report, _ = comparison.seeds_report(
      {label: {s: {m: r[m] for m in SEED_METRICS} for s, r in by_seed.items()}
       for label, by_seed in results.items()},
      {label: {s: r['curve'] for s, r in by_seed.items()}
       for label, by_seed in results.items()},
      metrics=SEED_METRICS, baseline=CLEAN,
      title='Robust aggregation against attacks',
      preamble=f'Budget: {comparison.budget_text(config)}.', root=root,
      label='configuration')
  text = '\n'.join([
      f'# Robustness: {comparison.data_description(config)}', '',
      f'Budget: {comparison.budget_text(config)}; seeds'
      f' {", ".join(map(str, seeds))}; attack scale'
      f' {config.algorithm.attack.scale:g}; attackers per round'
      f' {per_round}. Cells: mean and 95 % Student-t'
      ' interval over seeds; Δ: paired difference over seeds with its'
      ' interval and paired t-test p-value. A diverged run (stopped by the'
      ' divergence guard) has no final accuracy and is counted under'
      ' diverged.', '',
      table(results, study_cells), '', report])
  with open(os.path.join(root, comparison.TABLE_NAME), 'w') as f:
    f.write(text)
  return text
