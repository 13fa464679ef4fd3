"""The research dashboard, read back from a real TensorBoard server.

A 3-round run is served by the real `tensorboard --logdir` (the venv's
console script) on 127.0.0.1, and the HTTP API
must return the run's scalars (tags and values equal to metrics.csv), its
images and its HParams session.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_research import evaluation
from tff_research.algorithms import base
from tff_research.algorithms import fed_avg
from tff_research.algorithms import scaffold
from tff_research.data import sampling
from tff_research.run import dashboard
from tests import fl_testing



def _fedavg(model_fn):
  return base.LearningProcessAlgorithm(fed_avg.build_fed_avg(
      model_fn, client_optimizer=tff.learning.optimizers.build_sgdm(0.1)))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gini_hand_computed_and_against_mean_absolute_difference():
  assert dashboard.gini([3, 3, 3]) == 0.0
  assert dashboard.gini([0, 0, 0]) == 0.0
  assert dashboard.gini([0, 0, 0, 5]) == pytest.approx(3 / 4)  # (n-1)/n
  assert dashboard.gini([1, 2, 3]) == pytest.approx(2 / 9)
  rng = np.random.default_rng(0)
  for _ in range(5):
    x = rng.integers(0, 10, 17).astype(float)
    # G = sum_ij |x_i - x_j| / (2 n^2 mean)
    reference = np.abs(x[:, None] - x[None, :]).sum() / (
        2 * len(x) ** 2 * x.mean())
    assert dashboard.gini(x) == pytest.approx(reference, rel=1e-12)


def _variable_bytes(model_fn):
  """Bytes of a model's variables, from the Keras/TFF model itself."""
  with tf.Graph().as_default():
    model = model_fn()
    trainable = sum(
        int(np.prod(v.shape)) * v.dtype.size for v in model.trainable_variables)
    non_trainable = sum(
        int(np.prod(v.shape)) * v.dtype.size
        for v in model.non_trainable_variables)
  return trainable, non_trainable


@pytest.mark.parametrize('model', ['linear', 'mlp'])
def test_communication_cost_is_the_model_size_and_doubles_for_scaffold(
    tff_worker, model):
  model_fn = fl_testing.linear_model_fn(name=model)
  trainable, non_trainable = _variable_bytes(model_fn)
  if model == 'linear':
    assert trainable == (784 * 10 + 10) * 4  # Hand count.
  ids = [f'c{i}' for i in range(3)]
  fedavg = _fedavg(model_fn)
  assert fedavg.bytes_per_client(fedavg.initialize()) == (
      trainable + non_trainable, trainable)
  algorithm = scaffold.build_scaffold(
      model_fn, client_ids=ids, client_learning_rate=0.1)
  down, up = algorithm.bytes_per_client(algorithm.initialize())
  # x and c down, Delta y and Delta c up: twice FedAvg each way.
  assert (down, up) == (2 * trainable + non_trainable, 2 * trainable)


def test_confusion_matrix_matches_numpy(tff_worker):
  model_fn = fl_testing.linear_model_fn()
  (x1, y1), (x2, y2) = fl_testing.make_clients([13, 7], seed=2)
  rng = np.random.default_rng(1)
  w = rng.normal(size=(784, 10)).astype(np.float32)
  b = rng.normal(size=10).astype(np.float32)
  algorithm = _fedavg(model_fn)
  weights = algorithm.get_model_weights(algorithm.initialize())
  weights = weights._replace(trainable=[w, b])
  # The held-out evaluation's own pass sums it (no second pass).
  matrix = evaluation.Evaluator(model_fn, num_classes=10).evaluate(
      weights, [fl_testing.to_dataset(x1, y1, 5),
                fl_testing.to_dataset(x2, y2, 5)])['confusion_matrix']
  x, y = np.concatenate([x1, x2]), np.concatenate([y1, y2])
  predicted = (x.astype(np.float64) @ w + b).argmax(axis=1)
  expected = np.zeros((10, 10), np.int64)
  np.add.at(expected, (y, predicted), 1)
  np.testing.assert_array_equal(matrix, expected)
  image = dashboard.confusion_matrix_image(expected, 'cm')
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _get(port, path, body=None):
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(
      f'http://127.0.0.1:{port}{path}', data=data,
      headers={'Content-Type': 'application/json'} if data else {})
  with urllib.request.urlopen(request, timeout=60) as response:
    raw = response.read()
  return raw if path.startswith('/data/plugin/images/individualImage') else (
      json.loads(raw))


# metrics.csv column -> TensorBoard tag.
_TAGS = {
    'train_loss': 'train/loss',
    'train_accuracy': 'train/accuracy',
    'client_loss_max': 'client_loss/max',
    'client_loss_mean': 'client_loss/mean',
    'client_loss_min': 'client_loss/min',
    'convergence_rate': 'convergence/rate',
    'participation_selected_percent': 'participation/selected_percent',
    'participation_reported_percent': 'participation/reported_percent',
    'communication_kb_down': 'communication/kb_down',
    'communication_kb_up': 'communication/kb_up',
    'communication_cumulative_kb': 'communication/cumulative_kb',
    'eval_accuracy': 'eval/accuracy',
    'eval_accuracy_p10': 'eval/accuracy_p10',
    'fairness_accuracy_spread': 'fairness/accuracy_spread',
    'fairness_selection_gini': 'fairness/selection_gini',
}


def test_tensorboard_serves_scalars_images_and_hparams(tff_worker, tmp_path):
  logdir = tmp_path / 'logs'
  fl_testing.run_experiment(
      dict(model='linear', num_clients=6, clients_per_round=3,
           client_learning_rate=0.01, total_rounds=3, eval_every=2,
           rounds_per_checkpoint=3, batch_size=10, progress=False),
      logdir, 'run3')
  with open(logdir / 'run3' / 'metrics.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3

  # Values the dashboard derives, recomputed here.
  losses = [float(r['train_loss']) for r in rows]
  for r in (1, 2):
    assert float(rows[r]['convergence_rate']) == pytest.approx(
        (losses[r - 1] - losses[r]) / losses[r - 1], rel=1e-9)
  counts = np.zeros(6)
  ids = sorted(str(i) for i in range(6))
  for r in (1, 2, 3):
    for cid in sampling.sample_clients(ids, r, seed=0, clients_per_round=3):
      counts[ids.index(cid)] += 1
  assert float(rows[2]['fairness_selection_gini']) == pytest.approx(
      dashboard.gini(counts))
  for row in rows:
    assert float(row['participation_selected_percent']) == 50.0
    assert (float(row['client_loss_min']) <= float(row['client_loss_mean'])
            <= float(row['client_loss_max']))

  port = _free_port()
  server = subprocess.Popen(
      [os.path.join(os.path.dirname(sys.executable), 'tensorboard'),
       f'--logdir={logdir}', '--host=127.0.0.1', f'--port={port}',
       '--load_fast=false', '--reload_interval=1'],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
  try:
    deadline = time.monotonic() + 300
    while True:
      assert server.poll() is None, server.stderr.read().decode()[-2000:]
      try:
        tags = _get(port, '/data/plugin/scalars/tags').get('run3', {})
        if set(_TAGS.values()) <= set(tags):
          break
      except OSError:
        pass
      assert time.monotonic() < deadline, 'TensorBoard did not load the run'
      time.sleep(2)

    for column, tag in _TAGS.items():
      series = _get(port, '/data/plugin/scalars/scalars?run=run3&tag=' + tag)
      served = {step: value for _, step, value in series}
      logged = {int(r['round']): float(r[column]) for r in rows if r[column]}
      assert sorted(served) == sorted(logged), tag
      for step, value in logged.items():
        assert served[step] == pytest.approx(value, rel=1e-6, abs=1e-7), tag

    histograms = _get(port, '/data/plugin/histograms/tags')['run3']
    assert {'clients/loss', 'clients/accuracy',
            'fairness/selection_counts'} <= set(histograms)

    images = _get(port, '/data/plugin/images/tags')['run3']
    assert {'data/label_histograms', 'data/example_digits',
            'eval/confusion_matrix'} <= set(images)
    entries = _get(port, '/data/plugin/images/images?run=run3'
                   '&tag=eval/confusion_matrix&sample=0')
    assert [e['step'] for e in entries] == [2, 3]
    png = _get(port, '/data/plugin/images/individualImage?'
               + entries[-1]['query'])
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    assert tf.io.decode_png(png).shape[-1] in (3, 4)

    layout = _get(port, '/data/plugin/custom_scalars/layout')
    charts = [c for cat in layout['category'] for c in cat['chart']]
    assert any(c.get('multiline', {}).get('tag') ==
               ['^client_loss/(max|mean|min)$'] for c in charts)

    groups = _get(port, '/data/plugin/hparams/session_groups', {
        'experimentName': '',
        'allowedStatuses': ['STATUS_UNKNOWN', 'STATUS_SUCCESS',
                            'STATUS_FAILURE', 'STATUS_RUNNING'],
        'colParams': [{'metric': {'tag': 'eval/accuracy', 'group': ''}}],
        'startIndex': 0, 'sliceSize': 10,
    })['sessionGroups']
    assert [g['name'] for g in groups] == ['run3']
    assert groups[0]['hparams']['model'] == 'linear'
    assert groups[0]['hparams']['dropout_rate'] == 0.0
    final = {m['name']['tag']: m['value'] for m in groups[0]['metricValues']}
    assert final['eval/accuracy'] == pytest.approx(
        float(rows[-1]['eval_accuracy']), rel=1e-6)
  finally:
    server.terminate()
    server.wait(timeout=30)
