"""experiments/dp_sweep.py and its study (`studies/dp_sweep.py`): the
accuracy-against-epsilon table on tiny data."""

import functools
import importlib.util
import os

import dp_accounting
import pytest

from tff_research.studies import dp_sweep as study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache  # the binary defines its absl flags once per process
def _load_binary():
  spec = importlib.util.spec_from_file_location(
      'dp_sweep', os.path.join(REPO, 'experiments', 'dp_sweep.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow  # three one-round training runs: ~1 min on 2 cores
def test_sweep_prints_one_row_per_run_with_its_epsilon(tff_worker, tmp_path):
  dp_sweep = _load_binary()
  with pytest.raises(ValueError, match='--dp is set by dp_sweep.py'):
    dp_sweep.base_config(dict(experiment_name='sw', dp='server'))
  with pytest.raises(ValueError, match='--sweep_noise_multipliers=0 is not'):
    dp_sweep.parse_sigmas(['0'])
  # The flags a command line `--experiment_name=sw ... --dp_clip=0.5` sets.
  config = dp_sweep.base_config(dict(
      experiment_name='sw', logdir=str(tmp_path), model='linear',
      num_clients=6, clients_per_round=3, client_learning_rate=0.05,
      weight_by_size=False, dp_clip=0.5, total_rounds=1, eval_every=1,
      progress=False))
  out = study.sweep(config, dp_sweep.parse_sigmas(['2.0']))
  assert out.splitlines()[0] == 'epsilon at delta=1e-05:'
  rows = [l for l in out.splitlines() if l.startswith('| ') and '---' not in l]
  assert len(rows) == 1 + 3  # header + sigma 0 + server/client at sigma 2
  cells = [[c.strip() for c in r.strip('|').split('|')] for r in rows[1:]]
  assert [c[:2] for c in cells] == [
      ['none (clipped FedAvg)', '0'], ['server', '2'],
      ['client (local, busiest client)', '2']]
  assert cells[0][2] == 'inf'
  server = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
  ).compose(dp_accounting.SampledWithoutReplacementDpEvent(
      6, 3, dp_accounting.GaussianDpEvent(1.0))).get_epsilon(1e-5)
  assert float(cells[1][2]) == pytest.approx(server, rel=1e-3)
  assert cells[1][3] == '-'  # PLD does not apply to fixed-size sampling
  local = dp_accounting.rdp.RdpAccountant().compose(
      dp_accounting.GaussianDpEvent(1.0)).get_epsilon(1e-5)
  assert float(cells[2][2]) == pytest.approx(local, rel=1e-3)
  for c in cells:
    assert 0.0 <= float(c[5]) <= 1.0
  assert sorted(os.listdir(tmp_path)) == ['sw_client_z2', 'sw_server_z0',
                                          'sw_server_z2']


def test_seeds_sweep_pairs_every_configuration_with_the_baseline(
    tff_worker, tmp_path):
  """--seeds=2 at one sigma: 2 configurations x 2 seeds of 1 round."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scipy import stats  # pylint: disable=g-import-not-at-top
  from tff_research.studies import statistics  # pylint: disable=g-import-not-at-top
  from tests import fl_testing  # pylint: disable=g-import-not-at-top
  dp_sweep = _load_binary()
  config = dp_sweep.base_config(dict(
      experiment_name='sw', logdir=str(tmp_path), model='linear',
      num_clients=4, clients_per_round=2, client_learning_rate=0.05,
      weight_by_size=False, dp_clip=0.5, total_rounds=1, eval_every=1,
      rounds_per_checkpoint=1, progress=False))
  with pytest.raises(ValueError, match='--baseline=server_z9 is not valid'):
    study.seeds_sweep(config, [2.0], (0, 1), baseline='server_z9')
  assert not os.listdir(tmp_path)
  # Only the server level, to keep it to four runs.
  runs = study.run_configs
  study.run_configs = lambda c, s: {
      k: v for k, v in runs(c, s).items() if '_client_' not in k}
  try:
    text = study.seeds_sweep(config, [2.0], statistics.parse_seeds('2'),
                             log=lambda _: None)
  finally:
    study.run_configs = runs
  assert sorted(os.listdir(tmp_path)) == [
      'sw_dp_sweep', 'sw_server_z0_seed0', 'sw_server_z0_seed1',
      'sw_server_z2_seed0', 'sw_server_z2_seed1']
  acc = {z: [fl_testing.read_csv(tmp_path / f'sw_server_z{z}_seed{s}'
                                 / 'metrics.csv')[-1]['eval_accuracy']
             for s in (0, 1)] for z in (0, 2)}
  d = np.subtract(acc[2], acc[0])
  row = next(l for l in text.splitlines() if l.startswith('| server_z2 | 2 |')
             and 'Δ' not in l)
  assert f'| {d.mean():+.3f} [' in row
  ref = stats.ttest_rel(acc[2], acc[0])
  if np.ptp(d) > 0:
    assert row.endswith(f'| {ref.pvalue:.3f} |') or ref.pvalue < 1e-3
  assert '| server_z0 | 2 |' in text and '(baseline)' in text
  root = tmp_path / 'sw_dp_sweep'
  assert (root / 'comparison.md').read_text() == text
  assert (root / 'accuracy_curves.png').read_bytes()[:4] == b'\x89PNG'
