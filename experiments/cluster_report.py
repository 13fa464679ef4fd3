r"""Summarises clustered-FL runs: clusters, purity, per-cluster accuracy.

  uv run python experiments/cluster_report.py \
      --run_dirs=LOGDIR/NAME1,LOGDIR/NAME2 [--data_dir=DIR] [--noplace_unresolved]

Prints a markdown table (one row per run) and writes every run's summary as
JSON to --output (default: stdout only). See docs/clustered.md.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tff_research.program import console  # pylint: disable=g-import-not-at-top
console.import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top

from tff_research.program import binary  # pylint: disable=g-import-not-at-top
from tff_research.program import flags  # pylint: disable=g-import-not-at-top
from tff_research.studies import cluster_report  # pylint: disable=g-import-not-at-top

_RUN_DIRS = absl_flags.DEFINE_list(
    'run_dirs', None, 'Run directories (LOGDIR/NAME) of experiments/train.py.')
_PLACE_UNRESOLVED = absl_flags.DEFINE_boolean(
    'place_unresolved', True,
    'Place clients whose cluster split after they were last sampled by the'
    " run's metric on their training data before computing purity.")
_OUTPUT = absl_flags.DEFINE_string(
    'output', None, 'Also write the summaries as JSON to this file.')
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


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(_report)


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
