"""An incongruent federation: some clients see permuted labels.

`permute_labels(data, fraction, shift, seed)` picks `round(fraction * n)` of
the `n` clients (a pure function of the seed and the client list) and maps
their labels y -> (y + shift) mod num_classes, in train and test alike. No
single model can fit both groups (the same image has two labels), which is
the incongruent setting of Sattler et al. 2020, "Clustered Federated
Learning" (their label-swapped EMNIST/CIFAR experiments), where clustered FL
is expected to beat one global model by a wide margin.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.data import sampling
from tff_research.data import store_client_data


def permuted_clients(
    client_ids: Sequence[str], fraction: float, seed: int
) -> tuple[str, ...]:
  """The clients whose labels are permuted, in `client_ids` order."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(
        f'permute_labels_fraction={fraction} is not valid: must be in [0, 1]'
    )
  ids = list(client_ids)
  count = int(round(fraction * len(ids)))
  rng = sampling.round_rng(seed, 0, 'label_permutation')
  chosen = np.sort(rng.choice(len(ids), size=count, replace=False))
  return tuple(ids[i] for i in chosen)


class PermutedClientData(tff.simulation.datasets.ClientData):
  """`base` with labels y -> (y + shift) mod num_classes for some clients."""

  def __init__(self, base: tff.simulation.datasets.ClientData,
               permuted: Sequence[str], shift: int, num_classes: int):
    self._base = base
    self._permuted = frozenset(permuted)
    self._shift = int(shift)
    self._num_classes = int(num_classes)

  def _shift_labels(self, element):
    element = collections.OrderedDict(element)
    element['label'] = tf.math.floormod(
        element['label'] + tf.cast(self._shift, element['label'].dtype),
        tf.cast(self._num_classes, element['label'].dtype),
    )
    return element

  @property
  def client_ids(self) -> list[str]:
    return self._base.client_ids

  def create_tf_dataset_for_client(self, client_id: str) -> tf.data.Dataset:
    ds = self._base.create_tf_dataset_for_client(client_id)
    return ds.map(self._shift_labels) if client_id in self._permuted else ds

  @property
  def serializable_dataset_fn(self):
    base_fn = self._base.serializable_dataset_fn
    permuted = sorted(self._permuted)

    def dataset_fn(client_id):
      ds = base_fn(client_id)
      if not permuted:
        return ds
      is_permuted = tf.reduce_any(tf.equal(client_id, tf.constant(permuted)))
      return ds.map(
          lambda e: tf.cond(is_permuted, lambda: self._shift_labels(e),
                            lambda: collections.OrderedDict(e))
      )

    return dataset_fn

  @property
  def element_type_structure(self):
    return self._base.element_type_structure


def permute_labels(data, fraction: float, shift: int, seed: int):
  """`data` (a `FederatedData`) with a `fraction` of clients' labels shifted.

  Raises:
    ValueError: fraction outside [0, 1] or shift outside [1, num_classes).
  """
  if not 1 <= shift < data.num_classes:
    raise ValueError(
        f'label_permutation_shift={shift} is not valid: must be in [1,'
        f' {data.num_classes})'
    )
  permuted = permuted_clients(data.client_ids, fraction, seed)
  if not permuted:
    return data

  def wrap(client_data):
    if isinstance(client_data, store_client_data.StoreClientData):
      # The shift goes into each client's recipe, read by the worker.
      return client_data.with_label_shift(permuted, shift, data.num_classes)
    return PermutedClientData(client_data, permuted, shift, data.num_classes)

  return dataclasses.replace(
      data,
      train=wrap(data.train),
      test=wrap(data.test),
      description=(
          f'{data.description}; labels of {len(permuted)} of'
          f' {len(data.client_ids)} clients mapped y -> (y + {shift}) mod'
          f' {data.num_classes}'
      ),
  )
