r"""Accuracy against epsilon: one non-private baseline and server-/client-level
DP at several noise multipliers, as a markdown table (docs/privacy.md).

  uv run python experiments/dp_sweep.py --experiment_name=PREFIX \
      --dp_clip=C [any experiments/train.py flag except --dp and
      --dp_noise_multiplier ...]

Runs, one after the other in this process, `train.py` with the given flags
and --dp=server --dp_noise_multiplier=0 (clipped uniform FedAvg, no privacy),
then --dp=server and --dp=client at each sigma of --sweep_noise_multipliers;
run k is LOGDIR/PREFIX_<mode>_z<sigma>/ (re-running resumes / skips finished
runs). Prints one row per run: epsilon at --dp_delta after the last round
(RDP and, where it applies, PLD; client-level = the local guarantee of the
most-participating client) and the final held-out accuracy.

--seeds=N (or a list 0,1,2) runs every configuration at each seed, as
LOGDIR/PREFIX_<mode>_z<sigma>_seed<s>/, and prints, per configuration, the
mean final accuracy and epsilon with 95 % Student-t intervals and the paired
comparison against --baseline (default server_z0, the clipped non-private
run; same seed = same partition and client sampling); the report also goes
to LOGDIR/PREFIX_dp_sweep/comparison.md with accuracy_curves.png (and its
TensorBoard image) beside it.
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
from tff_research.studies import dp_sweep  # pylint: disable=g-import-not-at-top
from tff_research.studies import statistics  # pylint: disable=g-import-not-at-top

# Only this binary sweeps; the flag is not part of a run's hparams.
_SIGMAS = absl_flags.DEFINE_list(
    'sweep_noise_multipliers', ['0.3', '0.7', '1.0'],
    'Noise multipliers sigma > 0 to run at both DP levels (plus sigma = 0).')
_SEEDS = absl_flags.DEFINE_string(
    'seeds', None,
    'N (seeds --seed..--seed+N-1) or a list 0,1,2: run every configuration'
    ' at each seed; report means, 95% t intervals and paired comparisons.')
_BASELINE = absl_flags.DEFINE_string(
    'baseline', None,
    'With --seeds: the configuration (<mode>_z<sigma>, e.g. server_z0.7) the'
    ' others are compared with, paired by seed (default server_z0).')
_SET_BY_SWEEP = ('dp', 'dp_noise_multiplier')


def base_config(given):
  """The baseline's config (--dp=server --dp_noise_multiplier=0) of a
  command line that set `given` (flag -> value). Raises ValueError."""
  for name in _SET_BY_SWEEP:
    if name in given:
      raise flags.FlagError(
          f'--{name} is set by dp_sweep.py for each run; use'
          ' --sweep_noise_multipliers')
  return flags.build_config({**given, 'dp': 'server',
                             'dp_noise_multiplier': 0.0})


def parse_sigmas(values):
  try:
    sigmas = [float(s) for s in values]
  except ValueError:
    sigmas = []
  if not sigmas or any(not s > 0 for s in sigmas):
    raise ValueError(
        f'--sweep_noise_multipliers={",".join(values)} is not valid:'
        ' give noise multipliers > 0 (sigma = 0 is always run)')
  return sigmas


def run():
  sigmas = parse_sigmas(_SIGMAS.value)
  config = base_config(flags.given_flags())
  if _SEEDS.value is None:
    if _BASELINE.value is not None:
      raise flags.FlagError('--baseline applies only with --seeds')
    print('\n' + dp_sweep.sweep(config, sigmas))
    return
  seeds = statistics.parse_seeds(_SEEDS.value, config.seed)
  print('\n' + dp_sweep.seeds_sweep(config, sigmas, seeds, _BASELINE.value))


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(run)


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
