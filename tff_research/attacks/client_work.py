"""Update attacks inside TFF's client work: a `ClientWorkProcess` wrapper.

An update attack (sign flip, Gaussian noise, a boosted backdoor) changes
what a malicious client *sends*, so it belongs in the client's own
computation, after local training and before the model aggregator.
TFF's builders (`build_weighted_fed_avg`, ...) hide their client work, so
a run with an update attack composes its learning process from TFF's parts
with the wrapped client work:

    client_work = with_update_attack(
        tff.learning.templates.build_model_delta_client_work(...),
        update_attack('sign_flip', scale))
    tff.learning.templates.compose_learning_process(
        initial_model_weights_fn, tff.learning.templates.build_broadcast_process(M),
        client_work, aggregator, tff.learning.templates.build_apply_optimizer_finalizer(...))

Each client then passes `OrderedDict(data=its batches, attack=attack_input(
malicious, seed))`: the flag and the Gaussian seed travel as a one-element
dataset because TFF's client work takes only (structures of) sequences as
client data. An honest client's update passes unchanged, bit for bit.
Data attacks need no update transform (`update_fn=None`): the wrapper then
only reads the flag.

Which positions are malicious. The wrapper collects every client's flag
with the aggregators' concatenating `federated_aggregate`
(`aggregators.collection.federated_collect`) into the measurement
`attack/malicious_mask` (float32[capacity]). It is merged together with the
model aggregator's `kept_share` in the same round computation, so the two
line up position by position on one machine and split across workers:
`selection.kept_malicious(kept_share, malicious_mask)` counts the malicious
clients the rule kept.

Type signature of the wrapped process (S, M, D, R, Me as the inner's, C the
capacity):

    next: (<S@SERVER, {M}@CLIENTS, {<data=D, attack=A*>}@CLIENTS> ->
           <state=S@SERVER, result={R}@CLIENTS,
            measurements=<Me..., attack=<malicious_clients=float32,
                                         malicious_mask=float32[C]>>@SERVER>)

with A = <malicious=bool, seed=int64[2]> and R = ClientResult(update,
update_weight); only `update` is changed.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import tensorflow as tf
import tensorflow_federated as tff

from tff_research.aggregators import collection
from tff_research.attacks import backdoor
from tff_research.attacks import gaussian
from tff_research.attacks import sign_flip

DATA = 'data'
ATTACK = 'attack'
UPDATE_ATTACKS = ('sign_flip', 'gaussian', 'backdoor')

# update_fn(update V, attack <malicious, seed>) -> V, in TensorFlow
UpdateFn = Callable[[Any, Any], Any]


def attack_input(malicious: bool, seed: Sequence[int] = (0, 0)
                 ) -> tf.data.Dataset:
  """A client's attack parameters, the `attack` entry of its client data.

  Args:
    malicious: whether the client attacks.
    seed: int64[2], `gaussian.noise_seed(run_seed, round, client_id)` for a
      Gaussian attacker (unused by the others).
  """
  return tf.data.Dataset.from_tensors(collections.OrderedDict(
      malicious=tf.constant(bool(malicious)),
      seed=tf.constant(seed, tf.int64)))


def attacked_data(data, attack) -> collections.OrderedDict:
  """<data=data, attack=attack>: a client's data (a dataset, or its type)
  beside its attack input (`attack_input`, or `attack_input_type()`), as
  the client work of an update attack takes it."""
  return collections.OrderedDict([(DATA, data), (ATTACK, attack)])


def attack_input_type() -> tff.Type:
  """A*, the type of `attack_input`."""
  return tff.SequenceType(
      tff.types.tensorflow_to_type(attack_input(False).element_spec))


def read_attack_input(dataset) -> collections.OrderedDict:
  """<malicious, seed> of an `attack_input` dataset (in TensorFlow)."""
  return dataset.reduce(
      collections.OrderedDict(malicious=tf.constant(False),
                              seed=tf.zeros([2], tf.int64)),
      lambda _, element: element)


def update_attack(kind: str, scale: float) -> UpdateFn:
  """The update transform of attack `kind`, applied where `malicious`.

  Args:
    kind: 'sign_flip' (-scale u), 'gaussian' (N(0, scale^2)) or
      'backdoor' (scale u: the model-replacement boost,
      `backdoor.replacement_factor`).
    scale: s > 0.
  """
  if kind not in UPDATE_ATTACKS:
    raise ValueError(f'--attack={kind} has no update transform; valid:'
                     f' {", ".join(UPDATE_ATTACKS)}')

  def attacked(u, attack):
    if kind == 'sign_flip':
      return sign_flip.sign_flip(u, scale)
    if kind == 'gaussian':
      return gaussian.gaussian_update(u, scale, attack['seed'])
    return backdoor.boost(u, scale)

  def update_fn(update, attack):
    return tf.nest.map_structure(
        lambda a, u: tf.where(attack['malicious'], a, u),
        attacked(update, attack), update)

  return update_fn


def takes_attack(process) -> bool:
  """Whether `process.next` (a learning process or client work) takes client
  data with attack inputs (`with_update_attack`)."""
  parameter = process.next.type_signature.parameter
  data = parameter[len(parameter) - 1].member
  return isinstance(data, tff.StructType) and [
      name for name, _ in tff.structure.iter_elements(data)] == [DATA, ATTACK]


def with_update_attack(
    client_work: tff.learning.templates.ClientWorkProcess,
    update_fn: Optional[UpdateFn] = None,
    capacity: int = collection.DEFAULT_CAPACITY,
) -> tff.learning.templates.ClientWorkProcess:
  """`client_work` whose clients read their attack input, pass their update
  through `update_fn` (None: unchanged) and report where the malicious
  clients are (`capacity`: the most clients a round can have)."""
  capacity = collection.check_capacity(capacity)
  state_type, weights_type, data_type = (
      client_work.next.type_signature.parameter)
  attack_type = attack_input_type()
  client_data_type = tff.FederatedType(
      attacked_data(data_type.member, attack_type), tff.CLIENTS)
  result_type = client_work.next.type_signature.result.result.member

  @tff.tensorflow.computation(attack_type)
  def read_attack(dataset):
    return read_attack_input(dataset)

  @tff.tensorflow.computation(result_type, read_attack.type_signature.result)
  def attack_fn(result, attack):
    if update_fn is None:
      return result
    return tff.learning.templates.ClientResult(
        update=update_fn(result.update, attack),
        update_weight=result.update_weight)

  @tff.tensorflow.computation(read_attack.type_signature.result)
  def flag_row(attack):
    # Every client takes a position; the row carries its flag.
    return collections.OrderedDict(
        update=tf.cast(attack['malicious'], tf.float32)[tf.newaxis],
        entered=tf.constant(1, tf.int32))

  def flags_rule(rows):
    return tf.zeros([1]), rows[:, 0], {}

  def flags_finish(aggregate, measurements):
    del aggregate
    return collections.OrderedDict(
        malicious_clients=measurements[collection.KEPT],
        malicious_mask=measurements[collection.KEPT_SHARE])

  @tff.federated_computation(state_type, weights_type, client_data_type)
  def next_fn(state, weights, client_data):
    output = client_work.next(state, weights, client_data[DATA])
    attack = tff.federated_map(read_attack, client_data[ATTACK])
    flags = collection.federated_collect(
        tff.federated_map(flag_row, attack), 1, flags_rule, capacity,
        flags_finish)

    @tff.tensorflow.computation(output.measurements.type_signature.member,
                                flags.type_signature.member)
    def measurements_fn(inner, flags):
      out = collections.OrderedDict(
          inner if isinstance(inner, Mapping) else tff.structure.to_odict(
              inner))
      out[ATTACK] = flags
      return out

    return tff.templates.MeasuredProcessOutput(
        state=output.state,
        result=tff.federated_map(attack_fn, (output.result, attack)),
        measurements=tff.federated_map(
            measurements_fn, tff.federated_zip((output.measurements, flags))))

  return tff.learning.templates.ClientWorkProcess(
      client_work.initialize, next_fn,
      get_hparams_fn=client_work.get_hparams,
      set_hparams_fn=client_work.set_hparams)
