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
  the remaining clients become validation clients, evaluated on all their
  data.

    carve: (FederatedData, EvaluationConfig, seed)
           -> (FederatedData, EvaluationConfig for its ClientSplit)

Pure in its arguments, so a run directory rebuilds the same validation data
(`training.rebuild_run`), and evaluation reads it exactly as it reads the
test data.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from tff_research.data import federated_data as federated_data_lib
from tff_research.program import client_split as client_split_lib
from tff_research.program import config as config_lib


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
  fraction = evaluation.validation_fraction
  train_ids = client_split_lib.ClientSplit(data, evaluation,
                                          seed).train_client_ids
  heldout = evaluation.eval_on == 'heldout_clients'
  rng = np.random.default_rng([seed, zlib.crc32(b'tune_validation')])
  test_ids = set(data.test.client_ids)
  pixels, labels, train_idx, val_idx = [], [], {}, {}
  for cid in train_ids:
    px, lb = _arrays(data.train, cid)
    if heldout and cid in test_ids:  # A validation client's data is all of it.
      more_px, more_lb = _arrays(data.test, cid)
      px, lb = px + more_px, lb + more_lb
    start = len(labels)
    pixels += px
    labels += lb
    idx = np.arange(start, len(labels))
    if heldout:
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
    # ClientSplit draws the validation clients from `train` by seed and
    # appends a client's `test` data to it; the validation clients' data is
    # already whole, so `test` holds only a placeholder no split can draw.
    test = federated_data_lib.ArrayClientData(
        pixels, labels, {'__no_test_client__': np.arange(1)})
    split_evaluation = dataclasses.replace(
        evaluation, heldout_client_fraction=fraction)
  else:
    if not val_idx:
      raise ValueError(
          f'--validation_fraction={fraction} leaves no client a validation'
          ' example; use a larger fraction')
    test = federated_data_lib.ArrayClientData(pixels, labels, val_idx)
    split_evaluation = evaluation
  return federated_data_lib.FederatedData(
      train, test, data.num_classes, tuple(train.client_ids),
      f'{data.description}; validation: {describe(evaluation)}'
  ), split_evaluation
