"""Each round's client datasets, preprocessed as TFF's tutorial does."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_federated as tff

from tff_research.data import preprocessing
from tff_research.data import sampling
from tff_research.program import config as config_lib


def shuffle_seed(seed: int, round_num: int, client_id: str) -> int:
  """The shuffle seed of a client in a round: pure in (seed, round, id)."""
  rng = sampling.round_rng(seed, round_num, f'shuffle/{client_id}')
  return int(rng.integers(2**31 - 1))


class TrainingData:
  """`datasets(round, client_ids)`: the clients' local training data."""

  def __init__(self, client_data: tff.simulation.datasets.ClientData,
               training: config_lib.TrainConfig, seed: int):
    self._client_data = client_data
    self._training = training
    self._seed = seed

  def datasets(self, round_num: int,
               client_ids: Sequence[str]) -> list[tf.data.Dataset]:
    t = self._training
    return [
        preprocessing.preprocess(
            self._client_data.create_tf_dataset_for_client(cid),
            epochs=t.client_epochs, batch_size=t.batch_size,
            shuffle_buffer=t.shuffle_buffer,
            seed=shuffle_seed(self._seed, round_num, cid))
        for cid in client_ids
    ]
