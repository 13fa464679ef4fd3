"""The reference experiments: TFF's image-classification tutorial and the
isolated-versus-federated skewed-silo study, end to end and against numpy."""

import collections
import importlib.util
import json
import os
import signal
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_research import models
from tff_research.algorithms import fed_avg
from tff_research.cli import flags as flags_lib
from tff_research.data import federated_data
from tff_research.reference import isolated_vs_federated as ivf
from tff_research.reference import tutorial
from tests import fl_testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


def _parse(argv):
  """Parses argv into the process's flags as a binary would."""
  FLAGS.unparse_flags()
  FLAGS(['binary'] + argv)


def _given(argv):
  """The train.py flags a command line `argv` sets (a private FlagValues),
  as `flags.given_flags()` returns them to a binary."""
  fv = flags.FlagValues()
  flags_lib.define_flags(fv)
  fv(['binary'] + argv)
  return flags_lib.given_flags(fv)


def _summary_tags(directory):
  tags = collections.Counter()
  for name in os.listdir(directory):
    if name.startswith('events.out.tfevents'):
      for event in tf.compat.v1.train.summary_iterator(
          os.path.join(directory, name)):
        for value in event.summary.value:
          tags[value.tag] += 1
  return tags


def _one_client_round(model_fn, x, y, lr, batch_size):
  """One FedAvg round on one client: returns its local model and metrics."""
  process = fed_avg.build_fed_avg(
      model_fn,
      client_optimizer=tff.learning.optimizers.build_sgdm(learning_rate=lr),
      server_optimizer=tff.learning.optimizers.build_sgdm(learning_rate=1.0))
  output = process.next(process.initialize(),
                        [fl_testing.to_dataset(x, y, batch_size)])
  weights = process.get_model_weights(output.state).trainable
  return weights[0], weights[1], output.metrics['client_work']['train']


def _numpy_local_sgd(x, y, lr, batch_size, clip):
  """Zero-init softmax regression SGD; with `clip`, Keras' loss on clipped
  probabilities: -log(clip(p_y, 1e-7, 1 - 1e-7)), no gradient where clipped.
  Returns (w, b, example-weighted mean batch loss, number clipped)."""
  eps = 1e-7
  w, b = np.zeros((784, 10)), np.zeros(10)
  loss_sum, clipped = 0.0, 0
  for start in range(0, len(y), batch_size):
    xb, yb = x[start:start + batch_size], y[start:start + batch_size]
    z = xb.astype(np.float64) @ w + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p_y = p[np.arange(len(yb)), yb]
    g = p.copy()
    g[np.arange(len(yb)), yb] -= 1.0
    if clip:
      inside = (p_y > eps) & (p_y < 1 - eps)
      clipped += int((~inside).sum())
      loss_sum += -np.log(np.clip(p_y, eps, 1 - eps)).sum()
      g *= inside[:, None]
    else:
      loss_sum += -(z[np.arange(len(yb)), yb] -
                    np.log(np.exp(z).sum(axis=1))).sum()
    g /= len(yb)
    w, b = w - lr * xb.T.astype(np.float64) @ g, b - lr * g.sum(axis=0)
  return w, b, loss_sum / len(y), clipped


# --- the tutorial -------------------------------------------------------------


def test_tutorial_keras_model_uses_clipped_probabilities_ours_use_logits(
    tff_worker):
  """TFF hides the tutorial model's logits from Keras' loss, so it trains on
  clipped probabilities; `linear`/`linear_variable` train on the exact loss."""
  x, y = fl_testing.make_clients([15], seed=5)[0]
  lr = 0.5  # large steps push some true-class probabilities below 1e-7
  ref = {clip: _numpy_local_sgd(x, y, lr, 5, clip) for clip in (True, False)}
  assert ref[True][3] > 0
  assert np.abs(ref[True][0] - ref[False][0]).max() > 0.05
  for name in tutorial.MODELS:
    w, b, metrics = _one_client_round(
        tutorial.build_model_fn(name), x, y, lr, batch_size=5)
    ref_w, ref_b, ref_loss, _ = ref[name == tutorial.TUTORIAL_KERAS]
    np.testing.assert_allclose(w, ref_w, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(b, ref_b, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(metrics['loss'], ref_loss, rtol=1e-5,
                               err_msg=name)
  # With the tutorial's step size nothing is clipped: the losses coincide.
  small = [_numpy_local_sgd(x, y, 0.02, 5, clip) for clip in (True, False)]
  assert small[0][3] == 0
  np.testing.assert_allclose(small[0][0], small[1][0], atol=1e-12)


def test_tutorial_round_one_and_evaluation_match_numpy(tff_worker):
  """One tutorial round on digits equals numpy FedAvg over the very batches
  the tutorial pipeline produces (zero init, SGD 0.02, weighted by examples),
  and so do the evaluation metrics of the averaged model."""
  data = federated_data.load_federated_data(
      federated_data.DataConfig(dataset='digits', num_clients=20))
  config = tutorial.TutorialConfig(num_rounds=1)
  result = tutorial.run_tutorial(data, 'tutorial_keras', config,
                                 print_fn=lambda _: 0)
  assert result.client_ids == [f'client_{i:04d}' for i in range(10)]

  def batches(datasets):
    return [[(b['x'], b['y'].reshape(-1)) for b in ds.as_numpy_iterator()]
            for ds in datasets]

  train = batches(
      tutorial.make_federated_data(data.train, result.client_ids, config))
  test = batches(
      tutorial.make_federated_data(data.test, result.test_client_ids, config))
  w, b = np.zeros((784, 10)), np.zeros(10)
  new_w, new_b, sizes, losses, correct = 0.0, 0.0, [], [], []
  for client in train:
    cw, cb = w.copy(), b.copy()
    for x, y in client:
      loss, acc = fl_testing.mean_loss_and_accuracy(cw, cb, x, y)
      losses.append(loss * len(y))
      correct.append(acc * len(y))
      gw, gb = fl_testing.softmax_ce_grad(cw, cb, x, y)
      cw, cb = cw - 0.02 * gw, cb - 0.02 * gb
    n = sum(len(y) for _, y in client)
    sizes.append(n)
    new_w, new_b = new_w + n * cw, new_b + n * cb
  new_w, new_b = new_w / sum(sizes), new_b / sum(sizes)

  expected_n = 5 * sum(data.train.num_examples(c) for c in result.client_ids)
  assert result.rounds[0]['num_examples'] == sum(sizes) == expected_n
  np.testing.assert_allclose(result.rounds[0]['loss'],
                             sum(losses) / sum(sizes), rtol=1e-4)
  np.testing.assert_allclose(result.rounds[0]['accuracy'],
                             sum(correct) / sum(sizes), atol=1e-6)
  for split, clients in (('train_eval', train), ('test_eval', test)):
    x = np.concatenate([x for c in clients for x, _ in c])
    y = np.concatenate([y for c in clients for _, y in c])
    loss, acc = fl_testing.mean_loss_and_accuracy(new_w, new_b, x, y)
    got = getattr(result, split)
    assert got['num_examples'] == len(y)
    np.testing.assert_allclose(got['loss'], loss, rtol=1e-4)
    np.testing.assert_allclose(got['accuracy'], acc, atol=1e-6)


def test_tutorial_binary_run_on_digits(tff_worker, tmp_path):
  result = tutorial.run_from_flags(
      _given([f'--logdir={tmp_path}', '--model=linear_variable']))
  run_dir = tmp_path / 'tutorial_digits_linear_variable'
  # The same clients every round: every round trains the same examples.
  assert [r['round'] for r in result.rounds] == list(range(1, 11))
  assert len({r['num_examples'] for r in result.rounds}) == 1
  # Qualitatively the tutorial's curve: loss falls, accuracy rises, and the
  # final model (one step ahead of round 10's training metrics) is better.
  losses = [r['loss'] for r in result.rounds]
  assert losses[-1] < losses[0] - 0.5
  assert result.rounds[-1]['accuracy'] > result.rounds[0]['accuracy'] + 0.2
  assert result.train_eval['accuracy'] > result.rounds[-1]['accuracy']
  assert result.test_eval['accuracy'] > 0.5  # chance is 0.1
  saved = json.loads((run_dir / 'results.json').read_text())
  assert saved['rounds'] == result.rounds
  assert saved['flags']['model'] == 'linear_variable'
  assert saved['reference'] == dict(tutorial.REFERENCE)
  train_tags = _summary_tags(run_dir / 'train')
  for tag in ('loss', 'sparse_categorical_accuracy', 'num_examples'):
    assert train_tags[tag] == 10, tag
  eval_tags = _summary_tags(run_dir / 'eval')
  assert eval_tags['train_data/accuracy'] == 1
  assert eval_tags['test_data/accuracy'] == 1
  table = (run_dir / 'results.md').read_text()
  assert '| round_10_accuracy | 0.325 |' in table


@pytest.mark.slow  # builds the FEMNIST sqlite cache (~30 s) if not built yet
def test_tutorial_on_femnist_cache_trains_the_first_ten_writers(
    tff_worker, emnist_cache_dir):
  data = federated_data.load_federated_data(
      federated_data.DataConfig(dataset='emnist_digits',
                                data_dir=str(emnist_cache_dir)))
  result = tutorial.run_tutorial(
      data, 'linear', tutorial.TutorialConfig(num_rounds=2),
      print_fn=lambda _: 0)
  assert result.client_ids == sorted(data.client_ids)[:10]
  sizes = [len(list(data.train.create_tf_dataset_for_client(c)))
           for c in result.client_ids]
  assert result.rounds[0]['num_examples'] == 5 * sum(sizes)
  assert result.rounds[1]['loss'] < result.rounds[0]['loss']


@pytest.mark.parametrize('argv, message', [
    (['--client_learning_rate=0.1'],
     '--client_learning_rate does not apply to tutorial_image_classification'
     '.py: the tutorial fixes client SGD at 0.02'),
    (['--dataset=emnist'], '--dataset=emnist is not valid'),
    (['--model=cnn'], '--model=cnn is not valid'),
    (['--data_dir=/tmp'], '--data_dir applies only to --dataset=emnist_digits'),
    (['--dataset=emnist_digits', '--num_clients=30'],
     '--num_clients applies only to --dataset=digits'),
    (['--num_clients=5'], '--num_clients=5 is not valid'),
    (['--experiment_name=a/b'], "--experiment_name='a/b' is not valid"),
])
def test_tutorial_rejects_flags_that_do_not_apply(tmp_path, argv, message):
  with pytest.raises(flags_lib.FlagError) as e:
    tutorial.config_from_flags(_given([f'--logdir={tmp_path}'] + argv))
  assert message in str(e.value)
  assert '\n' not in str(e.value)
  assert not os.listdir(tmp_path)


def test_existing_run_directory_is_refused_and_left_alone(tmp_path):
  run_dir = tmp_path / 'tutorial_digits'
  run_dir.mkdir()
  (run_dir / 'results.json').write_text('{"keep": 1}')
  with pytest.raises(flags_lib.FlagError, match='already exists'):
    tutorial.config_from_flags(_given([f'--logdir={tmp_path}']))
  assert (run_dir / 'results.json').read_text() == '{"keep": 1}'
  assert os.listdir(run_dir) == ['results.json']


# --- isolated versus federated ------------------------------------------------


def test_confusion_matrix_and_subset_accuracies_by_hand():
  labels = np.array([0, 0, 1, 1, 1, 2, 3])
  preds = np.array([0, 1, 1, 1, 0, 3, 3])
  cm = ivf.confusion_matrix(labels, preds, num_classes=4)
  np.testing.assert_array_equal(
      cm, [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]])
  assert ivf.accuracy_on(cm) == pytest.approx(4 / 7)
  assert ivf.accuracy_on(cm, (1, 2)) == pytest.approx(2 / 4)
  assert ivf.accuracy_on(cm, (3,)) == 1.0
  # Against a direct per-example computation on random data.
  rng = np.random.default_rng(0)
  labels, preds = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
  cm = ivf.confusion_matrix(labels, preds, 10)
  for group in ivf.MISSING_DIGITS:
    mask = np.isin(labels, group)
    assert ivf.accuracy_on(cm, group) == pytest.approx(
        np.mean(preds[mask] == labels[mask]))
  with pytest.raises(ValueError, match='differ in length'):
    ivf.confusion_matrix(labels, preds[:-1], 10)


def test_silos_never_hold_their_missing_digits():
  data = ivf.load_silos('digits', None, test_fraction=0.2, seed=0)
  assert len(data.client_ids) == 3
  x, y = ivf.heldout_set(data)
  assert set(np.unique(y)) == set(range(10))
  assert x.shape == (len(y), 784)
  for cid, missing in zip(data.client_ids, ivf.MISSING_DIGITS):
    for split in (data.train, data.test):
      labels = [int(e['label'])
                for e in split.create_tf_dataset_for_client(cid)]
      assert not set(labels) & set(missing)
      assert len(set(labels)) == 7


def test_isolated_model_is_one_silos_fedavg_round_one(tff_worker):
  """FedAvg with a single silo for one round is that silo trained alone."""
  data = ivf.load_silos('digits', None, test_fraction=0.2, seed=0)
  config = ivf.StudyConfig(local_epochs=2, rounds=1, learning_rate=0.01)
  cid = data.client_ids[1]
  isolated, _ = ivf.train_isolated(data, cid, config)
  federated, _ = ivf.train_federated(data, config, [cid], print_fn=lambda _: 0)
  for a, b in zip(isolated.get_weights(), federated.get_weights()):
    np.testing.assert_allclose(a, b, atol=2e-5)
  initial = models.keras_model(config.model, 10, seed=config.seed)
  assert np.abs(isolated.get_weights()[0] -
                initial.get_weights()[0]).max() > 1e-2  # it did train


def test_isolated_vs_federated_binary_run_on_digits(tff_worker, tmp_path):
  results = ivf.run_from_flags(
      _given([f'--logdir={tmp_path}', '--experiment_name=study']),
      local_epochs=10, fedavg_rounds=3)
  names = [r.name for r in results]
  assert names == ['isolated client 1', 'isolated client 2',
                   'isolated client 3', 'federated',
                   'centralized (pooled silos)']
  groups = [ivf.group_name(g) for g in ivf.MISSING_DIGITS]
  # The published result, qualitatively: an isolated model never predicts
  # the digits it never saw; the federated model recognises every subset.
  for i, r in enumerate(results[:3]):
    assert r.missing[groups[i]] == 0.0, r.name
    assert r.overall <= 0.75
  fed = results[3]
  for g in groups:
    assert fed.missing[g] >= 0.6, g
  assert fed.overall > max(r.overall for r in results[:3]) + 0.15
  # The pooled baseline sees every digit too.
  assert min(results[4].missing.values()) >= 0.6
  assert all(r.confusion.sum() == results[0].confusion.sum() for r in results)

  run_dir = tmp_path / 'study'
  table = (run_dir / 'results.md').read_text()
  assert table.splitlines()[0] == (
      '| model | overall | {1,3,7} | {2,5,8} | {4,6,9} |')
  assert len(table.splitlines()) == 2 + len(results)
  for r in results:
    png = (run_dir / f'confusion_{ivf.slug(r.name)}.png').read_bytes()
    assert png.startswith(b'\x89PNG\r\n\x1a\n')
  tags = _summary_tags(run_dir)
  assert {t for t in tags if t.startswith('confusion_matrix/')} == {
      'confusion_matrix/' + name for name in (
          'isolated_client_1', 'isolated_client_2', 'isolated_client_3',
          'federated', 'centralized')}
  assert tags['federated/train_loss'] == 3
  assert tags['results_table'] == 1
  saved = json.loads((run_dir / 'results.json').read_text())
  assert saved['config']['local_epochs'] == 10
  assert saved['config']['learning_rate'] == 0.02  # not train.py's 0.1
  np.testing.assert_array_equal(saved['models'][3]['confusion'], fed.confusion)


@pytest.mark.parametrize('argv, message', [
    (['--client_epochs=3'], 'use --local_epochs'),
    (['--model=cnn'], 'fixes the two-layer fully connected network'),
    (['--dataset=emnist'], '--dataset=emnist is not valid'),
    (['--data_dir=/tmp'], '--data_dir applies only to --dataset=emnist_digits'),
    (['--client_learning_rate=0'], '--client_learning_rate=0.0 is not valid'),
])
def test_study_rejects_flags_that_do_not_apply(tmp_path, argv, message):
  with pytest.raises(flags_lib.FlagError) as e:
    ivf.config_from_flags(_given([f'--logdir={tmp_path}'] + argv),
                          local_epochs=10, fedavg_rounds=3)
  assert message in str(e.value)
  assert '\n' not in str(e.value)
  assert not os.listdir(tmp_path)


def _load_binary(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, 'experiments', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # defines the binary's own flags once
  return module


_BINARIES = {}


@pytest.mark.parametrize('binary, argv, message', [
    ('tutorial_image_classification', ['--first_client=-1'],
     'error: --first_client=-1 is not valid: must be >= 0'),
    ('isolated_vs_federated', ['--fedavg_rounds=0'],
     'error: --fedavg_rounds=0 is not valid: must be >= 1'),
    ('isolated_vs_federated', ['--total_rounds=5'],
     'error: --total_rounds does not apply to isolated_vs_federated.py: use'
     ' --fedavg_rounds (default 3)'),
])
def test_binary_main_reports_bad_input_in_one_line(tmp_path, capsys, binary,
                                                   argv, message):
  if binary not in _BINARIES:
    _BINARIES[binary] = _load_binary(binary)
  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    with flagsaver.flagsaver():
      _parse([f'--logdir={tmp_path}'] + argv)
      with pytest.raises(SystemExit) as e:
        _BINARIES[binary].main(['binary'])
  finally:
    for s, h in handlers.items():
      signal.signal(s, h)
  assert e.value.code == 1
  assert capsys.readouterr().err.strip().splitlines() == [message]
  assert not os.listdir(tmp_path)


@pytest.mark.slow  # two fresh interpreters importing TensorFlow: ~1 min
@pytest.mark.parametrize('binary, argv, message', [
    ('tutorial_image_classification.py', ['--first_client=-1'],
     'error: --first_client=-1 is not valid: must be >= 0'),
    ('isolated_vs_federated.py', ['--fedavg_rounds=0'],
     'error: --fedavg_rounds=0 is not valid: must be >= 1'),
])
def test_binaries_report_bad_input_in_one_line(tmp_path, binary, argv,
                                               message):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'experiments', binary),
       f'--logdir={tmp_path}'] + argv,
      capture_output=True, text=True, timeout=300, cwd=REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert proc.returncode == 1
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert errors == [message]
  assert not os.listdir(tmp_path)
