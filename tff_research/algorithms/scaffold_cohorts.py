"""SCAFFOLD's client update (Karimireddy et al. 2020, "SCAFFOLD: Stochastic
Controlled Averaging for Federated Learning", Algorithm 1, option II) for a
cohort of clients in one TensorFlow call.

Why: as a TFF client, each SCAFFOLD client costs a call of its own (its graph
functions, its model's variables, a model's worth of tensors in and out,
about 100 MB held by TFF's runtime until the round ends with the EMNIST
CNN), and its c_i+ comes back as one row appended to a table at the server
(`aggregators.collection.federated_stack`): a round of K clients allocates
K^2 / 2 rows through the appends, and the runtime keeps them until the call
ends (12 GB at 50 clients of the CNN). Here a *cohort* of clients is one TFF
client, as FedAvg's cohorts are (`cohort_client_work`): its data is every
member's batches in one tagged sequence (`data.tagged`), its client state
the members' c_i as one table of flat rows, and one call trains the members
in turn from the same broadcast <x, c>, each exactly as `scaffold.py`'s
per-client work trains a client: the same corrected SGD steps
(`corrected_step`), the same K (its own number of batches), the same option-
II update and rules for an empty or diverged client (`option_two`, both
shared with the per-client work). A cohort returns

* the sum of its members' w_i * Delta y_i and of their weights w_i, so the
  round's mean sum_S w_i Delta y_i / sum_S w_i is the per-client one up to
  the order of float additions;
* the sum of its members' Delta c_i;
* its members' c_i+ as one flat table, row j the j-th member's (a member
  without batches or with a non-finite update keeps c_i);
* the number of members left out of the mean (weight 0: no batches, or a
  non-finite update), the count the pipeline's excluding mean reports;
* the sums of the training metrics (`cohort_client_work.measurement_sums`):
  the model's unfinalized metrics, one per-client row each member (a member
  without batches reports the zero metrics of a model that saw nothing, as
  a TFF client with an empty dataset does), and the members' ||c - c_i||.

In *rows* mode, for a rule that needs every update (the median, trimmed
mean, Krum: `aggregators.collection.CollectingFactory.create_for_tables`),
a cohort sends its members' Delta y as one table instead of their weighted
sum, each through an update attack where the member is malicious (its
Delta c_i and c_i+ stay honest, as per client). Per client, each row would
be one more append to the rule's accumulator, all held by TFF's runtime
until the call ends (K^2 / 2 model-sized rows).

Types (M model weights, T its trainable part, all float32, with d
parameters, B a batch, U the model's unfinalized metrics):

    P   = <global_model_weights=M, control_variate=T>   what the server sends
    C_c = float32[?, d]        the members' c_i, row j the j-th member's, its
                               leaves flattened one after another (one
                               tensor: TFF's Python serialization copies a
                               value once per level of nesting)
    D_c = <batches=<B, int32>*, members=int32*>         `cohort_client_work.
                               cohort_data`, tagged with the members' slots
    U_c = <control_delta_sum=T, controls=float32[?, d], slots=int32[?],
           weighted_delta_sum=T, excluded=float32>
    U_r = <control_delta_sum=T, controls=float32[?, d], slots=int32[?],
           rows=<updates=float32[?, d], entered=int32[?]>>   (rows mode; D_c
                               then also carries `attacks`, with an attack)

    next: (<<>@SERVER, {<server=P, client=C_c>}@CLIENTS, {D_c}@CLIENTS>
           -> <state=<>@SERVER,
               result={ClientResult(update=U_c, update_weight=float32)}
                      @CLIENTS,
               measurements=<train=<F..., per_client=<table=float32[N, 3],
                   count=int32>>, mean_correction_norm=float32>@SERVER>)
"""

from __future__ import annotations

import collections
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.aggregators import excluding_mean
from tff_research.algorithms import client_metrics
from tff_research.algorithms import cohort_client_work

ModelFn = Callable[[], tff.learning.models.VariableModel]
# The per-cohort sums beside the metrics: sum of ||c - c_i||, members.
_SCALARS = ('correction_norm', 'members')


def global_norm(tensors) -> tf.Tensor:
  return tf.linalg.global_norm(
      [tf.cast(t, tf.float32) for t in tf.nest.flatten(tensors)])


def corrected_step(model, trainable, correction, batch, eta_l: float):
  """One local step  y <- y - eta_l (g_i(y) + c - c_i)  on `batch`, with
  `correction` = c - c_i; returns the batch's number of examples (inside a
  `tf.function`)."""
  with tf.GradientTape() as tape:
    output = model.forward_pass(batch, training=True)
  grads = tape.gradient(output.loss, trainable)
  for v, g, corr in zip(trainable, grads, correction):
    v.assign_sub(eta_l * (g + corr))
  return output.num_examples


def option_two(delta, control, num_batches, num_examples, eta_l: float,
               weighted: bool):
  """One client's results from its Delta y = y - x after K = `num_batches`
  steps, c = `control` and n_i = `num_examples`:
  (Delta y, Delta c_i, weight, finite), with

      Delta c_i = c_i+ - c_i = -c + (x - y) / (K eta_l)   (option II)

  zero when K = 0; both zeroed, and the weight 0, when either is not finite
  (as TFF's FedAvg leaves out a diverged client). The weight is n_i
  (`weighted`) or 1, and 0 when K = 0."""
  k = tf.cast(num_batches, tf.float32)
  took_steps = tf.cast(num_batches > 0, tf.float32)
  control_delta = [
      took_steps * (tf.math.divide_no_nan(-d, k * eta_l) - c)
      for d, c in zip(delta, control)
  ]
  finite = excluding_mean.all_finite((delta, control_delta))
  delta, control_delta = tf.nest.map_structure(
      lambda t: tf.where(finite, t, tf.zeros_like(t)), (delta, control_delta))
  weight = (tf.cast(num_examples, tf.float32) if weighted
            else tf.constant(1.0)) * tf.cast(finite, tf.float32) * took_steps
  return delta, control_delta, weight, finite


def _sizes(leaves) -> list[int]:
  return [int(np.prod(t.shape)) for t in leaves]


def table_type(control_type) -> tff.Type:
  """float32[?, d]: rows of d = the number of trainable parameters, each a
  client's control variate flattened leaf after leaf (`leaf_rows`)."""
  if any(t.dtype != np.float32 for t in control_type):
    raise TypeError('SCAFFOLD in cohorts needs float32 trainable variables'
                    f' (its c_i rows are flat float32 tables); got'
                    f' {control_type}')
  return tff.TensorType(np.float32, [None, sum(_sizes(control_type))])


def leaf_rows(table: np.ndarray, shapes) -> list[np.ndarray]:
  """Rows float32[m, d] (`table_type`) as leaves of `shapes`, [m, ...]
  each: views of `table`, no copy."""
  bounds = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
  return [table[:, a:b].reshape(len(table), *s)
          for a, b, s in zip(bounds[:-1], bounds[1:], shapes)]


def update_type(control_type, rows: bool = False) -> tff.Type:
  """U_c, a cohort's update (module docstring), or U_r in rows mode."""
  update = collections.OrderedDict(
      control_delta_sum=control_type, controls=table_type(control_type),
      slots=tff.TensorType(np.int32, [None]))
  if rows:
    update['rows'] = collections.OrderedDict(
        updates=table_type(control_type),
        entered=tff.TensorType(np.int32, [None]))
  else:
    update.update(weighted_delta_sum=control_type,
                  excluded=tff.TensorType(np.float32))
  return tff.to_type(update)


class _CohortTrainer:
  """Trains a cohort's members in turn on one model (`run`, traced inside a
  `tf.function`); the members' results are summed, and their Delta c_i
  kept row by row, in the state of one `reduce` over the tagged batches."""

  def __init__(self, model_fn: ModelFn, eta_l: float, weighted: bool,
               capacity: int, rows: bool = False, update_fn=None):
    self.model = model_fn()
    self.finalizers = self.model.metric_finalizers()
    self.eta_l, self.weighted, self.capacity = eta_l, weighted, capacity
    self.rows, self.update_fn = rows, update_fn

  def run(self, server, controls, batches, members, attacks=None):
    """(P, the members' c_i float32[m, d], <B, int32>*, int32*[, their
    attack inputs]) -> (ClientResult(U_c, weight), the measurement sums)."""
    self.initial = server['global_model_weights']
    self.control = tuple(server['control_variate'])
    self.controls = controls
    self.slots = cohort_client_work.as_tensor(members)
    self.attacks = (None if attacks is None else
                    cohort_client_work.as_tensor(attacks))
    self.weights = tff.learning.models.ModelWeights.from_model(self.model)
    self.variables = tuple(tf.nest.flatten(self.weights.trainable))
    tf.nest.map_structure(lambda v, w: v.assign(w), self.weights,
                          self.initial)
    self.model.reset_metrics()
    unfinalized = self.model.report_local_unfinalized_metrics()
    current, k, n, _, acc = batches.reduce(
        (tf.constant(-1, tf.int32), tf.constant(0, tf.int64),
         tf.constant(0, tf.int64), tuple(tf.zeros_like(c)
                                         for c in self.control),
         self._zero_sums(unfinalized)),
        self._step)
    acc, _ = tf.cond(current >= 0,
                     lambda: self._finish(acc, current, k, n),
                     lambda: (acc, tf.constant(True)))
    return self._results(acc, unfinalized)

  def _zero_sums(self, unfinalized):
    # Tuples, not lists, in the reduce state: tf.data packs a list into one
    # tensor.
    return collections.OrderedDict(
        delta_sum=tuple(tf.zeros_like(v) for v in self.variables),
        weight=tf.constant(0.0),
        control_delta_sum=tuple(tf.zeros_like(v) for v in self.variables),
        # Row j: the j-th member's Delta c_i, flat, zeros until written.
        # One tensor a row, where an [m, d] tensor would be copied whole at
        # every write.
        control_deltas=tf.TensorArray(
            tf.float32, size=tf.size(self.slots),
            element_shape=self.controls.shape[1:]),
        excluded=tf.constant(0.0),
        metrics=tuple(tf.zeros_like(t) for t in tf.nest.flatten(unfinalized)),
        table=tf.zeros([self.capacity, len(client_metrics.COLUMNS)]),
        count=tf.constant(0, tf.int32),
        # Rows mode: each member's Delta y row and flag for the rule.
        **(cohort_client_work.empty_rows(tf.size(self.slots), self.variables)
           if self.rows else {}))

  def _row(self, tag):
    """The member of slot `tag`'s row in the cohort's tables."""
    return cohort_client_work.member_position(self.slots, tag)

  def _leaves(self, row):
    """A flat row float32[d] as the trainable variables' shapes."""
    parts = tf.split(row, _sizes(self.variables))
    return [tf.reshape(p, v.shape) for p, v in zip(parts, self.variables)]

  def _start_member(self, read, tag):
    """(K, n_i, c - c_i) of a member starting from x, once the previous
    member's delta is read (`read`)."""
    with tf.control_dependencies([read]):
      ops = tf.nest.flatten(tf.nest.map_structure(
          lambda v, w: v.assign(w), self.weights, self.initial))
      self.model.reset_metrics()
    row = self._row(tag)
    with tf.control_dependencies(ops):
      # c - c_i is fixed during the member's steps: the drift correction.
      return (tf.constant(0, tf.int64), tf.constant(0, tf.int64),
              tuple(c - c_i for c, c_i in zip(
                  self.control, self._leaves(self.controls[row]))))

  def _step(self, state, element):
    batch, tag = element
    current, k, n, correction, acc = state
    new_member = tf.not_equal(tag, current)
    acc, read = tf.cond(
        tf.logical_and(new_member, current >= 0),
        lambda: self._finish(acc, current, k, n),
        lambda: (acc, tf.constant(True)))
    k, n, correction = tf.cond(new_member,
                               lambda: self._start_member(read, tag),
                               lambda: (k, n, correction))
    num_examples = corrected_step(self.model, self.variables, correction,
                                  batch, self.eta_l)
    return tag, k + 1, n + tf.cast(num_examples, tf.int64), correction, acc

  def _finish(self, acc, tag, num_batches, num_examples):
    """Adds the member of slot `tag`, just trained, to the cohort's sums."""
    delta = [v.read_value() - x for v, x in zip(
        self.variables, tf.nest.flatten(self.initial.trainable))]
    delta, control_delta, weight, finite = option_two(
        delta, self.control, num_batches, num_examples, self.eta_l,
        self.weighted)
    member_metrics = cohort_client_work.member_metrics_after(
        self.model, finite, delta)
    table = client_metrics.append_row(
        acc['table'], acc['count'],
        client_metrics.row(self.finalizers, member_metrics), self.capacity)
    row = self._row(tag)
    with tf.control_dependencies(delta):
      read = tf.constant(True)
    out = collections.OrderedDict(acc)
    out.update(
        control_delta_sum=tuple(
            s + d for s, d in zip(acc['control_delta_sum'], control_delta)),
        control_deltas=acc['control_deltas'].write(row, tf.concat(
            [tf.reshape(d, [-1]) for d in control_delta], axis=0)),
        metrics=tuple(a + m for a, m in zip(
            acc['metrics'], tf.nest.flatten(member_metrics))),
        table=table, count=acc['count'] + 1)
    if self.rows:
      # What the member sends: its Delta y, attacked where it is malicious.
      out.update(cohort_client_work.write_row(
          acc, row, cohort_client_work.sent_update(
              self.update_fn, self.attacks, delta, row)))
      return out, read
    out.update(
        delta_sum=tuple(s + d * weight
                        for s, d in zip(acc['delta_sum'], delta)),
        weight=acc['weight'] + weight,
        # The excluding mean's rule: a zero weight is left out.
        excluded=acc['excluded'] + tf.cast(weight <= 0.0, tf.float32))
    return out, read

  def _results(self, acc, unfinalized):
    """The cohort's ClientResult and measurement sums, the members without
    batches (never finished) added: left out, with zero metrics."""
    members = tf.size(self.slots)
    silent = members - acc['count']
    table = cohort_client_work.with_silent_rows(
        acc['table'], acc['count'], members, self.finalizers, unfinalized,
        self.capacity)
    norms = tf.map_fn(
        lambda row: global_norm([c - c_i for c, c_i in zip(
            self.control, self._leaves(row))]),
        self.controls, fn_output_signature=tf.float32)
    # c_i+ = c_i + Delta c_i; c_i + 0 for a member without batches.
    update = collections.OrderedDict(
        control_delta_sum=list(acc['control_delta_sum']),
        controls=self.controls + acc['control_deltas'].stack(),
        slots=self.slots)
    if self.rows:
      update['rows'] = cohort_client_work.member_rows(
          acc, self.update_fn, self.attacks, self.variables)
    else:
      update.update(weighted_delta_sum=list(acc['delta_sum']),
                    excluded=acc['excluded'] + tf.cast(silent, tf.float32))
    return (tff.learning.templates.ClientResult(
        update=update, update_weight=acc['weight']),
            collections.OrderedDict(
                metrics=tf.nest.pack_sequence_as(unfinalized, acc['metrics']),
                table=table, count=members,
                correction_norm=tf.reduce_sum(norms),
                members=tf.cast(members, tf.float32)))


def build_cohort_client_work(
    model_fn: ModelFn, server_type, *, client_learning_rate: float,
    weighted: bool, capacity: int, rows: bool = False, update_fn=None,
) -> tff.learning.templates.ClientWorkProcess:
  """SCAFFOLD's client work (Karimireddy et al. 2020, Algorithm 1: the
  local steps and the option-II control update) for cohorts of up to
  `capacity` members (the training clients), stateless; types in the
  module docstring, P = `server_type`. The weight is n_i (`weighted`) or 1,
  and 0 for a member without steps or with a non-finite update. `rows`: the
  members' Delta y go to a rule as a table (U_r), each through `update_fn`
  (an update attack) where the member is malicious."""
  eta_l = float(client_learning_rate)
  finalizers, _, batch_type, unfinalized_specs = (
      cohort_client_work.model_types(model_fn))
  start_type = tff.to_type(collections.OrderedDict(
      server=server_type, client=table_type(server_type.control_variate)))
  attacked = update_fn is not None
  data_type = cohort_client_work.data_type(batch_type, attacks=attacked)

  @tff.tensorflow.computation(start_type, data_type)
  def cohort_update(start, data):
    trainer = _CohortTrainer(model_fn, eta_l, weighted, capacity, rows=rows,
                             update_fn=update_fn)
    return tf.function(trainer.run)(
        start['server'], start['client'], data['batches'], data['members'],
        data[cohort_client_work.ATTACKS] if attacked else None)

  zero, merge, report = cohort_client_work.measurement_sums(
      finalizers, unfinalized_specs, capacity, _SCALARS,
      lambda acc: collections.OrderedDict(
          mean_correction_norm=tf.math.divide_no_nan(acc['correction_norm'],
                                                     acc['members'])))

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result,
                             tff.FederatedType(start_type, tff.CLIENTS),
                             tff.FederatedType(data_type, tff.CLIENTS))
  def next_fn(state, start, data):
    result, sums = tff.federated_map(cohort_update, (start, data))
    measurements = tff.federated_aggregate(sums, zero(), merge, merge, report)
    return tff.templates.MeasuredProcessOutput(state, result, measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)
