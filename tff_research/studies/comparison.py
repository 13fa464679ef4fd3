"""Several algorithms, one federation, one budget: runs and a table.

`run_comparison(algorithms)` trains each algorithm through the ordinary
training entry point (`experiment.run_from_flags`, i.e. exactly what
`experiments/train.py` would do with the same flags) as run
`LOGDIR/NAME/<algorithm>/`, then writes `LOGDIR/NAME/comparison.md`:
final held-out accuracy, the first evaluated round reaching the target
accuracy, and wall time (training rounds + evaluations, summed from each
run's metrics.csv, so a resumed or extended comparison reports the whole
run).

Every algorithm runs with the data, model, seed and budget flags given, and
with its own defaults from the papers (Reddi et al. 2021's EMNIST-CNN
values, see `algorithms.default_hyperparameters` and
`server_optimizers.PAPER_CLIENT_LEARNING_RATES`). Setting an algorithm
hyperparameter on the comparison's command line is therefore an error: a
single value would not mean the same thing for every algorithm.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any, Optional

from absl import flags

from tff_research import algorithms
from tff_research import experiment
from tff_research import experiment_flags
from tff_research.algorithms import server_optimizers

COMPARED_ALGORITHMS = ('fedavg', 'fedsgd', 'fedprox', 'fedavgm', 'fedadam',
                       'fedyogi', 'fedadagrad')
# Set per algorithm by the comparison.
PER_ALGORITHM_FLAGS = (
    'algorithm', 'client_optimizer', 'client_learning_rate', 'client_momentum',
    'server_learning_rate', 'server_momentum', 'server_beta_1',
    'server_beta_2', 'server_epsilon', 'proximal_strength', 'weight_by_size',
)
TABLE_NAME = 'comparison.md'


def client_learning_rate(algorithm: str) -> Optional[float]:
  """The client learning rate an algorithm is compared with (None: unused).

  Reddi et al.'s best EMNIST-CNN values; FedProx is FedAvg plus the proximal
  term and uses FedAvg's.
  """
  if algorithm == 'fedsgd':
    return None
  if algorithm == 'fedprox':
    algorithm = 'fedavg'
  return server_optimizers.PAPER_CLIENT_LEARNING_RATES.get(algorithm)


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """What the table reports about one finished run."""

  algorithm: str
  rounds: int
  final_accuracy: float
  best_accuracy: float
  rounds_to_target: Optional[int]
  train_seconds: float
  eval_seconds: float
  hyperparameters: str

  @property
  def wall_seconds(self) -> float:
    return self.train_seconds + self.eval_seconds


def _float(value: str) -> Optional[float]:
  return float(value) if value not in ('', None) else None


def _hyperparameter_text(hparams: dict[str, Any]) -> str:
  names = {
      'client_learning_rate': 'eta_l', 'server_learning_rate': 'eta',
      'server_momentum': 'beta', 'server_beta_1': 'beta_1',
      'server_beta_2': 'beta_2', 'server_epsilon': 'tau',
      'proximal_strength': 'mu',
  }
  parts = []
  for flag, short in names.items():
    value = hparams.get(flag)
    if value is None or not algorithms.hyperparameter_applies(
        flag, hparams['algorithm'], hparams.get('client_optimizer', 'sgd')):
      continue
    if value > 0 and flag.endswith('learning_rate'):
      exponent = math.log10(value)
      if abs(exponent * 2 - round(exponent * 2)) < 1e-9:
        parts.append(f'{short}=10^{exponent:g}')
        continue
    parts.append(f'{short}={value:g}')
  return ', '.join(parts)


def summarize_run(run_dir: str, target_accuracy: float) -> RunSummary:
  """Reads a run's metrics.csv and hparams.json.

  Raises ValueError if the run has no evaluated round.
  """
  with open(os.path.join(run_dir, 'hparams.json')) as f:
    hparams = json.load(f)
  with open(os.path.join(run_dir, 'metrics.csv'), newline='') as f:
    rows = sorted(csv.DictReader(f), key=lambda r: int(r['round']))
  evaluated = [(int(r['round']), float(r['eval_accuracy'])) for r in rows
               if _float(r.get('eval_accuracy')) is not None]
  if not evaluated:
    raise ValueError(f'{run_dir}/metrics.csv has no evaluated round')
  reached = [r for r, acc in evaluated if acc >= target_accuracy]
  return RunSummary(
      algorithm=hparams['algorithm'],
      rounds=int(rows[-1]['round']),
      final_accuracy=evaluated[-1][1],
      best_accuracy=max(acc for _, acc in evaluated),
      rounds_to_target=reached[0] if reached else None,
      train_seconds=sum(_float(r.get('round_seconds')) or 0.0 for r in rows),
      eval_seconds=sum(_float(r.get('eval_seconds')) or 0.0 for r in rows),
      hyperparameters=_hyperparameter_text(hparams),
  )


def comparison_markdown(
    summaries: Sequence[RunSummary],
    *,
    description: str,
    budget: str,
    target_accuracy: float,
) -> str:
  """The comparison table, best final accuracy first."""
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


def _budget_text(hparams: dict[str, Any]) -> str:
  cpr = hparams.get('clients_per_round')
  sampled = (f'{cpr} clients/round' if cpr is not None else
             f'{hparams["client_fraction"]:g} of clients/round'
             if hparams.get('client_fraction') is not None else
             'default clients/round')
  return (
      f'{hparams["total_rounds"]} rounds, {sampled},'
      f' {hparams["client_epochs"]} local epoch(s), batch'
      f' {hparams["batch_size"]}, model {hparams["model"]}, seed'
      f' {hparams["seed"]}, evaluation every {hparams["eval_every"]} rounds'
      f' on {hparams["eval_on"]}'
      + (f' ({hparams["max_eval_clients"]} fixed clients)'
         if hparams.get('max_eval_clients') else ' (all clients)')
  )


def check_flags(algorithm_names: Sequence[str]) -> None:
  """Raises ValueError (one line) for a comparison the flags cannot run."""
  unknown = [a for a in algorithm_names if a not in algorithms.ALGORITHMS]
  if unknown or not algorithm_names:
    raise ValueError(
        f'--algorithms={",".join(algorithm_names)} is not valid: give a comma'
        f' separated subset of {",".join(algorithms.ALGORITHMS)}'
    )
  if len(set(algorithm_names)) != len(algorithm_names):
    raise ValueError(
        f'--algorithms={",".join(algorithm_names)} names an algorithm twice')
  fv = flags.FLAGS
  for name in PER_ALGORITHM_FLAGS:
    if fv[name].present:
      raise ValueError(
          f'--{name} cannot be set for a comparison: each algorithm runs with'
          ' its paper defaults (docs/algorithms.md); use experiments/train.py'
          ' for other settings'
      )


def run_comparison(
    algorithm_names: Sequence[str] = COMPARED_ALGORITHMS,
    *,
    target_accuracy: float = 0.8,
) -> tuple[str, list[RunSummary]]:
  """Trains every algorithm as LOGDIR/NAME/<algorithm>; writes the table.

  Data, model, seed and budget come from the parsed flags. Returns
  (path of comparison.md, summaries). Raises ValueError (one line) for bad
  flags before anything is written.
  """
  check_flags(algorithm_names)
  fv = flags.FLAGS
  comparison_name = fv.experiment_name
  if (not comparison_name or '/' in comparison_name
      or comparison_name in ('.', '..')):
    raise ValueError(
        f'--experiment_name={comparison_name!r} is not valid: give a non-empty'
        ' name without "/" (outputs go to LOGDIR/NAME/<algorithm>/)')
  root = os.path.join(fv.logdir, comparison_name)
  saved = {name: fv[name].value for name in experiment_flags.all_flag_names()}
  try:
    for algorithm in algorithm_names:
      for name, value in saved.items():
        fv[name].value = value
      fv.logdir = root
      fv.experiment_name = algorithm
      fv.algorithm = algorithm
      lr = client_learning_rate(algorithm)
      if lr is not None:
        fv.client_learning_rate = lr
      print(f'=== {algorithm} ===')
      experiment.run_from_flags()
  finally:
    for name, value in saved.items():
      fv[name].value = value
  return write_comparison_table(root, algorithm_names, target_accuracy)


def write_comparison_table(
    root: str, algorithm_names: Sequence[str], target_accuracy: float
) -> tuple[str, list[RunSummary]]:
  """(Re)writes ROOT/comparison.md from the runs ROOT/<algorithm>/."""
  summaries = [summarize_run(os.path.join(root, a), target_accuracy)
               for a in algorithm_names]
  with open(os.path.join(root, algorithm_names[0], 'hparams.json')) as f:
    first_hparams = json.load(f)
  table = comparison_markdown(
      summaries, description=_data_description(first_hparams),
      budget=_budget_text(first_hparams), target_accuracy=target_accuracy)
  path = os.path.join(root, TABLE_NAME)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(table)
  os.replace(tmp, path)
  return path, summaries


def _data_description(hparams: dict[str, Any]) -> str:
  if hparams['dataset'] == 'digits' or hparams.get('dirichlet_alpha') or (
      hparams.get('data_balance', 1.0) != 1.0) or hparams.get(
          'missing_classes'):
    skew = (f'Dirichlet alpha={hparams["dirichlet_alpha"]:g}'
            if hparams.get('dirichlet_alpha') else 'IID labels')
    return (f'{hparams["dataset"]} re-partitioned into'
            f' {hparams["num_clients"]} clients ({skew})')
  return f'{hparams["dataset"]}, natural writer split'
