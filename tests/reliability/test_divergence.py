"""A diverged model stops the run with one line; its rounds are never
reported as 0.0 losses; the last finite model is the latest checkpoint."""

import collections
import os

import numpy as np
import pytest
import tensorflow_federated as tff

from tff_research.run import hooks
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


# --- a divergence noticed one round late --------------------------------------


class _LateDivergingAlgorithm:
  """Round r's model is `weights[r]` (state = round number). Round 3's model
  has finite but huge weights, so the guard only sees it diverge through
  round 4's non-finite start-of-round loss: one round late, after round 3
  was checkpointed."""

  runs_empty_rounds = False

  def __init__(self, weights):
    self._weights = weights

  def initialize(self):
    return {'w': np.zeros(2, np.float32)}

  def plan_rounds(self, state, start, total, sampler):
    del state, start, sampler
    return total, None

  def next(self, state, round_num, client_ids, datasets):
    del client_ids, datasets
    w = np.asarray(state['w'], np.float32)
    # As the dashboard's client_loss: the loss of the model the round starts
    # from; exp overflows to inf for the huge round-3 weights.
    with np.errstate(over='ignore'):
      start_loss = float(np.log(np.sum(np.exp(w.astype(np.float32)))))
    return ({'w': np.full(2, self._weights[round_num], np.float32)},
            {'train': {'loss': 1.0, 'num_examples': 4.0},
             'client_loss': {'mean': start_loss}})

  def get_model_weights(self, state):
    return tff.learning.models.ModelWeights(
        trainable=[np.asarray(state['w'])], non_trainable=[])


class _Fakes:
  """The loop's other collaborators, reduced to what the loop calls."""

  def sample(self, round_num):
    del round_num
    return ['a', 'b']

  def reporting(self, selected, round_num):
    del round_num
    return selected

  def datasets(self, round_num, ids):
    del round_num
    return [None] * len(ids)

  def due(self, round_num, final):
    del round_num, final
    return False

  def release(self, round_num, metrics):
    del round_num
    # As release.py's row: the loop reads the round's wall time back from it.
    return {'train_loss': metrics['train']['loss'],
            'wall_seconds': metrics['train'].get('wall_seconds', 0.0)}

  def flush(self):
    pass


def _run_loop(manager, algorithm, total_rounds):
  from tff_research.run import loop  # pylint: disable=g-import-not-at-top
  fakes = _Fakes()
  guard = hooks.DivergenceGuard(
      algorithm, collections.OrderedDict(client_learning_rate=0.5))
  return loop.run_rounds(
      algorithm=algorithm, sampler=fakes, training_data=fakes,
      state_manager=manager, release=fakes, evaluation=fakes, hooks=[guard],
      total_rounds=total_rounds, rounds_per_checkpoint=1, progress=False,
      log=lambda *_: None)


def test_late_divergence_removes_the_checkpoints_after_the_kept_round(tmp_path):
  from tff_research.run import safe_checkpoints  # pylint: disable=g-import-not-at-top
  import asyncio  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'checkpoints'
  manager = safe_checkpoints.SafeFileProgramStateManager(root)
  algorithm = _LateDivergingAlgorithm({1: 1.0, 2: 2.0, 3: 1e30, 4: 1e30})
  with pytest.raises(ValueError) as e:
    _run_loop(manager, algorithm, total_rounds=6)
  assert str(e.value).startswith(
      'the global model diverged at round 3 (its training loss is inf); kept'
      ' the last finite model, round 2, as the latest checkpoint')
  # Round 3 (finite weights, non-finite loss) had been checkpointed before
  # round 4 revealed it; it is gone, and round 2 is the newest version.
  assert sorted(os.listdir(root)) == ['round_1', 'round_2']
  template = {'round': 0, 'state': algorithm.initialize()}
  state, version = asyncio.run(manager.load_latest(template))
  assert version == 2 and int(state['round']) == 2
  np.testing.assert_array_equal(state['state']['w'], [2.0, 2.0])
  # A re-run resumes from the finite round 2 (and diverges again at round 3,
  # reported the same way, never from a non-finite restored model).
  with pytest.raises(ValueError, match='diverged at round 3'):
    _run_loop(manager, algorithm, total_rounds=6)
  assert sorted(os.listdir(root)) == ['round_1', 'round_2']


def test_late_divergence_before_any_finite_round_keeps_no_checkpoint(tmp_path):
  from tff_research.run import safe_checkpoints  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'checkpoints'
  manager = safe_checkpoints.SafeFileProgramStateManager(root)
  algorithm = _LateDivergingAlgorithm({1: 1e30, 2: 1e30})
  with pytest.raises(ValueError, match=r'diverged at round 1 .*no round before'
                     r' it was finite, so nothing was checkpointed'):
    _run_loop(manager, algorithm, total_rounds=3)
  assert os.listdir(root) == []  # round_1 (saved before round 2) removed


def test_remove_versions_after(tmp_path):
  from tff_research.run import safe_checkpoints  # pylint: disable=g-import-not-at-top
  import asyncio  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'checkpoints'
  manager = safe_checkpoints.SafeFileProgramStateManager(root, keep_total=0)
  for v in range(1, 6):
    asyncio.run(manager.save({'round': v, 'w': np.full(3, v, np.float32)}, v))
  (root / '.unreadable-round_7-abc').mkdir()  # moved aside: not a version
  assert asyncio.run(manager.remove_versions_after(2)) == [3, 4, 5]
  assert sorted(os.listdir(root)) == [
      '.unreadable-round_7-abc', 'round_1', 'round_2']
  assert asyncio.run(manager.remove_versions_after(2)) == []
  assert asyncio.run(manager.remove_versions_after(0)) == [1, 2]
  assert asyncio.run(manager.get_versions()) is None
  with pytest.raises(TypeError):
    asyncio.run(manager.remove_versions_after('2'))
