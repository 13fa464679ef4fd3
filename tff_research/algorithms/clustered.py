"""Clustered federated learning: K FedAvg models, clients grouped by the
similarity of their updates (Sattler et al. 2020, "Clustered Federated
Learning: Model-Agnostic Distributed Multitask Optimization Under Privacy
Constraints"; Ghosh et al. 2020, "An Efficient Framework for Clustered
Federated Learning").

The algorithm
-------------
* Warmup (`warmup_rounds`): plain FedAvg on one model (cluster 0).
* Clustering steps, at rounds `warmup_rounds + 1 + m * recluster_every`
  (m = 0, 1, ...): every sampled client first walks down the *split tree*
  (below) from the root to its cluster, then trains its cluster's model and
  returns its update. A step compares, within each cluster, the most recent
  update of every client sampled in the last `update_window` rounds (its
  own sampled clients included; with partial participation one round's
  clients are too few). Updates are stored as seeded random projections
  (`clustering.sketch`, 4096 floats per client instead of the model size),
  computed on the client in the same TFF computation as the update.
  With `split_rule='sattler'` (default; Sattler et al.'s Algorithm 1) a
  cluster splits if (1) |mean update| < eps_1 and max |update| > eps_2
  (near a stationary point, clients still disagree), (2) the complete-
  linkage bipartition of the similarities satisfies the separation
  criterion gamma_bound = sqrt((1 - alpha) / 2) > gamma_max, with alpha
  the cosine of the two groups' mean updates (`split_separation=
  'group_mean'`) or the max cross-pair cosine ('pairwise_max', the paper's
  statistic), (3) each side has `min_split_size` clients and fewer than K
  clusters exist; a cluster splits at most once per step. Every step logs
  the values and a decision code per cluster (`clustering.SplitDecision`).
  `split_rule='gap'` is a stricter alternative (every cross pair farther
  apart than every within pair). The new cluster starts from the model it split
  from, then each cluster aggregates the updates of its own sampled clients,
  so the step's training is not wasted; every compared client is placed.
* Other rounds: a sampled client trains its cluster's model; each cluster
  averages only its own clients' updates (FedAvg per cluster, example-weighted
  or uniform, then `x_k <- x_k - eta_g * mean update`).

Clusters only split (as in Sattler et al.'s hierarchical CFL), so the clusters
form a tree. Each split k stores its base model (the parent's model at the
split) and the weighted mean projected update of the clients that stayed
and of those that moved, from the step's own sampled clients (computed from
that base; the whole window only for a side with none of them). A client whose assignment predates a
split of its cluster (it was not sampled then), or a new client, is placed by
the *same metric*: it computes its update from the split's base model and
follows the side whose stored mean update is more similar (cosine) or nearer
(L2); this repeats down the tree. Sattler et al. place new clients by
traversing their "parameter tree" in the same way. Clients not seen at a
clustering step keep their last assignment until they are next sampled.

When L2 fails
-------------
L2 distance is a sound clustering criterion only when client risks are convex
with well-separated minima (IFCA's assumptions): then the local models of
clients with the same distribution land near the same minimum. L2 measures
only how far apart two updates are, not whether they pull in compatible
directions, so it cannot tell *congruent* non-IID clients (label skew whose
risks share a minimiser, which one model can serve) from *incongruent* ones
(e.g. permuted labels, which no single model can serve). It may therefore
split conventional non-IID clients (different label mixes) into clusters
that each see less data, with no gain. Cosine similarity separates
incongruent clients: at a stationary point of the joint risk their updates
point in opposite directions (Sattler et al., Sec. III), while congruent
clients' updates keep a shared component. Measured on FEMNIST digits
(docs/clustered.md): with the positive-gap rule neither metric split
Dirichlet(0.3) clients, so the claim was not borne out there, though L2's gap
came closer to splitting (and in a smaller exploratory run proposed a 9/1 split
of congruent clients, stopped by `min_split_size`); on label-permuted clients
both split correctly, cosine with the larger margin.

Why not a `LearningProcess`
---------------------------
`LearningProcess.next(state, data)` does not know which clients take part,
but clustered FL keeps per-client state (each client's cluster), so this is a
`base.FederatedAlgorithm`. The federated work is TFF computations built once:

    client_updates: (<M^K@SERVER, {int32}@CLIENTS, {B*}@CLIENTS>
                     -> {O}@CLIENTS),
                    O = <update=U, weight=float32, metrics=T,
                         sketch=float32[P]>
    aggregate:      (<M^K@SERVER, {int32}@CLIENTS, {O}@CLIENTS>
                     -> <M^K@SERVER, <train=F, clusters=F^K>@SERVER>)
    train_round:    (<M^K@SERVER, {int32}@CLIENTS, {B*}@CLIENTS>
                     -> <M^K@SERVER, <train=F, clusters=F^K>@SERVER>)
    train_round_sketched: as train_round, and
                     {<sketch=float32[P], weight=float32>}@CLIENTS

M^K is the K cluster models stacked on a leading axis. Each client's model
reaches it with `tff.federated_select` keyed by its cluster (a client
receives one model, not K); the client update is TFF's FedAvg client update
(`build_model_delta_update_with_tff_optimizer`), so with K = 1 (or before
the first split) this is exactly FedAvg. `aggregate` places each client's
weighted update in its cluster's slot and sums, so each cluster's mean uses
only its own clients. With a model aggregator (the run's robust rule), each
cluster's update is instead that rule over its own clients
(`_build_rule_aggregation`). `client_updates` returns updates at CLIENTS because a
clustering step needs them on the server to compare (as in Sattler et al.).

State (saved by the training loop's `FileProgramStateManager`; fixed shapes,
indexed by position in the training client list):

    models, num_clusters, assignments[N], resolved[N] (number of clusters the
    client's assignment accounts for), split_parent[K], split_base (K models),
    split_ref_stayed / split_ref_moved ([K, P] projected updates; slot k
    describes the split that created cluster k), sketches[N] (the index of
    each client's most recent projected update in a
    `client_state.ClientStateTable` of P floats a row, on disk beside the
    checkpoints: a round reads and writes only its clients' rows),
    sketch_round[N] (its round, 0 = none), sketch_weight[N]. P =
    projection_dim (or the model size if not larger): 3,400 clients x 4096
    floats = 56 MB in the table, 27 kB of index in the state.

Attacks (`--attack`): a data attack poisons a malicious client's data; an
update attack (sign flip, Gaussian, a boosted backdoor) transforms what it
sends inside its client update (the data is then <data=B*, attack=A*>),
so its cluster aggregates, and the server sketches and splits on, the
attacked update: the server sees nothing else. Clients placed for
evaluation (`assign_clients`) are honest.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Callable

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
# Private TFF: the per-client update function of TFF's model-delta client
# work, which TFF exports only wrapped in a whole ClientWorkProcess; each
# cluster's clients run it inside this module's own computation.
from tensorflow_federated.python.learning.templates import model_delta_client_work

from tff_research.algorithms import clustering
from tff_research.algorithms import base
from tff_research.algorithms import client_metrics
from tff_research.algorithms import client_state
from tff_research.aggregators import excluding_mean as robust_aggregation
from tff_research.attacks import client_work as attack_client_work
from tff_research.attacks import metrics as attack_metrics

ModelFn = Callable[[], tff.learning.models.VariableModel]
METRICS = clustering.METRICS
MAX_CLUSTERS = 8
MIN_SPLIT_SIZE = 2
# Split rule defaults (docs/clustered.md, "The split rule"): measured on the
# EMNIST CNN and MLP with client learning rate 0.1, batch 20, 1 epoch.
DEFAULT_SPLIT_RULE = 'sattler'
DEFAULT_SPLIT_MEAN_NORM_MAX = math.inf
DEFAULT_SPLIT_MAX_NORM_MIN = 0.0
DEFAULT_SPLIT_GAMMA_MAX = 0.775
DEFAULT_SPLIT_SEPARATION = 'group_mean'
DEFAULT_PROJECTION_DIM = 4096


def _stack_type(tensor_type, k: int):
  return tff.TensorType(tensor_type.dtype, [k] + list(tensor_type.shape))


@dataclasses.dataclass(frozen=True)
class _Types:
  """The types the computations are built from: W (one model's weights),
  M^K (K models stacked on a leading axis), B* (a client's batches) and the
  model's metric finalizers."""

  weights: Any
  stacked: Any
  data: Any
  finalizers: Any
  k: int

  @classmethod
  def of(cls, model_fn: ModelFn, k: int, attacked: bool = False) -> '_Types':
    """`attacked`: a client's data is <data=B*, attack=A*>
    (`attacks.client_work.attack_input`)."""
    with tf.Graph().as_default():
      model = model_fn()
      weights_type = tff.learning.models.weights_type_from_model(model)
      finalizers = model.metric_finalizers()
      batch_type = tff.types.tensorflow_to_type(model.input_spec)
    stacked = tff.types.structure_from_tensor_type_tree(
        lambda t: _stack_type(t, k), weights_type)
    data = tff.SequenceType(batch_type)
    if attacked:
      data = tff.to_type(attack_client_work.attacked_data(
          data, attack_client_work.attack_input_type()))
    return cls(weights_type, stacked, data, finalizers, k)


def _build_client_update(types: _Types, model_fn: ModelFn, client_optimizer,
                         weighted: bool, projection_dim: int,
                         projection_seed: int, update_fn=None):
  """A client's work: TFF's FedAvg client update (`build_model_delta_update_
  with_tff_optimizer`) from the one model selected for it, and the update's
  random projection (clustering.sketch_tf), computed on the client: what the
  server stores to compare clients across rounds.

      (<W*, B*> -> <update=U, weight=float32, metrics=T, sketch=float32[P]>)

  With an update attack `update_fn` the data is <data=B*, attack=A*> and a
  malicious client sends the attacked update: the server aggregates and
  clusters by what it receives.
  """
  weighting = (tff.learning.ClientWeighting.NUM_EXAMPLES if weighted
               else tff.learning.ClientWeighting.UNIFORM)

  @tff.tensorflow.computation(tff.SequenceType(types.weights), types.data)
  def client_update(selected, dataset):
    # One key per client, so the selected sequence has one element.
    element = selected.reduce(
        tf.nest.map_structure(
            lambda s: tf.zeros(s.shape, s.dtype), selected.element_spec),
        lambda _, x: x)
    initial = tff.learning.models.ModelWeights(
        trainable=list(element[0]), non_trainable=list(element[1]))
    train_fn = (
        model_delta_client_work.build_model_delta_update_with_tff_optimizer(
            model_fn, weighting=weighting,
            loop_implementation=tff.learning.LoopImplementation.DATASET_REDUCE))
    if update_fn is not None:
      attack = attack_client_work.read_attack_input(
          dataset[attack_client_work.ATTACK])
      dataset = dataset[attack_client_work.DATA]
    result, metrics = train_fn(client_optimizer, initial, dataset)
    update = list(result.update)
    if update_fn is not None:
      update = list(update_fn(update, attack))
    flat = tf.concat(
        [tf.reshape(tf.cast(u, tf.float32), [-1]) for u in update], axis=0)
    return collections.OrderedDict(
        update=update, weight=result.update_weight,
        metrics=metrics,
        sketch=clustering.sketch_tf(flat, projection_dim, projection_seed))

  return client_update


def _build_client_updates(types: _Types, client_update):
  """Each client trains its cluster's model, sent with
  `tff.federated_select` keyed by its cluster (one model, not K).

      (<M^K@SERVER, {int32}@CLIENTS, {B*}@CLIENTS> -> {O}@CLIENTS)
  """
  k = types.k

  @tff.tensorflow.computation(types.stacked, np.int32)
  def select_fn(models, key):
    return tf.nest.map_structure(lambda t: tf.gather(t, key), models)

  @tff.tensorflow.computation(np.int32)
  def to_keys(cluster):
    return tf.reshape(cluster, [1])

  @tff.federated_computation(
      tff.FederatedType(types.stacked, tff.SERVER),
      tff.FederatedType(np.int32, tff.CLIENTS),
      tff.FederatedType(types.data, tff.CLIENTS))
  def client_updates(models, clusters, data):
    selected = tff.federated_select(
        tff.federated_map(to_keys, clusters),
        tff.federated_value(np.int32(k), tff.SERVER), models, select_fn)
    return tff.federated_map(client_update, (selected, data))

  return client_updates


def _in_slot(onehot, t):
  """`t` in the slot of the cluster `onehot` marks, zeros in the others."""
  k = onehot.shape[0]
  mask = tf.reshape(tf.cast(onehot, t.dtype), [k] + [1] * t.shape.rank)
  return mask * t[tf.newaxis]


def _build_to_slots(types: _Types, output_type, with_updates: bool = True):
  """A client's weighted update, weight and metrics in its cluster's slot
  of K (zeros in the others), so one federated sum averages every cluster
  over its own clients only; without the update when a model aggregator
  aggregates it (`_build_rule_aggregation`).

      (<int32, O> -> <update=U^K, weight=float32[K], metrics=T^K>)
      (<int32, O> -> <weight=float32[K], metrics=T^K>)  (no updates)
  """
  k = types.k

  @tff.tensorflow.computation(np.int32, output_type)
  def to_slots(cluster, output):
    onehot = tf.one_hot(cluster, k, dtype=tf.float32)
    weight = output['weight']
    slots = collections.OrderedDict()
    if with_updates:
      # As TFF's MeanFactory: the client sends value * weight and its weight.
      slots['update'] = [_in_slot(onehot, u * tf.cast(weight, u.dtype))
                         for u in output['update']]
    slots['weight'] = onehot * weight
    slots['metrics'] = tf.nest.map_structure(
        lambda t: _in_slot(onehot, t), output['metrics'])
    return slots

  return to_slots


def _stateless_process(factory, update_type, weighted: bool):
  """The model aggregator's process for one cluster's updates; ValueError
  (one line) if its state holds a tensor: clustered FL starts every
  cluster's process from `initialize()` each round, which is exact only for
  a rule whose state carries nothing (every registered rule: fixed
  parameters)."""
  process = (factory.create(update_type, tff.TensorType(np.float32))
             if weighted else factory.create(update_type))
  state_type = process.initialize.type_signature.result.member
  if tf.nest.flatten(tff.types.type_to_tf_tensor_specs(state_type)):
    raise ValueError(
        f'{type(factory).__name__} keeps state ({state_type}): clustered FL'
        ' takes only a model aggregator without state (one process per'
        ' cluster, restarted every round)')
  return process


def _build_rule_aggregation(types: _Types, output_type, factory,
                            weighted: bool):
  """Each cluster's update aggregated by the model aggregator `factory`
  (the run's robust rule, `AlgorithmConfig.model_aggregator`): K runs of
  its process, run k seeing each client of cluster k with its update and
  weight, every other client with a zero update of weight 0. Every rule
  leaves such an update out (an all-zero unweighted update or a zero
  weight is excluded, `aggregators.collection.enters`), so each cluster's
  aggregate is the rule over its own clients only.

  Measurements are summed over the K runs (each position is kept by its
  own cluster's run alone, so `kept_share` and `kept_clients` add up), and
  the (K - 1) * n exclusions of the other clusters' zeros are taken off
  `excluded_clients`.

      (<{int32}@CLIENTS, {O}@CLIENTS> -> <U^K@SERVER, measurements@SERVER>)
  """
  k = types.k
  update_type = output_type['update']
  process = _stateless_process(factory, update_type, weighted)

  def member_fn(cluster_id):
    @tff.tensorflow.computation(np.int32, output_type)
    def member(cluster, output):
      inside = tf.equal(cluster, cluster_id)
      return collections.OrderedDict(
          update=[tf.where(inside, u, tf.zeros_like(u))
                  for u in output['update']],
          weight=tf.where(inside, output['weight'], 0.0))
    return member

  members = [member_fn(c) for c in range(k)]
  result_type = process.next.type_signature.result
  run_type = tff.StructWithPythonType(
      [result_type.result.member, result_type.measurements.member], tuple)
  results_type = tff.StructWithPythonType([run_type] * k, list)

  @tff.tensorflow.computation(results_type, np.float32)
  def combine(results, clients):
    stacked = tf.nest.map_structure(
        lambda *ts: tf.stack(ts), *[r[0] for r in results])
    measurements = tf.nest.map_structure(
        lambda *ts: tf.add_n(ts), *[r[1] for r in results])
    if robust_aggregation.MEASUREMENT in measurements:
      measurements[robust_aggregation.MEASUREMENT] -= (k - 1) * clients
    return stacked, measurements

  @tff.tensorflow.computation(np.int32)
  def one(cluster):
    del cluster
    return np.float32(1.0)

  @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS),
                             tff.FederatedType(output_type, tff.CLIENTS))
  def aggregate_by_rule(clusters, outputs):
    runs = []
    for member in members:
      values = tff.federated_map(member, (clusters, outputs))
      args = [process.initialize(), values.update]
      if weighted:
        args.append(values.weight)
      output = process.next(*args)
      runs.append(tff.federated_zip((output.result, output.measurements)))
    clients = tff.federated_sum(tff.federated_map(one, clusters))
    return tff.federated_map(combine, (tff.federated_zip(runs), clients))

  return aggregate_by_rule


def _step(types: _Types, models, updates, lr):
  """x_k <- x_k - eta_g * update_k for every cluster k; as TFF's finalizer,
  a non-finite update leaves its cluster's model as is."""
  k = types.k
  trainable = []
  for w, u in zip(models[0], updates):
    shape = [k] + [1] * (u.shape.rank - 1)
    new = w - tf.cast(lr, w.dtype) * u
    finite = tf.reduce_all(tf.math.is_finite(tf.reshape(u, [k, -1])), axis=1)
    trainable.append(tf.where(tf.reshape(finite, shape), new, w))
  return tff.learning.models.ModelWeights(
      trainable=trainable, non_trainable=list(models[1]))


def _build_server_update(types: _Types, slots_type,
                         server_learning_rate: float, aggregated_type=None):
  """x_k <- x_k - eta_g * (mean update of cluster k), and the training
  metrics overall and per cluster. The update of cluster k is the mean of
  the slots' sums, or, with a model aggregator, its aggregate (of type
  U^K, `_build_rule_aggregation`).

      (<M^K, <U^K, float32[K], T^K>> -> <M^K, <train=F, clusters=F^K>>)
      (<M^K, <float32[K], T^K>, U^K> -> (same))  (a model aggregator)
  """
  k, finalizers = types.k, types.finalizers
  lr = np.float32(server_learning_rate)

  def finalize(unfinalized):
    return collections.OrderedDict(
        (name, fn(unfinalized[name])) for name, fn in finalizers.items())

  def update(models, sums, aggregated):
    if aggregated is not None:
      return _step(types, models, aggregated, lr)
    weight = sums['weight']
    means = []
    for s in sums['update']:
      shape = [k] + [1] * (s.shape.rank - 1)
      means.append(tf.math.divide_no_nan(
          s, tf.reshape(tf.cast(weight, s.dtype), shape)))
    return _step(types, models, means, lr)

  def server_update(models, sums, aggregated=None):
    new_models = update(models, sums, aggregated)
    metrics = sums['metrics']
    total = finalize(tf.nest.map_structure(
        lambda t: tf.reduce_sum(t, axis=0), metrics))
    per_cluster = [
        finalize(tf.nest.map_structure(lambda t, i=i: t[i], metrics))
        for i in range(k)]
    clusters = collections.OrderedDict(
        (name, tf.stack([p[name] for p in per_cluster]))
        for name in finalizers)
    return new_models, collections.OrderedDict(train=total, clusters=clusters)

  if aggregated_type is None:
    @tff.tensorflow.computation(types.stacked, slots_type)
    def mean_update(models, sums):
      return server_update(models, sums)
    return mean_update

  @tff.tensorflow.computation(types.stacked, slots_type, aggregated_type)
  def rule_update(models, sums, aggregated):
    return server_update(models, sums, aggregated)
  return rule_update


def _build_aggregate(types: _Types, output_type, server_learning_rate: float,
                     num_clients: int, model_aggregator=None,
                     weighted: bool = True):
  """Each cluster's step from its own clients' updates: their mean (FedAvg
  per cluster; `model_aggregator` None), or the model aggregator's
  aggregate (`_build_rule_aggregation`), whose measurements are returned
  as `aggregator`.

      (<M^K@SERVER, {int32}@CLIENTS, {O}@CLIENTS>
       -> <M^K@SERVER, <train=F, clusters=F^K, per_client,
                        excluded_clients=float32 | aggregator=A>@SERVER>)
  """
  by_rule = model_aggregator is not None
  to_slots = _build_to_slots(types, output_type, with_updates=not by_rule)
  rule = (_build_rule_aggregation(types, output_type, model_aggregator,
                                  weighted) if by_rule else None)
  server_update = _build_server_update(
      types, to_slots.type_signature.result, server_learning_rate,
      rule.type_signature.result.member[0] if by_rule else None)
  per_client_table = client_metrics.per_client_then_finalize(num_clients)(
      types.finalizers)

  @tff.tensorflow.computation(output_type)
  def excluded(output):
    # TFF's client work gives a non-finite update weight 0: it is left out
    # of its cluster's mean above; count it (robust_aggregation's metric).
    return 1.0 - tf.cast(output['weight'] > 0, tf.float32)

  @tff.federated_computation(
      tff.FederatedType(types.stacked, tff.SERVER),
      tff.FederatedType(np.int32, tff.CLIENTS),
      tff.FederatedType(output_type, tff.CLIENTS))
  def aggregate(models, clusters, outputs):
    sums = tff.federated_sum(tff.federated_map(to_slots, (clusters, outputs)))
    if by_rule:
      aggregated = rule(clusters, outputs)
      updated = tff.federated_map(server_update,
                                  (models, sums, aggregated[0]))
      robustness = ('aggregator', aggregated[1])
    else:
      updated = tff.federated_map(server_update, (models, sums))
      robustness = ('excluded_clients', tff.federated_sum(
          tff.federated_map(excluded, outputs)))
    new_models, metrics = updated[0], updated[1]
    # The clients' own training metrics, for the dashboard's distribution.
    per_client = per_client_table(outputs.metrics)[client_metrics.KEY]
    return new_models, tff.federated_zip(collections.OrderedDict([
        ('train', metrics.train), ('clusters', metrics.clusters),
        ('per_client', per_client), robustness]))

  return aggregate


def _build_rounds(types: _Types, client_updates, aggregate, output_type):
  """A round's work in one call, without and with the clients' projected
  updates (a few kB each) coming back for later clustering steps; the full
  updates stay in the computation.

      train_round:         (<M^K@SERVER, {int32}@CLIENTS, {B*}@CLIENTS>
                            -> <M^K@SERVER, metrics@SERVER>)
      train_round_sketched: ... -> <M^K@SERVER, metrics@SERVER,
                                    {<sketch=float32[P], weight>}@CLIENTS>
  """
  parameters = (tff.FederatedType(types.stacked, tff.SERVER),
                tff.FederatedType(np.int32, tff.CLIENTS),
                tff.FederatedType(types.data, tff.CLIENTS))

  @tff.federated_computation(*parameters)
  def train_round(models, clusters, data):
    return aggregate(models, clusters, client_updates(models, clusters, data))

  @tff.tensorflow.computation(output_type)
  def to_sketch(output):
    return collections.OrderedDict(
        sketch=output['sketch'], weight=output['weight'])

  @tff.federated_computation(*parameters)
  def train_round_sketched(models, clusters, data):
    outputs = client_updates(models, clusters, data)
    new_models, metrics = aggregate(models, clusters, outputs)
    return new_models, metrics, tff.federated_map(to_sketch, outputs)

  return train_round, train_round_sketched


class _Computations:
  """The federated computations, traced once per (model, K) (module doc)."""

  def __init__(self, model_fn: ModelFn, client_optimizer, weighted: bool,
               num_clusters: int, server_learning_rate: float,
               projection_dim: int, projection_seed: int, num_clients: int,
               model_aggregator=None, update_fn=None):
    types = _Types.of(model_fn, num_clusters, attacked=update_fn is not None)
    self.attacked = update_fn is not None
    self.weights_type = types.weights
    self.stacked_type = types.stacked
    self.update_size = int(sum(
        np.prod(t.shape) for t in types.weights.trainable))
    self.sketch_dim = clustering.sketch_dim(self.update_size, projection_dim)
    client_update = _build_client_update(
        types, model_fn, client_optimizer, weighted, projection_dim,
        projection_seed, update_fn)
    self.client_updates = _build_client_updates(types, client_update)
    output_type = self.client_updates.type_signature.result.member
    self.aggregate = _build_aggregate(types, output_type,
                                      server_learning_rate, num_clients,
                                      model_aggregator, weighted)
    self.train_round, self.train_round_sketched = _build_rounds(
        types, self.client_updates, self.aggregate, output_type)

    # As TFF's FedAvg: the initial weights come from a fresh model built in a
    # TF computation, so seeded initialisers give the same values.
    @tff.tensorflow.computation
    def initial_weights():
      return tff.learning.models.ModelWeights.from_model(model_fn())

    self.initial_weights = initial_weights


def _weights(structure) -> tff.learning.models.ModelWeights:
  """A `ModelWeights` of numpy arrays from TFF's output structures."""
  if isinstance(structure, tff.learning.models.ModelWeights):
    trainable, non_trainable = structure.trainable, structure.non_trainable
  else:
    trainable, non_trainable = structure[0], structure[1]
  return tff.learning.models.ModelWeights(
      trainable=[np.asarray(t) for t in trainable],
      non_trainable=[np.asarray(t) for t in non_trainable],
  )


def _at_clients(clusters) -> list[np.int32]:
  """A CLIENTS-placed int32 value: one Python list entry per client."""
  return [np.int32(c) for c in clusters]


def _slot(weights: tff.learning.models.ModelWeights, k: int):
  return tff.learning.models.ModelWeights(
      trainable=[t[k] for t in weights.trainable],
      non_trainable=[t[k] for t in weights.non_trainable],
  )


def _copy_weights(weights):
  return tff.learning.models.ModelWeights(
      trainable=[np.array(t) for t in weights.trainable],
      non_trainable=[np.array(t) for t in weights.non_trainable],
  )


@dataclasses.dataclass(frozen=True)
class _Compared:
  """What a clustering step compares: training-client positions [m], their
  projected updates float64 [m, P], weights [m] (examples, or 1), the
  rounds they were computed in [m] and the clients' clusters [m]."""

  members: np.ndarray
  vectors: np.ndarray
  weights: np.ndarray
  rounds: np.ndarray
  clusters: np.ndarray


def _split_references(split: clustering.Split, compared: _Compared,
                      round_num: int) -> list[np.ndarray]:
  """[stayed, moved]: the weighted mean projected update of the clients
  that stayed in the parent and of those that moved to the new cluster.

  Clients placed later compute their update from the split's base model
  (this round's model), so the updates computed from it (this round's
  clients) are used where a side has any.
  """
  references = []
  for group in (split.stayed, split.moved):
    now = compared.rounds[group] == round_num
    if now.any():
      group = group[now]
    w = compared.weights[group] / compared.weights[group].sum()
    references.append(w @ compared.vectors[group])
  return references


def _check_schedule(metric, num_clusters, recluster_every, warmup_rounds,
                    update_window, projection_dim, min_split_size) -> None:
  """ValueError (one line) for a metric or schedule out of range."""
  if metric not in METRICS:
    raise ValueError(f'clustering metric {metric!r} is not valid; valid:'
                     f' {", ".join(METRICS)}')
  if not 1 <= num_clusters <= MAX_CLUSTERS:
    raise ValueError(f'num_clusters={num_clusters} is not valid: must be in'
                     f' [1, {MAX_CLUSTERS}]')
  if recluster_every < 1:
    raise ValueError(
        f'recluster_every={recluster_every} is not valid: must be >= 1')
  if warmup_rounds < 0:
    raise ValueError(
        f'warmup_rounds={warmup_rounds} is not valid: must be >= 0')
  window = recluster_every if update_window is None else update_window
  if not 1 <= window <= recluster_every:
    raise ValueError(
        f'update_window={update_window} is not valid: must be in'
        f' [1, recluster_every={recluster_every}]')
  if projection_dim < 0:
    raise ValueError(
        f'projection_dim={projection_dim} is not valid: must be >= 0'
        ' (0 = store exact updates)')
  if min_split_size < 1:
    raise ValueError(
        f'min_split_size={min_split_size} is not valid: must be >= 1')


def _check_split_rule(split_rule, split_mean_norm_max, split_max_norm_min,
                      split_gamma_max, split_separation) -> None:
  """ValueError (one line) for a split rule or threshold out of range."""
  if split_rule not in clustering.SPLIT_RULES:
    raise ValueError(f'split_rule={split_rule!r} is not valid; valid:'
                     f' {", ".join(clustering.SPLIT_RULES)}')
  if not split_mean_norm_max > 0:
    raise ValueError(
        f'split_mean_norm_max={split_mean_norm_max} is not valid: must be'
        ' > 0 (inf = no stationarity condition)')
  if not 0 <= split_max_norm_min < math.inf:
    raise ValueError(
        f'split_max_norm_min={split_max_norm_min} is not valid: must be'
        ' finite and >= 0')
  if not 0 <= split_gamma_max < 1:
    raise ValueError(f'split_gamma_max={split_gamma_max} is not valid: must'
                     ' be in [0, 1)')
  if split_separation not in clustering.SEPARATION_STATISTICS:
    raise ValueError(
        f'split_separation={split_separation!r} is not valid; valid:'
        f' {", ".join(clustering.SEPARATION_STATISTICS)}')


def _check_clients(client_ids, ground_truth) -> None:
  if not client_ids:
    raise ValueError('clustered FL needs the list of training clients')
  if len(set(client_ids)) != len(client_ids):
    raise ValueError('client_ids must be distinct')
  if ground_truth is not None and len(ground_truth) != len(client_ids):
    raise ValueError(
        f'ground_truth has {len(ground_truth)} entries, client_ids'
        f' {len(client_ids)}')


class ClusteredFedAvg(base.FederatedAlgorithm):
  """Clustered FedAvg with cosine or L2 update similarity (see module doc).

  Constructor arguments (keywords after `model_fn`; the computations are
  built once):

    model_fn: builds a fresh `tff.learning.models.VariableModel`.
    client_ids: every training client, in a fixed order (assignments are
      indexed by position in it).
    client_optimizer: local optimizer, as FedAvg's.
    metric: 'cosine' (Sattler et al.) or 'l2' (Ghosh et al.).
    num_clusters: K in [1, 8], the most clusters there may be.
    recluster_every: rounds between clustering steps (>= 1).
    warmup_rounds: rounds of plain FedAvg before the first step (>= 0).
    server_learning_rate: eta_g of each cluster's model update.
    weighted: weight client updates by number of examples.
    split_rule: 'sattler' (Sattler et al.'s Algorithm 1: stationarity
      thresholds, complete-linkage bipartition, gamma_max criterion) or
      'gap' (stricter: every cross pair farther apart than every
      within pair; recursive within a step; norm thresholds unused).
    split_mean_norm_max: eps_1 > 0: a cluster splits only if the norm of its
      clients' (weighted) mean update is below it; inf = no condition.
    split_max_norm_min: eps_2 >= 0: ... and its largest client update norm
      is above it; 0 = no condition.
    split_gamma_max: gamma_max in [0, 1): assumed relative error of the
      compared gradient estimates; a split needs gamma_bound =
      sqrt((1 - alpha) / 2) > gamma_max, i.e. alpha < 1 - 2 gamma_max^2.
    split_separation: which alpha: 'group_mean' (cosine of the two sides'
      mean updates) or 'pairwise_max' (Sattler et al.'s max over cross
      client pairs; needs a smaller gamma_max, e.g. 0.64, see docs).
    update_window: in [1, recluster_every] (None = recluster_every): a step
      compares the most recent update of every client sampled in the last
      `update_window` rounds (1 = only the step's sampled clients).
    projection_dim: stored updates are projected to this many coordinates
      (clustering.sketch, a seeded signed fold); 0 or >= the model size =
      exact updates.
    projection_seed: seed of the projection's signs.
    min_split_size: fewest compared clients on each side of a split (>= 1).
    ground_truth: optional true group of each client (diagnostics only:
      logs `purity` every round and `purity_compared` at steps).
    tables: where the clients' projected updates live (memory by default;
      a run's directory in a run).
    model_aggregator: None (each cluster's weighted or uniform mean, non-
      finite updates excluded) or a `tff.aggregators` factory without
      state, run once per cluster on its clients' updates (the run's
      robust rule: `_build_rule_aggregation`).
  """

  def __init__(
      self,
      model_fn: ModelFn,
      *,
      client_ids: Sequence[str],
      client_optimizer: tff.learning.optimizers.Optimizer,
      metric: str = 'cosine',
      num_clusters: int = 2,
      recluster_every: int = 10,
      warmup_rounds: int = 10,
      server_learning_rate: float = 1.0,
      weighted: bool = True,
      min_split_size: int = MIN_SPLIT_SIZE,
      split_rule: str = DEFAULT_SPLIT_RULE,
      split_mean_norm_max: float = DEFAULT_SPLIT_MEAN_NORM_MAX,
      split_max_norm_min: float = DEFAULT_SPLIT_MAX_NORM_MIN,
      split_gamma_max: float = DEFAULT_SPLIT_GAMMA_MAX,
      split_separation: str = DEFAULT_SPLIT_SEPARATION,
      update_window: int | None = None,
      projection_dim: int = DEFAULT_PROJECTION_DIM,
      projection_seed: int = 0,
      ground_truth: Sequence[int] | None = None,
      tables: client_state.Tables = client_state.IN_MEMORY,
      model_aggregator: tff.aggregators.AggregationFactory | None = None,
      update_fn: attack_client_work.UpdateFn | None = None,
  ):
    """Builds the computations (once); the arguments: the class docstring."""
    _check_schedule(metric, num_clusters, recluster_every, warmup_rounds,
                    update_window, projection_dim, min_split_size)
    _check_split_rule(split_rule, split_mean_norm_max, split_max_norm_min,
                      split_gamma_max, split_separation)
    _check_clients(client_ids, ground_truth)
    window = recluster_every if update_window is None else update_window
    self._model_fn = model_fn
    self._client_ids = tuple(client_ids)
    self._pos = {c: i for i, c in enumerate(self._client_ids)}
    self.metric = metric
    self.num_clusters = num_clusters
    self.recluster_every = recluster_every
    self.warmup_rounds = warmup_rounds
    self.min_split_size = min_split_size
    self.split_rule = split_rule
    self.split_mean_norm_max = float(split_mean_norm_max)
    self.split_max_norm_min = float(split_max_norm_min)
    self.split_gamma_max = float(split_gamma_max)
    self.split_separation = split_separation
    self.update_window = int(window)
    self.weighted = weighted
    self.ground_truth = (None if ground_truth is None
                         else np.asarray(ground_truth, np.int64))
    self.computations = _Computations(
        model_fn, client_optimizer, weighted, num_clusters,
        server_learning_rate, projection_dim, projection_seed,
        len(self._client_ids), model_aggregator, update_fn,
    )
    self.sketch_dim = self.computations.sketch_dim
    self.sketches = tables.table('cluster_sketches', len(self._client_ids),
                                 [(self.sketch_dim,)], [np.float32])
    # The decisions of the last clustering step (for callers and tests).
    self.last_decisions: dict[int, clustering.SplitDecision] = {}

  @property
  def client_ids(self) -> tuple[str, ...]:
    """The training clients, in the order state arrays are indexed by."""
    return self._client_ids

  # --- state -------------------------------------------------------------

  def initialize(self):
    weights = self.computations.initial_weights()
    trainable, non_trainable = weights.trainable, weights.non_trainable
    k, n = self.num_clusters, len(self._client_ids)
    p = self.sketch_dim
    stack = lambda ts: [np.stack([np.asarray(t)] * k) for t in ts]
    models = tff.learning.models.ModelWeights(
        trainable=stack(trainable), non_trainable=stack(non_trainable)
    )
    zeros = lambda ts: [np.zeros((k,) + np.shape(t), np.asarray(t).dtype)
                        for t in ts]
    return collections.OrderedDict(
        models=models,
        num_clusters=np.int32(1),
        assignments=np.zeros(n, np.int32),
        resolved=np.ones(n, np.int32),
        split_parent=np.full(k, -1, np.int32),
        split_base=tff.learning.models.ModelWeights(
            trainable=zeros(trainable), non_trainable=zeros(non_trainable)
        ),
        # Reference updates of each split, projected (clustering.sketch).
        split_ref_stayed=np.zeros((k, p), np.float32),
        split_ref_moved=np.zeros((k, p), np.float32),
        # Each client's most recent projected update, its round (0 = none)
        # and weight: what a clustering step compares.
        sketches=self.sketches.empty_index(),
        sketch_round=np.zeros(n, np.int32),
        sketch_weight=np.zeros(n, np.float32),
    )

  def is_clustering_round(self, round_num: int) -> bool:
    if self.num_clusters == 1 or round_num <= self.warmup_rounds:
      return False
    return (round_num - self.warmup_rounds - 1) % self.recluster_every == 0

  def _next_clustering_round(self, round_num: int) -> int:
    first = self.warmup_rounds + 1
    if round_num <= first:
      return first
    m = -(-(round_num - first) // self.recluster_every)
    return first + m * self.recluster_every

  def needs_sketches(self, state, round_num: int) -> bool:
    """Whether this round's projected updates are kept: it lies in the
    window of the next clustering step and a split is still possible."""
    if self.num_clusters == 1 or int(state['num_clusters']) >= self.num_clusters:
      return False
    return self._next_clustering_round(round_num) - round_num < self.update_window

  def _positions(self, client_ids):
    try:
      return np.array([self._pos[c] for c in client_ids], np.int64)
    except KeyError as e:
      raise ValueError(
          f'client {e.args[0]!r} is not one of the {len(self._pos)} training'
          ' clients this algorithm was built for'
      ) from None

  # --- the split tree ----------------------------------------------------

  def _descend(self, state, clusters, resolved, datasets):
    """Moves clients down the splits they have not accounted for.

    Returns (clusters, number of local updates computed).
    """
    clusters = np.array(clusters, np.int32)
    resolved = np.array(resolved, np.int32)
    total = int(state['num_clusters'])
    parent = np.asarray(state['split_parent'])
    stayed_refs = np.asarray(state['split_ref_stayed'], np.float64)
    moved_refs = np.asarray(state['split_ref_moved'], np.float64)
    extra = 0
    while True:
      pending = []
      for i in range(len(clusters)):
        nxt = [s for s in range(max(int(resolved[i]), 1), total)
               if parent[s] == clusters[i]]
        if nxt:
          pending.append((i, nxt[0]))
        else:
          resolved[i] = total
      if not pending:
        return clusters, extra
      idx = [i for i, _ in pending]
      splits = [s for _, s in pending]
      outputs = self.computations.client_updates(
          state['split_base'], _at_clients(splits),
          [datasets[i] for i in idx],
      )
      extra += len(idx)
      for i, s, out in zip(idx, splits, outputs):
        update = np.asarray(out['sketch'], np.float64)
        if clustering.prefers_second(update, stayed_refs[s], moved_refs[s],
                                     self.metric):
          clusters[i] = s
        resolved[i] = s + 1

  def assign_clients(self, state, datasets: Sequence[tf.data.Dataset]):
    """Clusters for new clients (training-format datasets), by the metric:
    each walks the split tree from the root."""
    n = len(datasets)
    datasets = list(datasets)
    if self.computations.attacked:
      # Placed for evaluation, not training: nobody attacks.
      datasets = [attack_client_work.attacked_data(
          d, attack_client_work.attack_input(False)) for d in datasets]
    clusters, _ = self._descend(
        state, np.zeros(n, np.int32), np.ones(n, np.int32), datasets)
    return clusters

  # --- one round ---------------------------------------------------------

  def _store_sketches(self, state, pos, round_num, sketches, weights):
    """Keeps each client's newest projected update (finite ones only)."""
    rounds = np.array(state['sketch_round'], np.int32)
    stored_w = np.array(state['sketch_weight'], np.float32)
    kept, rows = [], []
    for p, sk, w in zip(pos, sketches, weights):
      sk = np.asarray(sk, np.float32)
      if w > 0 and np.all(np.isfinite(sk)):
        kept.append(p)
        rows.append(sk)
        rounds[p], stored_w[p] = round_num, w
    state['sketches'] = self.sketches.write(
        round_num, state['sketches'], kept,
        [np.stack(rows) if rows else np.zeros((0, self.sketch_dim), np.float32)])
    state['sketch_round'] = rounds
    state['sketch_weight'] = stored_w

  def next(self, state, round_num, client_ids, client_datasets):
    """One round (module doc): the sampled clients walk the split tree to
    their clusters and train their cluster's model, and each cluster
    averages its own clients' updates; a clustering step may split
    clusters first.

        (state, int, [str] * n, [B*] * n) -> (state, metric groups)
    """
    pos = self._positions(client_ids)
    datasets = list(client_datasets)
    if self.computations.attacked:
      datasets = self.with_attack_inputs(round_num, client_ids, datasets)
    state = collections.OrderedDict(state)
    before = np.array(state['assignments'], np.int32)[pos]
    cluster_metrics = collections.OrderedDict()
    clusters = self._place(state, pos, before, round_num, datasets,
                           cluster_metrics)
    state, assignments, clusters, new_models, metrics = self._train(
        state, pos, round_num, clusters, datasets, before, cluster_metrics)
    assignments[pos] = clusters
    resolved = np.array(state['resolved'], np.int32)
    resolved[pos] = int(state['num_clusters'])
    state['models'] = _weights(new_models)
    state['assignments'] = assignments
    state['resolved'] = resolved
    self._add_cluster_metrics(cluster_metrics, state, metrics['clusters'])
    train = collections.OrderedDict(
        (name, np.asarray(v)) for name, v in metrics['train'].items())
    train[client_metrics.KEY] = metrics[client_metrics.KEY]
    # The rule's measurements, or the mean's count of excluded clients.
    aggregator = metrics.get('aggregator', metrics)
    return state, client_metrics.unpack(collections.OrderedDict(
        train=train, clusters=cluster_metrics,
        **attack_metrics.round_groups(aggregator, len(client_ids),
                                      self.round_mask(client_ids))))

  def _place(self, state, pos, before, round_num, datasets, cluster_metrics):
    """The sampled clients' clusters before training: a clustering step
    re-checks every sampled client from the root; otherwise a client walks
    only the splits its cluster had since it was placed."""
    if self.is_clustering_round(round_num):
      clusters, extra = self._descend(
          state, np.zeros(len(pos), np.int32), np.ones(len(pos), np.int32),
          datasets)
    else:
      resolved = np.asarray(state['resolved'], np.int32)
      clusters, extra = self._descend(state, before, resolved[pos], datasets)
      cluster_metrics['moved_on_return'] = int(np.sum(clusters != before))
    cluster_metrics['extra_local_updates'] = extra
    return clusters

  def _train(self, state, pos, round_num, clusters, datasets, before,
             cluster_metrics):
    """The round's training and aggregation: at a clustering step the
    updates come back to the server, clusters may split, then each cluster
    aggregates; in a step's window the projected updates come back; else
    one call does the round.

    Returns (state, every training client's cluster, the round's clients'
    clusters, the new models, the computation's metrics).
    """
    models = _copy_weights(_weights(state['models']))
    assignments = np.array(state['assignments'], np.int32)
    if self.is_clustering_round(round_num):
      outputs = self.computations.client_updates(
          models, _at_clients(clusters), datasets)
      self._store_sketches(
          state, pos, round_num, [o['sketch'] for o in outputs],
          [float(o['weight']) for o in outputs])
      assignments[pos] = clusters
      state, assignments, step_metrics = self._clustering_step(
          state, models, assignments, round_num)
      clusters = assignments[pos]
      cluster_metrics['changed'] = int(np.sum(clusters != before))
      cluster_metrics.update(step_metrics)
      new_models, metrics = self.computations.aggregate(
          state['models'], _at_clients(clusters), outputs)
    elif self.needs_sketches(state, round_num):
      new_models, metrics, sketches = self.computations.train_round_sketched(
          models, _at_clients(clusters), datasets)
      self._store_sketches(
          state, pos, round_num, [s['sketch'] for s in sketches],
          [float(s['weight']) for s in sketches])
    else:
      new_models, metrics = self.computations.train_round(
          models, _at_clients(clusters), datasets)
    return state, assignments, clusters, new_models, metrics

  def _add_cluster_metrics(self, out, state, per_cluster) -> None:
    """The clusters' number and sizes, each cluster's training accuracy and
    loss (clusters that trained), the unresolved clients and the purity
    against the ground truth (when given), added to `out`."""
    total = int(state['num_clusters'])
    assignments = state['assignments']
    out['num_clusters'] = total
    sizes = np.bincount(assignments, minlength=self.num_clusters)
    for c in range(self.num_clusters):
      out[f'size_{c}'] = int(sizes[c])
    for c in range(total):
      n_c = float(np.asarray(per_cluster['num_examples'])[c])
      if n_c > 0:
        out[f'train_accuracy_{c}'] = float(
            np.asarray(per_cluster['sparse_categorical_accuracy'])[c])
        out[f'train_loss_{c}'] = float(np.asarray(per_cluster['loss'])[c])
    out['unresolved'] = self.unresolved_clients(state)
    if self.ground_truth is not None:
      out['purity'] = clustering.purity(assignments, self.ground_truth)
    out.move_to_end('num_clusters', last=False)

  def _window_members(self, state, round_num):
    """Training-client positions whose stored update is recent enough:
    computed in rounds (round_num - update_window, round_num]."""
    rounds = np.asarray(state['sketch_round'])
    return np.flatnonzero(
        (rounds > round_num - self.update_window) & (rounds > 0))

  def _compared(self, state, assignments, round_num) -> '_Compared':
    """The updates the clustering step of `round_num` compares."""
    members = self._window_members(state, round_num)
    (vectors,) = self.sketches.read(state['sketches'], members)
    weights = np.asarray(state['sketch_weight'], np.float64)[members]
    if not self.weighted:
      weights = np.ones_like(weights)
    return _Compared(members, vectors.astype(np.float64), weights,
                     np.asarray(state['sketch_round'])[members],
                     assignments[members])

  def _clustering_step(self, state, models, assignments, round_num):
    """Decides splits on the window's updates (module doc).

    Returns the new state (models with new clusters initialised from their
    parents, split tree), every training client's cluster and the step's
    metrics.
    """
    compared = self._compared(state, assignments, round_num)
    clusters = compared.clusters
    total = int(state['num_clusters'])
    d = clustering.dissimilarity(compared.vectors, self.metric)
    metrics = collections.OrderedDict()
    self.last_decisions = {}
    if self.split_rule == 'gap':
      new_sub, splits, best_gap = clustering.divisive_clustering(
          d, clusters, compared.weights, num_clusters=total,
          max_clusters=self.num_clusters, min_size=self.min_split_size,
      )
    else:
      new_sub, splits, best_gap = self._sattler_splits(
          compared, total, round_num, metrics)
    new_assignments = np.array(assignments, np.int32)
    new_assignments[compared.members] = new_sub
    if splits:
      state = self._apply_splits(state, models, splits, compared, total,
                                 round_num)
    else:
      state = collections.OrderedDict(state, models=models)
    comparable = clusters[:, None] == clusters[None, :]
    order = np.lexsort((np.arange(len(clusters)), new_sub))
    metrics['splits'] = len(splits)
    metrics['split_gap'] = float(best_gap)
    metrics['compared'] = len(compared.members)
    metrics['moved_at_split'] = int(np.sum(new_sub != clusters))
    if self.ground_truth is not None and len(compared.members):
      metrics['purity_compared'] = clustering.purity(
          new_sub, self.ground_truth[compared.members])
    metrics['similarity'] = clustering.similarity_image(
        d, self.metric, order, comparable)
    return state, new_assignments, metrics

  def _sattler_splits(self, compared, total, round_num, metrics):
    """Sattler et al.'s Algorithm 1 on each cluster's compared updates
    (module doc). Keeps each cluster's decision in `last_decisions` and its
    values in `metrics`.

    Returns (each compared client's new cluster, the splits, the largest
    normalised gap of a bipartition).
    """
    vectors, weights, clusters = (compared.vectors, compared.weights,
                                  compared.clusters)
    new_sub = np.array(clusters, np.int32)
    candidates = []
    for c in range(total):
      idx = np.flatnonzero(clusters == c)
      dec = clustering.split_decision(
          vectors[idx], weights[idx], metric=self.metric, rule='sattler',
          mean_norm_max=self.split_mean_norm_max,
          max_norm_min=self.split_max_norm_min,
          gamma_max=self.split_gamma_max,
          separation=self.split_separation, min_size=self.min_split_size,
          can_split=total < self.num_clusters)
      self.last_decisions[c] = dec
      if dec.split:
        candidates.append((dec.margin, -c, c, idx, dec))
    # Most clearly separated first; at most one split per cluster and
    # step (the halves must approach stationarity again before splitting).
    splits = []
    for _, _, c, idx, dec in sorted(candidates, reverse=True):
      if total + len(splits) >= self.num_clusters:
        self.last_decisions[c] = dataclasses.replace(
            dec, code=clustering.CLUSTER_CAP)
        continue
      first, second = idx[dec.bipartition.first], idx[dec.bipartition.second]
      if weights[second].sum() > weights[first].sum():
        first, second = second, first
      child = total + len(splits)
      new_sub[second] = child
      splits.append(clustering.Split(c, child, np.sort(first),
                                     np.sort(second)))
    gaps = [dec.bipartition.normalized_gap
            for dec in self.last_decisions.values()
            if dec.bipartition is not None]
    for c, dec in self.last_decisions.items():
      self._report_decision(metrics, round_num, c, dec)
    return new_sub, splits, max(gaps) if gaps else float('nan')

  def _report_decision(self, metrics, round_num, c, dec) -> None:
    """Cluster c's split decision: its values in `metrics`, and a log line."""
    metrics[f'compared_{c}'] = dec.num_clients
    metrics[f'mean_update_norm_{c}'] = dec.mean_norm
    metrics[f'max_update_norm_{c}'] = dec.max_norm
    metrics[f'alpha_max_cross_{c}'] = dec.alpha_max_cross
    metrics[f'alpha_mean_cross_{c}'] = dec.alpha_mean_cross
    metrics[f'gamma_bound_{c}'] = dec.gamma_bound
    metrics[f'split_decision_{c}'] = dec.code
    logging.info(
        'clustering step, round %d, cluster %d: %s (%d clients compared,'
        ' |mean update| %.4g (eps_1 %.4g), max |update| %.4g (eps_2'
        ' %.4g), alpha_max_cross %.4f, alpha_mean_cross %.4f,'
        ' gamma_bound (%s) %.4f (gamma_max %.4f))', round_num, c,
        dec.reason, dec.num_clients, dec.mean_norm,
        self.split_mean_norm_max, dec.max_norm, self.split_max_norm_min,
        dec.alpha_max_cross, dec.alpha_mean_cross, self.split_separation,
        dec.gamma_bound, self.split_gamma_max)

  def _apply_splits(self, state, models, splits, compared, total, round_num):
    """The state after `splits`: each new cluster starts from its parent's
    model, which is also its split's base model, and keeps the split's
    reference updates (`_split_references`); every compared client is
    placed (it accounts for the new splits; the others walk the split tree
    when next sampled)."""
    state = collections.OrderedDict(state)
    models = _copy_weights(models)
    base_w = _copy_weights(_weights(state['split_base']))
    ref_stayed = np.array(state['split_ref_stayed'], np.float32)
    ref_moved = np.array(state['split_ref_moved'], np.float32)
    parent = np.array(state['split_parent'], np.int32)
    for split in splits:
      p, c = split.parent, split.child
      for ts in (models.trainable, models.non_trainable):
        for t in ts:
          t[c] = t[p]
      for src, dst in ((models.trainable, base_w.trainable),
                       (models.non_trainable, base_w.non_trainable)):
        for s, t in zip(src, dst):
          t[c] = s[p]
      ref_stayed[c], ref_moved[c] = _split_references(split, compared,
                                                      round_num)
      parent[c] = p
    state['split_base'] = base_w
    state['split_ref_stayed'] = ref_stayed
    state['split_ref_moved'] = ref_moved
    state['split_parent'] = parent
    state['num_clusters'] = np.int32(total + len(splits))
    state['models'] = models
    resolved = np.array(state['resolved'], np.int32)
    resolved[compared.members] = total + len(splits)
    state['resolved'] = resolved
    return state

  # --- models and evaluation ----------------------------------------------

  def unresolved_mask(self, state) -> np.ndarray:
    """[N] bool: training clients whose cluster split after they were last
    placed (they are placed by the metric when next sampled)."""
    total = int(state['num_clusters'])
    parent = np.asarray(state['split_parent'])
    return np.array([
        any(parent[s] == a for s in range(max(int(r), 1), total))
        for a, r in zip(np.asarray(state['assignments']),
                        np.asarray(state['resolved']))
    ], bool)

  def unresolved_clients(self, state) -> int:
    return int(self.unresolved_mask(state).sum())

  def cluster_sizes(self, state) -> np.ndarray:
    return np.bincount(
        np.asarray(state['assignments']), minlength=self.num_clusters
    )

  def cluster_model_weights(self, state, cluster: int):
    return _slot(_weights(state['models']), cluster)

  def get_model_weights(self, state):
    """The model of the cluster with most training clients (ties: lowest id);
    with one cluster, the FedAvg model."""
    return self.cluster_model_weights(
        state, int(np.argmax(self.cluster_sizes(state)))
    )

  def candidate_models(self, state):
    """(each existing cluster's model, the largest cluster): the models a
    client that never trained chooses from (IFCA, Ghosh et al. 2020: the
    one of least loss on its data, `evaluation.model_choice`).

        state -> ([ModelWeights] * num_clusters, int)
    """
    total = int(state['num_clusters'])
    largest = int(np.argmax(self.cluster_sizes(state)[:total]))
    return [self.cluster_model_weights(state, c) for c in range(total)], largest

  def eval_model_groups(self, state, client_ids):
    """Each training client is evaluated with its cluster's model.

    Group g is cluster g. A client that is not a training client has no
    cluster and is evaluated with the largest cluster's model; a run with
    held-out clients lets each choose its cluster on its own data instead
    (`candidate_models`).
    """
    total = int(state['num_clusters'])
    if total == 1:
      return [(self.cluster_model_weights(state, 0),
               list(range(len(client_ids))))]
    assignments = np.asarray(state['assignments'])
    largest = int(np.argmax(self.cluster_sizes(state)))
    groups = [[] for _ in range(total)]
    for i, cid in enumerate(client_ids):
      p = self._pos.get(cid)
      groups[largest if p is None else int(assignments[p])].append(i)
    return [(self.cluster_model_weights(state, c), groups[c])
            for c in range(total)]


def build_clustered_fed_avg(
    model_fn: ModelFn,
    client_ids: Sequence[str],
    *,
    client_optimizer: tff.learning.optimizers.Optimizer,
    metric: str,
    num_clusters: int,
    recluster_every: int,
    warmup_rounds: int,
    **options,
) -> ClusteredFedAvg:
  """Clustered FedAvg (see the module docstring): a `ClusteredFedAvg` whose
  metric and schedule are given; `options` are its other keyword arguments
  (its docstring)."""
  return ClusteredFedAvg(
      model_fn, client_ids=client_ids, client_optimizer=client_optimizer,
      metric=metric, num_clusters=num_clusters,
      recluster_every=recluster_every, warmup_rounds=warmup_rounds,
      **options)
