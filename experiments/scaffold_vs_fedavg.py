r"""SCAFFOLD versus FedAvg and FedProx at equal rounds.

  uv run python experiments/scaffold_vs_fedavg.py --experiment_name=NAME \
      [every flag of train.py except --algorithm] \
      [--compare_algorithms=scaffold,fedavg,fedprox] [--target_accuracy=0.8] \
      [--seeds=3 | --seeds=0,1,2] [--baseline=fedavg]
      [--tune [--tune_factors=0.316,1,3.16] [--tune_validation_fraction=0.2]
       [--tune_rounds=N]]

Trains each algorithm in LOGDIR/NAME/<algorithm>/ with the same flags (the
algorithm hyperparameters given apply to every algorithm), then prints and
writes LOGDIR/NAME/comparison.md (and .json): rounds and MB to
--target_accuracy, final / recent / best accuracy and held-out accuracy per
evaluated round. Re-running the command resumes every run. docs/scaffold.md
has the measured command and results. --seeds runs each algorithm at every
seed (LOGDIR/NAME/<algorithm>_seed{s}/) and reports means, 95 % t intervals
and the paired comparison against --baseline (default fedavg), with
accuracy_curves.png. --tune first chooses each algorithm's learning rates
around the given ones on a validation split of the training data
(LOGDIR/NAME/tune/, tuning.json), as compare_algorithms.py does.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tff_research.cli import console  # pylint: disable=g-import-not-at-top
console.import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top

from tff_research.algorithms import registry  # pylint: disable=g-import-not-at-top
from tff_research.cli import binary  # pylint: disable=g-import-not-at-top
from tff_research.cli import flags  # pylint: disable=g-import-not-at-top
from tff_research.cli import tune_flags  # pylint: disable=g-import-not-at-top
from tff_research.studies import comparison  # pylint: disable=g-import-not-at-top
from tff_research.studies import statistics  # pylint: disable=g-import-not-at-top

_ALGORITHMS = absl_flags.DEFINE_list(
    'compare_algorithms', list(comparison.DRIFT_ALGORITHMS),
    f'Algorithms to compare, from {",".join(registry.SPECS)}.')
_TARGET = absl_flags.DEFINE_float(
    'target_accuracy', 0.8, 'Held-out accuracy whose first round is reported.')
_SEEDS = absl_flags.DEFINE_string(
    'seeds', None,
    'N (seeds --seed..--seed+N-1) or a list 0,1,2: run every algorithm at'
    ' each seed; report mean, 95% t interval and paired comparisons.')
_BASELINE = absl_flags.DEFINE_string(
    'baseline', None, 'Algorithm the others are compared with, paired by'
    ' seed (default fedavg).')


def run():
  given = flags.given_flags()
  if 'algorithm' in given:
    raise ValueError(
        f'--algorithm={given["algorithm"]} is not valid here: the comparison'
        f' runs every algorithm of {",".join(_ALGORITHMS.value)} itself')
  config = flags.config_from_flags()
  seeds = (None if _SEEDS.value is None
           else statistics.parse_seeds(_SEEDS.value, config.seed))
  path, _ = comparison.run_drift_comparison(
      config, _ALGORITHMS.value, given=given,
      target_accuracy=_TARGET.value, seeds=seeds, baseline=_BASELINE.value,
      tune=tune_flags.tune_config_from_flags())
  with open(path) as f:
    print(f.read())
  print(f'Comparison: {os.path.abspath(path)}')


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(run)


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
