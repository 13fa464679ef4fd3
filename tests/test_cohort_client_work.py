"""The cohort client work trains the same model as TFF's per-client work.

For every FedAvg-family algorithm the registry builds with cohorts
(no DP), three rounds on the shared FEMNIST writers end within 1e-6 of the
same rounds through TFF's own `build_model_delta_client_work` with the
non-finite-excluding mean (the path the cohort replaces), with equal
training metrics and per-client tables; two cohorts equal one; a diverged
client is left out and counted as it is per client. The same holds for
the collecting robust rules over cohorts' tables of member updates, with
update attacks applied per member, against the rules over TFF clients.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf

from tests import fl_testing
from tff_research import algorithms
from tff_research.algorithms import base
from tff_research.algorithms import cohort_client_work
from tff_research.algorithms import fed_avg
from tff_research.data import preprocessing

ALGORITHMS = {
    'fedavg': {}, 'fedavg_uniform': dict(weight_by_size=False),
    'fedprox': dict(algorithm='fedprox', proximal_strength=0.5),
    'fedavgm': dict(algorithm='fedavgm'), 'fedadam': dict(algorithm='fedadam'),
    'fedyogi': dict(algorithm='fedyogi'),
    'fedadagrad': dict(algorithm='fedadagrad'),
}
FAST = ('fedavg', 'fedavg_uniform', 'fedprox')


@pytest.fixture(scope='module')
def writers(shared_femnist_npz):
  """12 shared FEMNIST writers' training datasets, as a round reads them."""
  from tff_research.data import femnist_arrays  # pylint: disable=g-import-not-at-top
  arrays = femnist_arrays.load_femnist_arrays(str(shared_femnist_npz))
  index = arrays.client_indices('train')
  out = collections.OrderedDict()
  for cid in arrays.client_ids[:12]:
    rows = index[cid]
    out[cid] = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        label=arrays.train_labels[rows], pixels=arrays.train_pixels[rows]))
  return out


def _per_client(config, ids, monkeypatch):
  """The algorithm through TFF's per-client client work (what the cohort
  replaces): `config_arguments` with the cohort branch switched off."""
  original = fed_avg.config_arguments
  with monkeypatch.context() as m:
    m.setattr(fed_avg, 'config_arguments',
              lambda c, client_ids: original(c, ()) | dict(
                  metrics_aggregator=fed_avg.client_metrics.for_clients(
                      client_ids)))
    return algorithms.build_algorithm(config, fl_testing.linear_model_fn(62),
                                      ids)


def _rounds(alg, writers, schedule, seed=0):
  state = alg.initialize()
  preprocess = preprocessing.build_preprocess_fn(
      epochs=1, batch_size=20, shuffle_buffer=100)
  for r, members in enumerate(schedule, start=1):
    ids = [list(writers)[i] for i in members]
    state, metrics = alg.next(
        state, r, ids, [preprocess(writers[c], seed + r) for c in ids])
  return alg.get_model_weights(state), metrics


def _assert_same_training(a, b, atol=1e-6):
  (wa, ma), (wb, mb) = a, b
  for x, y in zip(wa.trainable, wb.trainable):
    np.testing.assert_allclose(x, y, rtol=0, atol=atol)
  for key in ('loss', 'sparse_categorical_accuracy', 'num_examples'):
    np.testing.assert_allclose(ma['train'][key], mb['train'][key], rtol=1e-6)
  for key in ('loss', 'accuracy', 'examples'):
    np.testing.assert_allclose(np.sort(ma['clients'][key]),
                               np.sort(mb['clients'][key]), rtol=1e-6)
  assert ma['robustness'] == mb['robustness']


SCHEDULE = [[0, 1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11, 0, 2]]


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
    for n in ALGORITHMS])
def test_cohort_equals_tff_per_client_work(tff_worker, writers, monkeypatch,
                                           name):
  config = fl_testing.config_for(
      dict(ALGORITHMS[name], model='linear', dataset='digits'), '/tmp', 'x'
  ).algorithm.replace(client_learning_rate=0.02)
  ids = list(writers)
  cohort = algorithms.build_algorithm(config, fl_testing.linear_model_fn(62),
                                      ids)
  assert cohort_client_work.takes_cohorts(cohort.process)
  reference = _per_client(config, ids, monkeypatch)
  assert not cohort_client_work.takes_cohorts(reference.process)
  got = _rounds(cohort, writers, SCHEDULE)
  _assert_same_training(got, _rounds(reference, writers, SCHEDULE))
  assert got[1]['train']['num_examples'] == sum(
      len(list(writers[list(writers)[i]])) for i in SCHEDULE[-1])
  # The model moved: an equality of two do-nothing paths would pass too.
  initial = cohort.get_model_weights(cohort.initialize()).trainable
  assert np.abs(got[0].trainable[0] - initial[0]).max() > 1e-4


def test_two_cohorts_equal_one_and_a_diverged_client_is_counted(
    tff_worker, writers, monkeypatch):
  config = fl_testing.config_for(dict(model='linear'), '/tmp', 'x').algorithm
  # A rate at which the linear model trains stably: rounding differences of
  # the cohorts' sums then stay at rounding size over three rounds.
  config = config.replace(client_learning_rate=0.02)
  ids = list(writers)
  one = algorithms.build_algorithm(config, fl_testing.linear_model_fn(62), ids)
  two = algorithms.build_algorithm(config, fl_testing.linear_model_fn(62), ids,
                                   cohorts=2)
  assert (one.cohorts, two.cohorts) == (1, 2)
  _assert_same_training(_rounds(one, writers, SCHEDULE),
                        _rounds(two, writers, SCHEDULE))
  # A client whose pixels are NaN diverges: left out of the mean, counted,
  # its metrics reset, exactly as TFF's per-client work and the excluding
  # mean do.
  poisoned = collections.OrderedDict(writers)
  poisoned[ids[1]] = writers[ids[1]].map(
      lambda e: collections.OrderedDict(label=e['label'],
                                        pixels=e['pixels'] * np.nan))
  reference = _per_client(config, ids, monkeypatch)
  got = _rounds(two, poisoned, SCHEDULE[:1])
  assert got[1]['robustness']['excluded_clients'] == 1.0
  _assert_same_training(got, _rounds(reference, poisoned, SCHEDULE[:1]))


RULES = {
    'median': dict(robust_aggregation='median'),
    'krum': dict(robust_aggregation='krum', byzantine_clients=1),
    'median_sign_flip': dict(robust_aggregation='median', attack='sign_flip',
                             malicious_fraction=0.3, attack_scale=10),
    'trimmed_mean_gaussian': dict(
        robust_aggregation='trimmed_mean', trim_fraction=0.2,
        attack='gaussian', malicious_fraction=0.3, attack_scale=1),
    'multi_krum_label_flip': dict(
        robust_aggregation='multi_krum', multi_krum_m=2,
        attack='label_flip', malicious_fraction=0.3),
    'bulyan_sign_flip': dict(robust_aggregation='bulyan', byzantine_clients=1,
                             attack='sign_flip', malicious_fraction=0.3,
                             attack_scale=10),
}


@pytest.mark.parametrize('name', RULES)
def test_a_rule_over_two_cohorts_equals_it_over_tff_clients(
    tff_worker, writers, monkeypatch, name):
  """A collecting rule over the cohorts' tables of member updates, each
  malicious member's update attacked inside its cohort, trains the same
  model as the rule over TFF's per-client work, with the same counts of
  kept, trimmed and malicious clients."""
  config = fl_testing.config_for(
      dict(RULES[name], model='linear', dataset='digits',
           weight_by_size=False), '/tmp', 'x'
  ).algorithm.replace(client_learning_rate=0.02)
  ids = list(writers)
  cohort = algorithms.build_algorithm(config, fl_testing.linear_model_fn(62),
                                      ids, cohorts=2)
  assert cohort_client_work.takes_cohorts(cohort.process)
  assert cohort_client_work.takes_member_attacks(cohort.process) == (
      config.attack.update_fn() is not None)
  reference = _per_client(config, ids, monkeypatch)
  assert not cohort_client_work.takes_cohorts(reference.process)
  got = _rounds(cohort, writers, SCHEDULE)
  _assert_same_training(got, _rounds(reference, writers, SCHEDULE))
  if config.attack.active:
    assert got[1]['attack']['malicious_clients'] > 0


def test_a_diverged_member_is_left_out_of_a_rule_and_counted(
    tff_worker, writers, monkeypatch):
  config = fl_testing.config_for(
      dict(RULES['median'], model='linear', weight_by_size=False), '/tmp',
      'x').algorithm.replace(client_learning_rate=0.02)
  ids = list(writers)
  poisoned = collections.OrderedDict(writers)
  poisoned[ids[1]] = writers[ids[1]].map(
      lambda e: collections.OrderedDict(label=e['label'],
                                        pixels=e['pixels'] * np.nan))
  cohort = algorithms.build_algorithm(config, fl_testing.linear_model_fn(62),
                                      ids, cohorts=2)
  got = _rounds(cohort, poisoned, SCHEDULE[:1])
  assert got[1]['robustness']['excluded_clients'] == 1.0
  _assert_same_training(got, _rounds(_per_client(config, ids, monkeypatch),
                                     poisoned, SCHEDULE[:1]))


def test_a_gaussian_attacker_without_data_sends_noise_in_a_cohort_too(
    tff_worker, writers, monkeypatch):
  """A member with no batches sends what a TFF client with an empty dataset
  sends: a zero update, which a Gaussian attacker replaces by noise that
  enters the rule."""
  config = fl_testing.config_for(
      dict(robust_aggregation='median', attack='gaussian',
           malicious_fraction=1.0, attack_scale=1.0, model='linear',
           weight_by_size=False), '/tmp', 'x'
  ).algorithm.replace(client_learning_rate=0.02)
  ids = list(writers)
  emptied = collections.OrderedDict(writers)
  emptied[ids[2]] = writers[ids[2]].take(0)
  cohort = algorithms.build_algorithm(config, fl_testing.linear_model_fn(62),
                                      ids, cohorts=2)
  got = _rounds(cohort, emptied, SCHEDULE[:1])
  # Every client attacks; none is left out, the empty one included.
  assert got[1]['robustness']['excluded_clients'] == 0.0
  assert got[1]['attack']['malicious_clients'] == 4
  _assert_same_training(got, _rounds(_per_client(config, ids, monkeypatch),
                                     emptied, SCHEDULE[:1]))


def test_cohorts_split_contiguously_and_evenly():
  assert cohort_client_work.split_cohorts(10, 1) == [range(0, 10)]
  assert cohort_client_work.split_cohorts(10, 3) == [
      range(0, 3), range(3, 7), range(7, 10)]
  assert cohort_client_work.split_cohorts(2, 5) == [range(0, 1), range(1, 2)]
  assert cohort_client_work.split_cohorts(0, 2) == []
