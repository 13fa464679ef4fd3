"""experiments/cluster_report.py's library: a clustered run rebuilt from its
directory, its clusters, purity and last evaluation."""

import asyncio

import numpy as np
import pytest

from tff_research.data import label_permutation
from tff_research.run import training
from tff_research.studies import cluster_report
from tests import fl_testing

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


def test_seed_report_of_fake_per_seed_summaries(tmp_path):
  """--seeds: prefixes expand to PREFIX_seed<s>; per-seed summaries (made up,
  no training) give t intervals and the paired test against the baseline."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  for name in ('cfl_seed0', 'cfl_seed1', 'fedavg_seed0', 'fedavg_seed1'):
    (tmp_path / name).mkdir()
  dirs = cluster_report.seed_run_dirs(
      [str(tmp_path / 'cfl'), str(tmp_path / 'fedavg')], (0, 1))
  assert dirs['cfl'] == {0: str(tmp_path / 'cfl_seed0'),
                         1: str(tmp_path / 'cfl_seed1')}
  with pytest.raises(ValueError, match='cfl_seed2 not found: with --seeds'):
    cluster_report.seed_run_dirs([str(tmp_path / 'cfl')], (0, 2))
  acc = {'fedavg': [0.45, 0.47], 'cfl': [0.88, 0.86]}
  summaries = {
      'fedavg': {s: {'eval': {'accuracy': acc['fedavg'][s]}} for s in (0, 1)},
      'cfl': {s: {'eval': {'accuracy': acc['cfl'][s]},
                  'purity_all': 1.0, 'purity_resolved': 1.0}
              for s in (0, 1)}}
  curves = {k: {s: [(1, 0.2), (2, v[s])] for s in (0, 1)}
            for k, v in acc.items()}
  with pytest.raises(ValueError, match='--baseline=x is not valid'):
    cluster_report.seed_report(summaries, curves, baseline='x')
  text, agg = cluster_report.seed_report(summaries, curves,
                                         baseline='fedavg',
                                         root=str(tmp_path))
  ref = stats.ttest_rel(acc['cfl'], acc['fedavg'])
  paired = agg.get('cfl', 'final_accuracy').paired
  assert paired.mean_difference == pytest.approx(0.41)
  assert paired.p_value == pytest.approx(ref.pvalue)
  # Differences 0.43, 0.39: s_d = 0.02828, t_{0.975,1} = 12.706.
  assert paired.high - paired.mean_difference == pytest.approx(
      12.706205 * 0.0282843 / np.sqrt(2), rel=1e-5)
  assert f'| +0.410 [{paired.low:.3f}, {paired.high:.3f}] (n=2) |' in text
  # Purity: constant over seeds (interval = point); the baseline (FedAvg)
  # has none, so its table has no comparison columns.
  assert '| cfl | 2 | 1.000 ± 0.000 | [1.000, 1.000] |' in text.splitlines()
  assert (tmp_path / 'accuracy_curves.png').exists()
