r"""Robust aggregation against attacks: aggregators x attacks x malicious
fraction over seeds (docs/robustness.md).

  uv run python experiments/robustness_study.py --experiment_name=PREFIX \
      [--aggregators=mean,median,trimmed_mean,krum,multi_krum,bulyan,norm_bound] \
      [--attacks=sign_flip] [--malicious_fractions=0,0.1,0.2,0.3] \
      [--seeds=3] [--attack_scale=S] [--trim_fraction=B ...] \
      [any experiments/train.py flag except --robust_aggregation, --attack,
       --malicious_fraction and --weight_by_size]

Trains the clean mean and every (rule, attack, fraction) at every seed as
LOGDIR/PREFIX_<rule>_<attack>_<fraction>_seed<s>/ (a fraction of 0 is the
rule's clean run, PREFIX_<rule>_clean_seed<s>/), uniformly weighted; re-
running resumes unfinished runs and skips finished or diverged ones.
Prints, and writes to LOGDIR/PREFIX_robustness_<attacks>_<fractions>/
comparison.md with
accuracy_curves.png, per configuration the final held-out accuracy and
backdoor success with 95 % Student-t intervals, the paired difference
against the mean under the same attack and against the clean mean, and the
seeds the divergence guard stopped.
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
from tff_research.cli import robustness_flags  # pylint: disable=g-import-not-at-top
from tff_research.studies import robustness  # pylint: disable=g-import-not-at-top
from tff_research.studies import statistics  # pylint: disable=g-import-not-at-top

_AGGREGATORS = absl_flags.DEFINE_list(
    'aggregators', list(robustness_flags.DEFAULT_AGGREGATORS),
    'Robust rules to compare (each also runs clean); the clean mean always'
    ' runs.')
_ATTACKS = absl_flags.DEFINE_list('attacks', ['sign_flip'],
                                  'Attacks to run each rule under.')
_FRACTIONS = absl_flags.DEFINE_list(
    'malicious_fractions', ['0', '0.1', '0.2', '0.3'],
    'Fractions of malicious training clients (0 = the clean run).')
_SEEDS = absl_flags.DEFINE_string(
    'seeds', '1', 'N (seeds --seed..--seed+N-1) or a list 0,1,2.')


def run():
  given = flags.given_flags()
  config, parameters = robustness_flags.base_config(given)
  grid = robustness_flags.parse_grid(_AGGREGATORS.value, _ATTACKS.value,
                                     _FRACTIONS.value)
  seeds = statistics.parse_seeds(_SEEDS.value, config.seed)
  print('\n' + robustness.run_study(config, *grid, seeds, parameters))


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(run)


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
