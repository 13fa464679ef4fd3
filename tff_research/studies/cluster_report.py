"""What a clustered-FL run found: clusters, purity and accuracy per cluster.

`summarize_run(run_dir)` rebuilds the run's data and algorithm from its
`hparams.json`, loads its latest checkpoint and reports:

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
import csv
import json
import os
from typing import Any, Optional

import numpy as np
import tensorflow_federated as tff

from tff_research import algorithms
from tff_research import clustering
from tff_research import experiment
from tff_research import experiment_flags
from tff_research import runtime
from tff_research import training_loop
from tff_research.data import federated_data
from tff_research.data import label_permutation
from tff_research.data import preprocessing


def _last_eval(metrics_path: str) -> dict[str, Any]:
  with open(metrics_path, newline='') as f:
    rows = [r for r in csv.DictReader(f) if r.get('eval_accuracy')]
  if not rows:
    return {}
  last = rows[-1]
  out = collections.OrderedDict(
      round=int(last['round']), accuracy=float(last['eval_accuracy']))
  for key, value in last.items():
    if key.startswith('eval_group') and value:
      out[key[len('eval_'):]] = float(value)
  return out


def summarize_run(
    run_dir: str,
    *,
    data_dir: Optional[str] = None,
    place_unresolved: bool = True,
) -> dict[str, Any]:
  """Summary of the run in `run_dir` (see the module docstring)."""
  path = os.path.join(run_dir, 'hparams.json')
  if not os.path.exists(path):
    raise ValueError(
        f'{path} not found: --run_dirs must name runs of experiments/train.py'
    )
  with open(path) as f:
    hparams = json.load(f)
  if data_dir is not None:
    hparams['data_dir'] = data_dir
  out = collections.OrderedDict(
      run=os.path.basename(os.path.normpath(run_dir)),
      clustering=hparams.get('clustering', 'none'),
      eval=_last_eval(os.path.join(run_dir, 'metrics.csv')),
  )
  if out['clustering'] == 'none':
    return out
  data = federated_data.load_federated_data(
      experiment_flags.data_config(hparams))
  train_config = experiment_flags.train_config(hparams)
  split = training_loop.ClientSplit(data, train_config)
  runtime.start()
  model_fn = experiment.build_model_fn(
      hparams['model'], data.num_classes, hparams['seed'])
  alg = algorithms.build_algorithm(
      experiment_flags.algorithm_config(hparams), model_fn,
      split.train_client_ids)
  manager = tff.program.FileProgramStateManager(
      os.path.join(run_dir, 'checkpoints'),
      prefix=training_loop.CHECKPOINT_PREFIX)
  restored, _ = asyncio.run(
      manager.load_latest({'round': 0, 'state': alg.initialize()}))
  if restored is None:
    raise ValueError(f'no checkpoint in {run_dir}/checkpoints')
  state, round_num = restored['state'], int(restored['round'])
  assignments = np.array(state['assignments'])
  unresolved = alg.unresolved_mask(state)
  out['round'] = round_num
  out['num_clusters'] = int(state['num_clusters'])
  out['unresolved'] = int(unresolved.sum())
  if place_unresolved and unresolved.any():
    ids = [alg.client_ids[i] for i in np.flatnonzero(unresolved)]
    datasets = [
        preprocessing.preprocess(
            data.train.create_tf_dataset_for_client(cid),
            epochs=train_config.client_epochs,
            batch_size=train_config.batch_size,
            shuffle_buffer=train_config.shuffle_buffer,
            seed=training_loop._client_seed(  # pylint: disable=protected-access
                train_config.seed, round_num + 1, cid),
        )
        for cid in ids
    ]
    placed = alg.assign_clients(state, datasets)
    out['placed_moved'] = int(np.sum(placed != assignments[unresolved]))
    assignments_all = assignments.copy()
    assignments_all[unresolved] = placed
  else:
    assignments_all = assignments
  out['sizes'] = np.bincount(
      assignments_all, minlength=out['num_clusters']).tolist()
  fraction = hparams.get('permute_labels_fraction', 0.0)
  if fraction:
    permuted = set(label_permutation.permuted_clients(
        data.client_ids, fraction, hparams['seed']))
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
