"""A diverged model stops the run with one line; its rounds are never
reported as 0.0 losses; the last finite model is the latest checkpoint."""

import collections
import os

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_research.program import hooks
from tests import fl_testing


class _Weights:
  """An algorithm whose model after round r is `weights[r]`."""

  def __init__(self, weights):
    self._weights = weights

  def get_model_weights(self, state):
    return tff.learning.models.ModelWeights(
        trainable=[np.asarray(self._weights[state])], non_trainable=[])


def _record(r, loss=1.0, examples=10.0):
  rec = hooks.RoundRecord(r, ['a', 'b'], ['a', 'b'], state_before=r - 1,
                          state=r)
  rec.metrics = {'client_loss': {'mean': loss},
                 'train': {'num_examples': examples}}
  return rec


def _guard(weights):
  guard = hooks.DivergenceGuard(_Weights(weights),
                                collections.OrderedDict(
                                    client_learning_rate=0.5))
  guard.start(0, 0)
  return guard


def test_nan_weights_keep_the_previous_round():
  guard = _guard({1: 1.0, 2: 2.0, 3: np.nan})
  guard.after_round(_record(1))
  guard.after_round(_record(2))
  with pytest.raises(hooks.StopRun) as e:
    guard.after_round(_record(3))
  assert e.value.round_num == 2 and e.value.state == 2
  assert str(e.value) == (
      'the global model diverged at round 3 (a weight is not finite); kept'
      ' the last finite model, round 2, as the latest checkpoint; lower'
      ' --client_learning_rate (now 0.5) and re-run with a new'
      ' --experiment_name')


def test_a_non_finite_start_loss_blames_the_previous_round():
  guard = _guard({1: 1.0, 2: 1e30, 3: 1e30})
  guard.after_round(_record(1))
  guard.after_round(_record(2))
  # Round 3's clients start from round 2's model and see a NaN loss.
  with pytest.raises(hooks.StopRun, match='diverged at round 2') as e:
    guard.after_round(_record(3, loss=float('nan')))
  assert e.value.round_num == 1 and e.value.state == 1


def test_a_round_of_only_non_finite_updates_stops():
  guard = _guard({1: 1.0})
  with pytest.raises(hooks.StopRun, match='every one of its 2 client'
                     ' updates was non-finite'):
    guard.after_round(_record(1, examples=0.0))


def test_a_non_finite_held_out_loss_stops():
  guard = _guard({1: 1.0})
  guard.after_round(_record(1))
  with pytest.raises(hooks.StopRun, match=r'its held-out loss is inf'):
    guard.on_evaluation(_record(1), {'loss': float('inf')})


def test_finite_rounds_pass():
  guard = _guard({r: float(r) for r in range(1, 6)})
  for r in range(1, 6):
    assert guard.after_round(_record(r)) == {}
    assert guard.on_evaluation(_record(r), {'loss': 1.0}) == {}


def test_client_learning_rate_500_stops_with_one_line(tff_worker, tmp_path):
  with pytest.raises(ValueError) as e:
    fl_testing.run_experiment(
        dict(model='mlp', client_learning_rate=500.0, total_rounds=4,
             eval_every=5, rounds_per_checkpoint=1, num_clients=6,
             clients_per_round=3, progress=False), tmp_path, 'div')
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith('the global model diverged at round 1')
  assert '--client_learning_rate (now 500)' in message
  rows = fl_testing.read_csv(tmp_path / 'div' / 'metrics.csv')
  # At most the round that diverged is logged, with its real non-finite
  # loss; no round reports the 0.0 loss of a round that trained on nothing.
  assert [r['round'] for r in rows] in ([], [1])
  assert all(not np.isfinite(r['train_loss']) for r in rows)
  # No checkpoint of a diverged model exists to resume from.
  checkpoints = tmp_path / 'div' / 'checkpoints'
  assert not checkpoints.exists() or os.listdir(checkpoints) == []
