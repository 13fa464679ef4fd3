"""Collecting every client's update at the server, mergeably.

Rules that need all updates at once (the coordinate-wise median and trimmed
mean of Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates"; Krum and Multi-Krum of Blanchard et al. 2017,
"Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent")
are not sums. They gather the clients' updates with one
`tff.federated_aggregate` whose accumulator *is* the updates, a growing
table, and whose merge concatenates two tables. So the computation keeps the
shape TFF's mergeable execution needs (`tff.backends.native.
compile_to_mergeable_comp_form`; the clients of a round are split across
workers and the partial accumulators merged pairwise) and the rule runs once,
in `report`, on the server. `federated_stack` gathers any per-client
value the same way and hands the table itself to the server, and
`federated_concat` tables of rows (SCAFFOLD's new control variates, one row
a client or one table a cohort, `algorithms/scaffold.py`).

Every update is flattened to one float32 vector of the model's d parameters.
Non-finite updates never enter: a client is excluded, exactly as
`excluding_mean.ExcludingMeanFactory`'s uniform rule does, when its update
has a NaN or Inf anywhere or is zero in every coordinate (TFF's client work
replaces a non-finite delta by zeros before any aggregator sees it). The
count is reported as `excluded_clients`.

Positions. Every client of the round gets one position, in the order the
accumulators are concatenated; `entered[p]` is 1 when the client at p
entered the rule, and its update is then row `sum(entered[:p])` of
`updates`. On one machine TFF 0.87's C++ runtime accumulates the clients in
the order of the round's CLIENTS-placed value (the datasets given to
`next`), so position p is the p-th client of the round. Split across
workers, each worker accumulates a contiguous slice of that value and
`execution.remote` merges the partial results in slice order, so position p
is again the p-th client; and every aggregation of one computation is
merged at once (its `merge` merges the whole partial result), so position p
is the same client in every concatenating aggregation of the round. A
per-client flag collected the same way (`attacks.client_work` collects the
malicious flag) lines up with `kept_share` (`tests/test_robust_aggregators.py`
pins the order on one machine and on two real workers).

Types, for d parameters and a value type V (a structure of float tensors):

    client row   R = <update=float32[d], entered=int32>
    accumulator  U = <updates=float32[?, d], entered=int32[?]>
    zero:        ( -> U), both tables empty
    accumulate:  (<U, R> -> U), appends the client (its row only if entered)
    merge:       (<U, U> -> U), the first's positions, then the second's
    report:      (U -> <result=V, measurements=M>)

with M = <excluded_clients=float32, kept_clients=float32,
kept_share=float32[capacity]>: `kept_share[p]` is how much of position p's
update entered the aggregate (1 or 0 for rules that select whole updates, the
fraction of coordinates for coordinate-wise rules, 0 for an excluded client
and for positions past the round's clients), `kept_clients` its sum (given
exactly by coordinate-wise rules: the values averaged per coordinate). A
round with more clients than `capacity` fails inside the computation.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.aggregators import excluding_mean

EXCLUDED = excluding_mean.MEASUREMENT
KEPT = 'kept_clients'
KEPT_SHARE = 'kept_share'
DEFAULT_CAPACITY = 64

# rule(updates float32[k, d]) -> (aggregate float32[d], kept float32[k],
#                                 extra scalar measurements, which may give
#                                 kept_clients exactly)
Rule = Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor, dict[str, tf.Tensor]]]


def check_value_type(value_type) -> None:
  """TypeError unless `value_type` is an unplaced structure of float tensors
  with fully known shapes (a model update)."""
  if isinstance(value_type, tff.FederatedType) or not (
      tff.types.is_structure_of_floats(value_type)):
    raise TypeError('a robust aggregator needs an unplaced tensor or structure'
                    f' of float tensors (a model update); got {value_type}')
  for spec in tf.nest.flatten(tff.types.type_to_tf_tensor_specs(value_type)):
    if not spec.shape.is_fully_defined():
      raise TypeError(f'a robust aggregator needs fully known shapes; got'
                      f' {spec.shape} in {value_type}')


def check_capacity(capacity: int) -> int:
  if isinstance(capacity, bool) or not isinstance(
      capacity, (int, np.integer)) or capacity < 1:
    raise ValueError(f'capacity={capacity!r} is not valid: must be an int >= 1'
                     ' (the most clients a round can have)')
  return int(capacity)


class Flattener:
  """Maps an update of type V to one float32[d] vector and back."""

  def __init__(self, value_type):
    self._specs = tff.types.type_to_tf_tensor_specs(value_type)
    flat = tf.nest.flatten(self._specs)
    self._shapes = [s.shape for s in flat]
    self._dtypes = [s.dtype for s in flat]
    self._sizes = [int(s.shape.num_elements()) for s in flat]
    self.size = sum(self._sizes)

  def flatten(self, value) -> tf.Tensor:
    return flatten(value)

  def unflatten(self, vector: tf.Tensor):
    parts = tf.split(vector, self._sizes) if self._sizes else []
    return tf.nest.pack_sequence_as(self._specs, [
        tf.cast(tf.reshape(p, shape), dtype)
        for p, shape, dtype in zip(parts, self._shapes, self._dtypes)])


def flatten(value) -> tf.Tensor:
  """float32[d]: the leaves of `value`, flattened one after another."""
  return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1])
                    for t in tf.nest.flatten(value)], axis=0)


def enters(value) -> tf.Tensor:
  """Whether an update enters a uniform rule: finite and not all zero
  (`excluding_mean.ExcludingMeanFactory`'s uniform rule)."""
  return tf.logical_and(excluding_mean.all_finite(value),
                        tf.logical_not(excluding_mean.all_zero(value)))


def enters_weighted(value, weight) -> tf.Tensor:
  """Whether an update enters a weighted rule: finite, with a finite weight
  > 0 (`excluding_mean.ExcludingMeanFactory`'s weighted rule)."""
  return tf.logical_and(
      excluding_mean.all_finite(value),
      tf.logical_and(tf.math.is_finite(weight), weight > 0))


def client_row(value) -> collections.OrderedDict:
  """A client's row: its flat update and whether it enters the rule."""
  entered = enters(value)
  update = flatten(value)
  return collections.OrderedDict(
      update=tf.where(entered, update, tf.zeros_like(update)),
      entered=tf.cast(entered, tf.int32))


def zero(size: int) -> collections.OrderedDict:
  """The empty accumulator for updates of `size` parameters."""
  return collections.OrderedDict(updates=tf.zeros([0, size], tf.float32),
                                 entered=tf.zeros([0], tf.int32))


def accumulate(acc, row) -> collections.OrderedDict:
  """`acc` with one more position; the row is stored only if it entered."""
  keep = tf.reshape(row['entered'] > 0, [1])
  return collections.OrderedDict(
      updates=tf.concat(
          [acc['updates'], tf.boolean_mask(row['update'][tf.newaxis], keep)],
          axis=0),
      entered=tf.concat([acc['entered'], row['entered'][tf.newaxis]], axis=0))


def merge(a, b):
  """Concatenation, leaf by leaf, of two accumulators of the same structure
  (tables with a leading row dimension): `a`'s positions, then `b`'s."""
  return tf.nest.map_structure(lambda x, y: tf.concat([x, y], axis=0), a, b)


def report(acc, rule: Rule, capacity: int):
  """(flat aggregate float32[d], measurements M) of the rule on `acc`."""
  updates, entered = acc['updates'], acc['entered']
  clients = tf.size(entered)
  # Graph mode: the check runs as a control dependency of the scatter.
  with tf.control_dependencies([tf.debugging.assert_less_equal(
      clients, capacity,
      message=f'more clients in a round than the capacity {capacity}')]):
    positions = tf.where(entered > 0)
  aggregate, kept, extra = rule(updates)
  measurements = collections.OrderedDict([
      (EXCLUDED, tf.cast(clients - tf.shape(updates)[0], tf.float32)),
      (KEPT, tf.reduce_sum(kept)),
      (KEPT_SHARE, tf.scatter_nd(positions, kept, [capacity])),
  ])
  measurements.update(extra)
  return aggregate, measurements


def mean_of_rows(rows: tf.Tensor) -> tf.Tensor:
  """The mean of `rows` float32[m, d]; zeros when m = 0 (nothing to average
  leaves the model unchanged, as the excluding mean does)."""
  count = tf.cast(tf.shape(rows)[0], tf.float32)
  return tf.math.divide_no_nan(tf.reduce_sum(rows, axis=0), count)


def _concatenating_aggregate(rows, acc_type, zero_fn, accumulate_fn,
                             report_fn):
  """One `tff.federated_aggregate` of the CLIENTS-placed `rows` whose
  accumulator (of type `acc_type`) is a table of rows and whose merge is
  `merge`: the shape TFF's mergeable execution splits across workers.
  `zero_fn()`, `accumulate_fn(acc, row)` and `report_fn(acc)` are traced
  into TensorFlow computations."""

  @tff.tensorflow.computation
  def zero():
    return zero_fn()

  @tff.tensorflow.computation(acc_type, rows.type_signature.member)
  def accumulate(acc, row):
    return accumulate_fn(acc, row)

  @tff.tensorflow.computation(acc_type, acc_type)
  def merge_tables(a, b):
    return merge(a, b)

  @tff.tensorflow.computation(acc_type)
  def report_tables(acc):
    return report_fn(acc)

  return tff.federated_aggregate(rows, zero(), accumulate, merge_tables,
                                 report_tables)


def federated_collect(rows, width: int, rule: Rule, capacity: int,
                      finish: Callable[[tf.Tensor, Any], Any]):
  """`finish(*report(U, rule, capacity))`@SERVER of the CLIENTS-placed `rows`
  (client rows R of `width` floats), by one `tff.federated_aggregate`.

  Called while tracing a federated computation.
  """
  acc_type = tff.to_type(collections.OrderedDict(
      updates=tff.TensorType(np.float32, [None, width]),
      entered=tff.TensorType(np.int32, [None])))
  return _concatenating_aggregate(
      rows, acc_type, lambda: zero(width), accumulate,
      lambda acc: finish(*report(acc, rule, capacity)))


def federated_stack(rows):
  """Every client's row of the CLIENTS-placed `rows` (any structure R of
  tensors, with Python containers), stacked at the server by one
  `tff.federated_aggregate` whose merge concatenates (`merge`):

      ({R}@CLIENTS -> R_?@SERVER)

  where R_? is R with a leading dimension [?], one row a client, in
  position order (module docstring: the round's client order, on one
  machine and split across workers alike; a caller that must not depend
  on it tags each row, e.g. with its index in the round). The
  accumulator grows with the round instead of holding a fixed capacity:
  the rows may be model-sized and the round's size is known only at run
  time. Called while tracing a federated computation.
  """
  specs = tff.types.type_to_tf_tensor_specs(rows.type_signature.member)
  table_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
      lambda s: tf.TensorSpec([None, *s.shape], s.dtype), specs))

  def empty():
    return tf.nest.map_structure(
        lambda s: tf.zeros([0, *s.shape], s.dtype), specs)

  def append(table, row):
    return merge(table, tf.nest.map_structure(lambda t: t[tf.newaxis], row))

  return _concatenating_aggregate(rows, table_type, empty, append,
                                  lambda table: table)


def federated_concat(tables):
  """The CLIENTS-placed `tables` (any structure of tensors with a leading
  dimension of rows, with Python containers) concatenated at the server,
  one client's rows after another's, by one `tff.federated_aggregate` whose
  merge concatenates (`merge`):

      ({R_?}@CLIENTS -> R_?@SERVER)

  in position order, as `federated_stack` (which stacks one row a client);
  one append per client. Called while tracing a federated computation.
  """
  specs = tff.types.type_to_tf_tensor_specs(tables.type_signature.member)
  table_type = tff.types.tensorflow_to_type(tf.nest.map_structure(
      lambda s: tf.TensorSpec([None, *s.shape[1:]], s.dtype), specs))

  def empty():
    return tf.nest.map_structure(
        lambda s: tf.zeros([0, *s.shape[1:]], s.dtype), specs)

  return _concatenating_aggregate(tables, table_type, empty, merge,
                                  lambda table: table)


class CollectingFactory(tff.aggregators.UnweightedAggregationFactory,
                        abc.ABC):
  """An unweighted aggregator whose rule sees every entered update.

  Subclasses give the rule (`rule(updates float32[k, d])`, see `Rule`).
  The created process is stateless:

      initialize: ( -> <>@SERVER)
      next: (<<>@SERVER, {V}@CLIENTS> ->
             <state=<>@SERVER, result=V@SERVER, measurements=M@SERVER>)

  with M as in the module docstring plus the rule's own scalars.
  """

  def __init__(self, capacity: int = DEFAULT_CAPACITY):
    self._capacity = check_capacity(capacity)

  @property
  def capacity(self) -> int:
    return self._capacity

  @abc.abstractmethod
  def rule(self, updates: tf.Tensor
           ) -> tuple[tf.Tensor, tf.Tensor, dict[str, tf.Tensor]]:
    """(aggregate float32[d], kept share float32[k], extra measurements)."""

  def create(self, value_type) -> tff.templates.AggregationProcess:
    check_value_type(value_type)
    flattener = Flattener(value_type)
    capacity = self._capacity
    rule = self.rule

    @tff.tensorflow.computation(value_type)
    def client_fn(value):
      return client_row(value)

    @tff.federated_computation
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      result, measurements = federated_collect(
          tff.federated_map(client_fn, value), flattener.size, rule, capacity,
          lambda aggregate, m: (flattener.unflatten(aggregate), m))
      return tff.templates.MeasuredProcessOutput(
          state=state, result=result, measurements=measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)

  def create_for_tables(self, value_type) -> tff.templates.AggregationProcess:
    """The same rule over clients that each send a *table* of updates, the
    accumulator's own type U (a cohort of clients trained in one call,
    `algorithms.cohort_client_work`: its entered members' flat rows and
    every member's flag, in member order):

        next: (<<>@SERVER, {U}@CLIENTS, {float32}@CLIENTS> ->
               <state=<>@SERVER, result=V@SERVER, measurements=M@SERVER>)

    in the weighted form TFF's `compose_learning_process` takes; the weights
    are not used (the collecting rules are uniform).

    One append per table, not per row: the per-client `create` appends a
    row per client, and TFF 0.87's C++ runtime holds every intermediate
    accumulator until the call ends (K^2 / 2 model-sized rows for K
    clients: 6 GB at 50 clients of the EMNIST CNN). The rule and the
    measurements are `create`'s, position p the p-th member of the
    concatenated tables.
    """
    check_value_type(value_type)
    flattener = Flattener(value_type)
    capacity = self._capacity
    rule = self.rule
    table_type = tff.to_type(collections.OrderedDict(
        updates=tff.TensorType(np.float32, [None, flattener.size]),
        entered=tff.TensorType(np.int32, [None])))

    @tff.federated_computation
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    def report_fn(acc):
      aggregate, measurements = report(acc, rule, capacity)
      return flattener.unflatten(aggregate), measurements

    @tff.federated_computation(init_fn.type_signature.result,
                               tff.FederatedType(table_type, tff.CLIENTS),
                               tff.FederatedType(np.float32, tff.CLIENTS))
    def next_fn(state, tables, weight):
      del weight  # Uniform rules.
      result, measurements = _concatenating_aggregate(
          tables, table_type, lambda: zero(flattener.size), merge, report_fn)
      return tff.templates.MeasuredProcessOutput(
          state=state, result=result, measurements=measurements)

    return tff.templates.AggregationProcess(init_fn, next_fn)


class UniformExcludingMean(tff.aggregators.UnweightedAggregationFactory):
  """`excluding_mean.ExcludingMeanFactory`'s uniform rule, as a factory
  that is only unweighted: TFF's `clipping_factory` takes its weightedness
  from its inner factory, checking weighted first, and ExcludingMeanFactory
  is both."""

  def create(self, value_type):
    return excluding_mean.ExcludingMeanFactory().create(value_type)


class SumRuleFactory(tff.aggregators.WeightedAggregationFactory,
                     tff.aggregators.UnweightedAggregationFactory, abc.ABC):
  """A sum-based aggregator (a mean, weighted or uniform as `create` is
  called) that also reports the positions it kept.

  The result is the `inner` factory's; beside it every client sends a row of
  `width` floats (`row`, nothing by default) and whether it entered (the
  inner mean's rule: `enters` or `enters_weighted`), collected in position
  order; `share(rows float32[k, width])` gives the kept share of each
  entered position (1 by default).

      next: (<S@SERVER, {V}@CLIENTS[, {W}@CLIENTS]> ->
             <state=S@SERVER, result=V@SERVER,
              measurements=<(`measurements` of the inner's), kept_clients,
                            kept_share=float32[C]>@SERVER>)

  with S the inner process's state.
  """

  width = 0

  def __init__(self, capacity: int = DEFAULT_CAPACITY):
    self._capacity = check_capacity(capacity)

  @abc.abstractmethod
  def inner(self, weighted: bool) -> tff.aggregators.AggregationFactory:
    """The sum-based factory computing the result."""

  def row(self, value) -> tf.Tensor:
    """float32[width] a client sends beside its update."""
    del value
    return tf.zeros([self.width], tf.float32)

  def share(self, rows: tf.Tensor) -> tf.Tensor:
    """float32[k]: how much of each entered update the result kept."""
    return tf.ones([tf.shape(rows)[0]], tf.float32)

  def measurements(self, inner) -> collections.OrderedDict:
    """The measurements taken from the inner process's (in TF)."""
    return collections.OrderedDict([(EXCLUDED, inner[EXCLUDED])])

  def create(self, value_type, weight_type=None
             ) -> tff.templates.AggregationProcess:
    check_value_type(value_type)
    weighted = weight_type is not None
    inner_factory = self.inner(weighted)
    inner = (inner_factory.create(value_type, weight_type) if weighted
             else inner_factory.create(value_type))

    def position_row(value, entered):
      return collections.OrderedDict(
          update=tf.where(entered, self.row(value), 0.0),
          entered=tf.cast(entered, tf.int32))

    if weighted:
      @tff.tensorflow.computation(value_type, weight_type)
      def row_fn(value, weight):
        return position_row(value, enters_weighted(value, weight))
    else:
      @tff.tensorflow.computation(value_type)
      def row_fn(value):
        return position_row(value, enters(value))

    def rule(rows):
      return tf.zeros([self.width]), self.share(rows), {}

    def next_impl(state, value, *weight):
      output = inner.next(state, value, *weight)
      kept = federated_collect(
          tff.federated_map(row_fn, (value, *weight) if weight else value),
          self.width, rule, self._capacity, lambda aggregate, m: m)

      @tff.tensorflow.computation(output.measurements.type_signature.member,
                                  kept.type_signature.member)
      def measurements_fn(inner_measurements, kept):
        out = self.measurements(inner_measurements)
        out[KEPT] = kept[KEPT]
        out[KEPT_SHARE] = kept[KEPT_SHARE]
        return out

      return tff.templates.MeasuredProcessOutput(
          state=output.state, result=output.result,
          measurements=tff.federated_map(
              measurements_fn,
              tff.federated_zip((output.measurements, kept))))

    value_at_clients = tff.FederatedType(value_type, tff.CLIENTS)
    if weighted:
      @tff.federated_computation(inner.state_type, value_at_clients,
                                 tff.FederatedType(weight_type, tff.CLIENTS))
      def next_fn(state, value, weight):
        return next_impl(state, value, weight)
    else:
      @tff.federated_computation(inner.state_type, value_at_clients)
      def next_fn(state, value):
        return next_impl(state, value)

    return tff.templates.AggregationProcess(inner.initialize, next_fn)
