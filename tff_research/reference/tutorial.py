"""TFF's "Federated Learning for Image Classification" tutorial, reproduced.

The tutorial (tensorflow.org/federated/tutorials/
federated_learning_for_image_classification, TFF 0.87) trains softmax
regression with Federated Averaging (McMahan et al. 2017, "Communication-
Efficient Learning of Deep Networks from Decentralized Data") on digits-only
federated EMNIST (Caldas et al. 2018, "LEAF"; Cohen et al. 2017):

* the same 10 clients every round, `client_ids[0:10]` (deliberately
  over-fitting these users, as the tutorial says);
* each client's data `repeat(5).shuffle(100, seed=1).batch(20)`, flattened to
  `x [-1, 784], y [-1, 1]`, `prefetch(10)`, built once and fed to every round
  (`preprocessing.preprocess` with a fixed seed of 1 is that pipeline);
* the tutorial's Keras model, `Dense(10, kernel_initializer='zeros')` +
  `Softmax()` with `SparseCategoricalCrossentropy()` on the probabilities
  (`tutorial_model_fn`, the default, model name `tutorial_keras`); or this
  project's `linear` (the same Dense layer returning logits, loss with
  `from_logits=True`) or the tutorial's from-scratch `VariableModel`
  (`linear_variable`, also on logits).

  The two losses are the same function mathematically but not numerically
  here: Keras computes the loss from the logits behind a `Softmax` output
  when it can see them (`keras.backend._get_logits`), but TFF 0.87's
  `from_keras_model` returns predictions from a `tf.function`
  (`predict_on_batch`), which hides them. The tutorial's loss is therefore
  `-log(clip(p_y, 1e-7, 1 - 1e-7))`: an example whose true-class
  probability is below 1e-7 contributes at most 16.12 to the loss and *no
  gradient*. With the tutorial's SGD 0.02 no example gets there and all
  three models give the same trajectory (measured, docs/
  reference_experiments.md); with larger steps they part
  (tests/test_reference_experiments.py pins both losses against numpy);
* `tff.learning.algorithms.build_weighted_fed_avg` (this project's
  `fed_avg.build_fed_avg`) with client SGD 0.02 and server SGD 1.0, 10 rounds;
* `build_fed_eval` of the final model on the same clients' train and test data,
  both passed through the same pipeline as training (so `num_examples` counts
  every example 5 times; accuracy and loss are those of one pass).

Type signatures (M = `ModelWeights` of float32[784,10], float32[10];
B = <x=float32[?,784], y=int32[?,1]>):

    fed_avg.next: (<S@SERVER, {B*}@CLIENTS> -> <state=S@SERVER, metrics@SERVER>)
    fed_eval (via evaluation.Evaluator): (<M@SERVER, {B*}@CLIENTS> -> metrics)
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, Callable, Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_research import evaluation
from tff_research import models
from tff_research.algorithms import fed_avg
from tff_research.data import federated_data
from tff_research.data import preprocessing
from tff_research.execution import runtime
from tff_research.reference import common

TUTORIAL_KERAS = 'tutorial_keras'
MODELS = (TUTORIAL_KERAS, 'linear', 'linear_variable')
DATASETS = ('digits', 'emnist_digits')
NUM_CLASSES = 10

# The tutorial's own output on real digits-only federated EMNIST (TFF 0.87
# docs): training metrics of rounds 1 and 10 and evaluation after round 10.
REFERENCE = collections.OrderedDict(
    round_1_loss=3.119,
    round_1_accuracy=0.123,
    round_10_loss=2.073,
    round_10_accuracy=0.325,
    examples_per_round=4860,
    eval_train_accuracy=0.362,
    eval_test_accuracy=0.336,
)


def tutorial_keras_model() -> tf.keras.Model:
  """The tutorial's `create_keras_model()`."""
  return tf.keras.models.Sequential([
      tf.keras.layers.InputLayer(input_shape=(784,)),
      tf.keras.layers.Dense(NUM_CLASSES, kernel_initializer='zeros'),
      tf.keras.layers.Softmax(),
  ])


def tutorial_model_fn() -> tff.learning.models.VariableModel:
  """The tutorial's `model_fn()`: loss and accuracy on the probabilities."""
  return tff.learning.models.from_keras_model(
      tutorial_keras_model(),
      input_spec=preprocessing.element_spec(),
      loss=tf.keras.losses.SparseCategoricalCrossentropy(),
      metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
  )


def build_model_fn(model: str):
  """`tutorial_keras` (the tutorial's), `linear` or `linear_variable`."""
  if model not in MODELS:
    raise ValueError(
        f'--model={model!r} is not a tutorial model: use one of'
        f' {", ".join(MODELS)}')
  if model == TUTORIAL_KERAS:
    return tutorial_model_fn
  # Zero initialisation: the seed changes nothing, it only satisfies the API.
  return models.model_fn(model, NUM_CLASSES, preprocessing.element_spec(),
                         seed=0)


@dataclasses.dataclass(frozen=True)
class TutorialConfig:
  """The tutorial's constants."""

  num_clients: int = 10
  num_epochs: int = 5
  batch_size: int = 20
  shuffle_buffer: int = 100
  shuffle_seed: int = 1
  prefetch: int = 10
  client_learning_rate: float = 0.02
  server_learning_rate: float = 1.0
  num_rounds: int = 10
  # Not the tutorial's: train client_ids[first_client:first_client + 10]
  # instead of the first 10, to measure how much other writers change the
  # numbers (0 = the tutorial).
  first_client: int = 0


@dataclasses.dataclass
class TutorialResult:
  client_ids: list[str]
  test_client_ids: list[str]
  rounds: list[dict[str, float]]     # round, loss, accuracy, num_examples
  train_eval: dict[str, float]       # loss, accuracy, num_examples
  test_eval: dict[str, float]

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def select_clients(
    data: federated_data.FederatedData, num_clients: int, first: int = 0
) -> tuple[list[str], list[str]]:
  """(`client_ids[first:first + num_clients]`, those of them with test data)."""
  ids = list(data.client_ids)
  if first < 0 or len(ids) < first + num_clients:
    raise ValueError(
        f'the tutorial trains {num_clients} clients from client index {first}'
        f' but the data has {len(ids)} clients ({data.description}); use'
        f' --first_client in [0, {max(len(ids) - num_clients, 0)}]')
  chosen = ids[first:first + num_clients]
  test_ids = set(data.test.client_ids)
  with_test = [c for c in chosen if c in test_ids]
  if not with_test:
    raise ValueError(
        f'none of the clients {chosen} has test data ({data.description})')
  return chosen, with_test


def make_federated_data(
    client_data: tff.simulation.datasets.ClientData,
    client_ids: list[str],
    config: TutorialConfig,
) -> list[tf.data.Dataset]:
  """The tutorial's `make_federated_data`: its `preprocess` per client."""
  return [
      preprocessing.preprocess(
          client_data.create_tf_dataset_for_client(cid),
          epochs=config.num_epochs,
          batch_size=config.batch_size,
          shuffle_buffer=config.shuffle_buffer,
          seed=config.shuffle_seed,
          prefetch=config.prefetch,
      )
      for cid in client_ids
  ]


def run_tutorial(
    data: federated_data.FederatedData,
    model: str = TUTORIAL_KERAS,
    config: TutorialConfig = TutorialConfig(),
    run_dir: Optional[str] = None,
    print_fn: Callable[[str], None] = print,
) -> TutorialResult:
  """Trains and evaluates as the tutorial does; logs to `run_dir` if given.

  TensorBoard, as in the tutorial: `run_dir/train` gets the training metrics
  of every round under their TFF names (`loss`, `sparse_categorical_accuracy`,
  `num_examples`, `num_batches`); `run_dir/eval` (the tutorial's suggested
  separate eval folder) gets `train_data/*` and `test_data/*` after the last
  round.
  """
  model_fn = build_model_fn(model)
  if data.num_classes != NUM_CLASSES:
    raise ValueError(
        f'the tutorial uses digits-only data (10 classes), got'
        f' {data.num_classes} classes ({data.description})')
  client_ids, test_client_ids = select_clients(
      data, config.num_clients, config.first_client)
  federated_train_data = make_federated_data(data.train, client_ids, config)
  federated_test_data = make_federated_data(data.test, test_client_ids, config)
  process = fed_avg.build_fed_avg(
      model_fn,
      client_optimizer=tff.learning.optimizers.build_sgdm(
          learning_rate=config.client_learning_rate),
      server_optimizer=tff.learning.optimizers.build_sgdm(
          learning_rate=config.server_learning_rate),
      weighted=True,
  )
  train_writer = eval_writer = None
  if run_dir is not None:
    train_writer = tf.summary.create_file_writer(os.path.join(run_dir, 'train'))
    eval_writer = tf.summary.create_file_writer(os.path.join(run_dir, 'eval'))

  state, rounds = _train(process, federated_train_data, config.num_rounds,
                         train_writer, print_fn)
  evaluator = evaluation.Evaluator(model_fn)
  weights = process.get_model_weights(state)
  evals = {
      split: _evaluate(evaluator, weights, datasets, split,
                       config.num_rounds, eval_writer, print_fn)
      for split, datasets in (('train_data', federated_train_data),
                              ('test_data', federated_test_data))}
  for writer in (train_writer, eval_writer):
    if writer is not None:
      writer.flush()
  return TutorialResult(
      client_ids=client_ids,
      test_client_ids=test_client_ids,
      rounds=rounds,
      train_eval=evals['train_data'],
      test_eval=evals['test_data'],
  )


def _train(process, federated_train_data, num_rounds: int, writer,
           print_fn: Callable[[str], None]):
  """Runs `num_rounds` rounds on the same clients; returns (the final state,
  one row of training metrics per round)."""
  state = process.initialize()
  rounds = []
  for round_num in range(1, num_rounds + 1):
    output = process.next(state, federated_train_data)
    state = output.state
    train_metrics = output.metrics['client_work']['train']
    if writer is not None:
      with writer.as_default():
        for name, value in train_metrics.items():
          tf.summary.scalar(name, value, step=round_num)
    row = collections.OrderedDict(
        round=round_num,
        loss=float(train_metrics['loss']),
        accuracy=float(train_metrics['sparse_categorical_accuracy']),
        num_examples=int(train_metrics['num_examples']),
    )
    rounds.append(row)
    print_fn(
        f'round {round_num:2d}, loss={row["loss"]:.4f},'
        f' accuracy={row["accuracy"]:.4f}, num_examples={row["num_examples"]}')
  return state, rounds


def _evaluate(evaluator, weights, datasets, split: str, num_rounds: int,
              writer, print_fn: Callable[[str], None]):
  """The final model's metrics on `datasets` (the `split` clients),
  logged as `split/*` at step `num_rounds`."""
  result = evaluator.evaluate(weights, datasets)
  metrics = collections.OrderedDict(
      (name, result[name]) for name in (
          'loss', 'accuracy', 'num_examples', 'accuracy_min',
          'accuracy_median'))
  if writer is not None:
    with writer.as_default():
      for name in ('loss', 'accuracy', 'num_examples'):
        tf.summary.scalar(f'{split}/{name}', metrics[name], step=num_rounds)
  print_fn(
      f'eval on {split}: loss={result["loss"]:.4f},'
      f' accuracy={result["accuracy"]:.4f},'
      f' num_examples={result["num_examples"]}')
  return metrics


def format_comparison(result: TutorialResult) -> str:
  """Markdown table: this run next to the tutorial's published numbers."""
  first, last = result.rounds[0], result.rounds[-1]
  measured = collections.OrderedDict(
      round_1_loss=first['loss'],
      round_1_accuracy=first['accuracy'],
      round_10_loss=last['loss'] if last['round'] == 10 else float('nan'),
      round_10_accuracy=(
          last['accuracy'] if last['round'] == 10 else float('nan')),
      examples_per_round=first['num_examples'],
      eval_train_accuracy=result.train_eval['accuracy'],
      eval_test_accuracy=result.test_eval['accuracy'],
  )
  lines = ['| quantity | tutorial (real EMNIST) | this run |',
           '|---|---:|---:|']
  for key, ref in REFERENCE.items():
    value = measured[key]
    fmt = (lambda v: f'{v:,}') if key == 'examples_per_round' else (
        lambda v: f'{v:.3f}')
    lines.append(f'| {key} | {fmt(ref)} | {fmt(value)} |')
  return '\n'.join(lines)


# --- command line -------------------------------------------------------------

BINARY = 'tutorial_image_classification.py'
_ALLOWED_FLAGS = ('experiment_name', 'logdir', 'dataset', 'data_dir', 'model',
                  'seed', 'num_clients', 'test_fraction')
_FIXED = TutorialConfig()
_HINTS = {
    'client_learning_rate': (
        f'the tutorial fixes client SGD at {_FIXED.client_learning_rate}'),
    'server_learning_rate': (
        f'the tutorial fixes server SGD at {_FIXED.server_learning_rate}'),
    'total_rounds': f'the tutorial runs {_FIXED.num_rounds} rounds',
    'client_epochs': f'the tutorial fixes NUM_EPOCHS={_FIXED.num_epochs}',
    'batch_size': f'the tutorial fixes BATCH_SIZE={_FIXED.batch_size}',
    'shuffle_buffer': (
        f'the tutorial fixes SHUFFLE_BUFFER={_FIXED.shuffle_buffer}'),
    'clients_per_round': (
        f'the tutorial trains the first {_FIXED.num_clients} clients every'
        ' round'),
    'client_fraction': (
        f'the tutorial trains the first {_FIXED.num_clients} clients every'
        ' round'),
    'algorithm': 'the tutorial runs FedAvg',
}


def config_from_flags(
    given: Mapping[str, Any],
    first_client: int = 0,
) -> tuple[federated_data.DataConfig, str, str, TutorialConfig]:
  """(data config, model, run directory, tutorial config) of a command line.

  Args:
    given: the train.py flags the command line set (`flags.given_flags()`).
    first_client: `--first_client`.

  Raises:
    FlagError: a flag that does not apply, or a bad value (one line).
  """
  common.check_applicable(BINARY, given, _ALLOWED_FLAGS, _HINTS)
  f = common.values(given)
  common.require(
      first_client >= 0,
      f'--first_client={first_client} is not valid: must be >= 0')
  common.require(
      f['dataset'] in DATASETS,
      f'--dataset={f["dataset"]} is not valid for {BINARY}: the tutorial uses'
      f' digits-only data; use one of {", ".join(DATASETS)}')
  # Without --model: the tutorial's own Keras model (not a --model choice;
  # train.py's default, the CNN, is not the tutorial's).
  model = given.get('model', TUTORIAL_KERAS)
  common.require(
      model in MODELS,
      f'--model={model} is not valid for {BINARY}: omit it for the'
      ' tutorial\'s Keras model, or use linear (logits softmax regression)'
      ' or linear_variable (the from-scratch VariableModel)')
  if f['dataset'] == 'digits':
    common.require('data_dir' not in given,
                   '--data_dir applies only to --dataset=emnist_digits')
    common.require(
        f['num_clients'] >= _FIXED.num_clients,
        f'--num_clients={f["num_clients"]} is not valid: the tutorial trains'
        f' the first {_FIXED.num_clients} clients, so use >='
        f' {_FIXED.num_clients}')
    common.require(
        0.0 < f['test_fraction'] < 1.0,
        f'--test_fraction={f["test_fraction"]} is not valid: must be in (0, 1)')
    common.require(f['seed'] >= 0,
                   f'--seed={f["seed"]} is not valid: must be >= 0')
  else:
    for name in ('num_clients', 'test_fraction', 'seed'):
      common.require(
          name not in given,
          f'--{name} applies only to --dataset=digits; emnist_digits keeps'
          ' its natural writers and the tutorial\'s fixed shuffle seed (1)')
  name = f['experiment_name'] or (
      f'tutorial_{f["dataset"]}'
      + ('' if model == TUTORIAL_KERAS else f'_{model}')
      + (f'_from{first_client}' if first_client else ''))
  run_dir = common.fresh_run_dir(f['logdir'], name)
  data_config = federated_data.DataConfig(
      dataset=f['dataset'],
      data_dir=f['data_dir'],
      num_clients=f['num_clients'],
      test_fraction=f['test_fraction'],
      seed=f['seed'],
  )
  config = TutorialConfig(first_client=first_client)
  return data_config, model, run_dir, config


def run_from_flags(given: Mapping[str, Any],
                   first_client: int = 0) -> TutorialResult:
  """What `experiments/tutorial_image_classification.py` runs, for a command
  line that set the train.py flags `given`."""
  data_config, model, run_dir, config = config_from_flags(given, first_client)
  data = federated_data.load_federated_data(data_config)
  print(f'Data: {data.description}')
  runtime.start()
  os.makedirs(run_dir, exist_ok=True)
  result = run_tutorial(data, model, config, run_dir=run_dir)
  print(f'Clients: {", ".join(result.client_ids)}')
  table = format_comparison(result)
  print(table)
  flag_values = common.values(given)
  with open(os.path.join(run_dir, 'results.json'), 'w') as fh:
    json.dump(
        dict(
            dataset=data.description,
            model=model,
            config=dataclasses.asdict(config),
            flags=dict(
                {n: flag_values[n] for n in _ALLOWED_FLAGS},
                model=model, first_client=first_client),
            reference=REFERENCE,
            **result.to_json(),
        ),
        fh,
        indent=2,
    )
  with open(os.path.join(run_dir, 'results.md'), 'w') as fh:
    fh.write(table + '\n')
  print(f'Logs: {os.path.abspath(run_dir)}')
  print('TensorBoard: uv run tensorboard --logdir'
        f' {os.path.abspath(os.path.dirname(run_dir) or ".")}')
  return result
