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

  With `eval_on='heldout_clients'` a held-out client is evaluated on all
  its data, unless it must choose its model (`choose_model`: clustered FL,
  where a client that never trained has no cluster). Then, as IFCA assigns
  a new client (Ghosh et al. 2020, "An Efficient Framework for Clustered
  Federated Learning"), its train split chooses the model
  (`selection_datasets`) and its test split, disjoint from it, is what is
  evaluated (`eval_datasets`), so the reported metric carries no selection
  bias; a held-out client without test examples is not evaluated
  (`untested_client_ids`).
  """

  def __init__(self, data: federated_data_lib.FederatedData,
               evaluation: config_lib.EvaluationConfig, seed: int,
               choose_model: bool = False):
    all_ids = list(data.client_ids)
    test_ids = set(data.test.client_ids)
    known = set(all_ids)
    self.test_only_client_ids = sorted(test_ids - known)
    heldout = evaluation.eval_on == 'heldout_clients'
    self.chooses_model = heldout and choose_model
    self.untested_client_ids = []
    if heldout:
      train_ids, heldout_ids = partition.heldout_split(
          all_ids, evaluation.heldout_client_fraction, seed)
      self.train_client_ids = list(train_ids)
      eval_ids = list(heldout_ids)
      if self.chooses_model:
        self.untested_client_ids = [c for c in eval_ids if c not in test_ids]
        eval_ids = [c for c in eval_ids if c in test_ids]
        if not eval_ids:
          raise ValueError(
              f'none of the {len(heldout_ids)} held-out clients has test'
              ' examples to evaluate after choosing its cluster on its train'
              ' split; use --eval_on=test_split')
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
    """One line on the clients whose data is not evaluated and on writers
    with test examples but no training examples; '' if there are none."""
    parts = []
    untested = len(self.untested_client_ids)
    if untested:
      parts.append(
          f'{untested} held-out clients without test examples are not'
          ' evaluated (a held-out client chooses its cluster on its train'
          ' split and is evaluated on its test split)')
    n = len(self.test_only_client_ids)
    if n:
      examples = sum(_count(self._data.test, c)
                     for c in self.test_only_client_ids)
      if self._evaluation.eval_on == 'heldout_clients':
        parts.append(
            f'{n} writers with test examples but no training examples'
            f' ({examples} test examples) are not evaluated: held-out'
            ' clients are drawn from the training writers')
      else:
        parts.append(
            f'{n} writers with test examples but no training examples'
            f' ({examples} test examples) never train and are evaluated')
    return '; '.join(parts)

  def eval_datasets(self) -> per_client.EvalSource:
    """The evaluated data: each client's test split, or all of a held-out
    client's data (it never trained), or a held-out client's test split
    when it chooses its model. Data in an array store is read by the worker
    that evaluates (`RecipeSource`); other data is pooled in memory
    (`DatasetSource`)."""
    return self._source(self._eval_recipe, self.raw_eval_dataset)

  def selection_datasets(self) -> per_client.EvalSource:
    """The data on which each evaluation client chooses its model: its
    train split (only when `chooses_model`; disjoint from `eval_datasets`)."""
    if not self.chooses_model:
      raise ValueError('selection data exists only for held-out clients that'
                       ' choose their model')
    train = self._data.train
    # Looked up when used: only an array store has recipes.
    return self._source(lambda cid: train.recipe(cid),
                        train.create_tf_dataset_for_client)

  def _source(self, recipe_of, raw_of) -> per_client.EvalSource:
    """The evaluation clients' data, each client's given by `recipe_of` (an
    array store) or `raw_of` (any `ClientData`)."""
    train, test = self._data.train, self._data.test
    batch_size = self._evaluation.eval_batch_size
    if isinstance(train, store_client_data.StoreClientData) and isinstance(
        test, store_client_data.StoreClientData):
      return per_client.RecipeSource(
          [recipe_of(cid) for cid in self.eval_client_ids], batch_size)
    return per_client.DatasetSource([
        preprocessing.preprocess_for_eval(raw_of(cid), batch_size)
        for cid in self.eval_client_ids])

  @property
  def _evaluates_test_split(self) -> bool:
    """Whether an evaluation client is evaluated on its test split only
    (else on all its data: a held-out client that does not choose)."""
    return (self._evaluation.eval_on != 'heldout_clients'
            or self.chooses_model)

  def _eval_recipe(self, client_id: str) -> store_client_data.Recipe:
    train, test = self._data.train, self._data.test
    if self._evaluates_test_split:
      return test.recipe(client_id)
    if client_id in self._test_ids:
      return train.concat(test, client_id)
    return train.recipe(client_id)

  def raw_eval_dataset(self, client_id: str):
    """An evaluation client's evaluated examples before preprocessing (its
    test split, or all its data if it is a held-out client that does not
    choose its model)."""
    train, test = self._data.train, self._data.test
    if self._evaluates_test_split:
      return test.create_tf_dataset_for_client(client_id)
    ds = train.create_tf_dataset_for_client(client_id)
    if client_id in self._test_ids:
      ds = ds.concatenate(test.create_tf_dataset_for_client(client_id))
    return ds


def _count(client_data, client_id: str) -> int:
  if hasattr(client_data, 'num_examples'):
    return client_data.num_examples(client_id)
  return sum(1 for _ in client_data.create_tf_dataset_for_client(client_id))
