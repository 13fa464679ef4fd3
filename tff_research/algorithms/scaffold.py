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
relies on (so a data attacker's c_i does enter c).

Why not `tff.learning.templates.compose_learning_process`: a
`LearningProcess.next` takes (server state, client data) and returns
(server state, metrics), so it has no slot for state that lives at CLIENTS and
must come back from them. Here the federated core computations take the
sampled clients' c_i as a CLIENTS-placed argument and return the updated c_i
CLIENTS-placed, and a `tff.templates.IterativeProcess` holds them:

    initialize: ( -> <global_model_weights=M, control_variate=T,
                      model_aggregator=A>@SERVER)
    next: (<server_state=S@SERVER, client_controls={T}@CLIENTS,
            client_data={B*}@CLIENTS>
           -> <S@SERVER, {T}@CLIENTS, <train=Mt, scaffold=<control_norm,
               update_norm, mean_correction_norm>, model_aggregator=Ma>@SERVER>)

where M is the model's `ModelWeights` type, T its trainable-weights type
(the control variates' type), B its batch type, A/Ma the model aggregator's
state/measurements. The server state broadcast to clients is <x, c>: SCAFFOLD
sends twice the model each way (x and c down, Delta y and Delta c up), which
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
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
# Private TFF, each because TFF exports no equivalent: `factory_utils`
# turns an unweighted factory (a robust rule) into the weighted form the
# model delta's aggregation takes, exactly as TFF's unweighted FedAvg does;
# `tensor_utils.zero_all_if_any_non_finite` is the rule TFF's client work
# applies to a diverged client, reused so SCAFFOLD's is the same.
from tensorflow_federated.python.aggregators import factory_utils
from tensorflow_federated.python.learning import tensor_utils

from tff_research.algorithms import base
from tff_research.algorithms import client_metrics
from tff_research.algorithms import client_state
from tff_research.algorithms import hyperparameters as hp
from tff_research.algorithms import spec
from tff_research.attacks import metrics as attack_metrics

ModelFn = Callable[[], tff.learning.models.VariableModel]


def _global_norm(tensors) -> tf.Tensor:
  return tf.linalg.global_norm(
      [tf.cast(t, tf.float32) for t in tf.nest.flatten(tensors)]
  )


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


def build_scaffold_process(
    model_fn: ModelFn,
    *,
    num_clients: int,
    client_learning_rate: float,
    server_learning_rate: float = 1.0,
    weighted: bool = True,
    model_aggregator: Optional[tff.aggregators.AggregationFactory] = None,
) -> tff.templates.IterativeProcess:
  """SCAFFOLD's federated computations as an `IterativeProcess`.

  See the module docstring for the algorithm and type signatures.

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
  """
  if num_clients < 1:
    raise ValueError(f'num_clients={num_clients} is not valid: must be >= 1')
  for name, value in (('client_learning_rate', client_learning_rate),
                      ('server_learning_rate', server_learning_rate)):
    if not value > 0:
      raise ValueError(f'{name}={value} is not valid: must be > 0')
  eta_l = float(client_learning_rate)
  eta_g = float(server_learning_rate)

  with tf.Graph().as_default():
    # Built in a throwaway graph only to read types and metric finalizers.
    model = model_fn()
    weights_type = tff.learning.models.weights_type_from_model(model)
    batch_type = tff.types.tensorflow_to_type(model.input_spec)
    metrics_aggregation_fn = client_metrics.per_client_then_finalize(
        num_clients)(model.metric_finalizers())
  control_type = weights_type.trainable
  data_type = tff.SequenceType(batch_type)
  aggregation_process = _weighted_process(model_aggregator, control_type)

  @tff.tensorflow.computation
  def server_init():
    model = model_fn()
    weights = tff.learning.models.ModelWeights.from_model(model)
    return collections.OrderedDict(
        global_model_weights=weights,
        control_variate=[tf.zeros_like(v) for v in weights.trainable],
    )

  @tff.federated_computation
  def initialize():
    server = tff.federated_eval(server_init, tff.SERVER)
    return tff.federated_zip(collections.OrderedDict(
        global_model_weights=server.global_model_weights,
        control_variate=server.control_variate,
        model_aggregator=aggregation_process.initialize(),
    ))

  server_state_type = initialize.type_signature.result
  broadcast_type = collections.OrderedDict(
      global_model_weights=weights_type, control_variate=control_type
  )

  @tff.tensorflow.computation(broadcast_type, control_type, data_type)
  def client_update(server, client_control, dataset):
    """<x, c>, c_i, data -> <control=c_i+, delta, control_delta, weight,
    correction_norm, model_output>."""
    model = model_fn()

    @tf.function
    def train(initial_weights, control, client_control, dataset):
      weights = tff.learning.models.ModelWeights.from_model(model)
      tf.nest.map_structure(
          lambda v, t: v.assign(t), weights, initial_weights
      )
      # c - c_i is fixed during the round: the drift correction.
      correction = tf.nest.map_structure(tf.subtract, control, client_control)

      def step(counts, batch):
        with tf.GradientTape() as tape:
          output = model.forward_pass(batch, training=True)
        grads = tape.gradient(output.loss, weights.trainable)
        for v, g, corr in zip(weights.trainable, grads, correction):
          v.assign_sub(eta_l * (g + corr))
        num_batches, num_examples = counts
        return (num_batches + 1,
                num_examples + tf.cast(output.num_examples, tf.int64))

      # dataset.reduce, as TFF's own client work (loop_builder's
      # DATASET_REDUCE): measured here 2.5x faster in TFF's C++ runtime than
      # an autograph `for batch in dataset` loop (MLP, 10 clients x 90
      # steps: 5.3 s -> 2.1 s per round; FedAvg 1.8 s).
      num_batches, num_examples = dataset.reduce(
          (tf.constant(0, tf.int64), tf.constant(0, tf.int64)), step
      )
      delta = [
          v - x for v, x in zip(weights.trainable, initial_weights.trainable)
      ]
      k = tf.cast(num_batches, tf.float32)
      took_steps = tf.cast(num_batches > 0, tf.float32)
      # c_i+ - c_i = -c + (x - y) / (K eta_l); zero when K = 0.
      control_delta = [
          took_steps * (tf.math.divide_no_nan(-d, k * eta_l) - c)
          for d, c in zip(delta, control)
      ]
      # As TFF's FedAvg: a diverged client contributes nothing.
      (delta, control_delta), non_finite = (
          tensor_utils.zero_all_if_any_non_finite((delta, control_delta))
      )
      finite = tf.cast(tf.equal(non_finite, 0), tf.float32)
      weight = (
          tf.cast(num_examples, tf.float32) if weighted else tf.constant(1.0)
      ) * finite * took_steps
      if tf.not_equal(non_finite, 0):
        model.reset_metrics()
      new_control = [c + d for c, d in zip(client_control, control_delta)]
      return collections.OrderedDict(
          control=new_control,
          delta=delta,
          control_delta=control_delta,
          weight=weight,
          correction_norm=_global_norm(correction),
          model_output=model.report_local_unfinalized_metrics(),
      )

    return train(
        server['global_model_weights'], server['control_variate'],
        client_control, dataset,
    )

  @tff.tensorflow.computation(
      weights_type, control_type, control_type, control_type
  )
  def server_update(weights, control, mean_delta, control_delta_sum):
    """x, c, mean Delta y, sum Delta c -> <global_model_weights, control_variate,
    metrics>."""
    update = [eta_g * d for d in mean_delta]
    trainable = [x + u for x, u in zip(weights.trainable, update)]
    new_control = [
        c + s / float(num_clients) for c, s in zip(control, control_delta_sum)
    ]
    return collections.OrderedDict(
        global_model_weights=tff.learning.models.ModelWeights(
            trainable=trainable, non_trainable=weights.non_trainable
        ),
        control_variate=new_control,
        control_norm=_global_norm(new_control),
        update_norm=_global_norm(update),
    )

  @tff.federated_computation(
      server_state_type,
      tff.FederatedType(control_type, tff.CLIENTS),
      tff.FederatedType(data_type, tff.CLIENTS),
  )
  def next_fn(server_state, client_controls, client_data):
    to_clients = tff.federated_broadcast(tff.federated_zip(
        collections.OrderedDict(
            global_model_weights=server_state.global_model_weights,
            control_variate=server_state.control_variate,
        )
    ))
    outputs = tff.federated_map(
        client_update, (to_clients, client_controls, client_data)
    )
    aggregated = aggregation_process.next(
        server_state.model_aggregator, outputs.delta, outputs.weight
    )
    control_delta_sum = tff.federated_sum(outputs.control_delta)
    updated = tff.federated_map(server_update, (
        server_state.global_model_weights, server_state.control_variate,
        aggregated.result, control_delta_sum,
    ))
    new_state = tff.federated_zip(collections.OrderedDict(
        global_model_weights=updated.global_model_weights,
        control_variate=updated.control_variate,
        model_aggregator=aggregated.state,
    ))
    metrics = tff.federated_zip(collections.OrderedDict(
        train=metrics_aggregation_fn(outputs.model_output),
        scaffold=tff.federated_zip(collections.OrderedDict(
            control_norm=updated.control_norm,
            update_norm=updated.update_norm,
            mean_correction_norm=tff.federated_mean(outputs.correction_norm),
        )),
        model_aggregator=aggregated.measurements,
    ))
    return new_state, outputs.control, metrics

  return tff.templates.IterativeProcess(initialize, next_fn)


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
    )
    control_type = self.process.next.type_signature.parameter[1].member
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
    rows = self.controls.read(state['client_controls'], positions)
    client_controls = [[leaf[k] for leaf in rows] for k in range(len(positions))]
    server, new_client_controls, metrics = self.process.next(
        state['server'], client_controls, list(client_datasets)
    )
    new_rows = [np.stack([np.asarray(c[v]) for c in new_client_controls])
                for v in range(len(rows))] if positions else rows
    controls = self.controls.write(round_num, state['client_controls'],
                                   positions, new_rows)
    new_participation = participation.copy()
    new_participation[positions] += 1
    metrics = collections.OrderedDict(
        (group, values) for group, values in client_metrics.unpack(
            metrics).items()
        if _has_values(values)
    )
    # The rule's excluded, kept and (with an attack) malicious counts.
    metrics.update(attack_metrics.round_groups(
        metrics.pop('model_aggregator', None), len(client_ids),
        self.round_mask(client_ids)))
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
) -> Scaffold:
  """SCAFFOLD over the training clients `client_ids` (fixed order), their
  c_i in `tables` (in memory by default)."""
  return Scaffold(
      model_fn,
      client_ids=client_ids,
      client_learning_rate=client_learning_rate,
      server_learning_rate=server_learning_rate,
      weighted=weighted,
      model_aggregator=model_aggregator,
      tables=tables,
  )


def _check(config):
  # Option II's (x - y) / (K eta_l) is the mean corrected gradient only for
  # plain SGD steps.
  if config.client_optimizer != 'sgd':
    raise ValueError(
        f'--client_optimizer={config.client_optimizer} is not valid with'
        ' --algorithm=scaffold: SCAFFOLD assumes plain SGD (use'
        ' --client_optimizer=sgd)')


def _build(config, model_fn, client_ids, tables=client_state.IN_MEMORY):
  return build_scaffold(
      model_fn,
      client_ids=client_ids,
      client_learning_rate=config.client_learning_rate,
      server_learning_rate=config.server_learning_rate,
      weighted=config.weighted,
      model_aggregator=config.model_aggregator(len(client_ids)),
      tables=tables,
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
    # Client controls enter and leave CLIENTS-placed: not yet mergeable.
    distributed=False,
    comparison_client_learning_rate=10**-1,
    docs='docs/scaffold.md',
)
