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

import dataclasses
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
SEED_METRICS = ('final_accuracy', 'dp_epsilon', 'dp_epsilon_pld')


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


def run_configs(config, sigmas):
  """Run name -> (mode, sigma, config), the baseline first."""
  runs = [('server', 0.0)] + [(m, s) for m in ('server', 'client')
                              for s in sigmas]
  out = {}
  for mode, sigma in runs:
    name = f'{config.experiment_name}_{mode}_z{sigma:g}'
    dp = dataclasses.replace(config.algorithm.dp, mode=mode,
                             noise_multiplier=sigma)
    out[name] = (mode, sigma, dataclasses.replace(
        config, algorithm=config.algorithm.replace(dp=dp),
        experiment_name=name))
  return out


def sweep(config, sigmas, log=print):
  """Trains every run of `run_configs`; returns the markdown table."""
  runs = run_configs(config, sigmas)
  comparison.train_all({name: c for name, (_, _, c) in runs.items()}, log=log)
  table = ['| DP | sigma | epsilon (RDP) | epsilon (PLD) | rounds | held-out'
           ' accuracy |', '|---|---|---|---|---|---|']
  for name, (mode, sigma, c) in runs.items():
    summary = comparison.summarize_run(c.run_dir)
    row = summary.last_row
    label = ('none (clipped FedAvg)' if sigma == 0 else
             f'{mode}' + (' (local, busiest client)' if mode == 'client'
                          else ''))
    pld = row.get('dp_epsilon_pld')
    table.append(
        f'| {label} | {sigma:g} | {row["dp_epsilon"]:.4g} |'
        f' {"-" if pld is None else f"{pld:.4g}"} | {summary.rounds} |'
        f' {summary.final_accuracy:.4f} |')
  return (f'epsilon at delta={config.algorithm.dp.delta:g}:\n'
          + '\n'.join(table))


def configuration_label(mode, sigma):
  return f'{mode}_z{sigma:g}'


def seeds_sweep(config, sigmas, seeds, baseline=None, log=print):
  """`sweep` at every seed: trains LOGDIR/PREFIX_<mode>_z<sigma>_seed<s>/ and
  writes the multi-seed report to LOGDIR/PREFIX_dp_sweep/comparison.md;
  returns its markdown. ValueError (one line) for an unknown baseline,
  before training."""
  runs = run_configs(config, sigmas)
  labels = {name: configuration_label(mode, sigma)
            for name, (mode, sigma, _) in runs.items()}
  baseline = baseline or configuration_label('server', 0.0)
  if baseline not in labels.values():
    raise ValueError(
        f'--baseline={baseline} is not valid: give one of'
        f' {", ".join(labels.values())}')
  seeded = comparison.seeded_configs(
      {labels[n]: c for n, (_, _, c) in runs.items()}, seeds)
  comparison.train_all(comparison.flatten_seeded(seeded), log=log)
  results, curves = {}, {}
  for label, by_seed in seeded.items():
    results[label], curves[label] = {}, {}
    for seed, c in by_seed.items():
      summary = comparison.summarize_run(c.run_dir)
      row = summary.last_row
      results[label][seed] = dict(
          final_accuracy=summary.final_accuracy,
          dp_epsilon=row.get('dp_epsilon'),
          dp_epsilon_pld=row.get('dp_epsilon_pld'))
      curves[label][seed] = summary.curve
  root = os.path.join(config.logdir, f'{config.experiment_name}_dp_sweep')
  os.makedirs(root, exist_ok=True)
  text, _ = comparison.seeds_report(
      results, curves, metrics=SEED_METRICS, baseline=baseline,
      title=f'Accuracy against epsilon (delta={config.algorithm.dp.delta:g})',
      preamble=(f'Budget: {comparison.budget_text(config)}. Client-level'
                ' epsilon is the local guarantee of the busiest client;'
                ' epsilon inf (no noise) is left out of its table.'),
      root=root, label='configuration')
  with open(os.path.join(root, comparison.TABLE_NAME), 'w') as f:
    f.write(text)
  return text


def run():
  sigmas = parse_sigmas(_SIGMAS.value)
  config = base_config(flags.given_flags())
  if _SEEDS.value is None:
    if _BASELINE.value is not None:
      raise flags.FlagError('--baseline applies only with --seeds')
    print('\n' + sweep(config, sigmas))
    return
  seeds = statistics.parse_seeds(_SEEDS.value, config.seed)
  print('\n' + seeds_sweep(config, sigmas, seeds, _BASELINE.value))


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(run)


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
