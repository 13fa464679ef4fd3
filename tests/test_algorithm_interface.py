"""An algorithm of two methods (`initialize`, `next`) gets every other
capability the loop uses from `base.FederatedAlgorithm`'s defaults."""

import numpy as np
import tensorflow_federated as tff

from tests import fl_testing
from tff_research.algorithms import base


class _TwoMethods(base.FederatedAlgorithm):
  """TFF's weighted FedAvg, adapted in two methods."""

  def __init__(self):
    self.process = tff.learning.algorithms.build_weighted_fed_avg(
        fl_testing.linear_model_fn(),
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0))

  def initialize(self):
    return self.process.initialize()

  def next(self, state, round_num, client_ids, client_datasets):
    output = self.process.next(state, list(client_datasets))
    return output.state, output.metrics['client_work']


def test_two_methods_train_fedavg_and_take_the_defaults(tff_worker):
  del tff_worker
  clients = fl_testing.make_clients([7, 3, 12], seed=3)
  algorithm = _TwoMethods()
  trainable, metrics = fl_testing.run_rounds(algorithm, clients, 2,
                                             batch_size=4)
  w, b = (np.asarray(v) for v in tff.learning.models.ModelWeights.from_model(
      fl_testing.linear_model_fn()()).trainable)
  for _ in range(2):
    w, b = fl_testing.numpy_fed_avg_round(w, b, clients, 0.1, 4)
  np.testing.assert_allclose(trainable[0], w, atol=1e-5)
  np.testing.assert_allclose(trainable[1], b, atol=1e-5)
  assert metrics['train']['num_examples'] == 22
  state = algorithm.initialize()
  weights = algorithm.get_model_weights(state)
  groups = algorithm.eval_model_groups(state, ['a', 'b', 'c'])
  assert len(groups) == 1 and groups[0][1] == [0, 1, 2]
  assert algorithm.plan_rounds(state, 1, 9, None) == (9, None)
  assert algorithm.report(state, 1) == {}
  down, up = algorithm.bytes_per_client(state)
  assert up == sum(np.asarray(v).nbytes for v in weights.trainable)
  assert down == up + sum(np.asarray(v).nbytes for v in weights.non_trainable)
  assert not algorithm.runs_empty_rounds and algorithm.round_mask(['a']) is None
