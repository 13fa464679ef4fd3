r"""Summarises clustered-FL runs: clusters, purity, per-cluster accuracy.

  uv run python experiments/cluster_report.py \
      --run_dirs=LOGDIR/NAME1,LOGDIR/NAME2 [--data_dir=DIR] [--noplace_unresolved]
      [--seeds=3 | --seeds=0,1,2] [--baseline=NAME1]

Prints a markdown table (one row per run) and writes every run's summary as
JSON to --output (default: stdout only). See docs/clustered.md.

With --seeds, every --run_dirs entry is a prefix of runs PREFIX_seed<s>
(trained with --experiment_name=NAME_seed<s> --seed=<s>); the report gives,
per prefix, mean final accuracy and purity with 95 % Student-t intervals and
the paired comparison against --baseline (a prefix's name, default the
first), and writes comparison.md, accuracy_curves.png and a TensorBoard
image to --report_dir (default LOGDIR/cluster_report beside the first run).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tff_research.cli import console  # pylint: disable=g-import-not-at-top
console.import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top

from tff_research.cli import binary  # pylint: disable=g-import-not-at-top
from tff_research.cli import flags  # pylint: disable=g-import-not-at-top
from tff_research.studies import cluster_report  # pylint: disable=g-import-not-at-top
from tff_research.studies import statistics  # pylint: disable=g-import-not-at-top

_RUN_DIRS = absl_flags.DEFINE_list(
    'run_dirs', None, 'Run directories (LOGDIR/NAME) of experiments/train.py.')
_PLACE_UNRESOLVED = absl_flags.DEFINE_boolean(
    'place_unresolved', True,
    'Place clients whose cluster split after they were last sampled by the'
    " run's metric on their training data before computing purity.")
_OUTPUT = absl_flags.DEFINE_string(
    'output', None, 'Also write the summaries as JSON to this file.')
_SEEDS = absl_flags.DEFINE_string(
    'seeds', None,
    'N (seeds 0..N-1) or a list 0,1,2: --run_dirs are prefixes of runs'
    ' PREFIX_seed<s>; report means, 95% t intervals and paired comparisons.')
_BASELINE = absl_flags.DEFINE_string(
    'baseline', None,
    'With --seeds: the run prefix (its name) the others are compared with.')
_REPORT_DIR = absl_flags.DEFINE_string(
    'report_dir', None,
    'With --seeds: where the report and plot go (default'
    ' LOGDIR/cluster_report beside the first run).')
# Of the experiment flags, only --data_dir (where the run's data is now).
_ALLOWED = ('data_dir',)


def _report():
  if not _RUN_DIRS.value:
    raise ValueError('--run_dirs is required: comma-separated LOGDIR/NAME')
  given = flags.given_flags()
  for name in given:
    if name not in _ALLOWED:
      raise flags.FlagError(
          f'--{name} does not apply to cluster_report.py: the runs\''
          ' hparams.json records it; it accepts --data_dir')
  if _SEEDS.value is None:
    for name in ('baseline', 'report_dir'):
      if absl_flags.FLAGS[name].present:
        raise flags.FlagError(f'--{name} applies only with --seeds')
  else:
    _seed_report(given)
    return
  summaries = [
      cluster_report.summarize_run(
          d, data_dir=given.get('data_dir'),
          place_unresolved=_PLACE_UNRESOLVED.value)
      for d in _RUN_DIRS.value
  ]
  print(cluster_report.markdown_table(summaries))
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as out:
      json.dump(summaries, out, indent=2)


def _seed_report(given):
  seeds = statistics.parse_seeds(_SEEDS.value)
  dirs = cluster_report.seed_run_dirs(_RUN_DIRS.value, seeds)
  summaries = {
      label: {s: cluster_report.summarize_run(
          d, data_dir=given.get('data_dir'),
          place_unresolved=_PLACE_UNRESOLVED.value)
              for s, d in by_seed.items()}
      for label, by_seed in dirs.items()}
  curves = {label: {s: cluster_report.run_curve(d) for s, d in by_seed.items()}
            for label, by_seed in dirs.items()}
  root = _REPORT_DIR.value or os.path.join(
      os.path.dirname(os.path.normpath(_RUN_DIRS.value[0])),
      cluster_report.REPORT_DIR)
  # The baseline is checked before anything is written.
  cluster_report.seed_report(summaries, curves, baseline=_BASELINE.value)
  os.makedirs(root, exist_ok=True)
  text, agg = cluster_report.seed_report(summaries, curves,
                                         baseline=_BASELINE.value, root=root)
  with open(os.path.join(root, 'comparison.md'), 'w') as f:
    f.write(text)
  print(text)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as out:
      json.dump(dict(aggregate=agg.to_json(), runs=summaries), out, indent=2)


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(_report)


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
