"""Small hand-made federations and a numpy reference of local SGD.

Shared by the algorithm tests: a softmax-regression model (the tutorial's
`linear` model) on a few clients whose data fits on one line, and the exact
numpy computation of what a client's local SGD does to it.
"""

import collections

import numpy as np
import tensorflow as tf

from tff_research import models
from tff_research.data import preprocessing

INPUT_DIM = 784


def make_clients(sizes, num_classes=10, seed=0):
  """Random (x, y) numpy arrays per client, x in [0, 1)."""
  rng = np.random.default_rng(seed)
  return [
      (rng.random((n, INPUT_DIM)).astype(np.float32),
       rng.integers(0, num_classes, n).astype(np.int32))
      for n in sizes
  ]


def to_dataset(x, y, batch_size, epochs=1):
  """Unshuffled batches in the model's input format."""
  ds = tf.data.Dataset.from_tensor_slices(
      collections.OrderedDict(x=x, y=y.reshape(-1, 1)))
  return ds.repeat(epochs).batch(batch_size)


def tiny_emnist_sqlite(cache_dir):
  """(train, test) TFF `SqlClientData` of two writers, w0 and w1, read by
  TFF's own EMNIST loader from an `emnist_all.sqlite` written in `cache_dir`:
  15 train and 2 test examples each, random pixels and digit labels."""
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  from tff_research.data import build_emnist_cache  # pylint: disable=g-import-not-at-top
  from tff_research.data import femnist_arrays  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  n = 30
  arrays = femnist_arrays.FemnistArrays(
      client_ids=['w0', 'w1'],
      train_pixels=rng.random((n, 28, 28)).astype(np.float32),
      train_labels=rng.integers(0, 10, n).astype(np.int32),
      train_client=(np.arange(n) % 2).astype(np.int32),
      test_pixels=rng.random((4, 28, 28)).astype(np.float32),
      test_labels=rng.integers(0, 10, 4).astype(np.int32),
      test_client=np.array([0, 1, 0, 1], np.int32))
  build_emnist_cache.write_emnist_sqlite(arrays, str(cache_dir))
  return tff.simulation.datasets.emnist.load_data(
      only_digits=True, cache_dir=str(cache_dir))


def linear_model_fn(num_classes=10, name='linear'):
  return models.model_fn(
      name, num_classes, preprocessing.element_spec(), seed=0)


def softmax_ce_grad(w, b, x, y):
  """Gradient of mean softmax cross-entropy of logits x w + b."""
  z = x.astype(np.float64) @ w + b
  z -= z.max(axis=1, keepdims=True)
  p = np.exp(z)
  p /= p.sum(axis=1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  p /= len(y)
  return x.T.astype(np.float64) @ p, p.sum(axis=0)


def local_sgd(w, b, x, y, lr, batch_size, epochs=1):
  """Local SGD over unshuffled batches, as a client does."""
  w, b = w.copy(), b.copy()
  n = len(y)
  for _ in range(epochs):
    for start in range(0, n, batch_size):
      gw, gb = softmax_ce_grad(
          w, b, x[start:start + batch_size], y[start:start + batch_size])
      w -= lr * gw
      b -= lr * gb
  return w, b


def numpy_fed_avg_round(w, b, clients, lr, batch_size, weighted=True,
                        server_lr=1.0):
  """One FedAvg round in numpy: each client's `local_sgd` from (w, b), the
  deltas averaged by example count (`weighted`) or uniformly, times
  `server_lr` (McMahan et al. 2017, Algorithm 1, with a server step)."""
  deltas_w, deltas_b, weights = [], [], []
  for x, y in clients:
    cw, cb = local_sgd(w, b, x, y, lr, batch_size)
    deltas_w.append(cw - w)
    deltas_b.append(cb - b)
    weights.append(len(y) if weighted else 1.0)
  weights = np.array(weights) / np.sum(weights)
  return (w + server_lr * np.tensordot(weights, deltas_w, axes=1),
          b + server_lr * np.tensordot(weights, deltas_b, axes=1))


def pre_step_train_loss(w, b, clients, lr, batch_size):
  """The training loss TFF reports for one local epoch of every client of
  `clients` from (w, b): each batch's mean loss taken before its SGD step,
  weighted by batch size, pooled over all the clients' examples."""
  losses, sizes = [], []
  for x, y in clients:
    cw, cb = w.astype(np.float64), b.astype(np.float64)
    for start in range(0, len(y), batch_size):
      xb, yb = x[start:start + batch_size], y[start:start + batch_size]
      losses.append(mean_loss_and_accuracy(cw, cb, xb, yb)[0])
      sizes.append(len(yb))
      gw, gb = softmax_ce_grad(cw, cb, xb, yb)
      cw, cb = cw - lr * gw, cb - lr * gb
  return np.dot(losses, sizes) / np.sum(sizes)


def run_rounds(algorithm, clients, rounds, batch_size):
  """`rounds` rounds of `algorithm` (a `base.FederatedAlgorithm`) on every
  client of `clients`, ids '0', '1', ...; returns (its trainable weights as
  numpy arrays, the last round's metrics)."""
  state = algorithm.initialize()
  ids = [str(i) for i in range(len(clients))]
  metrics = None
  for r in range(1, rounds + 1):
    datasets = [to_dataset(x, y, batch_size) for x, y in clients]
    state, metrics = algorithm.next(state, r, ids, datasets)
  weights = algorithm.get_model_weights(state)
  return [np.asarray(w) for w in weights.trainable], metrics


def mean_loss_and_accuracy(w, b, x, y):
  z = x.astype(np.float64) @ w + b
  z -= z.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  loss = -logp[np.arange(len(y)), y]
  acc = (z.argmax(axis=1) == y).astype(np.float64)
  return loss.mean(), acc.mean()


def read_csv(path):
  """A run's metrics.csv as a list of dict rows (numbers as float)."""
  from tff_research.run import run_directory  # pylint: disable=g-import-not-at-top
  return run_directory.read_metrics(str(path))


def config_for(base_flags, tmp_path, name, **overrides):
  """The ExperimentConfig of train.py's flags `base_flags` + overrides."""
  from tff_research.cli import flags  # pylint: disable=g-import-not-at-top
  return flags.build_config(dict(base_flags, logdir=str(tmp_path),
                                 experiment_name=name, **overrides))


def run_experiment(base_flags, tmp_path, name, **overrides):
  """Runs experiments/train.py's library path with `base_flags` + overrides."""
  from tff_research.run import training  # pylint: disable=g-import-not-at-top
  return training.train(config_for(base_flags, tmp_path, name, **overrides))


def final_state(run_dir):
  """Every leaf of the latest checkpoint of `run_dir`, per-client tables
  read into their rows (SCAFFOLD's c_i), as numpy arrays."""
  import asyncio  # pylint: disable=g-import-not-at-top
  from tff_research.run import training  # pylint: disable=g-import-not-at-top
  run = training.rebuild_run(str(run_dir))
  restored, _ = asyncio.run(training.state_manager(
      run.directory.checkpoint_dir).load_latest(run.state_template()))
  restored['state'] = with_table_rows(run.algorithm, restored['state'])
  return [np.asarray(x) for x in tf.nest.flatten(restored)]


def with_table_rows(algorithm, state):
  """`state` with each per-client table index (SCAFFOLD's c_i, clustered
  FL's sketches) replaced by the rows it points to, [N, ...] per leaf: what
  two runs must agree on (slot numbers are an allocation detail)."""
  import collections  # pylint: disable=g-import-not-at-top,reimported
  if not isinstance(state, dict):
    return state  # TFF's own state: no per-client table.
  state = collections.OrderedDict(state)
  for key, table in (('client_controls', getattr(algorithm, 'controls', None)),
                     ('sketches', getattr(algorithm, 'sketches', None))):
    if table is not None and key in state:
      state[key] = table.read(state[key], range(table.num_clients))
  return state
