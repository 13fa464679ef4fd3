"""The aggregation and attack axes, wired end to end.

Flags -> config -> hparams.json and back; every unsound combination refused
with one line; a registered toy rule reached through the flag; FedAvg on a
hand-computable federation under a sign-flip attacker (the mean moves the
wrong way, the median does not); every rule equal to the mean when all
clients are honest and identical; poisoned client data; and a real run
whose metrics.csv carries the attack metrics and that resumes.
"""

import json
import os

import numpy as np
import pytest

from tff_research import algorithms
from tff_research.aggregators import registry as aggregator_registry
from tff_research.aggregators import spec as aggregator_spec
from tff_research.cli import flags
from tff_research.run import client_data as client_data_lib
from tff_research.run import config as config_lib
from tests import fl_testing
from tests.test_robust_aggregators import _CoordinateMax

NEW_KEYS = ('robust_aggregation', 'trim_fraction', 'byzantine_clients',
            'multi_krum_m', 'norm_bound', 'attack', 'malicious_fraction',
            'malicious_per_round', 'attack_scale', 'backdoor_target')


def _config(*argv):
  return flags.config_from_argv(['--experiment_name=x', *argv])


# --- flags, config, hparams.json ---


def test_flags_round_trip_through_hparams():
  config = _config('--robust_aggregation=trimmed_mean', '--trim_fraction=0.2',
                   '--noweight_by_size', '--attack=sign_flip',
                   '--malicious_fraction=0.2', '--malicious_per_round=exact',
                   '--attack_scale=10', '--seed=3')
  alg = config.algorithm
  assert alg.aggregation.name == 'trimmed_mean'
  assert alg.aggregation.values == dict(trim_fraction=0.2)
  assert (alg.attack.kind, alg.attack.malicious_fraction, alg.attack.scale,
          alg.attack.seed, alg.attack.per_round) == ('sign_flip', 0.2, 10.0,
                                                     3, 'exact')
  hparams = config_lib.to_hparams(config)
  assert {k: hparams[k] for k in NEW_KEYS} == dict(
      robust_aggregation='trimmed_mean', trim_fraction=0.2,
      byzantine_clients=None, multi_krum_m=None, norm_bound=None,
      attack='sign_flip', malicious_fraction=0.2, malicious_per_round='exact',
      attack_scale=10.0, backdoor_target=0)
  # Through JSON, as hparams.json is read back.
  again = config_lib.from_hparams(json.loads(json.dumps(hparams)))
  assert again == config
  assert config_lib.to_hparams(again) == hparams


def test_an_old_hparams_json_without_the_new_keys_loads_with_defaults():
  old = config_lib.to_hparams(_config('--seed=2'))
  for key in NEW_KEYS:
    del old[key]
  config = config_lib.from_hparams(old)
  assert config.algorithm.aggregation.name == 'mean'
  assert not config.algorithm.attack.active
  assert config == _config('--seed=2')


@pytest.mark.parametrize('argv, line', [
    (['--robust_aggregation=median'],
     '--robust_aggregation=median is not valid with --weight_by_size'),
    (['--robust_aggregation=median', '--noweight_by_size', '--dp=server',
      '--dp_clip=1', '--dp_noise_multiplier=1'],
     '--robust_aggregation=median is not valid with --dp=server'),
    (['--robust_aggregation=median', '--noweight_by_size', '--dp=client',
      '--dp_clip=1', '--dp_noise_multiplier=1'],
     '--robust_aggregation=median is not valid with --dp=client'),
    (['--robust_aggregation=krum', '--weight_by_size'],
     '--robust_aggregation=krum is not valid with --weight_by_size'),
    (['--robust_aggregation=krum', '--noweight_by_size',
      '--byzantine_clients=4'],
     '--byzantine_clients=4 is not valid with --clients_per_round=10'),
    (['--robust_aggregation=median', '--noweight_by_size',
      '--trim_fraction=0.2'],
     '--trim_fraction=0.2 does not apply to --robust_aggregation=median'),
    (['--robust_aggregation=trimmed_mean', '--noweight_by_size',
      '--trim_fraction=0.5'], '--trim_fraction=0.5 is not valid'),
    (['--robust_aggregation=mode'],
     '--robust_aggregation=mode is not valid; valid: mean, median'),
    (['--robust_aggregation=median', '--clustering=cosine'],
     '--robust_aggregation=median is not valid with --weight_by_size'),
    (['--attack=sign_flip', '--algorithm=fedsgd'],
     '--attack=sign_flip is not valid with --algorithm=fedsgd'),
    (['--malicious_fraction=0.2'], '--malicious_fraction applies only with'
     ' --attack=label_flip|sign_flip|gaussian|backdoor'),
    (['--attack=label_flip', '--attack_scale=3'],
     '--attack_scale applies only with --attack=sign_flip|gaussian|backdoor'),
    (['--attack=sign_flip', '--malicious_fraction=1.5'],
     '--malicious_fraction=1.5 is not valid: must be in [0, 1]'),
    (['--attack=sign_flip', '--attack_scale=0'],
     '--attack_scale=0.0 is not valid: must be > 0'),
    (['--attack=backdoor', '--backdoor_target=10'],
     '--backdoor_target=10 is not valid: must be in [0, 10)'),
    (['--malicious_per_round=exact'], '--malicious_per_round applies only'
     ' with --attack=label_flip|sign_flip|gaussian|backdoor'),
    (['--attack=sign_flip', '--malicious_per_round=exact',
      '--sampling=poisson', '--client_fraction=0.1'],
     '--malicious_per_round=exact needs --sampling=fixed'),
    (['--attack=sign_flip', '--malicious_per_round=exact', '--dp=server',
      '--noweight_by_size', '--dp_clip=1', '--dp_noise_multiplier=1'],
     '--malicious_per_round=exact does not apply with --dp'),
])
def test_unsound_combinations_are_refused_in_one_line(argv, line):
  with pytest.raises(flags.FlagError) as error:
    _config(*argv)
  message = str(error.value)
  assert message.startswith(line), message
  assert '\n' not in message


@pytest.mark.parametrize('argv', [
    ['--robust_aggregation=median', '--noweight_by_size', '--algorithm=scaffold'],
    ['--robust_aggregation=norm_bound', '--norm_bound=2', '--noweight_by_size',
     '--dp=server', '--dp_clip=1', '--dp_noise_multiplier=1'],
    ['--robust_aggregation=norm_bound', '--algorithm=fedsgd'],
    ['--attack=label_flip', '--malicious_fraction=0.3', '--clustering=cosine'],
    ['--robust_aggregation=median', '--noweight_by_size', '--clustering=l2',
     '--attack=label_flip'],
    ['--robust_aggregation=norm_bound', '--clustering=cosine'],
    ['--attack=backdoor', '--algorithm=scaffold'],
    ['--attack=gaussian', '--algorithm=scaffold', '--client_optimizer=sgd'],
    ['--attack=gaussian', '--clustering=l2'],
    ['--robust_aggregation=multi_krum', '--noweight_by_size',
     '--multi_krum_m=5', '--algorithm=fedadam', '--attack=gaussian'],
])
def test_sound_combinations_are_accepted(argv):
  _config(*argv)


@pytest.fixture
def toy_rule():
  toy = aggregator_spec.AggregatorSpec(
      name='coordinate_max', paper='(a test)', summary='toy',
      build=lambda p, capacity: _CoordinateMax(capacity),
      parameters=(aggregator_spec.Parameter(
          'toy_scale', float, 1.0, 'A toy parameter.', low=0.0, high=10.0),),
      collects_updates=True)
  aggregator_registry.register(toy)
  yield toy
  del aggregator_registry.SPECS['coordinate_max']


def test_a_registered_rule_is_reached_through_the_flag(tff_worker, toy_rule):
  del toy_rule
  config = _config('--robust_aggregation=coordinate_max', '--toy_scale=2',
                   '--noweight_by_size', '--model=linear')
  assert config.algorithm.aggregation.values == dict(toy_scale=2.0)
  assert config_lib.to_hparams(config)['toy_scale'] == 2.0
  # The run's FedAvg aggregates with it. TFF's client update is x - y_i
  # (its server optimizer subtracts the aggregate), so the maximum of the
  # updates makes the new model the coordinate-wise minimum of the clients'
  # local models y_i (x = 0, server learning rate 1).
  clients = fl_testing.make_clients([6, 6], seed=4)
  algorithm = algorithms.build_algorithm(
      config.algorithm, fl_testing.linear_model_fn(), ['0', '1'])
  (w, b), _ = fl_testing.run_rounds(algorithm, clients, 1, batch_size=6)
  w0 = np.zeros((784, 10))
  b0 = np.zeros(10)
  locals_ = [fl_testing.local_sgd(w0, b0, x, y, 0.1, 6) for x, y in clients]
  np.testing.assert_allclose(w, np.minimum(locals_[0][0], locals_[1][0]),
                             atol=1e-5)
  np.testing.assert_allclose(b, np.minimum(locals_[0][1], locals_[1][1]),
                             atol=1e-5)


# --- FedAvg under attack, on a hand-computable federation ---

# Five clients with the same data: every honest client sends the same update
# u; with --malicious_fraction=0.2 exactly one sends -10 u.
_SAME = fl_testing.make_clients([8], seed=7) * 5
_IDS = [str(i) for i in range(5)]


def _one_round(*argv):
  config = _config('--noweight_by_size', '--model=linear', *argv)
  algorithm = algorithms.build_algorithm(
      config.algorithm, fl_testing.linear_model_fn(), _IDS)
  (w, b), metrics = fl_testing.run_rounds(algorithm, _SAME, 1, batch_size=8)
  return np.concatenate([w.ravel(), b]), metrics


@pytest.fixture(scope='module')
def honest_update(tff_runtime):
  tff_runtime.start()
  update, _ = _one_round()
  x, y = _SAME[0]
  w, b = fl_testing.local_sgd(np.zeros((784, 10)), np.zeros(10), x, y, 0.1, 8)
  np.testing.assert_allclose(update, np.concatenate([w.ravel(), b]),
                             atol=1e-5)
  return update


def test_a_sign_flip_attacker_turns_the_mean_and_not_the_median(
    honest_update):
  attack = ('--attack=sign_flip', '--malicious_fraction=0.2',
            '--attack_scale=10')
  mean, metrics = _one_round(*attack)
  # (4 u - 10 u) / 5 = -1.2 u: against the honest direction.
  np.testing.assert_allclose(mean, -1.2 * honest_update, atol=1e-5)
  assert np.dot(mean, honest_update) < 0
  assert metrics['attack']['malicious_clients'] == 1
  assert metrics['attack']['kept_malicious'] == 1
  assert metrics['robustness']['kept_clients'] == 5
  median, metrics = _one_round('--robust_aggregation=median', *attack)
  np.testing.assert_allclose(median, honest_update, atol=1e-6)
  assert metrics['attack'] == dict(malicious_clients=1.0, kept_malicious=0.0)
  assert metrics['robustness']['kept_clients'] == 1
  assert metrics['robustness']['trimmed_clients'] == 4


@pytest.mark.parametrize('argv', [
    ['--robust_aggregation=median'],
    ['--robust_aggregation=trimmed_mean', '--trim_fraction=0.2'],
    ['--robust_aggregation=krum', '--byzantine_clients=1'],
    ['--robust_aggregation=multi_krum', '--multi_krum_m=3'],
    ['--robust_aggregation=norm_bound', '--norm_bound=1000'],
    ['--robust_aggregation=median', '--attack=sign_flip',
     '--malicious_fraction=0'],
    ['--robust_aggregation=median', '--clustering=cosine'],
    ['--robust_aggregation=krum', '--byzantine_clients=1', '--clustering=l2',
     '--attack=label_flip', '--malicious_fraction=0.2'],
])
def test_every_rule_is_the_mean_when_all_clients_are_honest_and_identical(
    honest_update, argv):
  update, metrics = _one_round(*argv)
  np.testing.assert_allclose(update, honest_update, atol=1e-6)
  assert metrics['robustness']['excluded_clients'] == 0


def test_norm_bound_composes_before_dp_and_bounds_the_attacker(honest_update):
  update, metrics = _one_round(
      '--robust_aggregation=norm_bound', '--norm_bound=0.2', '--dp=server',
      '--dp_clip=1', '--dp_noise_multiplier=0', '--attack=sign_flip',
      '--malicious_fraction=0.2', '--attack_scale=10')
  # Every update is projected to norm 0.2 before DP's clip (1) and sum: four
  # honest 0.2 u/|u| against one -0.2 u/|u|, so the step is along +u.
  assert np.linalg.norm(honest_update) > 0.2
  cosine = np.dot(update, honest_update) / (
      np.linalg.norm(update) * np.linalg.norm(honest_update))
  assert cosine == pytest.approx(1.0, abs=1e-5)
  assert metrics['robustness'] == dict(excluded_clients=0.0,
                                       clipped_clients=5.0)
  assert metrics['attack'] == dict(malicious_clients=1.0)
  assert 'epsilon' in metrics['dp']


def test_scaffold_takes_the_rule_for_its_model_delta(honest_update):
  attacked, metrics = _one_round(
      '--algorithm=scaffold', '--client_optimizer=sgd',
      '--robust_aggregation=median', '--attack=label_flip',
      '--malicious_fraction=0.2')
  # No data poisoning here (it is the run's data path): every client is
  # honest, so the median is the honest update, and the attacker is counted.
  np.testing.assert_allclose(attacked, honest_update, atol=1e-5)
  assert metrics['attack']['malicious_clients'] == 1


def test_a_sign_flip_attacker_turns_scaffolds_model_delta_not_its_controls(
    honest_update):
  scaffold = ('--algorithm=scaffold', '--client_optimizer=sgd')
  honest, honest_metrics = _one_round(*scaffold)
  # Round 1: every c_i and c are zero, so SCAFFOLD's step is plain SGD's.
  np.testing.assert_allclose(honest, honest_update, atol=1e-5)
  metrics = _sign_flip_turns_the_mean_not_the_median(honest_update, *scaffold)
  # The attacker's Delta c_i is honest: c moves as in the honest round.
  assert metrics['scaffold']['control_norm'] == pytest.approx(
      honest_metrics['scaffold']['control_norm'], rel=1e-6)


def test_a_sign_flip_attacker_turns_a_clusters_mean_not_its_median(
    honest_update):
  """Clustered FL: the attacker's sent update is what its cluster
  aggregates (and what the server sketches); before any split, one
  cluster, so the round is FedAvg's."""
  _sign_flip_turns_the_mean_not_the_median(honest_update,
                                           '--clustering=cosine')


def _sign_flip_turns_the_mean_not_the_median(honest_update, *flags):
  """One of 5 identical clients sends -10 u: the mean round moves by
  (4 u - 10 u) / 5 = -1.2 u, the median's by u. Returns the mean round's
  metrics."""
  attack = ('--attack=sign_flip', '--malicious_fraction=0.2',
            '--attack_scale=10')
  mean, metrics = _one_round(*flags, *attack)
  np.testing.assert_allclose(mean, -1.2 * honest_update, atol=1e-5)
  assert metrics['attack']['malicious_clients'] == 1
  median, median_metrics = _one_round(*flags, *attack,
                                      '--robust_aggregation=median')
  np.testing.assert_allclose(median, honest_update, atol=1e-5)
  assert median_metrics['attack'] == dict(malicious_clients=1.0,
                                          kept_malicious=0.0)
  return metrics


# --- data attacks and a real run ---


def test_a_malicious_clients_data_is_poisoned_and_an_honest_ones_is_not(
    tff_worker):
  from tff_research.data import federated_data  # pylint: disable=g-import-not-at-top
  data = federated_data.load_federated_data(
      federated_data.DataConfig(num_clients=4), log=lambda _: None)
  cid = data.client_ids[0]
  training = config_lib.TrainConfig(batch_size=1000, shuffle_buffer=1)
  attack = _config('--attack=label_flip', '--malicious_fraction=0.25'
                   ).algorithm.attack
  poisoned = client_data_lib.TrainingData(
      data.train, training, 0, poison=attack.poison(10), poisoned=[cid])
  honest = client_data_lib.TrainingData(data.train, training, 0)

  def labels(td, client):
    return np.concatenate([b['y'].numpy().ravel()
                           for b in td.datasets(1, [client])[0]])

  np.testing.assert_array_equal(labels(poisoned, cid), 9 - labels(honest, cid))
  other = data.client_ids[1]
  np.testing.assert_array_equal(labels(poisoned, other), labels(honest, other))


BASE = dict(model='linear', num_clients=10, clients_per_round=5,
            client_learning_rate=0.01, eval_every=2, rounds_per_checkpoint=1,
            progress=False, weight_by_size=False,
            robust_aggregation='norm_bound', norm_bound=5.0,
            attack='backdoor', malicious_fraction=0.3, attack_scale=3.0,
            backdoor_target=1)


def test_attack_metrics_reach_metrics_csv_and_the_run_resumes(
    tff_worker, tmp_path):
  rows = fl_testing.run_experiment(BASE, tmp_path, 'bd', total_rounds=2)
  assert len(rows) == 2
  run_dir = os.path.join(tmp_path, 'bd')
  csv = fl_testing.read_csv(os.path.join(run_dir, 'metrics.csv'))
  for row in csv:
    assert row['attack_malicious_clients'] >= 0
    assert 0 <= row['attack_kept_malicious'] <= row['attack_malicious_clients']
    assert row['robustness_kept_clients'] <= 5
    assert row['robustness_clipped_clients'] >= 0
  assert 0 <= csv[1]['attack_backdoor_success'] <= 1
  assert csv[0].get('attack_backdoor_success') is None
  with open(os.path.join(run_dir, 'hparams.json')) as f:
    recorded = json.load(f)
  assert recorded['attack'] == 'backdoor'
  assert recorded['norm_bound'] == 5.0
  # A larger --total_rounds resumes after round 2 with the same attackers.
  more = fl_testing.run_experiment(BASE, tmp_path, 'bd', total_rounds=3)
  assert [r['round'] for r in more] == [3]
  # Another attack is another run.
  with pytest.raises(ValueError, match='--attack_scale=4.0 differs'):
    fl_testing.run_experiment(BASE, tmp_path, 'bd', total_rounds=3,
                              attack_scale=4.0)


def test_the_malicious_set_is_the_seeded_subset_of_the_training_clients():
  attack = _config('--attack=gaussian', '--malicious_fraction=0.3',
                   '--seed=5').algorithm.attack
  ids = [f'c{i}' for i in range(10)]
  chosen = attack.malicious(ids)
  assert len(chosen) == 3
  assert attack.malicious(list(reversed(ids))) == chosen
  inputs = attack.client_inputs(set(chosen), 4, ids)
  flags_ = [bool(next(iter(d))['malicious']) for d in inputs]
  assert [c for c, f in zip(ids, flags_) if f] == list(chosen)


def test_exact_attackers_per_round_fix_every_rounds_count(tff_worker,
                                                         tmp_path):
  # 10 clients, 30 % malicious = 3; rounds of 5 take round(1.5) = 2 of them.
  # Uniform sampling gives 2 with probability C(3,2) C(7,3) / C(10,5) =
  # 0.417 a round, so 2 in each of 6 rounds has probability 0.005 without
  # the stratified sampler.
  base = {k: v for k, v in BASE.items()
          if k not in ('norm_bound', 'backdoor_target')}
  rows = fl_testing.run_experiment(
      base, tmp_path, 'exact', robust_aggregation='median',
      attack='sign_flip', malicious_per_round='exact', attack_scale=10.0,
      total_rounds=6, eval_every=6)
  assert len(rows) == 6
  csv = fl_testing.read_csv(os.path.join(tmp_path, 'exact', 'metrics.csv'))
  assert [r['attack_malicious_clients'] for r in csv] == [2] * 6
  assert all(0 <= r['attack_kept_malicious'] <= 2 for r in csv)
