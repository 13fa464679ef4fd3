"""What a clustered-FL run found: clusters, purity and accuracy per cluster.

`summarize_run(run_dir)` rebuilds the run's data and algorithm from its
`hparams.json` (`training.rebuild_run`), loads its latest checkpoint and
reports:

* the clusters formed and their sizes; for a label-permuted federation
  (`--permute_labels_fraction`), how many permuted clients each holds and the
  purity of the assignment (`clustering.purity` against the permuted/not
  split);
* clients whose cluster split after they were last sampled ("unresolved")
  are, with `place_unresolved`, placed by the run's metric on their training
  data, exactly as they would be when next sampled (`assign_clients`), so
  purity covers every client;
* the last evaluation of `metrics.csv`: overall held-out accuracy and each
  cluster's (each client evaluated with its cluster's model).
"""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Any, Optional

import numpy as np

from tff_research.algorithms import clustering
from tff_research.data import label_permutation
from tff_research.run import client_data
from tff_research.run import run_directory
from tff_research.run import training


def _last_eval(metrics_path: str) -> dict[str, Any]:
  rows = [r for r in run_directory.read_metrics(metrics_path)
          if r.get('eval_accuracy') is not None]
  if not rows:
    return {}
  last = rows[-1]
  out = collections.OrderedDict(
      round=last['round'], accuracy=last['eval_accuracy'])
  for key, value in last.items():
    if key.startswith('eval_group') and value is not None:
      out[key[len('eval_'):]] = float(value)
  return out


def summarize_run(
    run_dir: str,
    *,
    data_dir: Optional[str] = None,
    place_unresolved: bool = True,
) -> dict[str, Any]:
  """Summary of the run in `run_dir` (see the module docstring).

  `data_dir` replaces the recorded one (the data moved). Raises ValueError
  (one line) for a directory that is not a readable run.
  """
  directory = run_directory.RunDirectory(run_dir)
  if not os.path.exists(directory.hparams_path):
    raise ValueError(
        f'{directory.hparams_path} not found: --run_dirs must name runs of'
        ' experiments/train.py')
  recorded = directory.recorded_config()
  clustered = recorded.algorithm.clustered
  out = collections.OrderedDict(
      run=os.path.basename(os.path.normpath(run_dir)),
      clustering=recorded.algorithm.values.get('clustering', 'none'),
      eval=_last_eval(directory.metrics_path),
  )
  if not clustered:
    return out
  run = training.rebuild_run(run_dir, data_dir=data_dir)
  config, alg = run.config, run.algorithm
  restored, _ = asyncio.run(
      training.state_manager(directory.checkpoint_dir).load_latest(
          run.state_template()))
  if restored is None:
    raise ValueError(f'no checkpoint in {directory.checkpoint_dir}')
  state, round_num = restored['state'], int(restored['round'])
  assignments = np.array(state['assignments'])
  unresolved = alg.unresolved_mask(state)
  out['round'] = round_num
  out['num_clusters'] = int(state['num_clusters'])
  out['unresolved'] = int(unresolved.sum())
  if place_unresolved and unresolved.any():
    ids = [alg.client_ids[i] for i in np.flatnonzero(unresolved)]
    # Their data exactly as when next sampled (round `round_num + 1`).
    datasets = client_data.TrainingData(
        run.data.train, config.training, config.seed).datasets(
            round_num + 1, ids)
    placed = alg.assign_clients(state, datasets)
    out['placed_moved'] = int(np.sum(placed != assignments[unresolved]))
    assignments_all = assignments.copy()
    assignments_all[unresolved] = placed
  else:
    assignments_all = assignments
  out['sizes'] = np.bincount(
      assignments_all, minlength=out['num_clusters']).tolist()
  fraction = config.data.permute_labels_fraction
  if fraction:
    permuted = set(label_permutation.permuted_clients(
        run.data.client_ids, fraction, config.seed))
    truth = np.array([cid in permuted for cid in alg.client_ids], int)
    out['permuted_per_cluster'] = [
        int(truth[assignments_all == c].sum())
        for c in range(out['num_clusters'])
    ]
    resolved = ~unresolved
    out['purity_resolved'] = clustering.purity(
        assignments[resolved], truth[resolved])
    out['purity_all'] = clustering.purity(assignments_all, truth)
  return out


def markdown_table(summaries) -> str:
  """One row per run."""
  lines = [
      '| run | clustering | clusters (sizes) | permuted per cluster |'
      ' purity (resolved / all) | unresolved | held-out accuracy |'
      ' per-cluster accuracy |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for s in summaries:
    ev = s.get('eval', {})
    groups = ', '.join(
        f'{ev[k]:.3f}' for k in ev if k.startswith('group')
        and k.endswith('_accuracy'))
    purity = (f'{s["purity_resolved"]:.3f} / {s["purity_all"]:.3f}'
              if 'purity_all' in s else '')
    lines.append(
        f'| {s["run"]} | {s["clustering"]} |'
        f' {s.get("num_clusters", 1)} {tuple(s.get("sizes", ()))} |'
        f' {s.get("permuted_per_cluster", "")} | {purity} |'
        f' {s.get("unresolved", "")} |'
        f' {ev.get("accuracy", float("nan")):.4f} (round {ev.get("round")}) |'
        f' {groups} |')
  return '\n'.join(lines)


# --- seeds ---------------------------------------------------------------------

SEED_METRICS = ('final_accuracy', 'purity_all', 'purity_resolved')
REPORT_DIR = 'cluster_report'


def seed_run_dirs(prefixes, seeds) -> dict[str, dict[int, str]]:
  """prefix label -> seed -> `{prefix}_seed{s}` (`statistics.seed_run_name`).

  ValueError (one line) naming the first missing run directory."""
  from tff_research.studies import statistics  # pylint: disable=g-import-not-at-top
  out = {}
  for prefix in prefixes:
    prefix = os.path.normpath(prefix)
    label = os.path.basename(prefix)
    out[label] = {}
    for s in seeds:
      d = statistics.seed_run_name(prefix, s)
      if not os.path.isdir(d):
        raise ValueError(
            f'{d} not found: with --seeds, --run_dirs are prefixes of runs'
            ' named PREFIX_seed<s> (experiments/train.py'
            ' --experiment_name=NAME_seed<s> --seed=<s>)')
      out[label][s] = d
  return out


def seed_report(summaries_by_seed, curves, *, baseline=None, root=None):
  """The multi-seed report of per-seed `summarize_run` results.

  `summaries_by_seed`: label -> seed -> summary; `curves`: label -> seed ->
  [(round, held-out accuracy)]. Per label: mean final held-out accuracy and
  purity with 95 % t intervals, and the paired comparison against
  `baseline` (default the first label; e.g. the unclustered FedAvg run of
  the same seeds). Returns (markdown, aggregate).
  """
  from tff_research.studies import comparison  # pylint: disable=g-import-not-at-top
  labels = list(summaries_by_seed)
  if baseline is None:
    baseline = labels[0]
  elif baseline not in labels:
    raise ValueError(f'--baseline={baseline} is not valid: give one of the'
                     f' runs {", ".join(labels)}')
  results = {
      label: {s: dict(final_accuracy=summ.get('eval', {}).get('accuracy'),
                      purity_all=summ.get('purity_all'),
                      purity_resolved=summ.get('purity_resolved'))
              for s, summ in by_seed.items()}
      for label, by_seed in summaries_by_seed.items()}
  return comparison.seeds_report(
      results, curves, metrics=SEED_METRICS, baseline=baseline,
      title='Clustered FL over seeds', root=root, label='run',
      preamble=('Final held-out accuracy (each client evaluated with its'
                " cluster's model) and purity of the cluster assignment"
                ' against the permuted/not split, per seed.'))


def run_curve(run_dir: str):
  """(round, held-out accuracy) of every evaluated round of a run."""
  return [(r['round'], r['eval_accuracy'])
          for r in run_directory.read_metrics(
              run_directory.RunDirectory(run_dir).metrics_path)
          if r.get('eval_accuracy') is not None]
