r"""Runs a grid of experiments/train.py runs under one logdir.

  uv run python experiments/sweep.py --config=sweep.json [--parallel=N] \
      [--seeds=3 | --seeds=0,1,2] [--baseline=CONFIGURATION]

The config (JSON) names the logdir, the flags every run shares ("base") and
the grid (flag -> list of values); see tff_research/studies/sweep.py.
Complete runs are skipped, unfinished ones resume. Writes LOGDIR/results.csv
and LOGDIR/results.md (final held-out metrics of every run) and the HParams
experiment of the logdir; per-run output goes to LOGDIR/sweep_logs/. Two
sweeps of one config share the runs (each waits for the runs the other
runs) and take turns writing the logdir's files (LOGDIR/.sweep.lock); each
exits 0 when every run finished.
--seeds sets the grid's seed values; LOGDIR/results_seeds.md then has, per
configuration (grid values without the seed), means with 95 % t intervals
and paired comparisons against --baseline (a configuration name such as
algorithm=fedavg,dropout_rate=0.0; default the first), and
LOGDIR/accuracy_curves.png.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tff_research.cli import console  # pylint: disable=g-import-not-at-top
console.import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top

from tff_research.cli import flags  # pylint: disable=g-import-not-at-top
from tff_research.execution import runtime  # pylint: disable=g-import-not-at-top
from tff_research.run import run_lock  # pylint: disable=g-import-not-at-top
from tff_research.studies import statistics  # pylint: disable=g-import-not-at-top
from tff_research.studies import sweep  # pylint: disable=g-import-not-at-top

_LOGDIR_LOCK = '.sweep.lock'
_CONFIG = absl_flags.DEFINE_string('config', None, 'Sweep config (JSON).')
_PARALLEL = absl_flags.DEFINE_integer(
    'parallel', None, 'Runs at a time (overrides the config\'s "parallel").')
_SEEDS = absl_flags.DEFINE_string(
    'seeds', None,
    'N (seeds 0..N-1) or a list 0,1,2: the grid\'s seed values; adds the'
    ' multi-seed report LOGDIR/results_seeds.md.')
_BASELINE = absl_flags.DEFINE_string(
    'baseline', None,
    'With --seeds: the configuration (grid values without the seed, e.g.'
    ' algorithm=fedavg,dropout_rate=0.0) the others are compared with.')


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  runtime.install_signal_handlers()  # SIGTERM stops the runs, then exits.
  try:
    if not _CONFIG.value:
      raise sweep.SweepError('--config is required: a JSON sweep config')
    config = sweep.load_config(_CONFIG.value, parallel=_PARALLEL.value)
    if _SEEDS.value is not None:
      config = sweep.with_seeds(config, statistics.parse_seeds(_SEEDS.value))
    elif _BASELINE.value is not None:
      raise sweep.SweepError('--baseline applies only with --seeds')
    # Each run's flags are parsed in a private FlagValues, as train.py will.
    runs = sweep.expand(config, flags.validate_train_argv)
    if _SEEDS.value is not None:
      sweep.check_baseline(runs, _BASELINE.value)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'{len(runs)} runs under {config.logdir}, {config.parallel} at a time')
  os.makedirs(config.logdir, exist_ok=True)
  # Another sweep of this logdir replaces the same files.
  with run_lock.hold(config.logdir, _LOGDIR_LOCK, wait=True):
    sweep.write_hparams_config(config, runs)
  status = sweep.run_sweep(config, runs)
  with run_lock.hold(config.logdir, _LOGDIR_LOCK, wait=True):
    table = sweep.results(config, runs)
    csv_path, md_path = sweep.write_results(config, table)
    print(f'Results: {csv_path}, {md_path}')
    if _SEEDS.value is not None:
      try:
        seeds_path = sweep.write_seed_results(config, runs, table,
                                              _BASELINE.value)
      except ValueError as e:  # e.g. a failed run left no evaluation
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
      print(f'Over seeds: {seeds_path}')
  failed = [name for name, s in status.items() if s.startswith('failed')]
  if failed:
    print(f'error: {len(failed)} runs failed (see {config.logdir}/sweep_logs):'
          f' {", ".join(failed)}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
