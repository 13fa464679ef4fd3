r"""Runs several federated algorithms on one federation and tabulates them.

  uv run python experiments/compare_algorithms.py --experiment_name=NAME
      [--algorithms=fedavg,fedsgd,...] (default: every registered algorithm)
      [--target_accuracy=0.8] [every data/model/training/evaluation flag of
      train.py, e.g. --dataset=emnist_digits --data_dir=DIR
      --dirichlet_alpha=0.1 --num_clients=100 --model=cnn --total_rounds=30]

Each algorithm is an ordinary train.py run, LOGDIR/NAME/<algorithm>/ (same
data, model, seed and budget; its own paper-default hyperparameters), and
the table goes to LOGDIR/NAME/comparison.md (every summary to
comparison.json). Re-running resumes every run; a larger --total_rounds
extends them. Algorithm hyperparameter flags are an error here (see
docs/algorithms.md).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tff_research.program import console  # pylint: disable=g-import-not-at-top
console.import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top

from tff_research.program import binary  # pylint: disable=g-import-not-at-top
from tff_research.program import flags  # pylint: disable=g-import-not-at-top
from tff_research.studies import comparison  # pylint: disable=g-import-not-at-top

_ALGORITHMS = absl_flags.DEFINE_list(
    'algorithms', list(comparison.compared_algorithms()),
    'Algorithms to compare, each with its paper defaults.')
_TARGET = absl_flags.DEFINE_float(
    'target_accuracy', 0.8,
    'Report the first evaluated round with held-out accuracy >= this.')


def run():
  given = flags.given_flags()
  # The per-algorithm flags first: their error is clearer than the config's.
  comparison.check_given(given)
  path, _ = comparison.run_comparison(
      flags.config_from_flags(), _ALGORITHMS.value, given=given,
      target_accuracy=_TARGET.value)
  with open(path) as f:
    print(f.read())
  print(f'Table: {os.path.abspath(path)}')


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(run)


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
