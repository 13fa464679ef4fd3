"""Which clients train and which data evaluates, fixed for a run."""

from __future__ import annotations

import numpy as np

from tff_research.data import federated_data as federated_data_lib
from tff_research.data import partition
from tff_research.data import preprocessing
from tff_research.data import sampling
from tff_research.data import store_client_data
from tff_research.evaluation import per_client
from tff_research.run import config as config_lib


class ClientSplit:
  """The training clients and the evaluation clients of a run.

  Pure in the data and (seed, eval_on, heldout_client_fraction,
  max_eval_clients), so a run directory rebuilds the same held-out set.

  With `eval_on='test_split'` every client with test examples is
  evaluated, in the training clients' order; a writer with test examples
  but none to train on (possible in a cache built from other sources)
  trains never and is evaluated after them (`test_only_client_ids`).
  """

  def __init__(self, data: federated_data_lib.FederatedData,
               evaluation: config_lib.EvaluationConfig, seed: int):
    all_ids = list(data.client_ids)
    test_ids = set(data.test.client_ids)
    known = set(all_ids)
    self.test_only_client_ids = sorted(test_ids - known)
    if evaluation.eval_on == 'heldout_clients':
      train_ids, heldout_ids = partition.heldout_split(
          all_ids, evaluation.heldout_client_fraction, seed)
      self.train_client_ids = list(train_ids)
      eval_ids = list(heldout_ids)
    else:
      self.train_client_ids = all_ids
      eval_ids = [c for c in all_ids if c in test_ids]
      eval_ids += self.test_only_client_ids
    if evaluation.max_eval_clients and (
        len(eval_ids) > evaluation.max_eval_clients):
      # A fixed subset for the whole run, so evaluation curves compare rounds
      # on the same clients.
      rng = sampling.round_rng(seed, 0, 'eval_clients')
      keep = np.sort(
          rng.choice(len(eval_ids), evaluation.max_eval_clients, replace=False))
      eval_ids = [eval_ids[i] for i in keep]
    self.eval_client_ids = eval_ids
    self._data = data
    self._evaluation = evaluation
    self._test_ids = test_ids

  def describe_left_out(self) -> str:
    """One line on writers with test examples but no training examples, or
    '' if there are none."""
    n = len(self.test_only_client_ids)
    if not n:
      return ''
    examples = sum(_count(self._data.test, c) for c in self.test_only_client_ids)
    if self._evaluation.eval_on == 'heldout_clients':
      return (f'{n} writers with test examples but no training examples'
              f' ({examples} test examples) are not evaluated: held-out'
              ' clients are drawn from the training writers')
    return (f'{n} writers with test examples but no training examples'
            f' ({examples} test examples) never train and are evaluated')

  def eval_datasets(self) -> per_client.EvalSource:
    """The held-out data: each client's test split, or all of a held-out
    client's data (it never trained). Data in an array store is read by
    the worker that evaluates (`RecipeSource`); other data is pooled in
    memory (`DatasetSource`)."""
    train, test = self._data.train, self._data.test
    heldout = self._evaluation.eval_on == 'heldout_clients'
    batch_size = self._evaluation.eval_batch_size
    if isinstance(train, store_client_data.StoreClientData) and isinstance(
        test, store_client_data.StoreClientData):
      recipes = []
      for cid in self.eval_client_ids:
        if heldout:
          recipes.append(train.concat(test, cid) if cid in self._test_ids
                         else train.recipe(cid))
        else:
          recipes.append(test.recipe(cid))
      return per_client.RecipeSource(recipes, batch_size)
    return per_client.DatasetSource([
        preprocessing.preprocess_for_eval(self.raw_eval_dataset(cid),
                                          batch_size)
        for cid in self.eval_client_ids])

  def raw_eval_dataset(self, client_id: str):
    """An evaluation client's held-out examples before preprocessing (its
    test split, or all its data if it is a held-out client)."""
    train, test = self._data.train, self._data.test
    if self._evaluation.eval_on != 'heldout_clients':
      return test.create_tf_dataset_for_client(client_id)
    ds = train.create_tf_dataset_for_client(client_id)
    if client_id in self._test_ids:
      ds = ds.concatenate(test.create_tf_dataset_for_client(client_id))
    return ds


def _count(client_data, client_id: str) -> int:
  if hasattr(client_data, 'num_examples'):
    return client_data.num_examples(client_id)
  return sum(1 for _ in client_data.create_tf_dataset_for_client(client_id))
