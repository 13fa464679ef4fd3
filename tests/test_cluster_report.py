"""experiments/cluster_report.py's library: a clustered run rebuilt from its
directory, its clusters, purity and last evaluation."""

import asyncio

import numpy as np
import pytest

from tests import fl_testing
from tff_research.data import label_permutation
from tff_research.program import training
from tff_research.studies import cluster_report

SMALL = dict(
    dataset='digits', model='linear', num_clients=6, clients_per_round=4,
    client_learning_rate=0.01, batch_size=10, eval_every=2,
    rounds_per_checkpoint=2, progress=False, clustering='cosine',
    num_clusters=2, cluster_warmup_rounds=1, recluster_every=1,
    permute_labels_fraction=0.5, total_rounds=2)


def test_report_of_a_clustered_run_matches_its_checkpoint(tff_worker,
                                                          tmp_path):
  rows = fl_testing.run_experiment(SMALL, tmp_path, 'cfl')
  run_dir = str(tmp_path / 'cfl')
  s = cluster_report.summarize_run(run_dir, place_unresolved=False)
  run = training.rebuild_run(run_dir)
  restored, _ = asyncio.run(training.state_manager(
      run.directory.checkpoint_dir).load_latest(run.state_template()))
  state = restored['state']
  assignments = np.asarray(state['assignments'])
  assert (s['run'], s['clustering'], s['round']) == ('cfl', 'cosine', 2)
  assert s['num_clusters'] == int(state['num_clusters'])
  assert s['sizes'] == np.bincount(
      assignments, minlength=s['num_clusters']).tolist()
  assert sum(s['sizes']) == len(run.algorithm.client_ids)
  permuted = set(label_permutation.permuted_clients(
      run.data.client_ids, 0.5, 0))
  truth = np.array([c in permuted for c in run.algorithm.client_ids], int)
  assert sum(s['permuted_per_cluster']) == truth.sum()
  assert 0.5 <= s['purity_all'] <= 1.0
  assert s['eval']['round'] == 2
  assert s['eval']['accuracy'] == pytest.approx(rows[-1]['eval_accuracy'])
  placed = cluster_report.summarize_run(run_dir)
  assert sum(placed['sizes']) == sum(s['sizes'])
  table = cluster_report.markdown_table([s, placed])
  assert len(table.splitlines()) == 2 + 2
  assert table.splitlines()[2].startswith('| cfl | cosine |')


def test_unclustered_and_missing_runs(tmp_path):
  run_dir = tmp_path / 'plain'
  run_dir.mkdir()
  (run_dir / 'hparams.json').write_text(
      '{"algorithm": "fedavg", "model": "linear"}')
  (run_dir / 'metrics.csv').write_text(
      'round,eval_accuracy\n1,\n2,0.5\n')
  s = cluster_report.summarize_run(str(run_dir))
  assert s == {'run': 'plain', 'clustering': 'none',
               'eval': {'round': 2, 'accuracy': 0.5}}
  with pytest.raises(ValueError, match='hparams.json not found: --run_dirs'
                     ' must name runs'):
    cluster_report.summarize_run(str(tmp_path / 'nothing'))
