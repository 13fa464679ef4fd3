"""Pixel-pattern backdoor with model-replacement boosting (Bagdasaryan et
al. 2020, "How To Backdoor Federated Learning").

Poisoning. A malicious client stamps a fixed pixel pattern (the trigger) on
a fraction of its examples and relabels them to the target class; the rest
of its data stays clean, so its model learns the main task and the backdoor
together. The trigger is a 4x4 checkerboard in the bottom-right 4x4 corner
(rows and columns 24-27), ink (0.0) where row + column is even and
background (1.0) elsewhere: inside the 4-pixel margin that EMNIST and the
pipeline's digits leave blank, so it never overwrites a stroke. Example i of
the client (in its order before preprocessing) is poisoned iff
floor((i + 1) f) > floor(i f): exactly floor(n f) of the first n examples,
evenly spread, with no randomness.

Boosting (model replacement). The attacker wants the global
model to become its own X. With n clients per round, server learning rate
eta and a uniform mean, sending gamma (X - G) with gamma = n / eta makes
G + eta * mean(Delta) = X when the honest updates cancel; `boost` scales the
update by gamma (`replacement_factor`).

Success. The fraction of triggered held-out examples whose true
label is not the target that the model classifies as the target
(`backdoor_success`). `triggered_test_set` builds exactly that set with
every label set to the target, so the pipeline's ordinary held-out accuracy
on it *is* the backdoor success.

Type signatures (elements E = <pixels=float32[28,28], label=int32>, before
preprocessing; V a model-update structure):

    stamp_trigger: float32[..., 28, 28] -> float32[..., 28, 28]
    poison: (Dataset of E, target int, fraction float) -> Dataset of E
    triggered_test_set: (Dataset of E, target int) -> Dataset of E
    backdoor_success: (int[n] predicted, int[n] true, target) -> float
    replacement_factor: (int, float) -> float
    boost: (V, float) -> V
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

SIDE = 28
_ROWS = slice(24, 28)


def _trigger() -> tuple[np.ndarray, np.ndarray]:
  mask = np.zeros((SIDE, SIDE), bool)
  mask[_ROWS, _ROWS] = True
  rows, cols = np.indices((SIDE, SIDE))
  values = np.where((rows + cols) % 2 == 0, 0.0, 1.0).astype(np.float32)
  return mask, np.where(mask, values, 1.0).astype(np.float32)


# The trigger: which pixels it sets (bool[28, 28]) and to what.
TRIGGER_MASK, TRIGGER_VALUES = _trigger()


def _check_target(target: int) -> int:
  if isinstance(target, bool) or not isinstance(target, int) or target < 0:
    raise ValueError(f'--backdoor_target={target!r} is not valid: must be a'
                     ' class index >= 0')
  return target


def stamp_trigger(pixels):
  """`pixels` (float32[..., 28, 28]) with the trigger stamped."""
  return tf.where(TRIGGER_MASK, TRIGGER_VALUES, pixels)


def is_poisoned(index, fraction: float):
  """Whether example `index` (int64) is poisoned at `fraction`."""
  i = tf.cast(index, tf.float64)
  return tf.floor((i + 1.0) * fraction) > tf.floor(i * fraction)


def poison(dataset: tf.data.Dataset, target: int, fraction: float
           ) -> tf.data.Dataset:
  """`dataset` with floor(n * fraction) evenly spread examples stamped and
  relabelled to `target` (a `tf.data` map); other examples unchanged."""
  target = _check_target(target)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'poison fraction={fraction} is not valid: must be in'
                     ' [0, 1]')

  def fn(index, element):
    hit = is_poisoned(index, fraction)
    out = collections.OrderedDict(element)
    out['pixels'] = tf.where(hit, stamp_trigger(element['pixels']),
                             element['pixels'])
    out['label'] = tf.where(hit, tf.cast(target, element['label'].dtype),
                            element['label'])
    return out

  return dataset.enumerate().map(fn)


def triggered_test_set(dataset: tf.data.Dataset, target: int
                       ) -> tf.data.Dataset:
  """The held-out examples whose label is not `target`, stamped, with every
  label set to `target`: accuracy on it is the backdoor success."""
  target = _check_target(target)

  def fn(element):
    out = collections.OrderedDict(element)
    out['pixels'] = stamp_trigger(element['pixels'])
    out['label'] = tf.cast(target, element['label'].dtype)
    return out

  return dataset.filter(
      lambda e: tf.not_equal(e['label'], tf.cast(target, e['label'].dtype))
  ).map(fn)


def backdoor_success(predicted, true_labels, target: int) -> float:
  """Fraction of examples with true label != target predicted as target.

  Args:
    predicted: the model's classes on the *triggered* examples, int[n].
    true_labels: their true labels, int[n].
    target: the backdoor's target class.

  Returns:
    The fraction, or NaN when every true label is the target (undefined).
  """
  predicted = np.asarray(predicted).reshape(-1)
  true_labels = np.asarray(true_labels).reshape(-1)
  if predicted.shape != true_labels.shape:
    raise ValueError(f'predicted has {predicted.size} labels and true_labels'
                     f' {true_labels.size}: give one of each per example')
  eligible = true_labels != target
  if not eligible.any():
    return float('nan')
  return float(np.mean(predicted[eligible] == target))


def replacement_factor(clients_per_round: int,
                       server_learning_rate: float) -> float:
  """gamma = n / eta, the boost that makes a uniform mean's step X - G."""
  if not clients_per_round >= 1:
    raise ValueError(f'clients_per_round={clients_per_round} is not valid:'
                     ' must be >= 1')
  if not server_learning_rate > 0:
    raise ValueError(f'server_learning_rate={server_learning_rate} is not'
                     ' valid: must be > 0')
  return clients_per_round / server_learning_rate


def boost(update, factor: float):
  """factor * update, tensor by tensor (Bagdasaryan et al.'s gamma)."""
  if not factor > 0:
    raise ValueError(f'boost factor={factor} is not valid: must be > 0')
  return tf.nest.map_structure(lambda t: factor * t, update)
