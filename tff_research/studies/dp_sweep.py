"""Accuracy against epsilon: one non-private baseline and server-/client-level
DP at several noise multipliers (`experiments/dp_sweep.py`, docs/privacy.md).

`sweep(config, sigmas)` trains, one after the other, the baseline (the
config as given: server DP with noise multiplier 0, i.e. clipped uniform
FedAvg) and server- and client-level DP at each sigma, as
LOGDIR/PREFIX_<mode>_z<sigma>/, and returns the markdown table of epsilon
and final held-out accuracy. `seeds_sweep` does it at several seeds and
writes the multi-seed report (means, 95 % t intervals, paired comparisons
against a baseline configuration) to LOGDIR/PREFIX_dp_sweep/.
"""

from __future__ import annotations

import dataclasses
import os

from tff_research.studies import comparison

SEED_METRICS = ('final_accuracy', 'dp_epsilon', 'dp_epsilon_pld')


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
  """A configuration's name in the multi-seed report, e.g. server_z0.7."""
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
