"""Client-side input pipeline, as in TFF's image-classification tutorial.

``repeat(epochs) -> shuffle -> batch -> flatten to (x, y) -> prefetch``
(TFF tutorial "Federated Learning for Image Classification"; local epochs
``E`` and batch size ``B`` as in McMahan et al. 2017, FedAvg). Shuffling
*after* repeating mixes examples across epoch boundaries, exactly as in the
tutorial.

Determinism: the shuffle uses ``seed`` as its op-level seed and
``reshuffle_each_iteration=False``, so the element order is a pure function
of ``(dataset, seed)`` and iterating the returned dataset twice gives the same
order. To get a fresh order each round, pass a per-round seed, e.g.
``int(sampling.round_rng(seed, round_num, 'shuffle').integers(2**31))``.
"""

from __future__ import annotations

import collections

import tensorflow as tf

NUM_PIXELS = 28 * 28


def _check_pos_int(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'{name} must be an int >= 1, got {value!r}')
  return value


def element_spec() -> collections.OrderedDict:
  """Element spec of preprocessed batches, for model ``input_spec``s."""
  return collections.OrderedDict(
      x=tf.TensorSpec(shape=[None, NUM_PIXELS], dtype=tf.float32),
      y=tf.TensorSpec(shape=[None, 1], dtype=tf.int32),
  )


def to_xy(batch):
  """A batch of EMNIST elements as the model's (x [b, 784], y [b, 1])."""
  return collections.OrderedDict(
      x=tf.reshape(tf.cast(batch['pixels'], tf.float32), [-1, NUM_PIXELS]),
      y=tf.reshape(tf.cast(batch['label'], tf.int32), [-1, 1]),
  )


def preprocess(
    dataset: tf.data.Dataset,
    *,
    epochs: int,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    prefetch: int = 10,
) -> tf.data.Dataset:
  """Training pipeline for one client's EMNIST-format dataset.

  Args:
    dataset: elements ``OrderedDict(label=int32 [], pixels=float32 [28, 28])``.
    epochs: local epochs ``E >= 1``.
    batch_size: ``B >= 1``; the last batch may be smaller (not dropped, so every
      example is used exactly ``epochs`` times).
    shuffle_buffer: shuffle buffer size ``>= 1`` (1 = no shuffling); use at
      least the client's dataset size for a uniform permutation.
    seed: op-level shuffle seed (non-negative int).
    prefetch: batches to prefetch (0 = none).

  Returns:
    Dataset of ``OrderedDict(x=float32 [b, 784], y=int32 [b, 1])``.
  """
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f'seed must be a non-negative int, got {seed!r}')
  return build_preprocess_fn(epochs=epochs, batch_size=batch_size,
                             shuffle_buffer=shuffle_buffer,
                             prefetch=prefetch)(dataset, seed)


def build_preprocess_fn(*, epochs: int, batch_size: int, shuffle_buffer: int,
                        prefetch: int = 10):
  """``preprocess`` with its settings fixed: ``f(dataset, seed) -> dataset``,
  ``seed`` an int or an int64 scalar tensor, so the function can be traced
  once in a ``tf.function`` and called every round (see
  ``run/client_data.py``: a dataset pipeline built eagerly registers new
  functions with TensorFlow's eager context on every call, which are never
  freed)."""
  _check_pos_int('epochs', epochs)
  _check_pos_int('batch_size', batch_size)
  _check_pos_int('shuffle_buffer', shuffle_buffer)
  if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
    raise ValueError(f'prefetch must be an int >= 0, got {prefetch!r}')

  def fn(dataset, seed):
    ds = dataset.repeat(epochs).shuffle(
        shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    ds = ds.batch(batch_size).map(to_xy)
    return ds.prefetch(prefetch) if prefetch else ds

  return fn


def preprocess_for_eval(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
  """Evaluation pipeline: batch and flatten, no repeat or shuffle."""
  _check_pos_int('batch_size', batch_size)
  return dataset.batch(batch_size).map(to_xy)
