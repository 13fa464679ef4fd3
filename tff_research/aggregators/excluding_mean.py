"""The mean of the client updates that are finite, and the count of the others.

A client whose local training diverged (a NaN or Inf anywhere in its model
delta) must not move the global model, and the run should say how often that
happens. TFF 0.87's client work (`model_delta_client_work`, FedSGD's client
update) already replaces such a delta by zeros and, for example-weighted
aggregation, gives it weight 0; it does not count it (TFF's own TODO,
b/327051011). With uniform weighting it does not even exclude it:
`build_unweighted_fed_avg` / `build_unweighted_fed_prox` wrap the unweighted
aggregator with `factory_utils.as_weighted_aggregator`, which drops the
weight, so the zeroed delta is averaged in and shrinks the round's update by
a factor (n - 1) / n.

The factories here close both gaps in one place, the `model_aggregator`
every TFF-built algorithm takes (`AlgorithmConfig.model_aggregator()` returns
one when DP is off):

`ExcludingMeanFactory` is both a weighted and an unweighted factory:

* weighted (`create(value_type, weight_type)`): a client is excluded when its update is
  non-finite or its weight is zero or non-finite (TFF's zero weight of a
  diverged client; also a client with no examples). Excluded clients enter
  the mean with value 0 and weight 0; the mean divides without NaN, so a
  round that excludes every client leaves the model unchanged (and the
  divergence guard stops the run: it counted no example).
* uniform (`create(value_type)`): the weight never reaches an
  unweighted aggregator, so a client is excluded when its update is
  non-finite or exactly zero in every coordinate, which is what TFF's client
  work turns a non-finite update into (a real local-SGD delta is never
  exactly zero; a client with no batches has a zero delta and is excluded
  too, as the weighted path does). The others are averaged with weight 1.

Either way it reports `excluded_clients` (float32, a count) in their measurements;
`robustness_group` turns an algorithm's aggregator measurements into the
`robustness` metrics group (`robustness/excluded_clients` in TensorBoard,
`robustness_excluded_clients` in metrics.csv).

Type signatures of the created `tff.templates.AggregationProcess`, for a
model-update type V (W = float32):

    weighted:   next: (<S@SERVER, {V}@CLIENTS, {W}@CLIENTS> ->
                       <state=S@SERVER, result=V@SERVER,
                        measurements=<excluded_clients=float32>@SERVER>)
    unweighted: next: (<S@SERVER, {V}@CLIENTS> -> (same))

where S is the state of the inner `tff.aggregators.MeanFactory`.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

MEASUREMENT = 'excluded_clients'
GROUP = 'robustness'


def all_finite(value) -> tf.Tensor:
  """Whether every coordinate of every tensor of `value` is finite."""
  flat = tf.nest.flatten(value)
  return tf.reduce_all(
      tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in flat]))


def all_zero(value) -> tf.Tensor:
  """Whether every coordinate of every tensor of `value` is exactly 0."""
  flat = tf.nest.flatten(value)
  return tf.reduce_all(
      tf.stack([tf.reduce_all(tf.equal(t, tf.zeros_like(t))) for t in flat]))


def _zero_unless(include, value):
  return tf.nest.map_structure(
      lambda t: tf.where(include, t, tf.zeros_like(t)), value)


def _process(value_type, weight_type, keep_fn, inner):
  """The shared process: per-client keep/exclude, then the inner mean."""
  mean = inner.create(value_type, weight_type)

  @tff.tensorflow.computation(value_type, weight_type)
  def client_fn(value, weight):
    include = keep_fn(value, weight)
    return (_zero_unless(include, value),
            tf.where(include, weight, tf.zeros_like(weight)),
            1.0 - tf.cast(include, tf.float32))

  @tff.federated_computation(
      mean.state_type,
      tff.FederatedType(value_type, tff.CLIENTS),
      tff.FederatedType(weight_type, tff.CLIENTS),
  )
  def next_fn(state, value, weight):
    kept, kept_weight, excluded = tff.federated_map(client_fn, (value, weight))
    output = mean.next(state, kept, kept_weight)
    measurements = tff.federated_zip(collections.OrderedDict(
        [(MEASUREMENT, tff.federated_sum(excluded))]))
    return tff.templates.MeasuredProcessOutput(
        state=output.state, result=output.result, measurements=measurements)

  return mean, next_fn


def _default_mean():
  # no_nan_division: a round whose every client is excluded averages to a
  # zero update instead of 0 / 0 = NaN weights.
  return tff.aggregators.MeanFactory(no_nan_division=True)


class ExcludingMeanFactory(tff.aggregators.WeightedAggregationFactory,
                           tff.aggregators.UnweightedAggregationFactory):
  """Mean without non-finite (or zero-weight) client updates, counted.

  Both kinds of factory, so one object serves every builder: TFF's weighted
  builders, FedSGD and SCAFFOLD call `create(value_type, weight_type)` (the
  weighted rule); `build_unweighted_fed_avg` / `_fed_prox` type-check an
  unweighted factory and call `create(value_type)` (the uniform rule).
  """

  def create(self, value_type, weight_type=None
             ) -> tff.templates.AggregationProcess:
    if weight_type is not None:
      def keep(value, weight):
        return tf.logical_and(
            all_finite(value),
            tf.logical_and(tf.math.is_finite(weight), weight > 0))

      mean, next_fn = _process(value_type, weight_type, keep, _default_mean())
      return tff.templates.AggregationProcess(mean.initialize, next_fn)

    def keep_uniform(value, weight):
      del weight  # Always 1: the uniform weight of a reporting client.
      return tf.logical_and(all_finite(value),
                            tf.logical_not(all_zero(value)))

    mean, weighted_next = _process(
        value_type, tff.TensorType(np.float32), keep_uniform, _default_mean())

    @tff.tensorflow.computation(value_type)
    def one(value):
      del value
      return tf.constant(1.0, tf.float32)

    @tff.federated_computation(
        mean.state_type, tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      return weighted_next(state, value, tff.federated_map(one, value))

    return tff.templates.AggregationProcess(mean.initialize, next_fn)


def robustness_group(measurements: Any) -> Mapping[str, Any]:
  """`{'robustness': {'excluded_clients': n}}` from aggregator measurements
  (a DP aggregator's are read too); `{}` when they hold no count."""
  if not isinstance(measurements, Mapping) or MEASUREMENT not in measurements:
    return {}
  return {GROUP: collections.OrderedDict(
      [(MEASUREMENT, float(np.asarray(measurements[MEASUREMENT])))])}
