"""Label flipping (data poisoning): a malicious client trains on its own
examples with every label y replaced by C - 1 - y (C classes), the label
flipping attack of Fang et al. 2020, "Local Model Poisoning Attacks to
Byzantine-Robust Federated Learning".

Type signatures (elements before preprocessing, C = `num_classes`):

    flip_label: <pixels=float32[28,28], label=int32> ->
                <pixels=float32[28,28], label=int32>
    flip_labels: Dataset of those -> Dataset of those
"""

from __future__ import annotations

import collections

import tensorflow as tf


def _check_num_classes(num_classes: int) -> int:
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or (
      num_classes < 2):
    raise ValueError(f'num_classes={num_classes!r} is not valid: must be an'
                     ' int >= 2')
  return num_classes


def flip_label(element, num_classes: int) -> collections.OrderedDict:
  """The element with label y -> C - 1 - y; other keys unchanged."""
  num_classes = _check_num_classes(num_classes)
  out = collections.OrderedDict(element)
  label = element['label']
  out['label'] = tf.cast(num_classes - 1, label.dtype) - label
  return out


def flip_labels(dataset: tf.data.Dataset, num_classes: int
                ) -> tf.data.Dataset:
  """`dataset` with every label flipped (a `tf.data` map)."""
  num_classes = _check_num_classes(num_classes)
  return dataset.map(lambda e: flip_label(e, num_classes))
