"""Isolated versus federated training on three skewed silos.

The classic demonstration of why federate (in the spirit of McMahan et al.
2017, "Communication-Efficient Learning of Deep Networks from Decentralized
Data", pathological non-IID setting): pooled digit data is split into three
silos, and each silo never sees three of the ten digits,

    client 1 lacks {1,3,7},  client 2 lacks {2,5,8},  client 3 lacks {4,6,9}

(`partition.partition(..., missing_classes=MISSING_DIGITS)`; the other
examples are dealt out at random, each silo holding a random `test_fraction`
of its examples back; the union of the held-back examples is the test set,
which covers all ten digits). A two-layer fully connected network (`mlp`,
2 x 200 ReLU, McMahan et al.'s "2NN") is trained

(a) isolated: each silo alone, `local_epochs` epochs of SGD;
(b) federated: FedAvg (this project's `algorithms.build_algorithm`, weighted
    by examples, server learning rate 1), all three silos every round,
    `local_epochs` local epochs, `rounds` rounds;
(c) centralized (not in the published study; on by default): the same
    network trained on all silos' data pooled for `rounds * local_epochs`
    epochs (as many passes over every example as FedAvg makes), the ceiling
    federation approaches; it separates what federation loses from what this
    data, network and optimizer allow.

Isolated training uses exactly the input pipeline and optimizer of a FedAvg
client in round 1 (same initial weights, same shuffled batches, SGD with the
same learning rate), so an isolated model *is* that silo's round-1 local model
and the only difference between (a) and (b) is the averaging (a test checks
this with one silo).

Every model is evaluated on the whole test set and on each missing-digit
subset; accuracies come from the confusion matrix
`C[true, predicted]`: overall `trace(C) / sum(C)`, on a digit set G
`sum_{c in G} C[c, c] / sum_{c in G} sum_j C[c, j]`.

Published reference (MNIST): isolated models 65-70 % overall and 0 % on their
missing digits; the federated model about 96 % overall and 94-97 % on each
missing subset.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
from sklearn import metrics as sklearn_metrics
import tensorflow as tf

from tff_research import algorithms
from tff_research import models
from tff_research.data import federated_data
from tff_research.data import preprocessing
from tff_research.data import sampling
from tff_research.execution import runtime
from tff_research.reference import common

MISSING_DIGITS = ((1, 3, 7), (2, 5, 8), (4, 6, 9))
NUM_CLASSES = 10
DATASETS = ('digits', 'emnist_digits')
FEDERATED = 'federated'
CENTRALIZED = 'centralized (pooled silos)'


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  local_epochs: int = 10
  rounds: int = 3
  # At train.py's default of 0.1, SGD on raw pixels (1.0 = background) leaves
  # this network at chance accuracy (measured on digits); 0.02 is the TFF
  # tutorial's client learning rate.
  learning_rate: float = 0.02
  batch_size: int = 20
  shuffle_buffer: int = 100
  seed: int = 0
  model: str = 'mlp'


@dataclasses.dataclass
class ModelResult:
  name: str                     # 'isolated client 1', ..., 'federated', ...
  overall: float
  missing: dict[str, float]     # '{1,3,7}' -> accuracy on those digits
  confusion: np.ndarray         # [10, 10] int64, rows = true digit
  train_metrics: list[dict[str, float]]  # per round (federated) or one row


def group_name(group) -> str:
  return '{' + ','.join(str(c) for c in group) + '}'


def load_silos(
    dataset: str,
    data_dir: Optional[str],
    test_fraction: float,
    seed: int,
) -> federated_data.FederatedData:
  """Three silos of pooled digits, silo i lacking `MISSING_DIGITS[i]`."""
  return federated_data.load_federated_data(
      federated_data.DataConfig(
          dataset=dataset,
          data_dir=data_dir,
          num_clients=len(MISSING_DIGITS),
          missing_classes=MISSING_DIGITS,
          test_fraction=test_fraction,
          seed=seed,
      ))


def heldout_set(data: federated_data.FederatedData) -> tuple[np.ndarray,
                                                           np.ndarray]:
  """(x float32 [N, 784], y int32 [N]): every silo's held-back examples."""
  xs, ys = [], []
  for cid in data.test.client_ids:
    ds = preprocessing.preprocess_for_eval(
        data.test.create_tf_dataset_for_client(cid), batch_size=4096)
    for batch in ds.as_numpy_iterator():
      xs.append(batch['x'])
      ys.append(batch['y'].reshape(-1))
  return np.concatenate(xs), np.concatenate(ys)


def client_dataset(
    data: federated_data.FederatedData,
    client_id: str,
    config: StudyConfig,
    round_num: int,
) -> tf.data.Dataset:
  """A silo's local-training batches in round `round_num` (1-based)."""
  rng = sampling.round_rng(config.seed, round_num, f'shuffle/{client_id}')
  return preprocessing.preprocess(
      data.train.create_tf_dataset_for_client(client_id),
      epochs=config.local_epochs,
      batch_size=config.batch_size,
      shuffle_buffer=config.shuffle_buffer,
      seed=int(rng.integers(2**31 - 1)),
  )


def _keras_model(config: StudyConfig) -> tf.keras.Model:
  model = models.keras_model(config.model, NUM_CLASSES, seed=config.seed)
  model.compile(
      optimizer=tf.keras.optimizers.SGD(learning_rate=config.learning_rate),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
  )
  return model


def train_isolated(
    data: federated_data.FederatedData, client_id: str, config: StudyConfig
) -> tuple[tf.keras.Model, dict[str, float]]:
  """Keras `fit` on one silo: the silo's FedAvg round-1 local training."""
  model = _keras_model(config)
  ds = client_dataset(data, client_id, config, round_num=1).map(
      lambda b: (b['x'], b['y']))
  # One pass over the repeated, shuffled stream = `local_epochs` epochs.
  history = model.fit(ds, epochs=1, verbose=0)
  return model, dict(
      loss=float(history.history['loss'][-1]),
      accuracy=float(history.history['sparse_categorical_accuracy'][-1]),
  )


def train_centralized(
    data: federated_data.FederatedData, config: StudyConfig
) -> tuple[tf.keras.Model, dict[str, float]]:
  """The baseline federation approximates: all silos' data in one place.

  Same network, optimizer and batch size; `rounds * local_epochs` epochs, so
  every example is used as often as in FedAvg. The shuffle buffer spans the
  whole pooled set (a buffer of 100 over silo-ordered data would train on
  one silo after another).
  """
  model = _keras_model(config)
  # Seeded: without a seed TFF concatenates the clients in a random order.
  pooled = data.train.create_tf_dataset_from_all_clients(seed=config.seed)
  n = int(pooled.reduce(0, lambda count, _: count + 1))
  rng = sampling.round_rng(config.seed, 1, 'shuffle/centralized')
  ds = preprocessing.preprocess(
      pooled,
      epochs=config.rounds * config.local_epochs,
      batch_size=config.batch_size,
      shuffle_buffer=n,
      seed=int(rng.integers(2**31 - 1)),
  ).map(lambda b: (b['x'], b['y']))
  history = model.fit(ds, epochs=1, verbose=0)
  return model, dict(
      loss=float(history.history['loss'][-1]),
      accuracy=float(history.history['sparse_categorical_accuracy'][-1]),
  )


def train_federated(
    data: federated_data.FederatedData,
    config: StudyConfig,
    client_ids: Optional[list[str]] = None,
    print_fn=print,
) -> tuple[tf.keras.Model, list[dict[str, float]]]:
  """FedAvg over `client_ids` (default: every silo) for `config.rounds`."""
  client_ids = list(data.client_ids if client_ids is None else client_ids)
  model_fn = models.model_fn(config.model, NUM_CLASSES,
                             preprocessing.element_spec(), seed=config.seed)
  algorithm = algorithms.build_algorithm(
      algorithms.AlgorithmConfig(
          'fedavg',
          client_optimizer='sgd',
          client_learning_rate=config.learning_rate,
          server_learning_rate=1.0,
          weighted=True,
      ),
      model_fn,
      client_ids,
  )
  state = algorithm.initialize()
  history = []
  for round_num in range(1, config.rounds + 1):
    datasets = [
        client_dataset(data, cid, config, round_num) for cid in client_ids
    ]
    state, metrics = algorithm.next(state, round_num, client_ids, datasets)
    train = metrics['train']
    row = collections.OrderedDict(
        round=round_num,
        loss=float(train['loss']),
        accuracy=float(train['sparse_categorical_accuracy']),
        num_examples=int(train['num_examples']),
    )
    history.append(row)
    print_fn(f'FedAvg round {round_num}: train loss {row["loss"]:.4f},'
             f' accuracy {row["accuracy"]:.4f}')
  model = _keras_model(config)
  algorithm.get_model_weights(state).assign_weights_to(model)
  return model, history


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
  """C[i, j] = number of examples of true class i predicted as j."""
  labels = np.asarray(labels, np.int64).reshape(-1)
  predictions = np.asarray(predictions, np.int64).reshape(-1)
  if labels.shape != predictions.shape:
    raise ValueError(
        f'labels and predictions differ in length: {labels.shape[0]} vs'
        f' {predictions.shape[0]}')
  return sklearn_metrics.confusion_matrix(
      labels, predictions, labels=np.arange(num_classes))


def accuracy_on(confusion: np.ndarray, classes=None) -> float:
  """Accuracy on the examples whose true class is in `classes` (all: None)."""
  rows = np.arange(len(confusion)) if classes is None else np.asarray(classes)
  total = confusion[rows].sum()
  if total == 0:
    return float('nan')
  return float(confusion[rows, rows].sum() / total)


def evaluate(
    name: str,
    model: tf.keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    train_metrics: list[dict[str, float]],
) -> ModelResult:
  # Eager calls on fixed chunks: `predict` would retrace for every new model.
  logits = np.concatenate([
      model(x[i:i + 1000], training=False).numpy()
      for i in range(0, len(x), 1000)
  ])
  confusion = confusion_matrix(y, logits.argmax(axis=1), NUM_CLASSES)
  return ModelResult(
      name=name,
      overall=accuracy_on(confusion),
      missing=collections.OrderedDict(
          (group_name(g), accuracy_on(confusion, g)) for g in MISSING_DIGITS),
      confusion=confusion,
      train_metrics=train_metrics,
  )


def run_study(
    data: federated_data.FederatedData,
    config: StudyConfig = StudyConfig(),
    print_fn=print,
    centralized: bool = True,
) -> list[ModelResult]:
  """Trains the three isolated models, FedAvg and (optionally) the pooled
  baseline; evaluates each on the same held-out set."""
  if data.num_classes != NUM_CLASSES:
    raise ValueError(
        f'the study needs digit data (10 classes), got {data.num_classes}'
        f' classes ({data.description})')
  client_ids = list(data.client_ids)
  if len(client_ids) != len(MISSING_DIGITS):
    raise ValueError(
        f'the study needs {len(MISSING_DIGITS)} silos, got'
        f' {len(client_ids)} ({data.description})')
  x, y = heldout_set(data)
  results = []
  for i, cid in enumerate(client_ids):
    model, metrics = train_isolated(data, cid, config)
    print_fn(f'isolated client {i + 1} ({cid}, never sees'
             f' {group_name(MISSING_DIGITS[i])}): mean training loss'
             f' {metrics["loss"]:.4f}')
    results.append(evaluate(f'isolated client {i + 1}', model, x, y,
                            [metrics]))
  model, history = train_federated(data, config, client_ids, print_fn)
  results.append(evaluate(FEDERATED, model, x, y, history))
  if centralized:
    model, metrics = train_centralized(data, config)
    print_fn(f'centralized: mean training loss {metrics["loss"]:.4f}')
    results.append(evaluate(CENTRALIZED, model, x, y, [metrics]))
  return results


def format_table(results: list[ModelResult]) -> str:
  """Markdown: a row per model; overall and per missing-digit accuracy (%)."""
  groups = [group_name(g) for g in MISSING_DIGITS]
  lines = ['| model | overall | ' + ' | '.join(groups) + ' |',
           '|---|---:|' + '---:|' * len(groups)]
  for r in results:
    cells = [f'{100 * r.overall:.1f}'] + [
        f'{100 * r.missing[g]:.1f}' for g in groups]
    lines.append(f'| {r.name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def render_confusion_png(result: ModelResult) -> bytes:
  """The confusion matrix as a PNG, the model's missing digits marked."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  cm = result.confusion
  # Row-normalised colours: classes have different test counts.
  shade = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
  ax.imshow(shade, cmap='Blues', vmin=0, vmax=1)
  for i in range(NUM_CLASSES):
    for j in range(NUM_CLASSES):
      if cm[i, j]:
        ax.text(j, i, str(cm[i, j]), ha='center', va='center', fontsize=7,
                color='white' if shade[i, j] > 0.5 else 'black')
  ax.set_xticks(range(NUM_CLASSES))
  ax.set_yticks(range(NUM_CLASSES))
  ax.set_xlabel('predicted digit')
  ax.set_ylabel('true digit')
  if result.name.startswith('isolated client '):
    unseen = MISSING_DIGITS[int(result.name.rsplit(' ', 1)[1]) - 1]
    for c in unseen:
      ax.get_yticklabels()[c].set_color('red')
    subtitle = f'never saw {group_name(unseen)} (red)'
  elif result.name == FEDERATED:
    subtitle = 'FedAvg over all three silos'
  else:
    subtitle = 'trained on all silos\' data pooled'
  ax.set_title(f'{result.name}: {100 * result.overall:.1f}% overall\n'
               f'{subtitle}', fontsize=9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png')
  plt.close(fig)
  return buf.getvalue()


def slug(name: str) -> str:
  """'isolated client 1' -> 'isolated_client_1' (file and summary names)."""
  return name.split(' (')[0].replace(' ', '_')


def write_outputs(
    results: list[ModelResult],
    run_dir: str,
    extra: Optional[dict[str, Any]] = None,
) -> None:
  """PNGs, TensorBoard (images, accuracies, FedAvg curve, table), JSON, md."""
  os.makedirs(run_dir, exist_ok=True)
  writer = tf.summary.create_file_writer(run_dir)
  table = format_table(results)
  with writer.as_default():
    for r in results:
      png = render_confusion_png(r)
      with open(os.path.join(run_dir, f'confusion_{slug(r.name)}.png'),
                'wb') as fh:
        fh.write(png)
      tf.summary.image(f'confusion_matrix/{slug(r.name)}',
                       tf.image.decode_png(png, channels=4)[tf.newaxis], step=0)
      tf.summary.scalar(f'{slug(r.name)}/accuracy_overall', r.overall, step=0)
      for g, acc in r.missing.items():
        tf.summary.scalar(f'{slug(r.name)}/accuracy_digits_{g[1:-1]}', acc,
                          step=0)
      if r.name == FEDERATED:
        for row in r.train_metrics:
          tf.summary.scalar('federated/train_loss', row['loss'],
                            step=row['round'])
          tf.summary.scalar('federated/train_accuracy', row['accuracy'],
                            step=row['round'])
    tf.summary.text('results_table', table, step=0)
  writer.flush()
  with open(os.path.join(run_dir, 'results.md'), 'w') as fh:
    fh.write(table + '\n')
  payload = dict(extra or {})
  payload['models'] = [
      dict(name=r.name, overall=r.overall, missing=r.missing,
           confusion=r.confusion.tolist(), train_metrics=r.train_metrics)
      for r in results
  ]
  with open(os.path.join(run_dir, 'results.json'), 'w') as fh:
    json.dump(payload, fh, indent=2)


# --- command line -------------------------------------------------------------

BINARY = 'isolated_vs_federated.py'
_ALLOWED_FLAGS = ('experiment_name', 'logdir', 'dataset', 'data_dir', 'seed',
                  'test_fraction', 'client_learning_rate', 'batch_size',
                  'shuffle_buffer')
_HINTS = {
    'client_epochs': 'use --local_epochs (isolated epochs = FedAvg local'
                     ' epochs, default 10)',
    'total_rounds': 'use --fedavg_rounds (default 3)',
    'num_clients': 'the study has three silos',
    'missing_classes': 'the study fixes the silos\' missing digits to'
                       ' 1,3,7;2,5,8;4,6,9',
    'model': 'the study fixes the two-layer fully connected network (mlp)',
    'clients_per_round': 'all three silos train every round',
    'client_fraction': 'all three silos train every round',
    'algorithm': 'the study compares isolated training with FedAvg',
}


def config_from_flags(
    given: Mapping[str, Any], local_epochs: int, fedavg_rounds: int
) -> tuple[StudyConfig, str, Optional[str], float, str]:
  """(config, dataset, data_dir, test_fraction, run dir) of a command line.

  Args:
    given: the train.py flags the command line set (`flags.given_flags()`).
    local_epochs: `--local_epochs`.
    fedavg_rounds: `--fedavg_rounds`.

  Raises:
    FlagError: a flag that does not apply, or a bad value (one line).
  """
  common.check_applicable(BINARY, given, _ALLOWED_FLAGS, _HINTS)
  f = common.values(given)
  common.require(
      f['dataset'] in DATASETS,
      f'--dataset={f["dataset"]} is not valid for {BINARY}: the study is on'
      f' digits; use one of {", ".join(DATASETS)}')
  if f['dataset'] == 'digits':
    common.require('data_dir' not in given,
                   '--data_dir applies only to --dataset=emnist_digits')
  common.require(local_epochs >= 1,
                 f'--local_epochs={local_epochs} is not valid: must be >= 1')
  common.require(fedavg_rounds >= 1,
                 f'--fedavg_rounds={fedavg_rounds} is not valid: must be >= 1')
  common.check_positive(f, 'client_learning_rate', 'batch_size',
                        'shuffle_buffer')
  common.require(
      0.0 < f['test_fraction'] < 1.0,
      f'--test_fraction={f["test_fraction"]} is not valid: must be in (0, 1)')
  common.require(f['seed'] >= 0,
                 f'--seed={f["seed"]} is not valid: must be >= 0')
  name = f['experiment_name'] or f'isolated_vs_federated_{f["dataset"]}'
  run_dir = common.fresh_run_dir(f['logdir'], name)
  config = StudyConfig(
      local_epochs=local_epochs,
      rounds=fedavg_rounds,
      # train.py's default (0.1) does not train this network; see StudyConfig.
      learning_rate=given.get('client_learning_rate',
                              StudyConfig.learning_rate),
      batch_size=f['batch_size'],
      shuffle_buffer=f['shuffle_buffer'],
      seed=f['seed'],
  )
  return config, f['dataset'], f['data_dir'], f['test_fraction'], run_dir


def run_from_flags(given: Mapping[str, Any], local_epochs: int,
                   fedavg_rounds: int) -> list[ModelResult]:
  """What `experiments/isolated_vs_federated.py` runs, for a command line
  that set the train.py flags `given`."""
  config, dataset, data_dir, test_fraction, run_dir = config_from_flags(
      given, local_epochs, fedavg_rounds)
  data = load_silos(dataset, data_dir, test_fraction, config.seed)
  print(f'Data: {data.description}')
  runtime.start()
  results = run_study(data, config)
  table = format_table(results)
  print(table)
  write_outputs(results, run_dir, extra=dict(
      dataset=data.description,
      config=dataclasses.asdict(config),
      test_fraction=test_fraction,
      missing_digits=[list(g) for g in MISSING_DIGITS],
      clients=list(data.client_ids),
  ))
  print(f'Logs: {os.path.abspath(run_dir)} (confusion_*.png, results.md,'
        ' results.json, TensorBoard events)')
  print('TensorBoard: uv run tensorboard --logdir'
        f' {os.path.abspath(os.path.dirname(run_dir) or ".")}')
  return results
