"""Per-client training metrics from the round's own client work.

TFF's `tff.learning.metrics.sum_then_finalize` reports only the
example-weighted aggregate of what clients saw during local training. The
dashboard also wants the distribution over clients (max / mean / min loss,
histograms). Computing it with a second federated pass over every reporting
client's data cost a forward pass per round; instead each client finalizes
its own metrics inside the round's computation and the server collects them
with one `tff.federated_aggregate` into a fixed-capacity table.

The aggregate is order-free (TFF aggregates clients in no defined order), so
the table holds each client's (loss, accuracy, examples) row in an unspecified
order: enough for a distribution, not for naming clients. The capacity is
fixed when the computation is built (the number of training clients bounds
any cohort), so every cohort size reuses one traced computation; a fixed-shape
accumulator also keeps `merge` defined, so the aggregation stays mergeable
across remote workers.

Type signature of `per_client_then_finalize(capacity)(finalizers)`:

    ({U}@CLIENTS -> <F..., per_client=<table=float32[capacity, 3],
                                         count=int32>>@SERVER)

where U are the model's unfinalized metrics and F..., their summed
finalized values, are exactly what `sum_then_finalize` returns.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

# Columns of a client's row.
COLUMNS = ('loss', 'accuracy', 'num_examples')
_ACCURACY = 'sparse_categorical_accuracy'
KEY = 'per_client'


def finalize(finalizers, unfinalized):
  """A model's finalized metrics from its unfinalized ones."""
  if callable(finalizers):
    return finalizers(unfinalized)
  return collections.OrderedDict(
      (name, fn(unfinalized[name])) for name, fn in finalizers.items())


def row(finalizers, unfinalized) -> tf.Tensor:
  """float32 [3]: one client's (loss, accuracy, examples) table row."""
  return _row(finalize(finalizers, unfinalized))


def _row(finalized) -> tf.Tensor:
  def scalar(name):
    if name not in finalized:
      return tf.constant(np.nan, tf.float32)
    return tf.cast(tf.reshape(finalized[name], []), tf.float32)
  return tf.stack([scalar('loss'), scalar(_ACCURACY), scalar('num_examples')])


def append_row(table: tf.Tensor, count: tf.Tensor, new_row: tf.Tensor,
               capacity: int) -> tf.Tensor:
  """`table` (float32[capacity, w]) with `new_row` written at row `count`;
  a round of more than `capacity` clients fails the check."""
  # Graph mode: the check runs only as a control dependency.
  with tf.control_dependencies([tf.debugging.assert_less(
      count, capacity,
      message=f'more clients in a round than the capacity {capacity}')]):
    return tf.tensor_scatter_nd_update(table, [[count]], new_row[tf.newaxis])


def concat_tables(a_table, a_count, b_table, b_count,
                  capacity: int) -> tf.Tensor:
  """`a_table` with the first `b_count` rows of `b_table` written after its
  first `a_count`: how partial tables merge across TFF workers."""
  rows = tf.range(b_count) + a_count
  with tf.control_dependencies([tf.debugging.assert_less_equal(
      a_count + b_count, capacity,
      message=f'more clients in a round than the capacity {capacity}')]):
    return tf.tensor_scatter_nd_update(a_table, rows[:, tf.newaxis],
                                       b_table[:b_count])


def per_client_then_finalize(capacity: int):
  """A `metrics_aggregator` for TFF's learning-process builders.

  Args:
    capacity: the most clients one round can have (the number of training
      clients). A round with more raises inside the computation.

  Returns:
    `f(metric_finalizers, local_unfinalized_metrics_type=None)`, the
    signature of `tff.learning.metrics.sum_then_finalize`.
  """
  capacity = int(capacity)
  if capacity < 1:
    raise ValueError(f'capacity must be >= 1, got {capacity}')
  width = len(COLUMNS)

  def aggregator(metric_finalizers, local_unfinalized_metrics_type=None):
    del local_unfinalized_metrics_type  # As sum_then_finalize: from the arg.
    summed = tff.learning.metrics.sum_then_finalize(metric_finalizers)

    @tff.federated_computation
    def aggregate(client_metrics):
      unfinalized_type = client_metrics.type_signature.member

      @tff.tensorflow.computation(unfinalized_type)
      def client_row(unfinalized):
        return row(metric_finalizers, unfinalized)

      table_type = collections.OrderedDict(
          table=tff.TensorType(np.float32, [capacity, width]),
          count=tff.TensorType(np.int32))

      @tff.tensorflow.computation
      def zero():
        return collections.OrderedDict(
            table=tf.zeros([capacity, width], tf.float32),
            count=tf.constant(0, tf.int32))

      @tff.tensorflow.computation(table_type,
                                  tff.TensorType(np.float32, [width]))
      def accumulate(acc, new_row):
        table = append_row(acc['table'], acc['count'], new_row, capacity)
        return collections.OrderedDict(table=table, count=acc['count'] + 1)

      @tff.tensorflow.computation(table_type, table_type)
      def merge(a, b):
        table = concat_tables(a['table'], a['count'], b['table'],
                              b['count'], capacity)
        return collections.OrderedDict(table=table,
                                       count=a['count'] + b['count'])

      @tff.tensorflow.computation(table_type)
      def report(acc):
        return acc

      table = tff.federated_aggregate(
          tff.federated_map(client_row, client_metrics), zero(), accumulate,
          merge, report)

      finalized = summed(client_metrics)

      @tff.tensorflow.computation(finalized.type_signature.member,
                                  table.type_signature.member)
      def attach(finalized, per_client):
        return collections.OrderedDict(
            list(finalized.items()) + [(KEY, per_client)])

      return tff.federated_map(attach, tff.federated_zip((finalized, table)))

    return aggregate

  return aggregator


def for_clients(client_ids) -> Any:
  """`per_client_then_finalize` sized for a run's training clients; TFF's
  `sum_then_finalize` when they are not known (an algorithm built without
  its clients reports no per-client table)."""
  if not len(client_ids):
    return tff.learning.metrics.sum_then_finalize
  return per_client_then_finalize(len(client_ids))


def split(train: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(train metrics without the table, the `clients` group).

  The `clients` group holds `loss`, `accuracy` and `examples` arrays over
  the round's reporting clients (row i is one client; clients in no
  particular order); empty when `train` has no table (an algorithm built
  without this aggregator).
  """
  train = collections.OrderedDict(train)
  packed = train.pop(KEY, None)
  if packed is None:
    return train, {}
  count = int(np.asarray(packed['count']))
  table = np.asarray(packed['table'])[:count]
  return train, collections.OrderedDict(
      loss=table[:, 0].astype(np.float64),
      accuracy=table[:, 1].astype(np.float64),
      examples=table[:, 2].astype(np.int64))


def unpack(groups: Mapping[str, Any]) -> collections.OrderedDict:
  """A round's metric groups with the `train` table moved to a `clients`
  group (`split`); what every algorithm's `next` returns."""
  groups = collections.OrderedDict(groups)
  if isinstance(groups.get('train'), Mapping):
    groups['train'], clients = split(groups['train'])
    if clients:
      groups['clients'] = clients
  return groups
