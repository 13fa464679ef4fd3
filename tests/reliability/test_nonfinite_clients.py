"""A client whose update is non-finite is excluded and counted; training goes on.

Fault injected: one of four clients ('w3') holds training pixels that are all
NaN, so its local training returns a NaN model delta every round it takes
part (its held-out pixels are finite, so evaluation stays finite). For every
algorithm family the run must finish, log `robustness_excluded_clients` = 1
each round (TensorBoard `robustness/excluded_clients`), and, for FedAvg
weighted and uniform, end with the model trained on the other three clients
alone (to 1e-6). The uniform case is why the exclusion is ours
(`aggregators.excluding_mean`): TFF's own uniform mean averages the zeroed
delta in (the model would move 3/4 as far as without the client), and TFF
counts nothing.
"""

import asyncio
import collections

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_research.run import training
from tests import fl_testing

FLAGS = dict(model='linear', client_learning_rate=0.1, eval_every=10,
             rounds_per_checkpoint=2, progress=False, batch_size=10,
             total_rounds=2)
_DP = dict(weight_by_size=False, dp_clip=1.0, dp_noise_multiplier=0.5)


def _client(rng, n):
  return collections.OrderedDict(
      pixels=rng.random((n, 28, 28)).astype(np.float32),
      label=rng.integers(0, 10, n).astype(np.int32))


def _client_data(with_nan_client: bool):
  """w0..w2 (sizes 12, 20, 28: weighting matters), and w3 with NaN pixels."""
  rng = np.random.default_rng(0)
  train = {f'w{i}': _client(rng, n) for i, n in enumerate((12, 20, 28))}
  test = {f'w{i}': _client(rng, 10) for i in range(3)}
  if with_nan_client:
    bad = _client(rng, 16)
    bad['pixels'][:] = np.nan
    train['w3'] = bad
    test['w3'] = _client(rng, 10)
  return (tff.simulation.datasets.TestClientData(train),
          tff.simulation.datasets.TestClientData(test))


def _train(tmp_path, name, with_nan_client, **overrides):
  flags = dict(FLAGS, clients_per_round=4 if with_nan_client else 3,
               **overrides)
  config = fl_testing.config_for(
      {k: v for k, v in flags.items() if v is not None}, tmp_path, name)
  client_data = _client_data(with_nan_client)
  rows = training.train(config, client_data=client_data)
  run = training.build_run(config, client_data=client_data)
  restored, version = asyncio.run(training.state_manager(
      run.directory.checkpoint_dir).load_latest(run.state_template()))
  assert version == FLAGS['total_rounds']
  return rows, run.algorithm.get_model_weights(restored['state'])


def _assert_counted(tmp_path, name, rows, expected=1.0, finite_loss=True):
  assert [r['round'] for r in rows] == [1, 2]
  logged = fl_testing.read_csv(tmp_path / name / 'metrics.csv')
  assert [r['robustness_excluded_clients'] for r in logged] == [expected] * 2
  for r in logged:
    if finite_loss:
      assert np.isfinite(r['train_loss']) and r['train_loss'] > 0
    else:
      # Never the 0.0 of a round that trained on nothing.
      assert r['train_loss'] != 0.0


@pytest.mark.parametrize('weighted', [True, False], ids=['weighted', 'uniform'])
def test_fedavg_excludes_the_nan_client_exactly(tff_worker, tmp_path, weighted):
  rows, with_nan = _train(tmp_path, 'nan', True, weight_by_size=weighted)
  _assert_counted(tmp_path, 'nan', rows)
  _, without = _train(tmp_path, 'clean', False, weight_by_size=weighted)
  for a, b in zip(with_nan.trainable, without.trainable):
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  clean = fl_testing.read_csv(tmp_path / 'clean' / 'metrics.csv')
  assert [r['robustness_excluded_clients'] for r in clean] == [0.0, 0.0]
  # The excluded client's examples are not counted as trained on either.
  assert rows[0]['train_examples'] == 12 + 20 + 28


FAMILIES = {
    'fedprox': dict(algorithm='fedprox'),
    'fedadam': dict(algorithm='fedadam'),
    'fedadam_uniform': dict(algorithm='fedadam', weight_by_size=False),
    'scaffold': dict(algorithm='scaffold'),
    'clustered_cosine': dict(algorithm='fedavg', clustering='cosine',
                             cluster_warmup_rounds=1, recluster_every=1),
    'dp_server': dict(algorithm='fedavg', dp='server', **_DP),
    'dp_client': dict(algorithm='fedavg', dp='client', **_DP),
    'fedsgd': dict(algorithm='fedsgd', client_learning_rate=None),
}
FAST_FAMILIES = ('scaffold', 'dp_server', 'fedadam_uniform')


def _family_params():
  out = []
  for name in FAMILIES:
    marks = [] if name in FAST_FAMILIES else [pytest.mark.slow]
    out.append(pytest.param(name, id=name, marks=marks))
  return out


@pytest.mark.parametrize('family', _family_params())
def test_every_family_counts_and_continues(tff_worker, tmp_path, family):
  rows, weights = _train(tmp_path, 'nan', True, **FAMILIES[family])
  assert all(np.all(np.isfinite(w)) for w in weights.trainable)
  # TFF's FedSGD sums every client's metrics, the NaN client's loss too, so
  # its train loss is honestly NaN while the model stays finite.
  _assert_counted(tmp_path, 'nan', rows, finite_loss=family != 'fedsgd')


def test_excluding_mean_numbers(tff_worker):
  """The factory alone: weighted, uniform (through TFF's own unweighted
  wrapper, which drops the weights) and a round that excludes everyone."""
  from tensorflow_federated.python.aggregators import factory_utils  # pylint: disable=g-import-not-at-top
  from tff_research.aggregators import excluding_mean  # pylint: disable=g-import-not-at-top
  value_type = tff.types.to_type([(np.float32, [3]), (np.float32, [2])])
  weight_type = tff.TensorType(np.float32)
  f = excluding_mean.ExcludingMeanFactory()
  ones = [np.ones(3, np.float32), np.ones(2, np.float32)]
  nan = [np.array([np.nan, 1, 1], np.float32), np.ones(2, np.float32)]
  inf_weight = [np.full(3, 5, np.float32), np.full(2, 5, np.float32)]
  zero = [np.zeros(3, np.float32), np.zeros(2, np.float32)]
  times = lambda k: [k * t for t in ones]  # pylint: disable=unnecessary-lambda-assignment

  weighted = f.create(value_type, weight_type)
  out = weighted.next(weighted.initialize(),
                      [ones, nan, times(2), inf_weight, times(9)],
                      [1.0, 3.0, 3.0, np.inf, 0.0])
  # (1 * 1 + 3 * 2) / 4: the NaN update, the infinite and the zero weight
  # are out; an update that is non-finite is out whatever its weight.
  for t in out.result:
    np.testing.assert_array_equal(t, np.full_like(t, 1.75))
  assert out.measurements['excluded_clients'] == 3.0

  uniform = factory_utils.as_weighted_aggregator(f).create(value_type, weight_type)
  out = uniform.next(uniform.initialize(), [ones, zero, times(3), nan],
                     [1.0, 0.0, 1.0, 1.0])
  for t in out.result:  # (1 + 3) / 2, not (1 + 0 + 3 + 0) / 4
    np.testing.assert_array_equal(t, np.full_like(t, 2.0))
  assert out.measurements['excluded_clients'] == 2.0

  out = uniform.next(uniform.initialize(), [zero, nan], [1.0, 1.0])
  for t in out.result:  # nobody left: no update, not NaN
    np.testing.assert_array_equal(t, np.zeros_like(t))
  assert out.measurements['excluded_clients'] == 2.0
