r"""Runs several federated algorithms on one federation and tabulates them.

  uv run python experiments/compare_algorithms.py --experiment_name=NAME
      [--algorithms=fedavg,fedsgd,...] (default: every registered algorithm)
      [--target_accuracy=0.8] [every data/model/training/evaluation flag of
      train.py, e.g. --dataset=emnist_digits --data_dir=DIR
      --dirichlet_alpha=0.1 --num_clients=100 --model=cnn --total_rounds=30]
      [--seeds=3 | --seeds=0,1,2] [--baseline=fedavg]
      [--tune [--tune_factors=0.316,1,3.16] [--tune_validation_fraction=0.2]
       [--tune_rounds=N]]

Each algorithm is an ordinary train.py run, LOGDIR/NAME/<algorithm>/ (same
data, model, seed and budget; its own paper-default hyperparameters), and
the table goes to LOGDIR/NAME/comparison.md (every summary to
comparison.json). Re-running resumes every run; a larger --total_rounds
extends them. Algorithm hyperparameter flags are an error here (see
docs/algorithms.md).

--seeds=N runs every algorithm at seeds --seed..--seed+N-1 (or the listed
seeds) in LOGDIR/NAME/<algorithm>_seed{s}/ and reports means with 95 %
Student-t intervals and the paired comparison against --baseline (default
fedavg), plus accuracy_curves.png (mean and band per algorithm, also in
TensorBoard). --tune first chooses each algorithm's client and server
learning rates on a validation split of the training clients
(LOGDIR/NAME/tune/, LOGDIR/NAME/tuning.json).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tff_research.cli import console  # pylint: disable=g-import-not-at-top
console.import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top

from tff_research.cli import binary  # pylint: disable=g-import-not-at-top
from tff_research.cli import flags  # pylint: disable=g-import-not-at-top
from tff_research.cli import tune_flags  # pylint: disable=g-import-not-at-top
from tff_research.studies import comparison  # pylint: disable=g-import-not-at-top
from tff_research.studies import statistics  # pylint: disable=g-import-not-at-top

_ALGORITHMS = absl_flags.DEFINE_list(
    'algorithms', list(comparison.compared_algorithms()),
    'Algorithms to compare, each with its paper defaults.')
_TARGET = absl_flags.DEFINE_float(
    'target_accuracy', 0.8,
    'Report the first evaluated round with held-out accuracy >= this.')
_SEEDS = absl_flags.DEFINE_string(
    'seeds', None,
    'N (seeds --seed..--seed+N-1) or a list 0,1,2: run every algorithm at'
    ' each seed and report mean, 95% t interval and the paired comparison'
    ' against --baseline.')
_BASELINE = absl_flags.DEFINE_string(
    'baseline', None,
    'Algorithm the others are compared with, paired by seed (default'
    ' fedavg, or the first of --algorithms).')
def run():
  given = flags.given_flags()
  # The per-algorithm flags first: their error is clearer than the config's.
  comparison.check_given(given)
  config = flags.config_from_flags()
  seeds = (None if _SEEDS.value is None
           else statistics.parse_seeds(_SEEDS.value, config.seed))
  tune = tune_flags.tune_config_from_flags()
  path, _ = comparison.run_comparison(
      config, _ALGORITHMS.value, given=given,
      target_accuracy=_TARGET.value, seeds=seeds, baseline=_BASELINE.value,
      tune=tune)
  with open(path) as f:
    print(f.read())
  print(f'Table: {os.path.abspath(path)}')


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(run)


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
