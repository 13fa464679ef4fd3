"""Each round's client datasets, preprocessed as TFF's tutorial does.

Why the datasets are built by a traced function: a `tf.data` pipeline built
eagerly (`dataset.map(fn)`, and `SqlClientData`'s own parsing map) registers
a new function with TensorFlow's eager context on every call, and those are
never freed. Built per client per round, that was the pipeline's memory
growth: about 1.7 MB per round at 10 clients per round, linear, without end.
Here the pipeline is traced once per run in a `tf.function` and every round
only calls it:

* `StoreClientData` (EMNIST read from its array store, and views of it):
  the traced function takes (the client's recipe, shuffle seed), so the
  dataset TFF serializes into each call holds file names, not pixels, and
  the worker reads the files;
* `SqlClientData` (TFF's EMNIST, also as `preprocess`ed by its loader): the
  traced function takes (client id,
  shuffle seed) and builds the dataset from the client data's
  `serializable_dataset_fn`, so the dataset TFF serializes into each call
  holds the SQL query, not pixels;
* any other `ClientData`: the client's dataset is made eagerly (for the
  project's `ArrayClientData` a slice of numpy arrays, which registers
  nothing) and passed through the traced preprocessing.

The elements and their order are exactly those of
`preprocessing.preprocess(client_data.create_tf_dataset_for_client(id), ...)`
with the same seed (tested).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import tensorflow as tf
import tensorflow_federated as tff
# `PreprocessClientData`, what `ClientData.preprocess` returns (TFF's EMNIST
# loader does): TFF exports no name for it, and it must be recognized to see
# the SQL data it wraps.
from tensorflow_federated.python.simulation.datasets import client_data as client_data_lib

from tff_research.data import preprocessing
from tff_research.data import sampling
from tff_research.data import store_client_data
from tff_research.run import config as config_lib


def shuffle_seed(seed: int, round_num: int, client_id: str) -> int:
  """The shuffle seed of a client in a round: pure in (seed, round, id)."""
  rng = sampling.round_rng(seed, round_num, f'shuffle/{client_id}')
  return int(rng.integers(2**31 - 1))


def build_dataset_fn(client_data: tff.simulation.datasets.ClientData, *,
                     epochs: int, batch_size: int, shuffle_buffer: int):
  """`f(client_id, seed) -> preprocessed dataset`, traced once (see above)."""
  if isinstance(client_data, store_client_data.StoreClientData):
    from_recipe = store_client_data.build_train_dataset_fn(
        epochs=epochs, batch_size=batch_size, shuffle_buffer=shuffle_buffer)
    return lambda client_id, seed: from_recipe(client_data.recipe(client_id),
                                               seed)
  preprocess = preprocessing.build_preprocess_fn(
      epochs=epochs, batch_size=batch_size, shuffle_buffer=shuffle_buffer)
  if _reads_sql(client_data):
    by_id = client_data.serializable_dataset_fn
    known = frozenset(client_data.client_ids)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string),
                                  tf.TensorSpec([], tf.int64)])
    def from_id(client_id, seed):
      return preprocess(by_id(client_id), seed)

    def dataset_fn(client_id, seed):
      if client_id not in known:
        # As create_tf_dataset_for_client: an unknown id is an error, not an
        # empty SQL result.
        client_data.create_tf_dataset_for_client(client_id)
      return from_id(tf.constant(client_id), tf.constant(seed, tf.int64))

    return dataset_fn

  return _eager_dataset_fn(client_data, preprocess)


def _eager_dataset_fn(client_data, preprocess):
  """`f(client_id, seed)`: the client's dataset made eagerly, then
  `preprocess(dataset, seed)` traced once."""
  traced = tf.function(preprocess, reduce_retracing=True)

  def dataset_fn(client_id, seed):
    return traced(client_data.create_tf_dataset_for_client(client_id),
                  tf.constant(seed, tf.int64))

  return dataset_fn


def build_poisoned_dataset_fn(client_data, poison, *, epochs: int,
                              batch_size: int, shuffle_buffer: int):
  """`f(client_id, seed)` as `build_dataset_fn`'s, with `poison` (a
  malicious client's data attack, `attacks.config.AttackConfig.poison`)
  applied to the client's examples before preprocessing: the same
  elements in the same order as an honest client's, transformed. Traced
  once, like the other paths; only the malicious clients take it."""
  preprocess = preprocessing.build_preprocess_fn(
      epochs=epochs, batch_size=batch_size, shuffle_buffer=shuffle_buffer)
  return _eager_dataset_fn(
      client_data, lambda dataset, seed: preprocess(poison(dataset), seed))


def _reads_sql(client_data) -> bool:
  """A `SqlClientData`, or one preprocessed (`ClientData.preprocess`, as
  TFF's EMNIST loader returns): its `serializable_dataset_fn` is a query, so
  tracing it captures no data."""
  sql = tff.simulation.datasets.SqlClientData
  if isinstance(client_data, sql):
    return True
  # TFF has no public accessor for what a PreprocessClientData wraps.
  return (isinstance(client_data, client_data_lib.PreprocessClientData)
          and isinstance(
              getattr(client_data, '_underlying_client_data', None), sql))


class TrainingData:
  """`datasets(round, client_ids)`: the clients' local training data; the
  clients in `poisoned` get theirs through `poison` (a data attack)."""

  def __init__(self, client_data: tff.simulation.datasets.ClientData,
               training: config_lib.TrainConfig, seed: int,
               poison=None, poisoned: Collection[str] = ()):
    self._seed = seed
    settings = dict(epochs=training.client_epochs,
                    batch_size=training.batch_size,
                    shuffle_buffer=training.shuffle_buffer)
    self._dataset_fn = build_dataset_fn(client_data, **settings)
    self._poisoned = frozenset(poisoned) if poison is not None else frozenset()
    self._poisoned_fn = (build_poisoned_dataset_fn(client_data, poison,
                                                   **settings)
                         if self._poisoned else None)

  def datasets(self, round_num: int,
               client_ids: Sequence[str]) -> list[tf.data.Dataset]:
    return [(self._poisoned_fn if cid in self._poisoned else
             self._dataset_fn)(cid, shuffle_seed(self._seed, round_num, cid))
            for cid in client_ids]
