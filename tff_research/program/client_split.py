"""Which clients train and which data evaluates, fixed for a run."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tff_research.data import federated_data as federated_data_lib
from tff_research.data import partition
from tff_research.data import preprocessing
from tff_research.data import sampling
from tff_research.program import config as config_lib


class ClientSplit:
  """The training clients and the evaluation clients of a run.

  Pure in the data and (seed, eval_on, heldout_client_fraction,
  max_eval_clients), so a run directory rebuilds the same held-out set.
  """

  def __init__(self, data: federated_data_lib.FederatedData,
               evaluation: config_lib.EvaluationConfig, seed: int):
    all_ids = list(data.client_ids)
    if evaluation.eval_on == 'heldout_clients':
      train_ids, heldout_ids = partition.heldout_split(
          all_ids, evaluation.heldout_client_fraction, seed)
      self.train_client_ids = list(train_ids)
      eval_ids = list(heldout_ids)
    else:
      self.train_client_ids = all_ids
      test_ids = set(data.test.client_ids)
      eval_ids = [c for c in all_ids if c in test_ids]
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

  def eval_datasets(self) -> list[tf.data.Dataset]:
    """Held-out datasets: each client's test split, or all of a held-out
    client's data (it never trained)."""
    datasets = []
    test_ids = set(self._data.test.client_ids)
    for cid in self.eval_client_ids:
      if self._evaluation.eval_on == 'heldout_clients':
        ds = self._data.train.create_tf_dataset_for_client(cid)
        if cid in test_ids:
          ds = ds.concatenate(self._data.test.create_tf_dataset_for_client(cid))
      else:
        ds = self._data.test.create_tf_dataset_for_client(cid)
      datasets.append(preprocessing.preprocess_for_eval(
          ds, self._evaluation.eval_batch_size))
    return datasets
