"""The research dashboard: what TensorBoard shows of every run beyond loss.

The training loop logs every metric group an algorithm returns; this module
adds the simulation's own view of a round, computed outside the algorithm so
that every algorithm gets it the same way:

* `participation`: percent of all training clients selected, and percent of
  the selected that reported (the rest dropped out, `--dropout_rate`).
* `client_loss` (max / mean / min) and `clients` (histograms `loss`,
  `accuracy`): the distribution over the round's reporting clients of the
  training loss and accuracy each client saw during its local training (the
  mean over its training batches, the per-client counterpart of TFF's
  `train/loss`). Every built-in algorithm computes them inside the round's own
  client work (`algorithms.client_metrics`: each client finalizes its own
  metrics and one `federated_aggregate` collects them), so they cost no extra
  pass over the data; an algorithm that returns no `clients` group gets no
  `client_loss`. In a real deployment the server would not see these
  per-client values; they are a simulation diagnostic.
* `convergence/rate`: (previous train loss - current) / previous, from the
  algorithm's `train/loss` of consecutive rounds that trained.
* `fairness` (evaluation rounds, from the evaluation's own pass): held-out accuracy quantiles across clients
  and their spread (Li et al. 2020, "Fair Resource Allocation in Federated
  Learning"), and the Gini coefficient of how often each training client has
  been selected so far (0 = everyone equally often). Selection counts are
  replayed from the pure sampler on resume, not stored.
* Images: label histograms and example digits of a few clients at round 0
  (as in TFF's image-classification tutorial) and a confusion matrix of the
  held-out data on every evaluation round.
* A custom-scalars layout (client-loss max/mean/min as one multi-line chart,
  participation, communication, accuracy quantiles) and an HParams
  experiment config listing the final metrics to compare runs by.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf


# (tag, description) of the metrics the HParams dashboard compares runs by.
HPARAMS_METRICS = (
    ('eval/accuracy', 'Held-out accuracy (example-weighted), last evaluation'),
    ('eval/loss', 'Held-out loss, last evaluation'),
    ('eval/accuracy_p10', "10th percentile of held-out clients' accuracy"),
    ('fairness/accuracy_spread', 'p90 - p10 of held-out client accuracy'),
    ('fairness/selection_gini', 'Gini coefficient of client selection counts'),
    ('train/loss', 'Training loss, last round'),
    ('communication/cumulative_kb', 'KB moved up and down, all rounds'),
    ('participation/reported_percent', 'Percent of selected clients reporting'),
)

# Clients shown in the round-0 images.
NUM_IMAGE_CLIENTS = 6
NUM_EXAMPLE_DIGITS = 8


def gini(counts: Sequence[float]) -> float:
  """Gini coefficient of non-negative `counts`: 0 = all equal, (n-1)/n = one
  client has everything. G = sum_i (2i - n - 1) x_(i) / (n sum x), x sorted
  ascending, i = 1..n; 0 for an all-zero vector."""
  x = np.sort(np.asarray(counts, np.float64))
  n, total = len(x), x.sum()
  if n == 0 or total <= 0:
    return 0.0
  i = np.arange(1, n + 1)
  return float(np.dot(2 * i - n - 1, x) / (n * total))


# --- Layouts and run registration -------------------------------------------


def custom_scalar_layout():
  """The custom-scalars dashboard: multi-line charts of related series."""
  from tensorboard.plugins.custom_scalar import layout_pb2  # pylint: disable=g-import-not-at-top

  def multiline(title, *tags):
    return layout_pb2.Chart(
        title=title, multiline=layout_pb2.MultilineChartContent(tag=list(tags)))

  return layout_pb2.Layout(category=[
      layout_pb2.Category(title='Clients', chart=[
          multiline('Training loss over reporting clients: max, mean, min',
                    r'^client_loss/(max|mean|min)$'),
          layout_pb2.Chart(
              title='Client loss: mean within [min, max]',
              margin=layout_pb2.MarginChartContent(series=[
                  layout_pb2.MarginChartContent.Series(
                      value='client_loss/mean', lower='client_loss/min',
                      upper='client_loss/max')])),
          multiline('Participation (%)',
                    r'^participation/(selected|reported)_percent$'),
          multiline('Communication per round (KB)',
                    r'^communication/kb_(down|up|total)$'),
          multiline('Client updates excluded as non-finite',
                    r'^robustness/excluded_clients$'),
      ]),
      layout_pb2.Category(title='Fairness', chart=[
          multiline('Held-out accuracy across clients',
                    r'^eval/accuracy(_min|_p10|_median)?$',
                    r'^fairness/accuracy_(p90|max)$'),
          multiline('Accuracy spread and selection Gini',
                    r'^fairness/(accuracy_spread|selection_gini)$'),
      ]),
  ])


def write_run_start(writer, data, train_client_ids: Sequence[str]) -> None:
  """Everything a fresh run writes once: the custom-scalars layout and the
  round-0 data images. (Its HParams session is `write_hparams_session`.)

  A run writes no HParams experiment config: the plugin takes one config for
  the whole logdir, from whichever run has it, so independent runs sharing a
  logdir would each claim theirs. Without one, the plugin infers each hparam's
  type from the sessions and offers every scalar tag's final value as a
  metric. A sweep, which knows its grid, writes one at its logdir's root
  (`write_hparams_config`).
  """
  from tensorboard.plugins.custom_scalar import summary as cs_summary  # pylint: disable=g-import-not-at-top

  with writer.as_default():
    tf.summary.experimental.write_raw_pb(
        cs_summary.pb(custom_scalar_layout()).SerializeToString(), step=0)
    shown = list(train_client_ids)[:NUM_IMAGE_CLIENTS]
    labels, pixels = [], []
    for cid in shown:
      ds = data.train.create_tf_dataset_for_client(cid)
      y, x = [], []
      for example in ds.as_numpy_iterator():
        y.append(int(example['label']))
        if len(x) < NUM_EXAMPLE_DIGITS:
          x.append(example['pixels'])
      labels.append(np.asarray(y, np.int64))
      pixels.append(x)
    tf.summary.image(
        'data/label_histograms',
        label_histograms_image(shown, labels, data.num_classes)[np.newaxis],
        step=0)
    tf.summary.image('data/example_digits',
                     example_digits_image(shown, labels, pixels)[np.newaxis],
                     step=0)
  writer.flush()


def write_hparams_config(logdir: str, values: Mapping[str, Sequence[Any]]) -> None:
  """The HParams experiment config of a logdir: each hparam's possible
  values (a discrete domain) and the metrics of `HPARAMS_METRICS`.

  Written as events at the logdir's root, where the plugin finds it; `values`
  maps flag name -> the values its runs use.
  """
  from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top

  def domain(vs):
    # The plugin stores numbers as float64; a domain needs one type.
    vs = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v
          for v in vs if isinstance(v, (bool, int, float, str))]
    if not vs or len({type(v) for v in vs}) > 1:
      return None
    return hp.Discrete(sorted(set(vs)))

  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    hp.hparams_config(
        hparams=[hp.HParam(name, domain(vs)) for name, vs in sorted(values.items())],
        metrics=[hp.Metric(tag, description=d) for tag, d in HPARAMS_METRICS],
    )
  writer.close()


# --- Images (matplotlib, no pyplot state) ------------------------------------


def _figure(width, height):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=(width, height), dpi=80)


def _to_array(fig) -> np.ndarray:
  """RGB uint8 [H, W, 3] of a rendered matplotlib figure."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def label_histograms_image(client_ids, labels, num_classes) -> np.ndarray:
  """One bar chart of label counts per client."""
  n = max(len(client_ids), 1)
  cols = min(n, 3)
  rows = -(-n // cols)
  fig = _figure(4 * cols, 2.6 * rows)
  for k, (cid, y) in enumerate(zip(client_ids, labels)):
    ax = fig.add_subplot(rows, cols, k + 1)
    ax.bar(np.arange(num_classes), np.bincount(y, minlength=num_classes))
    ax.set_title(f'client {cid} ({len(y)} examples)', fontsize=9)
    ax.set_xlabel('label', fontsize=8)
    ax.tick_params(labelsize=7)
  fig.tight_layout()
  return _to_array(fig)


def example_digits_image(client_ids, labels, pixels) -> np.ndarray:
  """A grid: one row per client, its first examples with their labels."""
  rows = max(len(client_ids), 1)
  fig = _figure(1.1 * NUM_EXAMPLE_DIGITS, 1.25 * rows)
  for r, (cid, y, xs) in enumerate(zip(client_ids, labels, pixels)):
    for c, x in enumerate(xs):
      ax = fig.add_subplot(rows, NUM_EXAMPLE_DIGITS, r * NUM_EXAMPLE_DIGITS + c + 1)
      ax.imshow(x, cmap='gray', vmin=0.0, vmax=1.0)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f'{cid}: {y[c]}' if c == 0 else str(y[c]), fontsize=7)
  fig.tight_layout()
  return _to_array(fig)


def confusion_matrix_image(matrix: np.ndarray, title: str) -> np.ndarray:
  """Row-normalised confusion matrix (rows: true label), counts annotated
  when there are at most 10 classes."""
  matrix = np.asarray(matrix, np.float64)
  c = matrix.shape[0]
  rows = matrix.sum(axis=1, keepdims=True)
  normalised = np.divide(matrix, rows, out=np.zeros_like(matrix),
                         where=rows > 0)
  size = 5 if c <= 10 else 9
  fig = _figure(size + 1, size)
  ax = fig.add_subplot(1, 1, 1)
  im = ax.imshow(normalised, cmap='Blues', vmin=0.0, vmax=1.0)
  fig.colorbar(im, ax=ax, fraction=0.046)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title, fontsize=9)
  if c <= 10:
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    for i in range(c):
      for j in range(c):
        if matrix[i, j]:
          ax.text(j, i, int(matrix[i, j]), ha='center', va='center',
                  fontsize=7,
                  color='white' if normalised[i, j] > 0.5 else 'black')
  fig.tight_layout()
  return _to_array(fig)


# --- Federated computations --------------------------------------------------


class DashboardHook:
  """The round hook of the dashboard (module docstring); computations built
  once per run.

  Args:
    data: the run's FederatedData.
    sampler: the run's `ClientSampler` (replayed on resume to rebuild the
      selection counts).
    run_directory: the run's `RunDirectory` (previous loss on resume).
    writer: the run's summary writer (round-0 images, the confusion matrix).
    hparams: the run's recorded hyperparameters (HParams session).
  """

  def __init__(self, *, data, sampler, run_directory, writer,
               hparams: Mapping[str, Any]):
    self._data = data
    self._sampler = sampler
    self._run_directory = run_directory
    self._writer = writer
    self._hparams = hparams
    self._train_ids = list(sampler.client_ids)
    self._index = {cid: i for i, cid in enumerate(self._train_ids)}
    self.selection_counts = np.zeros(len(self._train_ids), np.int64)
    self._prev_loss = None

  def start(self, start_round: int, state) -> None:
    del state
    if start_round == 0:
      write_hparams_session(self._writer, self._hparams)
      write_run_start(self._writer, self._data, self._train_ids)
    for r in range(1, start_round + 1):
      self._count(self._sampler.sample(r))
    self._prev_loss = self._run_directory.last_logged(start_round,
                                                      'train_loss')

  def _count(self, selected):
    for cid in selected:
      self.selection_counts[self._index[cid]] += 1

  def before_round(self, record) -> dict[str, dict[str, Any]]:
    """The `participation` group of a round."""
    selected, reported = record.selected, record.reporting
    self._count(selected)
    n = len(self._train_ids)
    groups = collections.OrderedDict()
    groups['participation'] = collections.OrderedDict(
        selected=len(selected), reported=len(reported),
        selected_percent=100.0 * len(selected) / n,
        reported_percent=(100.0 * len(reported) / len(selected)
                          if selected else 0.0),
    )
    if not reported:
      logging.info('All %d selected clients dropped out; the model is'
                   ' unchanged this round.', len(selected))
    return groups

  def after_round(self, record) -> dict[str, dict[str, Any]]:
    """`client_loss` (max / mean / min over the reporting clients, from the
    algorithm's `clients` group) and `convergence/rate` = (previous -
    current) / previous train loss."""
    groups = collections.OrderedDict()
    clients = record.metrics.get('clients')
    if isinstance(clients, Mapping) and len(clients.get('loss', ())):
      loss = np.asarray(clients['loss'], np.float64)
      groups['client_loss'] = collections.OrderedDict(
          max=float(loss.max()), mean=float(loss.mean()),
          min=float(loss.min()))
    train = record.metrics.get('train')
    if not isinstance(train, Mapping) or 'loss' not in train:
      return groups  # Nobody reported: the previous loss stays the reference.
    loss = float(np.asarray(train['loss']))
    prev, self._prev_loss = self._prev_loss, loss
    if prev is not None and prev != 0 and np.isfinite(prev):
      groups['convergence'] = collections.OrderedDict(rate=(prev - loss) / prev)
    return groups

  def on_evaluation(self, record, result: Mapping[str, Any]):
    """`fairness` group and the confusion-matrix image of an evaluation
    round, from the evaluation's own pass."""
    del record
    accuracy = np.asarray(result['per_client_accuracy'], np.float64)
    p10, p90 = np.percentile(accuracy, [10, 90])
    fairness = collections.OrderedDict(
        accuracy_p90=float(p90),
        accuracy_max=float(accuracy.max()),
        accuracy_spread=float(p90 - p10),
        accuracy_std=float(accuracy.std()),
        selection_gini=gini(self.selection_counts),
        selection_counts=self.selection_counts.copy(),
    )
    matrix = np.asarray(result['confusion_matrix'])
    accuracy_all = np.trace(matrix) / max(matrix.sum(), 1)
    image = confusion_matrix_image(
        matrix, f'held-out confusion matrix (accuracy {accuracy_all:.3f})')
    return {'fairness': fairness, 'eval': {'confusion_matrix': image}}


def write_hparams_session(writer, hparams: Mapping[str, Any]) -> None:
  """Registers the run with TensorBoard's HParams dashboard."""
  from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
  with writer.as_default():
    hp.hparams(
        {k: v for k, v in hparams.items()
         if isinstance(v, (bool, int, float, str))},
        trial_id=os.path.basename(hparams.get('experiment_name', '')) or None,
    )
