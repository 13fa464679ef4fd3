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
* `run_drift_comparison` (`experiments/scaffold_vs_fedavg.py`, issue 4):
  SCAFFOLD against FedAvg and FedProx with the hyperparameters given on the
  command line (Karimireddy et al. 2020 motivate control variates by client
  drift under label skew). Table: rounds and MB of communication to the
  target, final / last-evaluations mean / best accuracy, seconds per round,
  and the held-out accuracy curves side by side.

Every configuration is built (and so validated) before any run trains.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
import dataclasses
import json
import math
import os
from typing import Any, Optional

from tff_research.algorithms import registry
from tff_research.program import config as config_lib
from tff_research.program import run_directory

TABLE_NAME = 'comparison.md'
JSON_NAME = 'comparison.json'
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
  from tff_research.program import training  # pylint: disable=g-import-not-at-top
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


# --- the two studies -----------------------------------------------------------


def run_comparison(
    config: config_lib.ExperimentConfig,
    algorithm_names: Optional[Sequence[str]] = None,
    *,
    given: Collection[str] = (),
    target_accuracy: float = 0.8,
    log=print,
) -> tuple[str, list[RunSummary]]:
  """Trains every algorithm with its paper defaults; writes the table.

  Args:
    config: data, model, seed and budget of every run; the runs are
      `config.run_dir/<algorithm>/`.
    algorithm_names: default `compared_algorithms()`.
    given: the flags the command line set; a per-algorithm one is an error.
    target_accuracy: "rounds to" column.
    log: progress lines.

  Returns (path of comparison.md, summaries). Raises ValueError (one line)
  before anything is written for an invalid comparison.
  """
  names = list(compared_algorithms() if algorithm_names is None
               else algorithm_names)
  check_algorithms(names)
  check_target(target_accuracy)
  check_given(given)
  configs = paper_default_configs(config, names)
  train_all(configs, log=log)
  return write_comparison_table(config.run_dir, names, target_accuracy)


def run_drift_comparison(
    config: config_lib.ExperimentConfig,
    algorithm_names: Sequence[str] = DRIFT_ALGORITHMS,
    *,
    given: Mapping[str, Any] = {},  # pylint: disable=dangerous-default-value
    target_accuracy: float = 0.8,
    log=print,
) -> tuple[str, list[RunSummary]]:
  """Trains every algorithm with the given hyperparameters; writes the
  curves table (see the module docstring).

  `given` (flag -> value set on the command line) must not hold
  `algorithm`: each run sets it. Returns (path of comparison.md,
  summaries); ValueError (one line) before training for bad input.
  """
  names = list(algorithm_names)
  check_algorithms(names, flag='--compare_algorithms')
  check_target(target_accuracy)
  if 'algorithm' in given:
    raise ValueError(
        f'--algorithm={given["algorithm"]} is not valid here: the comparison'
        f' runs every algorithm of {",".join(names)} itself')
  configs = given_hyperparameter_configs(config, names, given)
  train_all(configs, log=log)
  return write_comparison_table(config.run_dir, names, target_accuracy,
                                curves=True)
