"""FedAvg's client work with a round's clients one after another in one call.

Why: TFF's client work (`tff.learning.templates.build_model_delta_client_work`)
runs one TensorFlow call per client. Each call instantiates the client's
graph functions and the dataset's, initializes the model's variables and
moves a model's worth of tensors in and out: on the 2-core machine about
0.1 CPU-second a client (the EMNIST CNN, clients of one example each: 0.27
CPU-s a round at 1 client, 1.15 at 10; `perf` shows protobuf, kernel
lookup, malloc and the variables' random initializers, not arithmetic).
Here a *cohort* of clients is one TFF client: its data is every member's
batches in one tagged sequence (`data.tagged`), and one call trains the
members in turn from the same broadcast model, exactly as TFF's client work
trains each (the same `forward_pass`, gradient and optimizer step, the same
optimizer state re-initialized per client, the delta x - y zeroed if not
finite, weighted by its examples or uniformly), and returns their weighted
mean update with the sum of their weights. The round's aggregator then
averages the cohorts' updates by those weights, so the round equals TFF's
FedAvg round up to the order of float additions (tested to 1e-6 on the
final weights of every FedAvg-family algorithm). With several TFF workers
the clients are split into one cohort per worker, merged by TFF's
mergeable execution as any clients are.

A member is left out of the mean when its update is not finite, or, by
example weighting, when it trained on no example, or, uniformly, when its
update is exactly zero (the rules of the model aggregator this replaces,
`aggregators.excluding_mean.ExcludingMeanFactory`), and counted in
`excluded_clients`. Each member's finalized training metrics fill a row of
the round's per-client table (`client_metrics`), and their unfinalized
metrics are summed and finalized once, as `sum_then_finalize` does across
TFF clients.

In *rows* mode a cohort sends its members' updates instead of their mean,
as one table for a rule that needs every update (the median, trimmed mean,
Krum: `aggregators.collection.CollectingFactory.create_for_tables`), each
member's update through an update attack where it is malicious; the rule's
accumulator then grows by one append per cohort. Aggregators that clip or
noise each client's update (DP, norm bounding) keep TFF's per-client work.

Type signatures (M model weights, T its trainable part, B a batch, H the
client optimizer's hyperparameters, U the model's unfinalized metrics):

    data of one cohort: <batches=<B, int32>*, members=int32*>
    next: (<H@SERVER, {M}@CLIENTS, {<batches, members>}@CLIENTS>
           -> <state=H@SERVER, result={<update=T, update_weight=float32>}
               @CLIENTS, measurements=<train=<F..., per_client=<table=
               float32[capacity, 3], count=int32>>, excluded_clients=
               float32>@SERVER>)
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.aggregators import collection
from tff_research.aggregators import excluding_mean
from tff_research.algorithms import client_metrics
from tff_research.data import tagged

ModelFn = Callable[[], tff.learning.models.VariableModel]
EXCLUDED = 'excluded_clients'
ATTACKS = 'attacks'


def cohort_data(datasets: Sequence[tf.data.Dataset], members: Sequence[int],
                attacks: Optional[Sequence[tuple[bool, Sequence[int]]]] = None):
  """One cohort's client data: the members' datasets, tagged, and the
  members' tags (a member without batches appears only there); with
  `attacks`, each member's (malicious, noise seed int64[2]) in member
  order, as `attacks.client_work.attack_input` gives a TFF client its own."""
  members = [int(m) for m in members]
  data = collections.OrderedDict(
      batches=tagged.tagged_sequence(list(datasets), members),
      members=tf.data.Dataset.from_tensor_slices(np.array(members, np.int32)))
  if attacks is not None:
    data[ATTACKS] = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        malicious=np.array([bool(m) for m, _ in attacks], bool),
        seed=np.array([list(seed) for _, seed in attacks],
                      np.int64).reshape(len(attacks), 2)))
  return data


def _data_names(process) -> list[str]:
  data = process.next.type_signature.parameter[1].member
  if not isinstance(data, tff.StructType):
    return []
  return [name for name, _ in tff.structure.iter_elements(data)]


def takes_cohorts(process) -> bool:
  """Whether `process.next` takes cohort data (`cohort_data`)."""
  return _data_names(process)[:2] == ['batches', 'members']


def takes_member_attacks(process) -> bool:
  """Whether its cohort data carries the members' attack inputs."""
  return takes_cohorts(process) and ATTACKS in _data_names(process)


def in_cohorts(config, model_aggregator) -> bool:
  """Whether a run (`registry.AlgorithmConfig`) whose model aggregator is
  `model_aggregator` trains its clients in cohorts: without DP, with the
  plain mean and no attack (the cohorts' sums), or with a rule that collects
  every update (`collection.CollectingFactory`: the cohorts' tables).
  Norm bounding and the mean's attack accounting need each client's own
  update, as DP does."""
  return config.dp is None and (
      (config.aggregation.is_mean and not config.attack.active)
      or isinstance(model_aggregator, collection.CollectingFactory))


def split_cohorts(num_clients: int, cohorts: int) -> list[range]:
  """Positions 0..num_clients-1 in `cohorts` contiguous runs, as even as
  they can be (none empty)."""
  if num_clients <= 0:
    return []
  cohorts = max(1, min(cohorts, num_clients))
  bounds = np.linspace(0, num_clients, cohorts + 1).round().astype(int)
  return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class _CohortTrainer:
  """Trains a cohort's members in turn on one model (`run`, traced inside a
  `tf.function`): TFF's client training step per member, the members'
  deltas, weights, metrics and rows summed in a `reduce` state."""

  def __init__(self, model_fn: ModelFn, weighted: bool, capacity: int,
               rows: bool = False, update_fn=None):
    self.model = model_fn()
    self.finalizers = self.model.metric_finalizers()
    self.weighted = weighted
    self.capacity = capacity
    self.rows = rows
    self.update_fn = update_fn

  def run(self, optimizer, initial_weights, batches, members, hparams,
          attacks=None):
    """(optimizer, initial weights, batches, members, hparams[, attacks])
    -> (ClientResult, <metrics sum, table, count[, excluded]>)."""
    self.optimizer, self.hparams = optimizer, hparams
    self.slots = as_tensor(members)
    self.attacks = None if attacks is None else as_tensor(attacks)
    self.initial = initial_weights
    self.weights = tff.learning.models.ModelWeights.from_model(self.model)
    self.variables = tuple(tf.nest.flatten(self.weights.trainable))
    tf.nest.map_structure(lambda v, w: v.assign(w), self.weights,
                          initial_weights)
    self.model.reset_metrics()
    unfinalized = self.model.report_local_unfinalized_metrics()
    current, num_examples, _, acc = batches.reduce(
        (tf.constant(-1, tf.int32), tf.constant(0, tf.int64),
         self._fresh_optimizer_state(), self._zero_sums(unfinalized)),
        self._step)
    acc, _ = tf.cond(current >= 0,
                     lambda: self._finish(acc, num_examples, current),
                     lambda: (acc, tf.constant(True)))
    sums = collections.OrderedDict(
        metrics=tf.nest.pack_sequence_as(unfinalized, acc['metrics']),
        table=with_silent_rows(acc['table'], acc['count'], tf.size(self.slots),
                               self.finalizers, unfinalized, self.capacity),
        count=tf.size(self.slots))
    if self.rows:
      update = member_rows(acc, self.update_fn, self.attacks, self.variables)
      return (tff.learning.templates.ClientResult(
          update=update, update_weight=acc['weight']), sums)
    # Members without a batch train on nothing: left out, as TFF's
    # aggregator leaves out their zero-weight (or zero) update.
    silent = tf.cast(tf.size(self.slots) - acc['count'], tf.float32)
    update = tf.nest.pack_sequence_as(
        initial_weights.trainable,
        [tf.math.divide_no_nan(u, acc['weight']) for u in acc['update']])
    sums['excluded'] = acc['excluded'] + silent
    return (tff.learning.templates.ClientResult(
        update=update, update_weight=acc['weight']), sums)

  def _zero_sums(self, unfinalized):
    # Tuples, not lists, in the reduce state: tf.data packs a list into one
    # tensor.
    return collections.OrderedDict(
        update=tuple(tf.zeros_like(v) for v in self.variables),
        weight=tf.constant(0.0),
        excluded=tf.constant(0.0),
        metrics=tuple(tf.zeros_like(t) for t in tf.nest.flatten(unfinalized)),
        table=tf.zeros([self.capacity, len(client_metrics.COLUMNS)]),
        count=tf.constant(0, tf.int32),
        **(empty_rows(tf.size(self.slots), self.variables)
           if self.rows else {}))

  def _fresh_optimizer_state(self):
    specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in self.variables)
    return self.optimizer.set_hparams(self.optimizer.initialize(specs),
                                      self.hparams)

  def _start_member(self, read):
    # Only once the previous member's delta is read (`read`).
    with tf.control_dependencies([read]):
      ops = tf.nest.flatten(tf.nest.map_structure(
          lambda v, w: v.assign(w), self.weights, self.initial))
      self.model.reset_metrics()
    with tf.control_dependencies(ops):
      return tf.constant(0, tf.int64)

  def _keep_and_weight(self, finite, delta, num_examples):
    if self.weighted:
      keep = tf.logical_and(finite, num_examples > 0)
      return keep, tf.where(keep, tf.cast(num_examples, tf.float32), 0.0)
    keep = tf.logical_and(finite,
                          tf.logical_not(excluding_mean.all_zero(delta)))
    return keep, tf.where(keep, 1.0, 0.0)

  def _finish(self, acc, num_examples, tag):
    """Adds the member of slot `tag`, just trained, to the cohort's sums
    (or, in rows mode, its update to the cohort's rows)."""
    delta = [w - v.read_value() for w, v in zip(
        tf.nest.flatten(self.initial.trainable), self.variables)]
    finite = excluding_mean.all_finite(delta)
    delta = [tf.where(finite, d, tf.zeros_like(d)) for d in delta]
    member_metrics = member_metrics_after(self.model, finite, delta)
    row = client_metrics.row(self.finalizers, member_metrics)
    table = client_metrics.append_row(acc['table'], acc['count'], row,
                                      self.capacity)
    with tf.control_dependencies(delta):
      read = tf.constant(True)
    out = collections.OrderedDict(acc)
    out.update(
        metrics=tuple(a + m for a, m in zip(
            acc['metrics'], tf.nest.flatten(member_metrics))),
        table=table, count=acc['count'] + 1)
    if self.rows:
      # What the member sends: its delta, attacked where it is malicious.
      position = member_position(self.slots, tag)
      out.update(write_row(acc, position, sent_update(
          self.update_fn, self.attacks, delta, position)))
      return out, read
    keep, weight = self._keep_and_weight(finite, delta, num_examples)
    out.update(
        update=tuple(u + d * weight for u, d in zip(acc['update'], delta)),
        weight=acc['weight'] + weight,
        excluded=acc['excluded'] + 1.0 - tf.cast(keep, tf.float32))
    return out, read

  def _step(self, state, element):
    batch, tag = element
    current, num_examples, opt_state, acc = state
    new_member = tf.not_equal(tag, current)
    acc, read = tf.cond(
        tf.logical_and(new_member, current >= 0),
        lambda: self._finish(acc, num_examples, current),
        lambda: (acc, tf.constant(True)))
    num_examples = tf.cond(new_member, lambda: self._start_member(read),
                           lambda: num_examples)
    opt_state = tf.cond(new_member, self._fresh_optimizer_state,
                        lambda: opt_state)
    # TFF's training step (model_delta_client_work), unchanged.
    with tf.GradientTape() as tape:
      output = self.model.forward_pass(batch, training=True)
    gradients = tape.gradient(output.loss, self.weights.trainable)
    opt_state, updated = self.optimizer.next(
        opt_state, tuple(tf.nest.flatten(self.weights.trainable)),
        tuple(tf.nest.flatten(gradients)))
    for v, u in zip(self.variables, updated):
      v.assign(u)
    num_examples += tf.cast(output.num_examples, tf.int64)
    return tag, num_examples, opt_state, acc


def as_tensor(elements: tf.data.Dataset):
  """A cohort's per-member dataset (its tags, its attack inputs) as one
  batch, whatever its length: every cohort has a member, and a round with
  more than the capacity fails on the capacity's own check."""
  return elements.batch(2**31 - 1).get_single_element()


def member_position(slots, tag) -> tf.Tensor:
  """int32: the position in a cohort's `slots` (its members' tags, in
  member order) of the member tagged `tag`."""
  return tf.argmax(tf.cast(tf.equal(slots, tag), tf.int32),
                   output_type=tf.int32)


def pack(datasets: Sequence[tf.data.Dataset], runs: Sequence[range],
         attacks: Optional[Sequence[tuple[bool, Sequence[int]]]] = None
         ) -> list[collections.OrderedDict]:
  """The round's client `datasets` as one `cohort_data` per run of
  positions (`split_cohorts`), with each member's attack input when given
  (`attacks`: one (malicious, seed) per client of the round)."""
  return [cohort_data(
      datasets[run.start:run.stop], run,
      None if attacks is None else attacks[run.start:run.stop])
          for run in runs]


def with_silent_rows(table, count, members, finalizers, unfinalized,
                     capacity: int) -> tf.Tensor:
  """The per-client metrics `table` of a cohort whose first `count` rows
  are its trained members', with a row for each of the other `members` -
  `count` (no batches): the zero metrics of a model that saw nothing, as a
  TFF client with an empty dataset reports."""
  silent = members - count
  zero_row = client_metrics.row(
      finalizers, tf.nest.map_structure(tf.zeros_like, unfinalized))
  with tf.control_dependencies([tf.debugging.assert_less_equal(
      members, capacity,
      message=f'more clients in a round than the capacity {capacity}')]):
    rows = count + tf.range(silent)
  return tf.tensor_scatter_nd_update(
      table, rows[:, tf.newaxis], tf.tile(zero_row[tf.newaxis], [silent, 1]))


def sent_update(update_fn, attacks, delta, position):
  """What the member at `position` of a cohort sends: `delta` (a list of
  tensors), through the update attack `update_fn` (None: none) with the
  member's row of `attacks` (<malicious=bool[m], seed=int64[m, 2]>)."""
  if update_fn is None:
    return delta
  return list(update_fn(
      delta, tf.nest.map_structure(lambda t: t[position], attacks)))


def empty_rows(members, variables) -> dict:
  """Rows mode's part of a trainer's reduce state for `members` members of
  a model with trainable `variables`: each member's flat update and flag at
  its position (one tensor a row: an [m, d] tensor would be copied whole at
  every write), and which positions are written."""
  width = sum(int(v.shape.num_elements()) for v in variables)
  return dict(
      updates=tf.TensorArray(tf.float32, size=members, element_shape=[width]),
      entered=tf.TensorArray(tf.int32, size=members, element_shape=[]),
      written=tf.zeros([members], tf.bool))


def write_row(acc, position, sent) -> dict:
  """The rows-mode fields of `acc` with the member at `position` sending
  `sent` (the collecting rules' own row, `collection.client_row`)."""
  row = collection.client_row(sent)
  return dict(
      updates=acc['updates'].write(position, row['update']),
      entered=acc['entered'].write(position, row['entered']),
      written=tf.tensor_scatter_nd_update(acc['written'], [[position]],
                                          [True]))


def member_rows(acc, update_fn, attacks, variables):
  """<updates=float32[?, d], entered=int32[m]> of a cohort from rows
  mode's state. A member that never trained (no batches) sends what a TFF
  client with an empty dataset sends: a zero update, through the attack
  where it is malicious (Gaussian noise then enters the rule); without an
  attack its unwritten row is zero, flag 0."""
  updates, entered = acc['updates'], acc['entered']
  if update_fn is not None:
    zeros = [tf.zeros_like(v) for v in variables]

    def body(j, updates, entered):
      def write():
        row = collection.client_row(sent_update(update_fn, attacks, zeros, j))
        return updates.write(j, row['update']), entered.write(
            j, row['entered'])
      updates, entered = tf.cond(acc['written'][j],
                                 lambda: (updates, entered), write)
      return j + 1, updates, entered

    _, updates, entered = tf.while_loop(
        lambda j, *_: j < tf.size(acc['written']), body,
        (tf.constant(0), updates, entered))
  entered = entered.stack()
  return collections.OrderedDict(
      updates=tf.boolean_mask(updates.stack(), entered > 0), entered=entered)


def _reset(model) -> tf.Tensor:
  model.reset_metrics()
  return tf.constant(False)


def member_metrics_after(model, finite, delta):
  """A member's unfinalized metrics, read once its `delta` is: reset first
  when its update is not `finite`, as TFF's client work reports no metrics
  for a diverged client (inside a `tf.function`)."""
  with tf.control_dependencies(delta):
    reset = tf.cond(finite, lambda: tf.constant(True), lambda: _reset(model))
  with tf.control_dependencies([reset]):
    return model.report_local_unfinalized_metrics()


def measurement_sums(finalizers, unfinalized_specs, capacity: int,
                     scalars: Sequence[str], report_scalars):
  """TFF computations (zero, merge, report) over the cohorts' measurement
  sums S = <metrics=U, table=float32[capacity, 3], count=int32, one float32
  per name of `scalars`>: the metrics and scalars summed, the per-client
  rows concatenated;

      report: (S -> <train=<F..., per_client=<table, count>>, X...>)

  with X... = `report_scalars(S)`, an OrderedDict of measurements."""
  sums_type = tff.types.tensorflow_to_type(collections.OrderedDict(
      metrics=unfinalized_specs,
      table=tf.TensorSpec([capacity, 3], tf.float32),
      count=tf.TensorSpec([], tf.int32),
      **{name: tf.TensorSpec([], tf.float32) for name in scalars}))

  @tff.tensorflow.computation
  def zero():
    return collections.OrderedDict(
        metrics=tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype),
                                      unfinalized_specs),
        table=tf.zeros([capacity, 3]), count=tf.constant(0, tf.int32),
        **{name: tf.constant(0.0) for name in scalars})

  @tff.tensorflow.computation(sums_type, sums_type)
  def merge(a, b):
    table = client_metrics.concat_tables(a['table'], a['count'], b['table'],
                                         b['count'], capacity)
    return collections.OrderedDict(
        metrics=tf.nest.map_structure(tf.add, a['metrics'], b['metrics']),
        table=table, count=a['count'] + b['count'],
        **{name: a[name] + b[name] for name in scalars})

  @tff.tensorflow.computation(sums_type)
  def report(acc):
    finalized = collections.OrderedDict(
        client_metrics.finalize(finalizers, acc['metrics']))
    finalized[client_metrics.KEY] = collections.OrderedDict(
        table=acc['table'], count=acc['count'])
    return collections.OrderedDict(train=finalized, **report_scalars(acc))

  return zero, merge, report


def model_types(model_fn: ModelFn):
  """(finalizers, M, B, the unfinalized metrics' specs) of the model
  `model_fn` builds, read from one built in a throwaway graph."""
  with tf.Graph().as_default():
    model = model_fn()
    return (model.metric_finalizers(),
            tff.learning.models.weights_type_from_model(model),
            tff.types.tensorflow_to_type(model.input_spec),
            tf.nest.map_structure(
                lambda t: tf.TensorSpec.from_tensor(tf.convert_to_tensor(t)),
                model.report_local_unfinalized_metrics()))


def data_type(batch_type, attacks: bool = False) -> tff.Type:
  """One cohort's client data, `cohort_data`'s type:
  <batches=<B, int32>*, members=int32*[, attacks=<malicious=bool,
  seed=int64[2]>*]>."""
  fields = [
      ('batches', tff.SequenceType(tff.StructWithPythonType(
          [batch_type, tff.TensorType(np.int32)], tuple))),
      ('members', tff.SequenceType(tff.TensorType(np.int32))),
  ]
  if attacks:
    fields.append((ATTACKS, tff.SequenceType(tff.StructWithPythonType(
        [('malicious', tff.TensorType(np.bool_)),
         ('seed', tff.TensorType(np.int64, [2]))], collections.OrderedDict))))
  return tff.StructWithPythonType(fields, collections.OrderedDict)


def build_cohort_client_work(
    model_fn: ModelFn,
    optimizer: tff.learning.optimizers.Optimizer,
    *,
    weighted: bool,
    capacity: int,
    rows: bool = False,
    update_fn=None,
) -> tff.learning.templates.ClientWorkProcess:
  """The cohort client work (module docstring): state, hyperparameters and
  training step as TFF's `build_model_delta_client_work(model_fn, optimizer,
  NUM_EXAMPLES or UNIFORM)`, one TFF client a cohort of at most `capacity`
  members.

  `rows`: a cohort sends its members' updates, not their mean, for a rule
  that needs each (`aggregators.collection.CollectingFactory.
  create_for_tables`): update = <updates=float32[?, d], entered=int32[?]>,
  the entered members' flat updates and every member's flag in member
  order (`collection.client_row`'s rule); its measurements then carry no
  excluded count (the rule's report counts them). `update_fn`: an update
  attack (`attacks.client_work.update_attack`) on the malicious members'
  updates; the cohort data then carries each member's attack input
  (`cohort_data(..., attacks)`).
  """
  if update_fn is not None and not rows:
    raise ValueError('an update attack in cohorts needs rows mode (the'
                     ' plain mean under an attack trains per client)')
  finalizers, weights_type, batch_type, unfinalized_specs = model_types(
      model_fn)
  cohort_type = data_type(batch_type, attacks=update_fn is not None)
  hparams = optimizer.get_hparams(
      optimizer.initialize(tf.TensorSpec([], tf.float32)))

  @tff.federated_computation
  def init_fn():
    return tff.federated_value(hparams, tff.SERVER)

  state_type = init_fn.type_signature.result.member

  @tff.tensorflow.computation(state_type, weights_type, cohort_type)
  def cohort_update(state, initial_weights, data):
    trainer = _CohortTrainer(model_fn, weighted, capacity, rows=rows,
                             update_fn=update_fn)
    return tf.function(trainer.run)(
        optimizer, initial_weights, data['batches'], data['members'], state,
        data[ATTACKS] if update_fn is not None else None)

  # In rows mode the rule's report counts the excluded members.
  scalars = () if rows else ('excluded',)
  zero, merge, report = measurement_sums(
      finalizers, unfinalized_specs, capacity, scalars,
      lambda acc: collections.OrderedDict(
          (EXCLUDED, acc[name]) for name in scalars))

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.FederatedType(weights_type, tff.CLIENTS),
      tff.FederatedType(cohort_type, tff.CLIENTS))
  def next_fn(state, weights, data):
    result, outputs = tff.federated_map(
        cohort_update, (tff.federated_broadcast(state), weights, data))
    measurements = tff.federated_aggregate(outputs, zero(), merge, merge,
                                           report)
    return tff.templates.MeasuredProcessOutput(state, result, measurements)

  @tff.tensorflow.computation(state_type)
  def get_hparams(state):
    return state

  @tff.tensorflow.computation(state_type, state_type)
  def set_hparams(state, new):
    del state
    return new

  return tff.learning.templates.ClientWorkProcess(
      init_fn, next_fn, get_hparams_fn=get_hparams, set_hparams_fn=set_hparams)
