"""Grid sweeps: every combination of some flags, one train.py run each.

A sweep config is JSON:

    {
      "logdir": "logdir/sweep_dropout",        # all runs live under it
      "parallel": 1,                           # runs at a time (optional)
      "base": {"model": "linear", "total_rounds": 20},   # every run
      "grid": {"algorithm": ["fedavg", "scaffold"],
               "dropout_rate": [0.0, 0.5], "seed": [0, 1]}
    }

Run `i` is `experiments/train.py` with the base flags, one value of each grid
flag, `--logdir=LOGDIR` and `--experiment_name` naming the grid values
(`algorithm=fedavg,dropout_rate=0.5,seed=0`), as a separate process (its own
TFF worker), so runs share nothing but the logdir, and TensorBoard and its
HParams dashboard compare them.

Every run is validated with the training flags before any starts. A run whose
last checkpoint is at `total_rounds` is complete and skipped; any other is
(re)started, and train.py resumes it after its latest checkpoint, so killing
a sweep and running it again redoes nothing that was checkpointed. At the end
the final held-out metrics of every run go to `LOGDIR/results.csv` and
`LOGDIR/results.md`.

Several sweeps of one config share the work: a sweep claims a run before
starting it (an OS lock, `LOGDIR/sweep_logs/NAME.lock`, held while its
train.py runs it, released by the kernel if the sweep dies), so no run is
started twice and each run's log has one writer. A run another sweep claimed,
or whose directory another train.py holds, is waited for: done if it is
complete when its holder lets go, started here otherwise. A sweep succeeds
when every run finished, whoever ran it.

With seeds (`--seeds=N` or `--seeds=0,1,2`, `with_seeds`), the grid's `seed`
dimension is set to those seeds (runs `...,seed=S`, the sweep's existing
naming, so runs of an earlier sweep over the same seeds are reused), and
`write_seed_results` writes `LOGDIR/results_seeds.md` (+ .json): per
configuration (the grid values without the seed) and final metric, the mean
over seeds with its 95 % Student-t interval and the paired comparison against
a baseline configuration (same seed = same partition and client sampling),
and `LOGDIR/accuracy_curves.png`, also a TensorBoard image in LOGDIR.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from tff_research.execution import worker
from tff_research.run import run_directory
from tff_research.run import run_lock

# Claims of a run refused by a holder with no readable pid, before waiting.
_CLAIM_ATTEMPTS = 3
_CONFIG_KEYS = frozenset({'logdir', 'parallel', 'base', 'grid'})
# Set by the sweep for each run; not configurable.
_RESERVED = frozenset({'logdir', 'experiment_name'})
# Not hyperparameters: left out of the HParams domains.
_NOT_HPARAMS = frozenset({'logdir', 'experiment_name', 'progress', 'data_dir'})
TRAIN_SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'experiments', 'train.py')
# Final metrics in the results table: (metrics.csv column, from the last
# evaluation round, or the last round that logged it: a round where every
# client dropped out logs no train loss).
RESULT_COLUMNS = (
    ('eval_accuracy', 'eval'), ('eval_loss', 'eval'),
    ('eval_accuracy_min', 'eval'), ('eval_accuracy_p10', 'eval'),
    ('eval_accuracy_median', 'eval'), ('fairness_accuracy_spread', 'eval'),
    ('fairness_selection_gini', 'eval'), ('train_loss', 'last'),
    ('communication_cumulative_kb', 'last'),
)


class SweepError(ValueError):
  """A sweep config is invalid (one-line message)."""


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  logdir: str
  base: Mapping[str, Any]
  grid: Mapping[str, Sequence[Any]]
  parallel: int = 1


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  grid_values: Mapping[str, Any]
  flags: Mapping[str, Any]  # base + grid values (not logdir/name)
  total_rounds: int
  hparams: Mapping[str, Any]  # every flag, validated and resolved


def load_config(path: str, parallel: Optional[int] = None) -> SweepConfig:
  """Reads a JSON sweep config; `parallel` overrides the file's."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except OSError as e:
    raise SweepError(f'--config={path}: cannot read it ({e.strerror})') from None
  except json.JSONDecodeError as e:
    raise SweepError(f'--config={path} is not valid JSON: {e}') from None
  if not isinstance(raw, dict):
    raise SweepError(f'--config={path}: expected a JSON object with keys'
                     f' {sorted(_CONFIG_KEYS)}')
  unknown = sorted(set(raw) - _CONFIG_KEYS)
  if unknown:
    raise SweepError(f'--config={path}: unknown keys {unknown}; valid:'
                     f' {sorted(_CONFIG_KEYS)}')
  if not isinstance(raw.get('logdir'), str) or not raw['logdir']:
    raise SweepError(f'--config={path}: "logdir" must be a non-empty string')
  base = raw.get('base', {})
  grid = raw.get('grid', {})
  if not isinstance(base, dict):
    raise SweepError(f'--config={path}: "base" must be an object of flags')
  if not isinstance(grid, dict) or not grid:
    raise SweepError(f'--config={path}: "grid" must be a non-empty object'
                     ' flag -> list of values')
  for name, values in grid.items():
    if not isinstance(values, list) or not values:
      raise SweepError(f'--config={path}: grid "{name}" must be a non-empty'
                       f' list of values, got {values!r}')
    if len(set(map(json.dumps, values))) != len(values):
      raise SweepError(f'--config={path}: grid "{name}" repeats a value:'
                       f' {values!r}')
  both = sorted(set(base) & set(grid))
  if both:
    raise SweepError(f'--config={path}: {both} are in both "base" and "grid"')
  reserved = sorted((set(base) | set(grid)) & _RESERVED)
  if reserved:
    raise SweepError(f'--config={path}: {reserved} are set by the sweep'
                     ' ("logdir" is a top-level key; run names come from the'
                     ' grid)')
  if parallel is None:
    parallel = raw.get('parallel', 1)
  if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
    raise SweepError(f'parallel={parallel!r} is not valid: must be an int >= 1')
  return SweepConfig(logdir=raw['logdir'], base=base, grid=grid,
                     parallel=parallel)


def _format(value: Any) -> str:
  if isinstance(value, bool):
    return 'true' if value else 'false'
  return str(value)


def run_name(grid_values: Mapping[str, Any]) -> str:
  return ','.join(f'{k}={_format(v)}' for k, v in grid_values.items())


def flag_args(flags: Mapping[str, Any]) -> list[str]:
  """train.py arguments for a flag mapping (None = leave at default)."""
  args = []
  for name, value in flags.items():
    if value is None:
      continue
    if isinstance(value, bool):
      args.append(f'--{name}' if value else f'--no{name}')
    else:
      args.append(f'--{name}={value}')
  return args


def expand(config: SweepConfig,
           validate: Callable[[list[str]], tuple[int, Mapping[str, Any]]]
           ) -> list[Run]:
  """The grid's runs, in row-major order of the grid as written.

  `validate(argv)` checks one run's train.py arguments and returns
  (total_rounds, every resolved flag); it raises ValueError.
  """
  names = list(config.grid)
  runs = []
  for values in itertools.product(*(config.grid[n] for n in names)):
    grid_values = dict(zip(names, values))
    name = run_name(grid_values)
    try:
      run_directory.check_name(name)
    except run_directory.RunDirError as e:
      raise SweepError(f'run {name!r}: {e} (the grid values name the run)'
                       ) from None
    flags = {**config.base, **grid_values}
    try:
      total_rounds, hparams = validate(
          flag_args({**flags, 'logdir': config.logdir,
                     'experiment_name': name}))
    except ValueError as e:
      raise SweepError(f'run {name}: {e}') from None
    runs.append(Run(name, grid_values, flags, total_rounds, hparams))
  return runs


def checkpointed_round(logdir: str, name: str) -> int:
  """The latest checkpointed round of run `name` (0 if none)."""
  rounds = [0]
  prefix = run_directory.CHECKPOINT_PREFIX
  checkpoints = run_directory.RunDirectory(os.path.join(logdir, name)
                                           ).checkpoint_dir
  for path in glob.glob(os.path.join(checkpoints, prefix + '*')):
    suffix = os.path.basename(path)[len(prefix):]
    if suffix.isdigit():
      rounds.append(int(suffix))
  return max(rounds)


def is_complete(logdir: str, run: Run) -> bool:
  return checkpointed_round(logdir, run.name) >= run.total_rounds


def _die_with_parent():
  # A run must not outlive a killed sweep (it would race the re-run for the
  # same directory). SIGTERM lets train.py stop its TFF worker first.
  worker.die_with_parent(signal.SIGTERM)


def _who(pid: Optional[int]) -> str:
  return 'another process' if pid is None else f'pid {pid}'


def _claim(log_dir: str, run_dir: str, name: str
           ) -> tuple[Optional[run_lock.RunLock], Optional[int]]:
  """(this sweep's claim on run `name`, None), or (None, the holder's pid)
  when another sweep claimed it or another process holds its directory."""
  for _ in range(_CLAIM_ATTEMPTS):
    try:
      claim = run_lock.acquire(log_dir, f'{name}.lock')
      break
    except run_lock.RunDirectoryInUseError as e:
      # No pid: the holder was releasing it (its pid is cleared first).
      if e.holder_pid is not None:
        return None, e.holder_pid
  else:
    return None, None
  holder = run_lock.holder_pid(run_dir)
  if holder is not None:
    claim.release()
    return None, holder
  return claim, None


def run_sweep(config: SweepConfig, runs: Sequence[Run], *,
              python: str = sys.executable, train_script: str = TRAIN_SCRIPT,
              poll_seconds: float = 0.5, log=print) -> dict[str, str]:
  """Runs every incomplete run, `config.parallel` at a time.

  Returns run name -> 'skipped' (already complete), 'done', 'done by pid P'
  (another process ran it while this sweep waited; 'done by another
  process' if its pid was not readable) or 'failed (exit N)'.
  Each run's output goes to LOGDIR/sweep_logs/NAME.log, written only by the
  sweep that claimed the run (module docstring).
  """
  scheduler = _Scheduler(config, [python, train_script], log)
  for run in runs:
    if is_complete(config.logdir, run):
      scheduler.skip(run)
    else:
      scheduler.pending.append(run)
  try:
    while scheduler.pending or scheduler.running or scheduler.waiting:
      scheduler.check_waiting()
      scheduler.start_pending()
      time.sleep(poll_seconds)
      scheduler.reap_running()
  finally:
    scheduler.stop_running()
  return scheduler.status


class _Scheduler:
  """The state of `run_sweep`: runs pending, running here, and waited for
  (claimed by another sweep or held by a train.py), and each run's status."""

  def __init__(self, config: SweepConfig, command: list[str], log):
    self.config = config
    self.command = command
    self.log = log
    self.log_dir = os.path.join(config.logdir, 'sweep_logs')
    os.makedirs(self.log_dir, exist_ok=True)
    self.status: dict[str, str] = {}
    self.pending: list[Run] = []
    self.running: dict[str, tuple[subprocess.Popen, Any, run_lock.RunLock,
                                  Run]] = {}
    # Run name -> (run, pid of the process this sweep waits for).
    self.waiting: dict[str, tuple[Run, Optional[int]]] = {}

  def run_dir(self, run: Run) -> str:
    return os.path.join(self.config.logdir, run.name)

  def skip(self, run: Run) -> None:
    self.status[run.name] = 'skipped'
    self.log(f'skip   {run.name} (complete: {run.total_rounds} rounds)')

  def wait_for(self, run: Run, holder: Optional[int]) -> None:
    self.waiting[run.name] = (run, holder)
    self.log(f'wait   {run.name} (running in {_who(holder)})')

  def check_waiting(self) -> None:
    """A run no longer held is done (by its holder) or pending again."""
    for name in list(self.waiting):
      run, holder = self.waiting[name]
      # Held by a sweep's claim, or by a train.py started by hand.
      if (run_lock.holder_pid(self.log_dir, f'{name}.lock') is not None or
          run_lock.holder_pid(self.run_dir(run)) is not None):
        continue
      del self.waiting[name]
      if is_complete(self.config.logdir, run):
        self.status[name] = f'done by {_who(holder)}'
        self.log(f'done   {name} (by {_who(holder)})')
      else:
        self.pending.append(run)

  def start_pending(self) -> None:
    """Claims and starts pending runs, up to `parallel` running."""
    while self.pending and len(self.running) < self.config.parallel:
      run = self.pending.pop(0)
      claim, holder = _claim(self.log_dir, self.run_dir(run), run.name)
      if claim is None:
        self.wait_for(run, holder)
        continue
      if is_complete(self.config.logdir, run):  # Another sweep finished it.
        claim.release()
        self.skip(run)
        continue
      done = checkpointed_round(self.config.logdir, run.name)
      self.log(f'{"resume" if done else "start "} {run.name}'
               + (f' (after round {done})' if done else ''))
      out = open(os.path.join(self.log_dir, f'{run.name}.log'), 'a')
      argv = self.command + flag_args(
          {**run.flags, 'logdir': self.config.logdir,
           'experiment_name': run.name, 'progress': False})
      self.running[run.name] = (
          subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL,
                           preexec_fn=_die_with_parent),
          out, claim, run)

  def reap_running(self) -> None:
    """Records the runs that ended; one a train.py took first is waited
    for."""
    for name in list(self.running):
      proc, out, claim, run = self.running[name]
      code = proc.poll()
      if code is None:
        continue
      out.close()
      claim.release()
      del self.running[name]
      holder = run_lock.holder_pid(self.run_dir(run)) if code else None
      if holder is not None:  # A train.py started by hand took it first.
        self.wait_for(run, holder)
        continue
      self.status[name] = 'done' if code == 0 else f'failed (exit {code})'
      self.log(f'{self.status[name]:6} {name}')

  def stop_running(self) -> None:
    """Terminates the runs still running and releases their claims."""
    for proc, _, _, _ in self.running.values():
      proc.terminate()
    for proc, out, claim, _ in self.running.values():
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        proc.kill()
      out.close()
      claim.release()


def results(config: SweepConfig, runs: Sequence[Run]) -> list[dict[str, Any]]:
  """One row per run: grid values, rounds done and final metrics."""
  table = []
  for run in runs:
    rows = run_directory.read_metrics(
        run_directory.RunDirectory(
            os.path.join(config.logdir, run.name)).metrics_path)
    last_eval = next((r for r in reversed(rows)
                      if r.get('eval_accuracy') is not None), {})
    row = {'run': run.name, **{k: _format(v) for k, v in run.grid_values.items()},
           'rounds': rows[-1]['round'] if rows else 0,
           'complete': is_complete(config.logdir, run)}
    for column, source in RESULT_COLUMNS:
      if source == 'eval':
        value = last_eval.get(column)
      else:
        value = next((r[column] for r in reversed(rows)
                      if r.get(column) is not None), None)
      row[column] = None if value is None else float(value)
    table.append(row)
  return table


def write_results(config: SweepConfig, table: Sequence[Mapping[str, Any]]
                  ) -> tuple[str, str]:
  """Writes LOGDIR/results.csv and LOGDIR/results.md; returns their paths."""
  columns = list(table[0]) if table else ['run']
  csv_path = os.path.join(config.logdir, 'results.csv')
  md_path = os.path.join(config.logdir, 'results.md')
  tmp = csv_path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    for row in table:
      writer.writerow({k: '' if v is None else v for k, v in row.items()})
  os.replace(tmp, csv_path)

  def cell(v):
    if v is None:
      return ''
    if isinstance(v, float):
      return f'{v:.4f}' if abs(v) < 1000 else f'{v:.0f}'
    return str(v)

  lines = ['| ' + ' | '.join(columns) + ' |',
           '|' + '|'.join('---' for _ in columns) + '|']
  lines += ['| ' + ' | '.join(cell(row[c]) for c in columns) + ' |'
            for row in table]
  tmp = md_path + '.tmp'
  with open(tmp, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(tmp, md_path)
  return csv_path, md_path


def write_hparams_config(config: SweepConfig, runs: Sequence[Run]) -> None:
  """The logdir's HParams experiment: every flag whose values the runs use."""
  from tff_research.run import dashboard  # pylint: disable=g-import-not-at-top
  values: dict[str, list[Any]] = {}
  for run in runs:
    for name, value in run.hparams.items():
      if name not in _NOT_HPARAMS and value is not None:
        values.setdefault(name, []).append(value)
  # The root holds only this config: replace it rather than pile up copies.
  for path in glob.glob(os.path.join(config.logdir, 'events.out.tfevents.*')):
    os.remove(path)
  dashboard.write_hparams_config(config.logdir, values)


# --- seeds ---------------------------------------------------------------------

SEED_METRICS = ('eval_accuracy', 'eval_accuracy_p10', 'eval_accuracy_min',
                'eval_loss', 'fairness_accuracy_spread')


def with_seeds(config: SweepConfig, seeds: Sequence[int]) -> SweepConfig:
  """`config` with its grid's `seed` values set to `seeds` (appended as the
  last grid dimension if the grid has none). SweepError if "base" sets a
  seed: the two would disagree."""
  if 'seed' in config.base:
    raise SweepError(
        f'--seeds conflicts with "seed": {config.base["seed"]} in the'
        ' config\'s "base"; remove one')
  grid = dict(config.grid)
  grid['seed'] = list(seeds)
  return dataclasses.replace(config, grid=grid)


def configuration_name(run: Run) -> str:
  """A run's configuration: its grid values without the seed."""
  rest = {k: v for k, v in run.grid_values.items() if k != 'seed'}
  return run_name(rest) if rest else 'all'


def check_baseline(runs: Sequence[Run], baseline: Optional[str]) -> str:
  """The baseline configuration (default: the first); SweepError (one line)
  for one the grid does not have."""
  names = list(dict.fromkeys(configuration_name(r) for r in runs))
  if baseline is None:
    return names[0]
  if baseline not in names:
    raise SweepError(f'--baseline={baseline} is not valid: give one of the'
                     f' configurations {"; ".join(names)}')
  return baseline


def write_seed_results(config: SweepConfig, runs: Sequence[Run],
                       table: Sequence[Mapping[str, Any]],
                       baseline: Optional[str] = None) -> str:
  """Writes LOGDIR/results_seeds.md/.json and the band plot from `results`
  rows; returns the markdown path."""
  from tff_research.studies import comparison  # pylint: disable=g-import-not-at-top
  baseline = check_baseline(runs, baseline)
  per_seed: dict[str, dict[int, dict[str, Any]]] = {}
  curves: dict[str, dict[int, list]] = {}
  for run, row in zip(runs, table):
    label = configuration_name(run)
    seed = int(run.grid_values.get('seed', run.hparams.get('seed', 0)))
    per_seed.setdefault(label, {})[seed] = {m: row.get(m)
                                            for m in SEED_METRICS}
    rows = run_directory.read_metrics(run_directory.RunDirectory(
        os.path.join(config.logdir, run.name)).metrics_path)
    curve = [(r['round'], r['eval_accuracy']) for r in rows
             if r.get('eval_accuracy') is not None]
    curves.setdefault(label, {})
    if curve:
      curves[label][seed] = curve
  for label in per_seed:  # The report's "final accuracy" per seed column.
    for values in per_seed[label].values():
      values['final_accuracy'] = values['eval_accuracy']
  text, agg = comparison.seeds_report(
      per_seed, curves, metrics=SEED_METRICS, baseline=baseline,
      title=f'Sweep {config.logdir}', root=config.logdir,
      label='configuration',
      preamble=('Final held-out metrics (last evaluation) of every run;'
                f' configurations differ in {", ".join(k for k in config.grid if k != "seed") or "nothing"}.'))
  md = os.path.join(config.logdir, 'results_seeds.md')
  for path, content in ((md, text), (md[:-3] + '.json', json.dumps(
      agg.to_json(), indent=2) + '\n')):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.write(content)
    os.replace(tmp, path)
  return md
