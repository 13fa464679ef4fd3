"""Held-out evaluation: per-client metrics are exact, the mean is TFF's."""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_research import evaluation
from tff_research.data import emnist
from tff_research.data import federated_data
from tff_research.data import store_client_data
from tff_research.data import preprocessing
from tff_research.data import tagged
from tff_research.evaluation import per_client
from tff_research.run import client_split
from tff_research.run import config as config_lib
from tests import fl_testing


def test_per_client_metrics_match_numpy_and_fed_eval_mean(tff_worker):
  rng = np.random.default_rng(1)
  w = rng.normal(size=(fl_testing.INPUT_DIM, 10)).astype(np.float32) * 0.05
  b = rng.normal(size=10).astype(np.float32)
  weights = tff.learning.models.ModelWeights(trainable=[w, b],
                                             non_trainable=[])
  clients = fl_testing.make_clients([6, 13, 2], seed=2)
  datasets = [fl_testing.to_dataset(x, y, batch_size=5) for x, y in clients]
  result = evaluation.Evaluator(fl_testing.linear_model_fn()).evaluate(
      weights, datasets)

  ref = [fl_testing.mean_loss_and_accuracy(w, b, x, y) for x, y in clients]
  np.testing.assert_allclose(result['per_client_loss'], [r[0] for r in ref],
                             rtol=1e-5)
  np.testing.assert_allclose(result['per_client_accuracy'],
                             [r[1] for r in ref], atol=1e-7)
  np.testing.assert_array_equal(result['per_client_num_examples'], [6, 13, 2])
  n = np.array([6, 13, 2])
  np.testing.assert_allclose(
      result['accuracy'], np.dot(n, [r[1] for r in ref]) / n.sum(), atol=1e-6)
  np.testing.assert_allclose(
      result['loss'], np.dot(n, [r[0] for r in ref]) / n.sum(), rtol=1e-5)
  # ... which is exactly what TFF's own federated evaluation reports.
  fed_eval = tff.learning.algorithms.build_fed_eval(
      fl_testing.linear_model_fn())
  tff_mean = fed_eval.next(
      fed_eval.set_model_weights(fed_eval.initialize(), weights), datasets
  ).metrics['client_work']['eval']['current_round_metrics']
  np.testing.assert_allclose(
      result['accuracy'], tff_mean['sparse_categorical_accuracy'], atol=1e-6)
  np.testing.assert_allclose(result['loss'], tff_mean['loss'], rtol=1e-5)
  assert result['num_examples'] == tff_mean['num_examples']
  accs = np.array([r[1] for r in ref])
  assert result['accuracy_min'] == accs.min()
  np.testing.assert_allclose(result['accuracy_median'], np.median(accs))
  np.testing.assert_allclose(result['accuracy_p10'], np.percentile(accs, 10))
  assert result['num_clients'] == 3 and result['num_examples'] == 21


def test_groups_evaluate_each_client_with_its_own_model(tff_worker):
  rng = np.random.default_rng(4)
  models = []
  for _ in range(2):
    w = rng.normal(size=(fl_testing.INPUT_DIM, 10)).astype(np.float32) * 0.05
    b = rng.normal(size=10).astype(np.float32)
    models.append((w, b))
  clients = fl_testing.make_clients([5, 4, 7, 3], seed=5)
  datasets = [fl_testing.to_dataset(x, y, batch_size=3) for x, y in clients]
  groups = [(tff.learning.models.ModelWeights(list(models[0]), []), [0, 2]),
            (tff.learning.models.ModelWeights(list(models[1]), []), [1, 3])]
  result = evaluation.Evaluator(fl_testing.linear_model_fn()).evaluate_groups(
      groups, datasets)
  for i, (x, y) in enumerate(clients):
    w, b = models[0] if i in (0, 2) else models[1]
    loss, acc = fl_testing.mean_loss_and_accuracy(w, b, x, y)
    np.testing.assert_allclose(result['per_client_loss'][i], loss, rtol=1e-5)
    np.testing.assert_allclose(result['per_client_accuracy'][i], acc)


def _batches(ds):
  out = []
  for batch, tag in ds.as_numpy_iterator():
    out.append(([np.asarray(v) for v in batch.values()], int(tag)))
  return out


def _sql_eval_datasets(tmp_path, batch_size):
  _, test = fl_testing.tiny_emnist_sqlite(tmp_path)
  return [preprocessing.preprocess_for_eval(
      test.create_tf_dataset_for_client(c), batch_size)
          for c in test.client_ids]


def test_pooled_sequence_is_the_clients_batches_without_the_source(tmp_path):
  clients = fl_testing.make_clients([5, 0, 7, 3], seed=3)
  datasets = [fl_testing.to_dataset(x, y, batch_size=3) for x, y in clients]
  pool = per_client.PooledBatches.read(datasets)
  assert len(pool) == 4
  for indices in ([0, 1, 2, 3], [3, 0], [1], []):
    chosen = [datasets[i] for i in indices]
    want = (_batches(tagged.tagged_sequence(chosen, indices)) if chosen else [])
    got = _batches(pool.sequence(indices))
    # The same batches (sizes 3, 2 | 3, 3, 1 | 3), in order, same tags.
    assert [t for _, t in got] == [t for _, t in want]
    for (a, _), (b, _) in zip(got, want):
      for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
  assert [len(b[0][0]) for b in _batches(pool.sequence([2, 0]))] == [
      3, 3, 1, 3, 2]
  # Read from TFF's SQLite EMNIST: the lazy sequence queries it at every
  # pass, the pooled one never does.
  sql = _sql_eval_datasets(tmp_path, batch_size=1)
  lazy = tagged.tagged_sequence(sql, [0, 1])
  pooled = per_client.PooledBatches.read(sql).sequence([0, 1])
  assert b'SqlDataset' in lazy._as_serialized_graph().numpy()
  assert b'SqlDataset' not in pooled._as_serialized_graph().numpy()
  assert len(_batches(pooled)) == 4  # 2 test examples per writer.


def test_pool_chunks_cut_at_clients_under_the_byte_limit():
  clients = fl_testing.make_clients([5, 7, 2], seed=3)
  datasets = [fl_testing.to_dataset(x, y, batch_size=3) for x, y in clients]
  pool = per_client.PooledBatches.read(datasets)
  # An example is 784 floats and a label: 3,140 bytes; the clients hold
  # 15,700, 21,980 and 6,280.
  assert pool.chunks([0, 1, 2], 43_960) == [[0, 1, 2]]
  assert pool.chunks([0, 1, 2], 43_959) == [[0, 1], [2]]
  assert pool.chunks([0, 1, 2], 37_679) == [[0], [1, 2]]
  assert pool.chunks([2, 1, 0], 1) == [[2], [1], [0]]  # Alone when larger.
  assert pool.chunks([], 1) == []
  unbatched = [ds.unbatch() for ds in datasets]  # No batch dimension.
  assert per_client.PooledBatches.read(unbatched) is None
  assert per_client.PooledBatches.read([datasets[0], unbatched[1]]) is None
  assert per_client.PooledBatches.read([]) is None


def test_evaluation_in_chunks_and_from_the_store_equals_one_call(
    tff_worker, tmp_path):
  """Past the serialization limit (lowered here to one client a call), the
  chunks add up to exactly the one-call result; the array store read by
  the worker gives the same numbers as TFF's SQLite datasets; and so do
  clients evaluated in parallel parts (`parts`), bit for bit."""
  rng = np.random.default_rng(6)
  weights = [tff.learning.models.ModelWeights(
      [rng.normal(size=(fl_testing.INPUT_DIM, 10)).astype(np.float32) * 0.05,
       rng.normal(size=10).astype(np.float32)], []) for _ in range(2)]
  model_fn = fl_testing.linear_model_fn()
  datasets = _sql_eval_datasets(tmp_path, batch_size=1)
  _, test = emnist.load_emnist(True, str(tmp_path))
  assert isinstance(test, store_client_data.StoreClientData)
  recipes = per_client.RecipeSource(
      [test.recipe(c) for c in test.client_ids], batch_size=1)
  one_call = evaluation.Evaluator(model_fn, num_classes=10)
  chunked = evaluation.Evaluator(model_fn, num_classes=10, chunk_bytes=1)
  parallel = evaluation.Evaluator(model_fn, num_classes=10, parts=2)
  parallel_chunked = evaluation.Evaluator(model_fn, num_classes=10,
                                          chunk_bytes=1, parts=3)
  for groups in ([(weights[0], [0, 1])], [(weights[0], [1]),
                                           (weights[1], [0])]):
    for _ in range(2):  # The second call reuses the sequences.
      a = one_call.evaluate_groups(groups, datasets)
      others = [chunked.evaluate_groups(groups, datasets),
                one_call.evaluate_groups(groups, recipes),
                parallel.evaluate_groups(groups, recipes),
                parallel.evaluate_groups(groups, datasets),
                parallel_chunked.evaluate_groups(groups, datasets)]
      for key in ('per_client_loss', 'per_client_accuracy',
                  'per_client_num_examples', 'confusion_matrix', 'loss'):
        for other in others:
          np.testing.assert_array_equal(a[key], other[key])
      assert a['num_examples'] == 4 and a['confusion_matrix'].sum() == 4
  # Two writers: one call each when chunked; one call of two parts in
  # parallel.
  # pylint: disable=protected-access
  source = chunked._datasets_source
  assert [len(s) for s in [source.sequences([0, 1])]] == [2]
  assert [len(c) for c in parallel._calls(recipes, [0, 1])] == [2]
  assert [len(c) for c in parallel_chunked._calls(
      parallel_chunked._datasets_source, [0, 1])] == [2]


@pytest.mark.parametrize('eval_on', ['test_split', 'heldout_clients'])
def test_a_writer_without_training_examples_is_evaluated_or_named(eval_on):
  """A writer with test examples but none to train on is evaluated under
  test_split, after the training writers, and under heldout_clients
  (drawn from training writers) named at start-up with its examples."""
  def data(counts):
    return {cid: collections.OrderedDict(
        label=np.full(n, i, np.int32),
        pixels=np.full((n, 28, 28), 0.5, np.float32))
            for i, (cid, n) in enumerate(counts.items())}

  train = tff.simulation.datasets.TestClientData(
      data({f'w{i}': 3 for i in range(5)}))
  test = tff.simulation.datasets.TestClientData(
      data({'w0': 1, 'w1': 2, 'only_test': 4}))
  fed = federated_data.FederatedData(train, test, 10, tuple(train.client_ids),
                                     'five writers')
  split = client_split.ClientSplit(
      fed, config_lib.EvaluationConfig(eval_on=eval_on,
                                       heldout_client_fraction=0.4), seed=0)
  assert split.test_only_client_ids == ['only_test']
  if eval_on == 'test_split':
    assert split.eval_client_ids == ['w0', 'w1', 'only_test']
    source = split.eval_datasets()
    assert source.num_clients == 3
    # All 1 + 2 + 4 test examples, the test-only writer's 4 included.
    assert sum(int(tf.shape(tf.nest.flatten(b)[0])[0])
               for ds in source.sequences(range(3)) for b in ds) == 7
    assert split.describe_left_out() == (
        '1 writers with test examples but no training examples (4 test'
        ' examples) never train and are evaluated')
  else:
    assert 'only_test' not in split.eval_client_ids
    assert split.describe_left_out() == (
        '1 writers with test examples but no training examples (4 test'
        ' examples) are not evaluated: held-out clients are drawn from the'
        ' training writers')
