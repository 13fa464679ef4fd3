"""The program layer's seams: a new algorithm is one spec and one register
call; a researcher's own Keras model and ClientData train through both the
flags and the Python entry point; the console stays clean."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_research import algorithms
from tff_research.algorithms import base
from tff_research.algorithms import fed_avg
from tff_research.algorithms import hyperparameters as hp
from tff_research.algorithms import registry
from tff_research.algorithms import spec
from tff_research.cli import flags
from tff_research.execution import stderr_filter
from tff_research.run import config as config_lib
from tff_research.run import training
from tests import fl_testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- a new algorithm, defined here: FedAvg that moves the global model by
# `toy_step` times the mean update (the same as FedAvg's server learning
# rate, which gives the test its reference). ---

TOY_STEP = spec.Hyperparameter(
    'toy_step', float, 1.0, 'toy: fraction of the mean update applied.',
    valid=lambda v: 0 < v <= 1, valid_text='must be in (0, 1]')


def _build_toy(config, model_fn, client_ids):
  del client_ids
  return base.LearningProcessAlgorithm(fed_avg.build_fed_avg(
      model_fn,
      client_optimizer=hp.build_client_optimizer(config.values),
      server_optimizer=tff.learning.optimizers.build_sgdm(
          learning_rate=config.toy_step),
      weighted=config.weighted))


TOY_SPEC = spec.AlgorithmSpec(
    name='toy', paper='this test', summary='FedAvg with a damped server step',
    build=_build_toy, hyperparameters=(*hp.CLIENT, TOY_STEP))


@pytest.fixture
def toy_registered():
  algorithms.register(TOY_SPEC)
  yield
  del registry.SPECS['toy']


SMALL = dict(model='linear', num_clients=6, clients_per_round=3,
             client_learning_rate=0.01, total_rounds=2, eval_every=2,
             rounds_per_checkpoint=2, batch_size=10, progress=False)


def _argv(values):
  return [f'--{k}={v}' for k, v in values.items()]


def test_a_registered_algorithm_trains_through_train_py_flags(
    tff_worker, tmp_path, toy_registered):
  del toy_registered
  toy = flags.config_from_argv(_argv(dict(
      SMALL, logdir=tmp_path, experiment_name='toy', algorithm='toy',
      toy_step=0.5)))
  assert toy.algorithm.toy_step == 0.5
  assert config_lib.to_hparams(toy)['toy_step'] == 0.5
  reference = flags.config_from_argv(_argv(dict(
      SMALL, logdir=tmp_path, experiment_name='ref',
      server_learning_rate=0.5)))
  toy_rows = training.train(toy)
  ref_rows = training.train(reference)
  for key in ('train_loss', 'eval_loss', 'eval_accuracy'):
    assert toy_rows[-1][key] == pytest.approx(ref_rows[-1][key], rel=1e-6)
  # Its hyperparameter is checked by its own declaration, in one place.
  with pytest.raises(flags.FlagError, match=r'--toy_step=2.0 is not valid:'
                     r' must be in \(0, 1\]'):
    flags.config_from_argv(['--experiment_name=x', '--algorithm=toy',
                            '--toy_step=2'])
  with pytest.raises(flags.FlagError, match=r'--toy_step=0.5 does not apply'
                     r' to --algorithm=fedavg; it applies to --algorithm=toy'):
    flags.config_from_argv(['--experiment_name=x', '--toy_step=0.5'])


# --- a researcher's own model and data ---


def tiny_model(num_classes):
  """A Keras model defined in the test: 784 -> 16 -> num_classes logits."""
  return tf.keras.Sequential([
      tf.keras.layers.InputLayer(input_shape=(784,)),
      tf.keras.layers.Dense(16, activation='relu'),
      tf.keras.layers.Dense(num_classes),
  ])


def _separable_client_data(num_clients=4, n=30, seed=0):
  """Label c <=> pixel block c is bright: a federation any model learns."""
  rng = np.random.default_rng(seed)

  def client(i):
    labels = rng.integers(0, 4, n).astype(np.int32)
    pixels = rng.random((n, 28, 28)).astype(np.float32) * 0.1
    for k, label in enumerate(labels):
      pixels[k, label * 7:(label + 1) * 7, :] += 1.0
    return collections.OrderedDict(pixels=pixels, label=labels)

  train = {f'w{i}': client(i) for i in range(num_clients)}
  test = {f'w{i}': client(i + num_clients) for i in range(num_clients)}
  return (tff.simulation.datasets.TestClientData(train),
          tff.simulation.datasets.TestClientData(test))


def test_own_model_by_flag_equals_the_python_entry_point(tff_worker, tmp_path):
  by_flag = flags.config_from_argv(_argv(dict(
      SMALL, logdir=tmp_path, experiment_name='flag',
      model='tests.test_program:tiny_model')))
  flag_rows = training.train(by_flag)
  by_value = config_lib.ExperimentConfig(
      experiment_name='value', logdir=str(tmp_path),
      data=by_flag.data, algorithm=by_flag.algorithm,
      training=by_flag.training, evaluation=by_flag.evaluation,
      progress=False, model='linear')  # overridden by `model=`
  value_rows = training.train(by_value, model=tiny_model)
  assert flag_rows[-1]['eval_loss'] == pytest.approx(
      value_rows[-1]['eval_loss'], rel=1e-6)
  # 784*16 + 16 + 16*10 + 10 float32 each way per client.
  assert flag_rows[0]['communication_kb_down'] == pytest.approx(
      3 * (784 * 16 + 16 + 16 * 10 + 10) * 4 / 1024)


def test_own_model_on_own_client_data_learns(tff_worker, tmp_path):
  config = config_lib.ExperimentConfig(
      experiment_name='mine', logdir=str(tmp_path), progress=False,
      algorithm=algorithms.AlgorithmConfig(client_learning_rate=0.5),
      training=config_lib.TrainConfig(total_rounds=5, clients_per_round=4,
                                      batch_size=10),
      evaluation=config_lib.EvaluationConfig(eval_every=5))
  rows = training.train(config, model=tiny_model,
                        client_data=_separable_client_data())
  assert rows[-1]['eval_num_clients'] == 4
  assert rows[-1]['eval_num_examples'] == 4 * 30
  # Four classes (chance 0.25); the bright block gives the label away.
  assert rows[-1]['eval_accuracy'] >= 0.9


def test_bad_model_path_is_one_line():
  with pytest.raises(flags.FlagError, match=r'--model=tests.nowhere:f: cannot'
                     ' import tests.nowhere'):
    flags.config_from_argv(['--experiment_name=x', '--model=tests.nowhere:f'])
  with pytest.raises(flags.FlagError, match='has no function missing'):
    flags.config_from_argv(['--experiment_name=x',
                            '--model=tests.test_program:missing'])


# --- a clean console ---


# A real run printing none of it: test_runtime.py's normal-exit test.
def test_console_drops_exactly_the_known_noise():
  noise = [
      '2026-12-01 10:17:37.646254: E tensorflow/compiler/xla/stream_executor/'
      'cuda/cuda_dnn.cc:9342] Unable to register cuDNN factory: Attempting to'
      ' register factory for plugin cuDNN when one has already been'
      ' registered',
      'E external/cuda_fft.cc:609] Unable to register cuFFT factory:'
      ' Attempting to register factory for plugin cuFFT when one has already'
      ' been registered',
      'W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT'
      ' Warning: Could not find TensorRT',
  ]
  assert all(stderr_filter.is_noise(line) for line in noise)
  for real in ('E tensorflow/core/framework/op_kernel.cc] OOM when'
               ' allocating tensor', 'Unable to register cuDNN factory: out'
               ' of memory', 'Traceback (most recent call last):'):
    assert not stderr_filter.is_noise(real)


def test_readme_algorithm_table_is_the_registry():
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  assert registry.markdown_table() in readme
