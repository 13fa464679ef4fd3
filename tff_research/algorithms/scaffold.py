"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning"), option II, in TFF's federated core.

Each client i keeps a control variate c_i (one tensor per trainable variable,
zero until the client first takes part); the server keeps the global model x
and its control variate c = (1/N) sum_i c_i over all N training clients. In a
round with sampled clients S every client i in S:

    y <- x;  K steps of  y <- y - eta_l * (g_i(y) - c_i + c)
    c_i+ = c_i - c + (x - y) / (K * eta_l)          (option II)
    returns  (Delta y_i, Delta c_i) = (y - x, c_i+ - c_i)  and keeps c_i+

and the server applies

    x <- x + eta_g * mean_S(Delta y_i)
    c <- c + (|S| / N) * mean_S(Delta c_i)  =  c + (1/N) sum_S Delta c_i.

K is the number of local batches the client actually took this round
(epochs * ceil(n_i / batch size) with the project's pipeline), so clients of
different sizes each use their own K, as in the paper's per-client step count.
A client with no batches (K = 0) or a non-finite update leaves x, c and its
c_i unchanged (its weight is zero, as in TFF's FedAvg). Local steps are plain
SGD: the option-II estimate (x - y) / (K eta_l) is the mean corrected gradient
only for SGD, so other client optimizers are rejected.

`mean_S(Delta y_i)` goes through the run's model aggregator (TFF's
`MeanFactory` by default; in the pipeline `AlgorithmConfig.
model_aggregator()`, the configured robust rule) with weight n_i
(`weighted=True`, like the project's FedAvg) or 1 (`weighted=False`, the
paper's uniform mean; a rule that takes no weight, such as the median,
needs it). The robust rule applies to the model delta only. The control
variates are always summed exactly and divided by N: that keeps c equal to
the uniform mean of every c_i, which is what the correction g_i - c_i + c
relies on (so a data attacker's c_i does enter c). An update attack
(`attacks.client_work.with_update_attack`) changes a malicious client's
Delta y only: its Delta c_i and c_i+ are honest, what it keeps.

Composition. A round is built from the four parts of TFF's learning
templates: a distributor (TFF's `build_broadcast_process`, sending <x, c>),
a `tff.learning.templates.ClientWorkProcess` (the local steps above), a
`tff.templates.AggregationProcess` (the model aggregator on Delta y_i, the
exact sum of Delta c_i, and the clients' c_i+ gathered into a table) and a
`tff.learning.templates.FinalizerProcess` (the server update). They are
composed here rather than by `tff.learning.templates.
compose_learning_process` because c flows from the finalizer back to the
clients, and a `LearningProcess.next` takes (server state, client data)
only: it has no argument for the clients' own c_i and no result for c_i+.
Types, for the model's weights M, trainable weights T (the control variates'
type), batch B, the model aggregator's state A and measurements Ma:

    P = <global_model_weights=M, control_variate=T>   what the server sends
    C = <control=T, slot=int32>        a client's c_i and its index k in the
                                       round (0 <= k < K)
    U = <delta=T, control_delta=T, control=T, slot=int32>   a client's result
    T_K = T with a leading dimension [K]: row k is c_k+ of the client in slot k
    R = <controls=T_K, positions=int32[K]>   the clients' rows, and the slot
                                       of the client at each position of
                                       the round's aggregations

    initialize: ( -> <global_model_weights=M, control_variate=T,
                      model_aggregator=A>@SERVER)
    next: (<server_state=S@SERVER, client_states={C}@CLIENTS,
            client_data={B*}@CLIENTS>
           -> <S@SERVER, R@SERVER, <train=Mt, scaffold=<control_norm,
               update_norm, mean_correction_norm>, model_aggregator=Ma>@SERVER>)

Every result is SERVER-placed and the round has one aggregation level, so
`tff.backends.native.compile_to_mergeable_comp_form` splits it across remote
workers (`execution/remote.py`). The clients' c_i+ come back through one
`tff.federated_aggregate` whose accumulator is the table of rows and whose
merge concatenates (`aggregators.collection.federated_stack`), as the
per-client metrics and the robust rules' updates do. A CLIENTS-placed c_i+
would also compile, but the compiled form recomputes it after the merge,
training every client a second time. The rows arrive in position order,
which `execution.remote` keeps equal to the clients' order when a round is
split; each row also carries its slot and the table is put in slot order at
the server, so the rows cannot land on the wrong clients whatever order the
partial tables are merged in, and the arrival order (`positions`) is the
order of a robust rule's per-position `kept_share`, so the attack metrics
name the right clients in either case.

Cohorts. With the plain mean as the model aggregator (the pipeline's
excluding mean, no robust rule, no attack), or a rule that collects every
update (then in `scaffold_cohorts`' rows mode, below), the round's clients
train in cohorts, as FedAvg's do: one TFF client a cohort of contiguous clients
(`cohort_client_work.split_cohorts`, one per TFF worker), its data the
members' batches tagged with their slots and its client state the members'
c_i as one table of flat rows, C_c = float32[?, d] (d parameters); one call
trains the members in turn exactly as the per-client work trains each
(`scaffold_cohorts`: the same steps and option-II update, shared) and
returns the sums of w_i Delta y_i, w_i and Delta c_i, and the members' c_i+
as one table. The aggregator (`build_cohort_aggregator`) divides the sums
and concatenates the tables by one aggregation (`aggregators.collection.
federated_concat`: one append per cohort, not per client), so the round
keeps one aggregation level with every result SERVER-placed, mergeable as
above; the distributor and finalizer are the same. Its rows come back as

    R_c = <controls=float32[K, d], positions=int32[K]>

in the order they came, row p the client of slot positions[p]; `Scaffold`
checks the slots are 0..K-1 once each and writes each row to its client,
so no model-sized table is sorted or split in the round. With a collecting
rule the cohorts send their members' Delta y as tables (U_r), and
`mean_delta` and the measurements are the rule's over them
(`CollectingFactory.create_for_tables`). Why: per client,
a round of K clients of the EMNIST CNN allocates K^2 / 2 model-sized rows
through the appends and holds ~100 MB a TFF client until the call ends
(12 GB at 50 clients). A cohort's aggregator keeps no state (the excluding
mean's state has no leaves either, so checkpoints keep their leaves).

The server state broadcast to clients is <x, c>: SCAFFOLD sends twice the
model each way (x and c down, Delta y and Delta c up), which
`Scaffold.bytes_per_client` reports to the loop's communication metrics.

In simulation the clients' c_i are kept by `Scaffold` (the
`base.FederatedAlgorithm` the training loop drives) in a
`client_state.ClientStateTable`: rows on disk beside the run's checkpoints,
one per training client (position k = the k-th client id given at
construction), read and written only for the round's clients. The state
holds the table's index (int64 [N]) and a [N] count of participations, so a
checkpoint costs the server state plus 16 bytes a client, and a round
touches only its clients' rows, whatever N (3,400 EMNIST writers with the
CNN: 16 GB of c_i on disk, a few hundred kB of state).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
# Private TFF, because TFF exports no equivalent: `factory_utils` turns an
# unweighted factory (a robust rule) into the weighted form the model
# delta's aggregation takes, exactly as TFF's unweighted FedAvg does.
from tensorflow_federated.python.aggregators import factory_utils

from tff_research.aggregators import collection
from tff_research.aggregators import excluding_mean
from tff_research.algorithms import base
from tff_research.algorithms import client_metrics
from tff_research.algorithms import client_state
from tff_research.algorithms import cohort_client_work
from tff_research.algorithms import hyperparameters as hp
from tff_research.algorithms import scaffold_cohorts
from tff_research.algorithms import spec
from tff_research.attacks import client_work as attack_client_work
from tff_research.attacks import metrics as attack_metrics

ModelFn = Callable[[], tff.learning.models.VariableModel]


_global_norm = scaffold_cohorts.global_norm


def _weighted_process(factory, value_type):
  """`factory`'s weighted process for `value_type` (TFF's `MeanFactory` by
  default). An unweighted factory (a robust rule that collects the updates)
  ignores the weight, as TFF's `build_unweighted_fed_avg` does: a client
  with no steps or a non-finite update sends a zero delta, which its rule
  excludes."""
  if factory is None:
    factory = tff.aggregators.MeanFactory()
  if not isinstance(factory, tff.aggregators.WeightedAggregationFactory):
    factory = factory_utils.as_weighted_aggregator(factory)
  return factory.create(value_type, tff.TensorType(np.float32))


def _server_type(weights_type):
  """P = <global_model_weights=M, control_variate=T>."""
  return tff.to_type(collections.OrderedDict(
      global_model_weights=weights_type,
      control_variate=weights_type.trainable))


def _client_state_type(control_type):
  """C = <control=T, slot=int32>."""
  return tff.to_type(collections.OrderedDict(
      control=control_type, slot=tff.TensorType(np.int32)))


def _stateless_part(first_type, second_type, step):
  """(initialize, next) of a template part that keeps no state:

      initialize: ( -> <>@SERVER)
      next: (<<>@SERVER, first_type, second_type>
             -> <state=<>@SERVER, result=R, measurements=Me>)

  where `step(first, second)` returns (R, Me) while tracing `next`."""

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(init_fn.type_signature.result, first_type,
                             second_type)
  def next_fn(state, first, second):
    result, measurements = step(first, second)
    return tff.templates.MeasuredProcessOutput(
        state=state, result=result, measurements=measurements)

  return init_fn, next_fn


def _local_steps(model, weights, correction, dataset, eta_l: float):
  """K steps  y <- y - eta_l (g_i(y) + c - c_i)  over `dataset`, K its
  batches; (K, examples) as int64 (inside a `tf.function`)."""

  def step(counts, batch):
    batch_examples = scaffold_cohorts.corrected_step(
        model, weights.trainable, correction, batch, eta_l)
    num_batches, num_examples = counts
    return (num_batches + 1,
            num_examples + tf.cast(batch_examples, tf.int64))

  # dataset.reduce, as TFF's own client work (loop_builder's
  # DATASET_REDUCE): measured here 2.5x faster in TFF's C++ runtime than
  # an autograph `for batch in dataset` loop (MLP, 10 clients x 90
  # steps: 5.3 s -> 2.1 s per round; FedAvg 1.8 s).
  return dataset.reduce(
      (tf.constant(0, tf.int64), tf.constant(0, tf.int64)), step)


def _train_client(model, server, client, dataset, eta_l: float,
                  weighted: bool):
  """One client's round (option II), inside a `tf.function`:
  (P, C, B*) -> (ClientResult(U, weight), <model_output, correction_norm>)."""
  initial = server['global_model_weights']
  control = server['control_variate']
  weights = tff.learning.models.ModelWeights.from_model(model)
  tf.nest.map_structure(lambda v, t: v.assign(t), weights, initial)
  # c - c_i is fixed during the round: the drift correction.
  correction = tf.nest.map_structure(tf.subtract, control, client['control'])
  num_batches, num_examples = _local_steps(model, weights, correction,
                                           dataset, eta_l)
  delta = [v - x for v, x in zip(weights.trainable, initial.trainable)]
  delta, control_delta, weight, finite = scaffold_cohorts.option_two(
      delta, control, num_batches, num_examples, eta_l, weighted)
  if tf.logical_not(finite):
    model.reset_metrics()
  update = collections.OrderedDict(
      delta=delta, control_delta=control_delta,
      control=[c + d for c, d in zip(client['control'], control_delta)],
      slot=client['slot'])
  return (tff.learning.templates.ClientResult(update=update,
                                              update_weight=weight),
          collections.OrderedDict(
              model_output=model.report_local_unfinalized_metrics(),
              correction_norm=_global_norm(correction)))


def build_client_work(
    model_fn: ModelFn, weights_type, data_type, metrics_aggregator, *,
    client_learning_rate: float, weighted: bool,
) -> tff.learning.templates.ClientWorkProcess:
  """SCAFFOLD's client work (Karimireddy et al. 2020, Algorithm 1: the
  local steps and the option-II control update), stateless:

      initialize: ( -> <>@SERVER)
      next: (<<>@SERVER, {<server=P, client=C>}@CLIENTS, {B*}@CLIENTS>
             -> <state=<>@SERVER,
                 result={ClientResult(update=U, update_weight=float32)}
                        @CLIENTS,
                 measurements=<train=Mt, mean_correction_norm=float32>
                              @SERVER>)

  The weight is n_i (`weighted`) or 1, and 0 for a client without steps or
  with a non-finite update. `metrics_aggregator` aggregates the model's
  unfinalized metrics into Mt.
  """
  eta_l = float(client_learning_rate)
  start_type = tff.to_type(collections.OrderedDict(
      server=_server_type(weights_type),
      client=_client_state_type(weights_type.trainable)))

  @tff.tensorflow.computation(start_type, data_type)
  def client_update(start, dataset):
    model = model_fn()

    @tf.function
    def train(server, client, dataset):
      return _train_client(model, server, client, dataset, eta_l, weighted)

    return train(start['server'], start['client'], dataset)

  def train_clients(start, client_data):
    result, diagnostics = tff.federated_map(client_update,
                                            (start, client_data))
    return result, tff.federated_zip(collections.OrderedDict(
        train=metrics_aggregator(diagnostics.model_output),
        mean_correction_norm=tff.federated_mean(diagnostics.correction_norm)))

  return tff.learning.templates.ClientWorkProcess(*_stateless_part(
      tff.FederatedType(start_type, tff.CLIENTS),
      tff.FederatedType(data_type, tff.CLIENTS), train_clients))


def build_aggregator(
    model_aggregator: Optional[tff.aggregators.AggregationFactory],
    control_type,
) -> tff.templates.AggregationProcess:
  """The server's side of the clients' results (Karimireddy et al. 2020,
  Algorithm 1: the averages of Delta y_i and Delta c_i):

      initialize: ( -> A@SERVER), the model aggregator's state
      next: (<A@SERVER, {U}@CLIENTS, {float32}@CLIENTS>
             -> <state=A@SERVER,
                 result=<mean_delta=T, control_delta_sum=T,
                         clients=<controls=T_K, positions=int32[K]>>@SERVER,
                 measurements=Ma@SERVER>)

  `mean_delta` is `model_aggregator` (weighted, or an unweighted robust
  rule; TFF's `MeanFactory()` by default) on Delta y_i; `control_delta_sum`
  the exact sum of Delta c_i, since c must stay the mean of every c_i;
  `controls` every client's c_i+, row k the client of slot k; `positions`
  the slot of the client at each position of the round's concatenating
  aggregations, which is how a rule's per-position measurements
  (`kept_share`) name their clients when the round is split across workers.
  """
  model_process = _weighted_process(model_aggregator, control_type)
  update_type = tff.to_type(collections.OrderedDict(
      delta=control_type, control_delta=control_type, control=control_type,
      slot=tff.TensorType(np.int32)))

  @tff.tensorflow.computation(update_type)
  def table_row(update):
    return collections.OrderedDict(control=update['control'],
                                   slot=update['slot'])

  @tff.federated_computation(
      model_process.state_type, tff.FederatedType(update_type, tff.CLIENTS),
      tff.FederatedType(tff.TensorType(np.float32), tff.CLIENTS))
  def next_fn(state, update, weight):
    model = model_process.next(state, update.delta, weight)
    stacked = collection.federated_stack(tff.federated_map(table_row,
                                                           update))
    in_slot_order = _in_slot_order(stacked.type_signature.member)
    result = tff.federated_zip(collections.OrderedDict(
        mean_delta=model.result,
        control_delta_sum=tff.federated_sum(update.control_delta),
        clients=tff.federated_map(in_slot_order, stacked)))
    return tff.templates.MeasuredProcessOutput(
        state=model.state, result=result, measurements=model.measurements)

  return tff.templates.AggregationProcess(model_process.initialize, next_fn)


def _in_slot_order(stacked_type):
  """(<control=T_?, slot=int32[?]> -> <controls=T_K, positions=int32[K]>):
  the rows sorted by slot, which must be 0..K-1 once each, and the slots in
  the order the rows came."""

  @tff.tensorflow.computation(stacked_type)
  def in_slot_order(stacked):
    order = tf.argsort(stacked['slot'])
    check = tf.debugging.assert_equal(
        tf.gather(stacked['slot'], order), tf.range(tf.size(order)),
        message='SCAFFOLD client slots are not 0..K-1, once each')
    with tf.control_dependencies([check]):
      return collections.OrderedDict(
          controls=[tf.gather(rows, order) for rows in stacked['control']],
          positions=tf.identity(stacked['slot']))

  return in_slot_order


def build_cohort_aggregator(control_type, rule=None
                            ) -> tff.templates.AggregationProcess:
  """The server's side of the cohorts' results (Karimireddy et al. 2020,
  Algorithm 1: the averages of Delta y_i and Delta c_i), when the model
  aggregator is the plain mean (U_c: `scaffold_cohorts`):

      initialize: ( -> <>@SERVER)
      next: (<<>@SERVER, {U_c}@CLIENTS, {float32}@CLIENTS>
             -> <state=<>@SERVER,
                 result=<mean_delta=T, control_delta_sum=T,
                         clients=R_c>@SERVER,
                 measurements=<excluded_clients=float32>@SERVER>)

  with R_c = <controls=float32[K, d], positions=int32[K]>. `mean_delta` =
  the sum of the cohorts' sums of w_i Delta y_i / the sum of their weights
  (0 when every client was left out), the pipeline's excluding mean over
  the cohorts' members; `control_delta_sum` the exact sum of Delta c_i;
  `clients` the cohorts' c_i+ tables of flat rows concatenated by one
  aggregation (one append per cohort), row p the client of slot
  `positions[p]`. They stay in the order they came: `Scaffold` writes each
  row to the client of its slot, so no model-sized table is sorted here.

  With `rule` (a `collection.CollectingFactory`) the cohorts send U_r, and
  `mean_delta` and the measurements are the rule's over their tables of
  Delta y (`create_for_tables`).
  """
  cohort_type = scaffold_cohorts.update_type(control_type,
                                            rows=rule is not None)

  @tff.tensorflow.computation(control_type, tff.TensorType(np.float32))
  def mean(delta_sum, weight):
    return [tf.math.divide_no_nan(d, weight) for d in delta_sum]

  def model_part(update, weight):
    """(mean_delta, measurements) of the round's Delta y."""
    if rule is not None:
      model_process = rule.create_for_tables(control_type)
      model = model_process.next(model_process.initialize(), update.rows,
                                 weight)
      return model.result, model.measurements
    return (tff.federated_map(mean, (
        tff.federated_sum(update.weighted_delta_sum),
        tff.federated_sum(weight))), tff.federated_zip(collections.OrderedDict(
            [(excluding_mean.MEASUREMENT,
              tff.federated_sum(update.excluded))])))

  @tff.federated_computation
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.FederatedType(cohort_type, tff.CLIENTS),
      tff.FederatedType(tff.TensorType(np.float32), tff.CLIENTS))
  def next_fn(state, update, weight):
    mean_delta, measurements = model_part(update, weight)
    result = tff.federated_zip(collections.OrderedDict(
        mean_delta=mean_delta,
        control_delta_sum=tff.federated_sum(update.control_delta_sum),
        # Selected, not mapped: a TF call would copy the tables once more.
        clients=collection.federated_concat(tff.federated_zip(
            collections.OrderedDict(controls=update.controls,
                                    positions=update.slots)))))
    return tff.templates.MeasuredProcessOutput(
        state=state, result=result, measurements=measurements)

  return tff.templates.AggregationProcess(init_fn, next_fn)


def build_finalizer(
    weights_type, *, server_learning_rate: float, num_clients: int,
) -> tff.learning.templates.FinalizerProcess:
  """The server update (Karimireddy et al. 2020, Algorithm 1: x and c
  moved by the averages), stateless:

      x <- x + eta_g mean_delta;   c <- c + control_delta_sum / N

      initialize: ( -> <>@SERVER)
      next: (<<>@SERVER, P@SERVER,
              <mean_delta=T, control_delta_sum=T>@SERVER>
             -> <state=<>@SERVER, result=P@SERVER,
                 measurements=<control_norm=float32, update_norm=float32>
                              @SERVER>)
  """
  eta_g = float(server_learning_rate)
  server_type = _server_type(weights_type)
  control_type = weights_type.trainable
  update_type = tff.to_type(collections.OrderedDict(
      mean_delta=control_type, control_delta_sum=control_type))

  @tff.tensorflow.computation(server_type, update_type)
  def server_update(server, aggregated):
    weights = server['global_model_weights']
    update = [eta_g * d for d in aggregated['mean_delta']]
    new_control = [c + s / float(num_clients) for c, s in zip(
        server['control_variate'], aggregated['control_delta_sum'])]
    return (
        collections.OrderedDict(
            global_model_weights=tff.learning.models.ModelWeights(
                trainable=[x + u for x, u in zip(weights.trainable, update)],
                non_trainable=weights.non_trainable),
            control_variate=new_control),
        collections.OrderedDict(control_norm=_global_norm(new_control),
                                update_norm=_global_norm(update)))

  return tff.learning.templates.FinalizerProcess(*_stateless_part(
      tff.FederatedType(server_type, tff.SERVER),
      tff.FederatedType(update_type, tff.SERVER),
      lambda server, aggregated: tff.federated_map(server_update,
                                                   (server, aggregated))))


def _check_stateless(*processes) -> None:
  for process in processes:
    if not process.state_type.member.is_equivalent_to(tff.StructType([])):
      raise TypeError(
          f'{type(process).__name__} keeps state ({process.state_type}):'
          " SCAFFOLD's state holds only the model aggregator's")


def compose_scaffold(
    initial_server_fn: tff.Computation,
    distributor: tff.learning.templates.DistributionProcess,
    client_work: tff.learning.templates.ClientWorkProcess,
    aggregator: tff.templates.AggregationProcess,
    finalizer: tff.learning.templates.FinalizerProcess,
) -> tff.templates.IterativeProcess:
  """The four parts as one round, the way
  `tff.learning.templates.compose_learning_process` composes a learning
  process, with the clients' own state C as an argument of `next` and
  their new c_i+ (R) as a result (types: the module docstring).

  `initial_server_fn` is a TF computation returning P (x and c at round 0).
  The distributor, client work and finalizer are stateless, so the state
  keeps the layout of every SCAFFOLD checkpoint: P and the aggregator's
  state.
  """
  _check_stateless(distributor, client_work, finalizer)

  @tff.federated_computation
  def initialize():
    server = tff.federated_eval(initial_server_fn, tff.SERVER)
    return tff.federated_zip(collections.OrderedDict(
        global_model_weights=server.global_model_weights,
        control_variate=server.control_variate,
        model_aggregator=aggregator.initialize()))

  start_type = client_work.next.type_signature.parameter[1].member

  @tff.federated_computation(
      initialize.type_signature.result,
      tff.FederatedType(start_type.client, tff.CLIENTS),
      client_work.next.type_signature.parameter[2])
  def next_fn(server_state, client_states, client_data):
    server = tff.federated_zip(collections.OrderedDict(
        global_model_weights=server_state.global_model_weights,
        control_variate=server_state.control_variate))
    sent = distributor.next(distributor.initialize(), server)
    work = client_work.next(
        client_work.initialize(),
        tff.federated_zip(collections.OrderedDict(
            server=sent.result, client=client_states)),
        client_data)
    aggregated = aggregator.next(server_state.model_aggregator,
                                 work.result.update, work.result.update_weight)
    final = finalizer.next(finalizer.initialize(), server, tff.federated_zip(
        collections.OrderedDict(
            mean_delta=aggregated.result.mean_delta,
            control_delta_sum=aggregated.result.control_delta_sum)))
    new_state = tff.federated_zip(collections.OrderedDict(
        global_model_weights=final.result.global_model_weights,
        control_variate=final.result.control_variate,
        model_aggregator=aggregated.state))
    metrics = tff.federated_zip(collections.OrderedDict(
        train=work.measurements.train,
        scaffold=tff.federated_zip(collections.OrderedDict(
            control_norm=final.measurements.control_norm,
            update_norm=final.measurements.update_norm,
            mean_correction_norm=work.measurements.mean_correction_norm)),
        model_aggregator=aggregated.measurements))
    return new_state, aggregated.result.clients, metrics

  return tff.templates.IterativeProcess(initialize, next_fn)


def _attacked(client_work, update_fn: Optional[attack_client_work.UpdateFn],
              capacity: int):
  """`client_work` whose malicious clients' Delta y passes through
  `update_fn` (`with_update_attack`; U: the module docstring), or
  `client_work` itself without one."""
  if update_fn is None:
    return client_work

  def on_delta(update, attack):
    fields = collections.OrderedDict(
        update if isinstance(update, Mapping)
        else tff.structure.to_odict(update))
    fields['delta'] = update_fn(fields['delta'], attack)
    return fields

  return attack_client_work.with_update_attack(client_work, on_delta,
                                               capacity=capacity)


def _model_types(model_fn: ModelFn, num_clients: int):
  """(M, the client data type B*, the per-client metrics aggregator), read
  from a model built in a throwaway graph."""
  with tf.Graph().as_default():
    model = model_fn()
    weights_type = tff.learning.models.weights_type_from_model(model)
    batch_type = tff.types.tensorflow_to_type(model.input_spec)
    metrics_aggregator = client_metrics.per_client_then_finalize(
        num_clients)(model.metric_finalizers())
  return weights_type, tff.SequenceType(batch_type), metrics_aggregator


def _check_arguments(num_clients, client_learning_rate, server_learning_rate,
                     unsound_cohorts: bool) -> None:
  if unsound_cohorts:
    raise ValueError('SCAFFOLD in cohorts takes the plain mean or a'
                     ' collecting rule (median, trimmed mean, Krum), and an'
                     ' update attack only with the rule')
  if num_clients < 1:
    raise ValueError(f'num_clients={num_clients} is not valid: must be >= 1')
  for name, value in (('client_learning_rate', client_learning_rate),
                      ('server_learning_rate', server_learning_rate)):
    if not value > 0:
      raise ValueError(f'{name}={value} is not valid: must be > 0')


def build_scaffold_process(
    model_fn: ModelFn,
    *,
    num_clients: int,
    client_learning_rate: float,
    server_learning_rate: float = 1.0,
    weighted: bool = True,
    model_aggregator: Optional[tff.aggregators.AggregationFactory] = None,
    in_cohorts: bool = False,
    update_fn: Optional[attack_client_work.UpdateFn] = None,
) -> tff.templates.IterativeProcess:
  """SCAFFOLD (Karimireddy et al. 2020) as an `IterativeProcess`, composed
  of a distributor, client work, aggregator and finalizer
  (`compose_scaffold`; types in the module docstring):

      initialize: ( -> S@SERVER)
      next: (<S@SERVER, {C}@CLIENTS, {B*}@CLIENTS>
             -> <S@SERVER, R@SERVER, metrics@SERVER>)

  or, `in_cohorts`, one TFF client a cohort of clients (C_c, D_c:
  `scaffold_cohorts`):

      next: (<S@SERVER, {C_c}@CLIENTS, {D_c}@CLIENTS>
             -> <S@SERVER, R@SERVER, metrics@SERVER>)

  Args:
    model_fn: builds a fresh `tff.learning.models.VariableModel` (a wrapped
      Keras model or a custom one) on every call.
    num_clients: N, the number of training clients (c = mean of N c_i).
    client_learning_rate: eta_l of the local SGD steps.
    server_learning_rate: eta_g applied to the averaged model delta.
    weighted: weight model deltas by the client's number of examples (True)
      or uniformly (False, as in the paper).
    model_aggregator: aggregation of the model deltas (weighted, or an
      unweighted robust rule); TFF's `MeanFactory()` by default.
    in_cohorts: train the round's clients in cohorts
      (`scaffold_cohorts.build_cohort_client_work`), their deltas averaged
      by the excluding mean or, given, the collecting rule
      `model_aggregator` (`build_cohort_aggregator`).
    update_fn: an update attack on the malicious clients' Delta y_i
      (`_attacked` per client; per member in cohorts with a rule).
  """
  rule = (model_aggregator if isinstance(
      model_aggregator, collection.CollectingFactory) else None)
  _check_arguments(num_clients, client_learning_rate, server_learning_rate,
                   in_cohorts and rule is None and (
                       model_aggregator is not None or update_fn is not None))
  weights_type, data_type, metrics_aggregator = _model_types(model_fn,
                                                             num_clients)

  @tff.tensorflow.computation
  def initial_server():
    weights = tff.learning.models.ModelWeights.from_model(model_fn())
    return collections.OrderedDict(
        global_model_weights=weights,
        control_variate=[tf.zeros_like(v) for v in weights.trainable])

  if in_cohorts:
    client_work = scaffold_cohorts.build_cohort_client_work(
        model_fn, _server_type(weights_type),
        client_learning_rate=client_learning_rate, weighted=weighted,
        capacity=num_clients, rows=rule is not None, update_fn=update_fn)
    aggregator = build_cohort_aggregator(weights_type.trainable, rule)
  else:
    client_work = _attacked(build_client_work(
        model_fn, weights_type, data_type, metrics_aggregator,
        client_learning_rate=client_learning_rate, weighted=weighted),
                            update_fn, num_clients)
    aggregator = build_aggregator(model_aggregator, weights_type.trainable)
  return compose_scaffold(
      initial_server,
      tff.learning.templates.build_broadcast_process(
          _server_type(weights_type)),
      client_work, aggregator,
      build_finalizer(weights_type, server_learning_rate=server_learning_rate,
                      num_clients=num_clients))


def _nbytes(structure) -> int:
  return sum(np.asarray(t).nbytes for t in tf.nest.flatten(structure))


def _has_values(structure) -> bool:
  return bool(tf.nest.flatten(structure))


class Scaffold(base.FederatedAlgorithm):
  """SCAFFOLD with every training client's control variate in a table.

  State (saveable by `tff.program.FileProgramStateManager` with the initial
  state as template):

      OrderedDict(
          server=<global_model_weights, control_variate, model_aggregator>,
          client_controls=int64 [N],  # the table's index of the c_i rows
          participation=int64 [N],    # rounds each client took part in
      )

  Position k is the k-th id in `client_ids`; a client seen for the first
  time has a zero c_i.

  Built `in_cohorts`, a round's clients are packed into `cohorts`
  contiguous cohorts (`cohort_client_work.split_cohorts`, as FedAvg's;
  the registry sets one per TFF worker), each one TFF client.
  """

  def __init__(
      self,
      model_fn: ModelFn,
      *,
      client_ids: Sequence[str],
      client_learning_rate: float,
      server_learning_rate: float = 1.0,
      weighted: bool = True,
      model_aggregator: Optional[
          tff.aggregators.WeightedAggregationFactory] = None,
      tables: client_state.Tables = client_state.IN_MEMORY,
      in_cohorts: bool = False,
      update_fn: Optional[attack_client_work.UpdateFn] = None,
  ):
    self.client_ids = tuple(client_ids)
    if not self.client_ids:
      raise ValueError(
          'SCAFFOLD needs the training client ids (got none): control'
          ' variates are stored per client'
      )
    self._position = {cid: k for k, cid in enumerate(self.client_ids)}
    if len(self._position) != len(self.client_ids):
      raise ValueError('SCAFFOLD client_ids contain duplicates')
    self.process = build_scaffold_process(
        model_fn,
        num_clients=len(self.client_ids),
        client_learning_rate=client_learning_rate,
        server_learning_rate=server_learning_rate,
        weighted=weighted,
        model_aggregator=model_aggregator,
        in_cohorts=in_cohorts,
        update_fn=update_fn,
    )
    self.in_cohorts = in_cohorts
    self._takes_attack = attack_client_work.takes_attack(self.process)
    self._member_attacks = in_cohorts and update_fn is not None
    control_type = (
        self.process.next.type_signature.parameter[0].member.control_variate)
    self._control_shapes = [t.shape for t in control_type]
    self.controls = tables.table(
        'scaffold_controls', len(self.client_ids),
        [t.shape for t in control_type], [t.dtype for t in control_type])

  def initialize(self):
    return collections.OrderedDict(
        server=self.process.initialize(),
        client_controls=self.controls.empty_index(),
        participation=np.zeros(len(self.client_ids), np.int64),
    )

  def _positions(self, client_ids: Sequence[str]) -> list[int]:
    try:
      positions = [self._position[cid] for cid in client_ids]
    except KeyError as e:
      raise ValueError(
          f'client {e.args[0]!r} is not one of the {len(self.client_ids)}'
          ' training clients SCAFFOLD was built with'
      ) from None
    if len(set(positions)) != len(positions):
      raise ValueError(f'a client appears twice in one round: {client_ids}')
    return positions

  def next(self, state, round_num, client_ids, client_datasets):
    if len(client_ids) != len(client_datasets):
      raise ValueError(
          f'{len(client_ids)} client ids but {len(client_datasets)} datasets'
      )
    positions = self._positions(client_ids)
    participation = np.asarray(state['participation'])
    datasets = list(client_datasets)
    if self._takes_attack:
      datasets = self.with_attack_inputs(round_num, client_ids, datasets)
    attacks = (self.attack.client_flags(self.malicious, round_num, client_ids)
               if self._member_attacks else None)
    server, clients, metrics = self.process.next(
        state['server'], *self._round_inputs(
            state['client_controls'], positions, datasets, attacks))
    controls = self.controls.write(round_num, state['client_controls'],
                                   *self._new_rows(clients, positions))
    new_participation = participation.copy()
    new_participation[positions] += 1
    metrics = collections.OrderedDict(
        (group, values) for group, values in client_metrics.unpack(
            metrics).items()
        if _has_values(values)
    )
    # The rule's excluded, kept and (with an attack) malicious counts; its
    # position p holds the client of slot positions[p].
    mask = self.round_mask(client_ids)
    if mask is not None:
      mask = mask[np.asarray(clients['positions'], np.int64)]
    metrics.update(attack_metrics.round_groups(
        metrics.pop('model_aggregator', None), len(client_ids), mask))
    metrics['scaffold'] = collections.OrderedDict(
        metrics['scaffold'],
        new_clients=int(np.sum(participation[positions] == 0)),
        clients_seen=int(np.sum(new_participation > 0)),
    )
    new_state = collections.OrderedDict(
        server=server,
        client_controls=controls,
        participation=new_participation,
    )
    return new_state, metrics

  def _round_inputs(self, index, positions, datasets, attacks=None):
    """(client states, client data) of a round's clients `positions`, their
    c_i read through the table's `index`: one of each per client, or per
    cohort (with `attacks`, each member's attack input in its cohort's)."""
    if not self.in_cohorts:
      rows = self.controls.read(index, positions)
      # Slot k tags the k-th client's row, so the new rows are put in slot
      # order inside the computation whatever order they were merged in.
      return [collections.OrderedDict(control=[leaf[k] for leaf in rows],
                                      slot=np.int32(k))
              for k in range(len(datasets))], datasets
    # A cohort's members are tagged with their slots (its data's tags), and
    # its c_i rows are one flat table, read as such (no per-leaf copy to
    # join): a nested structure of tensors costs TFF's Python serialization
    # a copy of the whole value per level.
    runs = cohort_client_work.split_cohorts(len(datasets), self.cohorts)
    flat = self.controls.read_flat(index, positions)
    return ([flat[run.start:run.stop] for run in runs],
            cohort_client_work.pack(datasets, runs, attacks))

  def _new_rows(self, clients, positions):
    """(the clients `positions` of the new rows, their rows [K, ...] per
    leaf) from the round's R (slot order) or R_c (flat rows, row p the
    client of slot positions[p])."""
    if not self.in_cohorts:
      return positions, [np.asarray(leaf) for leaf in clients['controls']]
    slots = np.asarray(clients['positions'], np.int64)
    if not np.array_equal(np.sort(slots), np.arange(len(positions))):
      raise RuntimeError(f'SCAFFOLD client slots are not 0..K-1, once each:'
                         f' {slots.tolist()}')
    return ([positions[s] for s in slots],
            scaffold_cohorts.leaf_rows(np.asarray(clients['controls']),
                                       self._control_shapes))

  def get_model_weights(self, state) -> tff.learning.models.ModelWeights:
    return state['server']['global_model_weights']

  def get_client_control(self, state, client_id: str) -> list[np.ndarray]:
    """c_i of one client (zeros if it never took part)."""
    k = self._positions([client_id])[0]
    return [leaf[0] for leaf in self.controls.read(state['client_controls'], [k])]

  def client_controls(self, state) -> list[np.ndarray]:
    """Every client's c_i as [N, *shape] arrays (reads all N rows: for
    tests and small federations)."""
    return self.controls.read(state['client_controls'],
                              range(len(self.client_ids)))

  def bytes_per_client(self, state) -> tuple[int, int]:
    """Down: x and c; up: Delta y and Delta c (twice FedAvg's each way)."""
    weights = self.get_model_weights(state)
    control = state['server']['control_variate']
    down = _nbytes((weights.trainable, weights.non_trainable)) + _nbytes(
        control
    )
    up = _nbytes(weights.trainable) + _nbytes(control)
    return down, up


def build_scaffold(
    model_fn: ModelFn,
    *,
    client_ids: Sequence[str],
    client_learning_rate: float,
    server_learning_rate: float = 1.0,
    weighted: bool = True,
    model_aggregator: Optional[
        tff.aggregators.WeightedAggregationFactory] = None,
    tables: client_state.Tables = client_state.IN_MEMORY,
    in_cohorts: bool = False,
    cohorts: int = 1,
    update_fn: Optional[attack_client_work.UpdateFn] = None,
) -> Scaffold:
  """SCAFFOLD over the training clients `client_ids` (fixed order), their
  c_i in `tables` (in memory by default); `in_cohorts`, a round's clients
  train in `cohorts` cohorts (`Scaffold`); `update_fn`, an update attack on
  the malicious clients' Delta y (`build_scaffold_process`)."""
  algorithm = Scaffold(
      model_fn,
      client_ids=client_ids,
      client_learning_rate=client_learning_rate,
      server_learning_rate=server_learning_rate,
      weighted=weighted,
      model_aggregator=model_aggregator,
      tables=tables,
      in_cohorts=in_cohorts,
      update_fn=update_fn,
  )
  algorithm.cohorts = max(1, int(cohorts))
  return algorithm


def _check(config):
  # Option II's (x - y) / (K eta_l) is the mean corrected gradient only for
  # plain SGD steps.
  if config.client_optimizer != 'sgd':
    raise ValueError(
        f'--client_optimizer={config.client_optimizer} is not valid with'
        ' --algorithm=scaffold: SCAFFOLD assumes plain SGD (use'
        ' --client_optimizer=sgd)')


def _build(config, model_fn, client_ids, tables=client_state.IN_MEMORY):
  rule = config.model_aggregator(len(client_ids))
  in_cohorts = cohort_client_work.in_cohorts(config, rule)
  collecting = isinstance(rule, collection.CollectingFactory)
  return build_scaffold(
      model_fn,
      client_ids=client_ids,
      client_learning_rate=config.client_learning_rate,
      server_learning_rate=config.server_learning_rate,
      weighted=config.weighted,
      # The cohorts' plain mean is their own (`build_cohort_aggregator`).
      model_aggregator=(rule if collecting or not in_cohorts else None),
      tables=tables,
      in_cohorts=in_cohorts,
      update_fn=config.attack.update_fn(),
  )


SPEC = spec.AlgorithmSpec(
    name='scaffold',
    paper='Karimireddy et al. 2020',
    summary='custom federated-core process, per-client control variates in'
    ' the checkpoint',
    build=_build,
    hyperparameters=(hp.CLIENT_OPTIMIZER, hp.CLIENT_LEARNING_RATE,
                     hp.SERVER_LEARNING_RATE),
    check=_check,
    per_client_state=True,
    update_attacks=True,
    comparison_client_learning_rate=10**-1,
    docs='docs/scaffold.md',
)
