"""A validation split carved out of the training data (`--validation_fraction`).

Hyperparameters chosen on the data a study reports on overstate it; Reddi
et al. 2021 ("Adaptive Federated Optimization", App. D) tune on held-out
data of the training population instead. With `validation_fraction` > 0 a
run evaluates on validation data taken from its *training* data only:

* `eval_on=test_split`: every client trains; a seeded `validation_fraction`
  of each client's training examples becomes its validation examples (at
  least one example stays for training). The test splits are never read.
* `eval_on=heldout_clients`: the run's held-out clients
  (`heldout_client_fraction`) are dropped; a seeded `validation_fraction` of
  the remaining clients become validation clients, evaluated as held-out
  clients are (on all their data, or, choosing their cluster, on their
  test split).

    carve: (FederatedData, EvaluationConfig, seed)
           -> (FederatedData, EvaluationConfig for its ClientSplit)

Pure in its arguments, so a run directory rebuilds the same validation data
(`training.rebuild_run`), and evaluation reads it exactly as it reads the
test data. Data in an array store is split by row positions drawn from the
clients' sizes in its index, so nothing is read (`StoreClientData` views);
other data is read into memory. Both draw the same positions.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from tff_research.data import federated_data as federated_data_lib
from tff_research.data import partition
from tff_research.data import store_client_data
from tff_research.run import client_split as client_split_lib
from tff_research.run import config as config_lib


def describe(evaluation: config_lib.EvaluationConfig) -> str:
  """One line: where the validation data comes from."""
  fraction = f'{evaluation.validation_fraction:g}'
  if evaluation.eval_on == 'heldout_clients':
    return (f'{fraction} of the training clients held out as validation'
            ' clients (the held-out clients are not used)')
  return (f"{fraction} of each client's training examples held out for"
          ' validation (the test split is not used)')


def _arrays(client_data, cid):
  pixels, labels = [], []
  for e in client_data.create_tf_dataset_for_client(cid).as_numpy_iterator():
    pixels.append(np.asarray(e['pixels'], np.float32).reshape(28, 28))
    labels.append(int(e['label']))
  return pixels, labels


def carve(
    data: federated_data_lib.FederatedData,
    evaluation: config_lib.EvaluationConfig,
    seed: int,
) -> tuple[federated_data_lib.FederatedData, config_lib.EvaluationConfig]:
  """The validation federation of `data` and the evaluation config its
  `ClientSplit` takes. ValueError (one line) if no validation data is left."""
  train_ids = client_split_lib.ClientSplit(data, evaluation,
                                          seed).train_client_ids
  if isinstance(data.train, store_client_data.StoreClientData) and isinstance(
      data.test, store_client_data.StoreClientData):
    return _carve_store(data, evaluation, seed, train_ids)
  fraction = evaluation.validation_fraction
  heldout = evaluation.eval_on == 'heldout_clients'
  rng = _rng(seed)
  test_ids = set(data.test.client_ids)
  apart = _validation_clients(train_ids, evaluation, seed)
  pixels, labels, train_idx, val_idx = [], [], {}, {}
  for cid in train_ids:
    px, lb = _arrays(data.train, cid)
    num_train = len(lb)
    if heldout and cid in test_ids:  # A training client's data is all of it.
      more_px, more_lb = _arrays(data.test, cid)
      px, lb = px + more_px, lb + more_lb
    start = len(labels)
    pixels += px
    labels += lb
    idx = np.arange(start, len(labels))
    if heldout:
      if cid in apart and idx.size > num_train:
        train_idx[cid], val_idx[cid] = idx[:num_train], idx[num_train:]
      else:
        train_idx[cid] = idx
      continue
    n_val = min(int(round(fraction * idx.size)), idx.size - 1)
    perm = rng.permutation(idx)
    train_idx[cid] = np.sort(perm[n_val:])
    if n_val > 0:
      val_idx[cid] = np.sort(perm[:n_val])
  pixels = np.stack(pixels)
  labels = np.array(labels, np.int32)
  train = federated_data_lib.ArrayClientData(pixels, labels, train_idx)
  if heldout:
    test = (federated_data_lib.ArrayClientData(pixels, labels, val_idx)
            if val_idx else _NO_TEST)
  else:
    _check_some(val_idx, evaluation)
    test = federated_data_lib.ArrayClientData(pixels, labels, val_idx)
  return _validation_data(data, evaluation, train, test)


# Validation on held-out clients with no validation client that has test
# examples: `test` has no clients.
_NO_TEST = store_client_data.StoreClientData({}, description='no test split')


def _validation_clients(train_ids, evaluation, seed) -> set[str]:
  """The validation clients of held-out validation, drawn as `ClientSplit`
  draws them from the carved data (empty for `test_split`).

  Their test split stays apart, in the carved `test`: ClientSplit evaluates
  a held-out client on its train split followed by its test split, the
  whole of its data as before, and a client that chooses its model (a
  clustered run) chooses on the train split and is evaluated on the test
  split. Every other training client trains on all of its data.
  """
  if evaluation.eval_on != 'heldout_clients':
    return set()
  return set(partition.heldout_split(
      list(train_ids), evaluation.validation_fraction, seed)[1])


def _rng(seed: int) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(b'tune_validation')])


def _check_some(validation, evaluation) -> None:
  if not validation:
    raise ValueError(
        f'--validation_fraction={evaluation.validation_fraction} leaves no'
        ' client a validation example; use a larger fraction')


def _validation_data(data, evaluation, train, test):
  split_evaluation = evaluation
  if evaluation.eval_on == 'heldout_clients':
    split_evaluation = dataclasses.replace(
        evaluation, heldout_client_fraction=evaluation.validation_fraction)
  return federated_data_lib.FederatedData(
      train, test, data.num_classes, tuple(train.client_ids),
      f'{data.description}; validation: {describe(evaluation)}'
  ), split_evaluation


def _carve_store(data, evaluation, seed, train_ids):
  """`carve` of data in an array store: views whose recipes select rows.

  The positions are those the in-memory path draws: one generator walks
  the training clients in order and permutes each client's n positions,
  and a permutation's draws depend on n alone.
  """
  train, test = data.train, data.test
  if evaluation.eval_on == 'heldout_clients':
    # A training client's data is all of its data, test split included; a
    # validation client's test split stays apart (`_validation_clients`).
    chosen = _validation_clients(train_ids, evaluation, seed)
    tested = set(test.client_ids)
    apart = [c for c in train_ids if c in chosen and c in tested]
    return _validation_data(
        data, evaluation, train.concat_clients(test, train_ids, apart=apart),
        test.subset(apart) if apart else _NO_TEST)
  rng = _rng(seed)
  train_rows, val_rows = {}, {}
  for cid in train_ids:
    n = train.num_examples(cid)
    n_val = min(int(round(evaluation.validation_fraction * n)), n - 1)
    perm = rng.permutation(n)
    train_rows[cid] = np.sort(perm[n_val:])
    if n_val > 0:
      val_rows[cid] = np.sort(perm[:n_val])
  _check_some(val_rows, evaluation)
  return _validation_data(data, evaluation, train.with_rows(train_rows),
                          train.with_rows(val_rows))
