"""Assembles the federated train/test data a training run uses.

``load_federated_data(DataConfig) -> FederatedData``. All datasets come out in
TFF's federated-EMNIST element format ``OrderedDict(label=int32 [],
pixels=float32 [28, 28])`` (1.0 = background) so one
:mod:`~tff_research.data.preprocessing` pipeline serves all.

Datasets
--------
``digits``
  scikit-learn's 1,797 digits (:mod:`~tff_research.data.digits`), partitioned
  into ``num_clients`` simulated clients by
  :func:`~tff_research.data.partition.partition` (IID, Dirichlet label skew,
  quantity skew, missing classes). Each client's examples are then split into
  local train/test with ``round(test_fraction * n_i)`` test examples (capped so
  that at least one train example remains); clients left without test examples
  are absent from ``test``.
``emnist`` / ``emnist_digits``
  TFF's federated EMNIST (62 / 10 classes) through
  :func:`~tff_research.data.emnist.load_emnist`, keeping its natural writer
  partition and per-writer train/test split (Caldas et al. 2018);
  ``num_clients`` and ``test_fraction`` are then ignored.

Re-partitioned EMNIST
  If any of ``dirichlet_alpha``, ``data_balance != 1`` or ``missing_classes``
  is set for ``emnist``/``emnist_digits``, the writer structure is discarded:
  all train *and* test examples are pooled and then treated exactly like
  ``digits`` (``partition`` into ``num_clients`` clients, then a per-client
  ``test_fraction`` split). Pooling both splits keeps each client's test
  distribution identical in expectation to its train distribution, which is
  what per-client evaluation under label skew should measure; the original
  writer-level train/test split has no meaning once writers are mixed. The
  pooled arrays are held in memory (about 3.1 kB per example: fine for the
  shared FEMNIST subset, ~2.5 GB for the full 62-class EMNIST).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sqlite3
import zlib

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.data import digits as digits_lib
from tff_research.data import emnist as emnist_lib
from tff_research.data import label_permutation as label_permutation_lib
from tff_research.data import partition as partition_lib
from tff_research.data import store_client_data

DATASETS = ('digits', 'emnist', 'emnist_digits')


@dataclasses.dataclass(frozen=True)
class DataConfig:
  dataset: str = 'digits'            # 'digits' | 'emnist' | 'emnist_digits'
  data_dir: str | None = None        # emnist cache dir (None = TFF's ~/.tff)
  num_clients: int = 20              # digits and re-partitioned EMNIST
  dirichlet_alpha: float | None = None
  data_balance: float = 1.0
  missing_classes: tuple[tuple[int, ...], ...] | None = None
  test_fraction: float = 0.2         # per-client held-out test examples
  seed: int = 0
  # Incongruent federation (label_permutation.py): this fraction of clients
  # sees labels y -> (y + shift) mod num_classes.
  permute_labels_fraction: float = 0.0
  label_permutation_shift: int = 5


@dataclasses.dataclass(frozen=True)
class FederatedData:
  train: tff.simulation.datasets.ClientData   # raw EMNIST-format elements
  test: tff.simulation.datasets.ClientData    # subset of train's ids
  num_classes: int                            # 10 or 62
  client_ids: tuple[str, ...]                 # train.client_ids
  description: str                            # one line


def _element_spec():
  return collections.OrderedDict(
      label=tf.TensorSpec(shape=[], dtype=tf.int32),
      pixels=tf.TensorSpec(shape=[28, 28], dtype=tf.float32),
  )


class ArrayClientData(tff.simulation.datasets.ClientData):
  """In-memory ``ClientData`` over pooled numpy arrays and per-client indices.

  ``create_tf_dataset_for_client`` slices contiguous numpy views, so creating
  a client's dataset costs O(client size) and puts nothing into a graph.
  ``serializable_dataset_fn`` (TF-traceable, used by
  ``ClientData.dataset_computation`` / ``create_tf_dataset_from_all_clients``)
  captures the pooled arrays as tensors once, created on first use.
  """

  def __init__(self, pixels: np.ndarray, labels: np.ndarray,
               client_indices: dict[str, np.ndarray]):
    if not client_indices:
      raise ValueError('ArrayClientData needs at least one client, got none')
    empty = [c for c, idx in client_indices.items() if len(idx) == 0]
    if empty:
      raise ValueError(f'client {empty[0]!r} has no examples; ClientData clients must be non-empty')
    self._ids = list(client_indices)
    order = np.concatenate([np.asarray(client_indices[c], np.int64) for c in self._ids])
    # Contiguous, client-ordered copies: each client is one slice.
    self._pixels = np.ascontiguousarray(np.asarray(pixels, np.float32)[order])
    self._labels = np.ascontiguousarray(np.asarray(labels, np.int32)[order])
    sizes = np.array([len(client_indices[c]) for c in self._ids], np.int64)
    self._bounds = np.concatenate([[0], np.cumsum(sizes)])
    self._pos = {c: i for i, c in enumerate(self._ids)}
    self._tf_fn = None

  @property
  def client_ids(self) -> list[str]:
    return list(self._ids)

  def num_examples(self, client_id: str) -> int:
    i = self._pos[client_id]
    return int(self._bounds[i + 1] - self._bounds[i])

  @property
  def total_examples(self) -> int:
    return int(self._bounds[-1])

  def create_tf_dataset_for_client(self, client_id: str) -> tf.data.Dataset:
    if client_id not in self._pos:
      raise ValueError(
          f'ID [{client_id}] is not a client in this ClientData; see client_ids '
          f'({len(self._ids)} clients, e.g. {self._ids[0]!r})')
    i = self._pos[client_id]
    s, e = self._bounds[i], self._bounds[i + 1]
    return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        label=self._labels[s:e], pixels=self._pixels[s:e]))

  @property
  def serializable_dataset_fn(self):
    if self._tf_fn is None:
      pixels = tf.constant(self._pixels)
      labels = tf.constant(self._labels)
      table = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(
              tf.constant(self._ids), tf.range(len(self._ids), dtype=tf.int64)),
          default_value=-1)
      bounds = tf.constant(self._bounds, tf.int64)

      def dataset_fn(client_id):
        i = table.lookup(client_id)
        # Unknown ids get index -1: fail loudly rather than slice garbage.
        tf.debugging.assert_non_negative(i, message='unknown client id')
        s, e = bounds[i], bounds[i + 1]
        return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
            label=labels[s:e], pixels=pixels[s:e]))

      self._tf_fn = dataset_fn
    return self._tf_fn

  @property
  def element_type_structure(self):
    return _element_spec()


def _validate(config: DataConfig) -> None:
  if config.dataset not in DATASETS:
    raise ValueError(f'dataset must be one of {DATASETS}, got {config.dataset!r}')
  if not 0.0 <= config.test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in [0, 1), got {config.test_fraction!r}')
  if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
    raise ValueError(f'seed must be a non-negative int, got {config.seed!r}')


def _repartitions(config: DataConfig) -> bool:
  return (config.dirichlet_alpha is not None or config.data_balance != 1.0 or
          config.missing_classes is not None)


def _skew_text(config: DataConfig) -> str:
  parts = []
  if config.dirichlet_alpha is not None:
    parts.append(f'dirichlet alpha={config.dirichlet_alpha:g}')
  if config.data_balance != 1.0:
    parts.append(f'data_balance={config.data_balance:g}')
  if config.missing_classes is not None:
    parts.append('missing classes ' + ';'.join(
        ','.join(str(c) for c in g) for g in config.missing_classes))
  return ', '.join(parts) if parts else 'iid'


def _client_id(i: int) -> str:
  return f'client_{i:04d}'


def _partition_pooled(pixels, labels, num_classes, config, name) -> FederatedData:
  """``partition`` pooled arrays, then split each client into train/test."""
  shards = partition_lib.partition(
      labels, config.num_clients, seed=config.seed,
      dirichlet_alpha=config.dirichlet_alpha, data_balance=config.data_balance,
      missing_classes=config.missing_classes, num_classes=num_classes)
  # Separate stream from the partition's so changing test_fraction never
  # changes which examples a client holds.
  rng = np.random.default_rng([config.seed, zlib.crc32(b'per_client_test_split')])
  train_idx, test_idx = {}, {}
  for i, shard in enumerate(shards):
    n_test = min(int(round(config.test_fraction * shard.size)), shard.size - 1)
    perm = rng.permutation(shard)
    train_idx[_client_id(i)] = np.sort(perm[n_test:])
    if n_test > 0:
      test_idx[_client_id(i)] = np.sort(perm[:n_test])
  if not test_idx:
    raise ValueError(
        f'test_fraction={config.test_fraction} leaves every client without test '
        'examples; use a larger test_fraction or fewer clients')
  train = ArrayClientData(pixels, labels, train_idx)
  test = ArrayClientData(pixels, labels, test_idx)
  description = (
      f'{name}: {config.num_clients} clients, {train.total_examples} train / '
      f'{test.total_examples} test, {_skew_text(config)}')
  return FederatedData(train, test, num_classes, tuple(train.client_ids), description)


def _pool(client_data) -> tuple[np.ndarray, np.ndarray]:
  pixels, labels = [], []
  # seed=None would shuffle the client order differently in every process, so
  # the same --seed would re-partition different examples to each client.
  for batch in client_data.create_tf_dataset_from_all_clients(
      seed=0).batch(4096).as_numpy_iterator():
    pixels.append(batch['pixels'])
    labels.append(batch['label'])
  return np.concatenate(pixels), np.concatenate(labels)


def _split_examples(data_dir: str | None, split: str) -> int | None:
  """Number of examples in ``split`` from the cache's ``client_metadata``."""
  cache_dir = (os.path.abspath(os.path.expanduser(data_dir)) if data_dir
               else emnist_lib.default_cache_dir())
  path = os.path.join(cache_dir, 'emnist_all.sqlite')
  try:
    con = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
    try:
      (n,) = con.execute('SELECT SUM(num_examples) FROM client_metadata WHERE split_name = ?;',
                         (split,)).fetchone()
    finally:
      con.close()
  except sqlite3.Error:
    return None
  return None if n is None else int(n)


def load_federated_data(config: DataConfig, log=print) -> FederatedData:
  """Loads the federated dataset described by ``config``.

  Raises:
    ValueError: invalid config (including partition errors);
    emnist.DataNotFoundError (a ValueError): EMNIST cache missing offline.
  """
  _validate(config)
  if config.permute_labels_fraction:
    return label_permutation_lib.permute_labels(
        load_federated_data(
            dataclasses.replace(config, permute_labels_fraction=0.0), log),
        config.permute_labels_fraction, config.label_permutation_shift,
        config.seed)
  if config.dataset == 'digits':
    pixels, labels = digits_lib.load_digits_28x28()
    return _partition_pooled(pixels, labels, 10, config, 'digits')

  only_digits = config.dataset == 'emnist_digits'
  num_classes = 10 if only_digits else 62
  train, test = emnist_lib.load_emnist(only_digits=only_digits,
                                       data_dir=config.data_dir, log=log)
  if _repartitions(config):
    tr_px, tr_lb = _pool(train)
    te_px, te_lb = _pool(test)
    pixels = np.concatenate([tr_px, te_px])
    labels = np.concatenate([tr_lb, te_lb])
    return _partition_pooled(pixels, labels, num_classes, config,
                             f'{config.dataset} re-partitioned (pooled train+test)')
  prefix = 'digits_only' if only_digits else 'all'
  if isinstance(train, store_client_data.StoreClientData):
    n_train, n_test = train.total_examples, test.total_examples
  else:
    n_train = _split_examples(config.data_dir, f'{prefix}_train')
    n_test = _split_examples(config.data_dir, f'{prefix}_test')
  counts = (f', {n_train} train / {n_test} test' if n_train is not None and n_test is not None
            else '')
  description = (f'{config.dataset}: {len(train.client_ids)} clients (natural writers)'
                 f'{counts}')
  return FederatedData(train, test, num_classes, tuple(train.client_ids), description)
