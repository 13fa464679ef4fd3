"""DP training end to end: FedAvg with the DP aggregators against numpy,
epsilon per round in metrics.csv / TensorBoard, empty Poisson rounds, the
privacy budget, and flag validation."""

import glob
import os

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf

from tff_research import algorithms
from tff_research.algorithms import private
from tff_research.cli import flags
from tff_research.data import federated_data
from tff_research.data import sampling
from tff_research.privacy import dp_config
from tff_research.run import client_split
from tests import fl_testing

LR, BATCH = 0.05, 4
DELTA = 1e-5
SMALL = dict(model='linear', num_clients=6, client_learning_rate=0.05,
             eval_every=2, rounds_per_checkpoint=2, progress=False,
             batch_size=10, weight_by_size=False)


_read_csv = fl_testing.read_csv


def _run(tmp_path, name, **overrides):
  return fl_testing.run_experiment(SMALL, tmp_path, name, **overrides)


def _train_ids(**overrides):
  config = fl_testing.config_for(SMALL, '/unused', 'ids', **overrides)
  data = federated_data.load_federated_data(config.data)
  return client_split.ClientSplit(data, config.evaluation,
                                  config.seed).train_client_ids


def _rdp_epsilon(event, count,
                 relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE):
  return dp_accounting.rdp.RdpAccountant(neighboring_relation=relation).compose(
      dp_accounting.SelfComposedDpEvent(event, count)).get_epsilon(DELTA)


def _clip(dw, db, clip):
  norm = np.sqrt((dw**2).sum() + (db**2).sum())
  scale = min(1.0, clip / norm)
  return dw * scale, db * scale, norm > clip


@pytest.mark.parametrize('mode', ['server', 'client'])
def test_noise_free_dp_fedavg_is_fedavg_on_clipped_updates(tff_worker, mode):
  # Uniform FedAvg whose client deltas are clipped to C, all 3 clients every
  # round (m = 3): the numpy reference of DP-FedAvg with z = 0.
  clients = fl_testing.make_clients([9, 4, 6])
  clip = 0.6  # between the clients' first delta norms (0.94, 0.42, 0.69)
  config = algorithms.AlgorithmConfig(
      client_learning_rate=LR, weighted=False,
      dp=dp_config.DPConfig(mode=mode, clip=clip, noise_multiplier=0.0,
                               clients_per_round=3))
  ids = ['a', 'b', 'c']
  alg = algorithms.build_algorithm(config, fl_testing.linear_model_fn(), ids)
  assert isinstance(alg, private.PrivateAlgorithm)
  state = alg.initialize()
  w, b = np.zeros((fl_testing.INPUT_DIM, 10)), np.zeros(10)
  for r in (1, 2):
    datasets = [fl_testing.to_dataset(x, y, BATCH) for x, y in clients]
    state, metrics = alg.next(state, r, ids, datasets)
    deltas, clipped = [], []
    for x, y in clients:
      cw, cb = fl_testing.local_sgd(w, b, x, y, LR, BATCH)
      dw, db, was = _clip(cw - w, cb - b, clip)
      deltas.append((dw, db))
      clipped.append(was)
    w = w + np.mean([d[0] for d in deltas], axis=0)
    b = b + np.mean([d[1] for d in deltas], axis=0)
    assert metrics['dp']['clipped_fraction'] == pytest.approx(np.mean(clipped))
    if r == 1:
      assert np.mean(clipped) == pytest.approx(2 / 3)
  weights = alg.get_model_weights(state)
  np.testing.assert_allclose(weights.trainable[0], w, atol=2e-6)
  np.testing.assert_allclose(weights.trainable[1], b, atol=2e-6)
  assert list(state['participation']) == [2, 2, 2]
  assert metrics['dp']['epsilon'] == float('inf')  # z = 0: no privacy


def test_dp_composes_with_fedprox_and_rejects_what_it_cannot_wrap(tff_worker):
  dp = dp_config.DPConfig(mode='server', clip=1.0, noise_multiplier=0.5,
                             sampling='poisson', client_fraction=0.5)
  alg = algorithms.build_algorithm(
      algorithms.AlgorithmConfig(algorithm='fedprox', weighted=False, dp=dp),
      fl_testing.linear_model_fn(), ['a', 'b'])
  clients = fl_testing.make_clients([5, 3])
  state, metrics = alg.next(
      alg.initialize(), 1, ['a', 'b'],
      [fl_testing.to_dataset(x, y, BATCH) for x, y in clients])
  assert set(metrics) == {'train', 'clients', 'dp', 'robustness'}
  assert metrics['dp']['noise_stddev'] == pytest.approx(0.5 * 1.0 / 1.0)
  # The loop must sample as the accountant assumes.
  alg.check_sampling('poisson', None, 0.5)
  with pytest.raises(ValueError, match=r"samples clients as \('fixed', 1\)"
                     r" but the privacy accountant assumes \('poisson', 0.5\)"):
    alg.check_sampling('fixed', 1, None)
  with pytest.raises(ValueError, match='requires uniform client weighting'):
    algorithms.build_algorithm(
        algorithms.AlgorithmConfig(weighted=True, dp=dp),
        fl_testing.linear_model_fn(), ['a', 'b'])
  with pytest.raises(ValueError, match='not valid with --algorithm=scaffold'):
    algorithms.build_algorithm(
        algorithms.AlgorithmConfig(algorithm='scaffold', weighted=False, dp=dp),
        fl_testing.linear_model_fn(), ['a', 'b'])
  del state


def _tags(run_dir):
  tags = set()
  for path in glob.glob(os.path.join(run_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def test_server_dp_run_logs_epsilon_every_round_including_empty_ones(
    tff_worker, tmp_path):
  q, z = 0.2, 1.0
  ids = _train_ids()
  # A seed whose first 4 Poisson rounds include an empty one (computed, not
  # assumed: the sampling is a pure function of the seed).
  seed = next(s for s in range(100) if any(
      not sampling.poisson_sample_clients(ids, r, seed=s, probability=q)
      for r in range(1, 5)))
  rows = _run(tmp_path, 'server', seed=seed, total_rounds=4, sampling='poisson',
              client_fraction=q, dp='server', dp_clip=0.5,
              dp_noise_multiplier=z)
  logged = _read_csv(tmp_path / 'server' / 'metrics.csv')
  assert [int(r['round']) for r in logged] == [1, 2, 3, 4]
  event = dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(z))
  for r, row in enumerate(logged, start=1):
    assert float(row['dp_epsilon']) == pytest.approx(_rdp_epsilon(event, r),
                                                     rel=1e-9)
    assert float(row['dp_clip']) == 0.5
    # Expected clients m = q N = 1.2: noise std z C / m on the mean.
    assert float(row['dp_noise_stddev']) == pytest.approx(z * 0.5 / (q * 6),
                                                          rel=1e-6)
    sampled = sampling.poisson_sample_clients(ids, r, seed=seed, probability=q)
    assert int(row['train_clients']) == len(sampled)
    # An empty round still runs (pure noise) but has no training metrics.
    assert bool(row['train_loss']) == bool(sampled)
  assert any(int(r['train_clients']) == 0 for r in logged)
  # PLD on the evaluation rounds (every 2) only.
  assert [bool(r['dp_epsilon_pld']) for r in logged] == [False, True, False,
                                                         True]
  assert float(logged[-1]['dp_epsilon_pld']) <= float(logged[-1]['dp_epsilon'])
  assert np.isfinite(rows[-1]['eval_loss'])
  assert {'dp/epsilon', 'dp/clipped_fraction', 'dp/clip'} <= _tags(
      tmp_path / 'server')


def test_target_epsilon_stops_before_the_round_that_would_exceed_it(
    tff_worker, tmp_path, capsys):
  z, k = 1.0, 3
  n = len(_train_ids())
  event = dp_accounting.SampledWithoutReplacementDpEvent(
      n, k, dp_accounting.GaussianDpEvent(z / 2))
  relation = dp_accounting.NeighboringRelation.REPLACE_ONE
  eps2, eps3 = (_rdp_epsilon(event, t, relation) for t in (2, 3))
  target = (eps2 + eps3) / 2
  common = dict(clients_per_round=k, dp='server', dp_clip=0.5,
                dp_noise_multiplier=z, rounds_per_checkpoint=5)
  rows = _run(tmp_path, 'budget', total_rounds=6, dp_target_epsilon=target,
              **common)
  assert [r['round'] for r in rows] == [1, 2]
  out = capsys.readouterr().out
  assert 'privacy budget: stopping before round 3 of 6' in out
  assert f'> --dp_target_epsilon={target:g}' in out
  # The last round within budget was evaluated and checkpointed.
  assert 'eval_accuracy' in rows[-1]
  assert os.listdir(tmp_path / 'budget' / 'checkpoints') == ['round_2']
  assert rows[-1]['dp_epsilon'] <= target < eps3
  # Same budget again: nothing to do. A larger budget continues the run.
  assert _run(tmp_path, 'budget', total_rounds=6, dp_target_epsilon=target,
              **common) == []
  assert 'nothing to do; privacy budget' in capsys.readouterr().out
  more = _run(tmp_path, 'budget', total_rounds=3, dp_target_epsilon=eps3 * 1.01,
              **common)
  assert [r['round'] for r in more] == [3]
  assert more[0]['dp_epsilon'] == pytest.approx(eps3, rel=1e-9)


def test_client_dp_reports_the_local_epsilon_of_the_busiest_client(
    tff_worker, tmp_path):
  z, k = 4.0, 2
  ids = _train_ids()
  common = dict(clients_per_round=k, dp='client', dp_clip=0.5,
                dp_noise_multiplier=z)
  # Two rounds, then a resume from the round-2 checkpoint: the per-client
  # participation counts live in the checkpointed state.
  rows = _run(tmp_path, 'local', total_rounds=2, **common)
  rows += _run(tmp_path, 'local', total_rounds=3, **common)
  assert [r['round'] for r in rows] == [1, 2, 3]
  counts = dict.fromkeys(ids, 0)
  for r, row in zip((1, 2, 3), rows):
    for c in sampling.sample_clients(ids, r, seed=0, clients_per_round=k):
      counts[c] += 1
    busiest = max(counts.values())
    assert row['dp_max_participations'] == busiest
    assert row['dp_epsilon'] == pytest.approx(
        _rdp_epsilon(dp_accounting.GaussianDpEvent(z / 2), busiest), rel=1e-9)
    assert row['dp_noise_stddev'] == pytest.approx(z * 0.5)


@pytest.mark.parametrize('argv,message', [
    (['--dp=server', '--dp_clip=1', '--dp_noise_multiplier=1'],
     r'--dp=server requires uniform client weighting .* add --noweight_by_size'),
    (['--dp_clip=1'], r'--dp_clip applies only with --dp=server\|client'),
    (['--sampling=poisson'], r'--sampling=poisson includes each client'),
    (['--sampling=poisson', '--clients_per_round=3'],
     r'set --client_fraction \(not --clients_per_round\)'),
    (['--dp=client', '--noweight_by_size', '--dp_clip=1',
      '--dp_noise_multiplier=1', '--dp_adaptive_clipping'],
     r'--dp_adaptive_clipping applies only to --dp=server'),
    (['--dp=server', '--noweight_by_size', '--dp_noise_multiplier=1'],
     r'--dp_clip=None is not valid'),
    (['--dp=server', '--noweight_by_size', '--dp_clip=1'],
     r'--dp_noise_multiplier=None is not valid'),
    (['--dp=server', '--noweight_by_size', '--dp_clip=-1',
      '--dp_noise_multiplier=1'], r'--dp_clip=-1.0 is not valid'),
    (['--dp=server', '--noweight_by_size', '--dp_clip=1',
      '--dp_noise_multiplier=0', '--dp_target_epsilon=3'],
     r'cannot be met with --dp_noise_multiplier=0'),
    (['--dp=server', '--noweight_by_size', '--dp_clip=1',
      '--dp_noise_multiplier=1', '--dp_delta=1'], r'--dp_delta=1.0 is not'),
    (['--dp=server', '--noweight_by_size', '--dp_clip=1',
      '--dp_noise_multiplier=1', '--dp_target_quantile=0.7'],
     r'--dp_target_quantile applies only with --dp_adaptive_clipping'),
    (['--dp=server', '--noweight_by_size', '--dp_clip=1',
      '--dp_noise_multiplier=1', '--algorithm=scaffold'],
     r'--dp=server is not valid with --algorithm=scaffold'),
])
def test_bad_dp_flags_are_one_line_errors(argv, message):
  with pytest.raises(flags.FlagError, match=message) as e:
    flags.config_from_argv(['--experiment_name=x'] + argv)
  assert '\n' not in str(e.value)
