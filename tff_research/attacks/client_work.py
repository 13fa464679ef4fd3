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

Type signature of the wrapped process (S, M, D, R, Me as the inner's):

    next: (<S@SERVER, {M}@CLIENTS, {<data=D, attack=A*>}@CLIENTS> ->
           <state=S@SERVER, result={R}@CLIENTS, measurements=Me@SERVER>)

with A = <malicious=bool, seed=int64[2]> and R = ClientResult(update,
update_weight); only `update` is changed.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

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


def update_attack(kind: str, scale: float) -> UpdateFn:
  """The update transform of attack `kind`, applied where `malicious`.

  Args:
    kind: 'sign_flip' (-scale u), 'gaussian' (N(0, scale^2)) or
      'backdoor' (scale u: the model-replacement boost,
      `backdoor.replacement_factor`).
    scale: s > 0.
  """
  if kind == 'sign_flip':
    attacked = lambda u, attack: sign_flip.sign_flip(u, scale)  # pylint: disable=unnecessary-lambda-assignment
  elif kind == 'gaussian':
    attacked = lambda u, attack: gaussian.gaussian_update(  # pylint: disable=unnecessary-lambda-assignment
        u, scale, attack['seed'])
  elif kind == 'backdoor':
    attacked = lambda u, attack: backdoor.boost(u, scale)  # pylint: disable=unnecessary-lambda-assignment
  else:
    raise ValueError(f'--attack={kind} has no update transform; valid:'
                     f' {", ".join(UPDATE_ATTACKS)}')

  def update_fn(update, attack):
    return tf.nest.map_structure(
        lambda a, u: tf.where(attack['malicious'], a, u),
        attacked(update, attack), update)

  return update_fn


def with_update_attack(client_work: tff.learning.templates.ClientWorkProcess,
                       update_fn: UpdateFn
                       ) -> tff.learning.templates.ClientWorkProcess:
  """`client_work` whose clients pass their update through `update_fn`."""
  state_type, weights_type, data_type = (
      client_work.next.type_signature.parameter)
  attack_type = tff.SequenceType(
      tff.types.tensorflow_to_type(attack_input(False).element_spec))
  client_data_type = tff.FederatedType(
      collections.OrderedDict([(DATA, data_type.member),
                               (ATTACK, attack_type)]), tff.CLIENTS)
  result_type = client_work.next.type_signature.result.result.member

  @tff.tensorflow.computation(attack_type)
  def read_attack(dataset):
    return dataset.reduce(
        collections.OrderedDict(malicious=tf.constant(False),
                                seed=tf.zeros([2], tf.int64)),
        lambda _, element: element)

  @tff.tensorflow.computation(result_type, read_attack.type_signature.result)
  def attack_fn(result, attack):
    return tff.learning.templates.ClientResult(
        update=update_fn(result.update, attack),
        update_weight=result.update_weight)

  @tff.federated_computation(state_type, weights_type, client_data_type)
  def next_fn(state, weights, client_data):
    output = client_work.next(state, weights, client_data[DATA])
    attack = tff.federated_map(read_attack, client_data[ATTACK])
    return tff.templates.MeasuredProcessOutput(
        state=output.state,
        result=tff.federated_map(attack_fn, (output.result, attack)),
        measurements=output.measurements)

  return tff.learning.templates.ClientWorkProcess(
      client_work.initialize, next_fn,
      get_hparams_fn=client_work.get_hparams,
      set_hparams_fn=client_work.set_hparams)
