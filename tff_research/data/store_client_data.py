"""`ClientData` over an array store, read by the TFF worker, not by Python.

A client's data is described by a *recipe*: up to two record files of the
store (`array_store`), concatenated, optionally restricted to some rows
(a validation split) and with labels shifted for some clients (an
incongruent federation). `raw_dataset(recipe)` is a dataset whose graph
holds the recipe only; the files are read when the dataset is iterated, in
the process that iterates it: TFF's worker, for a dataset passed to a
computation. So neither a round's clients nor a held-out evaluation of
thousands of clients carries pixels in a serialized argument.

    raw_dataset: Recipe -> tf.data.Dataset of
                 OrderedDict(label=int32 [], pixels=float32 [28, 28])
    eval_sequences: ([Recipe], [int32 tag], batch_size) -> [tf.data.Dataset
                 of (OrderedDict(x=float32 [b, 784], y=int32 [b, 1]), tag)]

Each is built by a function traced once per kind of recipe (a `tf.data`
pipeline built eagerly registers new functions with TensorFlow's eager
context on every call, never freed), whose graph has no conditionals: a
per-client dataset with `tf.cond`s in its map took ~100 ms a client to
start in TFF's worker. The elements, and so every batch and shuffle order
after them, equal those of TFF's `SqlClientData` on the SQLite file the
store was built from (tests/data/test_array_store.py).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.data import array_store
from tff_research.data import preprocessing

_MAX_FILES = 2


def _options() -> tf.data.Options:
  """What each client dataset carries to the worker: no graph rewrites and
  no autotuning. Both are per dataset (a Grappler pass and a tuning thread
  for every client's iterator) and cost more than reading a client here:
  10 clients' batches counted in TFF's worker in 0.08-0.11 s without them,
  0.20-0.24 s with them. They change neither elements nor order."""
  options = tf.data.Options()
  options.experimental_optimization.apply_default_optimizations = False
  options.autotune.enabled = False
  return options


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How to read one client: `files` (paths, with their record formats)
  concatenated; then `rows` of that (None = all); then labels
  y -> (y + label_shift) mod num_classes when label_shift != 0."""

  files: tuple[tuple[str, str], ...]
  rows: Optional[np.ndarray] = None
  label_shift: int = 0
  num_classes: int = 1

  @property
  def kind(self) -> tuple:
    """What the graph that reads it depends on (one traced reader each)."""
    return (tuple(r for _, r in self.files), self.rows is not None,
            self.label_shift != 0)

  def tensors(self):
    rows = (np.zeros(0, np.int64) if self.rows is None
            else np.asarray(self.rows, np.int64))
    return (tf.constant([f for f, _ in self.files]), tf.constant(rows),
            tf.constant(self.label_shift, tf.int32),
            tf.constant(max(self.num_classes, 1), tf.int32))

  @property
  def num_examples(self) -> Optional[int]:
    return None if self.rows is None else len(self.rows)


def _signature(kind):
  return (tf.TensorSpec([len(kind[0])], tf.string),
          tf.TensorSpec([None], tf.int64), tf.TensorSpec([], tf.int32),
          tf.TensorSpec([], tf.int32))


def _decode_file(path, record: str):
  """One record file -> (labels int32 [n], pixels float32 [n, 28, 28])."""
  raw = tf.io.read_file(path)
  if record == 'u8':
    rows = tf.reshape(tf.io.decode_raw(raw, tf.uint8), [-1, 785])
    pixels = tf.gather(tf.constant(array_store.PIXEL_TABLE),
                       tf.cast(rows[:, :784], tf.int32))
  else:
    rows = tf.reshape(tf.io.decode_raw(raw, tf.float32), [-1, 785])
    pixels = rows[:, :784]
  return tf.cast(rows[:, 784], tf.int32), tf.reshape(pixels, [-1, 28, 28])


def _decoder(kind):
  """(files, rows, shift, num_classes) -> OrderedDict(label [n], pixels
  [n, 28, 28]) for recipes of `kind`; branches are taken here, in Python,
  so the graph has no conditionals."""
  records, has_rows, has_shift = kind

  def decode(files, rows, shift, num_classes):
    parts = [_decode_file(files[i], r) for i, r in enumerate(records)]
    labels = tf.concat([p[0] for p in parts], 0) if len(parts) > 1 else parts[0][0]
    pixels = tf.concat([p[1] for p in parts], 0) if len(parts) > 1 else parts[0][1]
    if has_rows:
      labels, pixels = tf.gather(labels, rows), tf.gather(pixels, rows)
    if has_shift:
      labels = tf.math.floormod(labels + shift, num_classes)
    return collections.OrderedDict(label=labels, pixels=pixels)

  return decode


def _raw(kind, files, rows, shift, num_classes) -> tf.data.Dataset:
  # The decode runs inside the dataset (a map), so the dataset's graph holds
  # the recipe, and the files are read by whoever iterates it.
  return tf.data.Dataset.from_tensors(
      (files, rows, shift, num_classes)).map(_decoder(kind)).unbatch()


_TRACED = {}


def _traced(key, build):
  """`build()`, traced once per key for the process."""
  if key not in _TRACED:
    _TRACED[key] = build()
  return _TRACED[key]


def raw_dataset(recipe: Recipe) -> tf.data.Dataset:
  """The client's examples, read where the dataset is iterated."""
  kind = recipe.kind
  fn = _traced(('raw', kind), lambda: tf.function(
      lambda *t: _raw(kind, *t).with_options(_options()),
      input_signature=_signature(kind)))
  return fn(*recipe.tensors())


def build_train_dataset_fn(*, epochs: int, batch_size: int,
                           shuffle_buffer: int):
  """`f(recipe, seed) -> preprocessed dataset` (`preprocessing.preprocess`
  of `raw_dataset(recipe)`), traced once per kind of recipe."""
  preprocess = preprocessing.build_preprocess_fn(
      epochs=epochs, batch_size=batch_size, shuffle_buffer=shuffle_buffer)

  def build(kind):
    @tf.function(input_signature=_signature(kind)
                 + (tf.TensorSpec([], tf.int64),))
    def train(files, rows, shift, num_classes, seed):
      return preprocess(_raw(kind, files, rows, shift, num_classes),
                        seed).with_options(_options())
    return train

  def dataset_fn(recipe: Recipe, seed: int) -> tf.data.Dataset:
    kind = recipe.kind
    train = _traced(('train', kind, epochs, batch_size, shuffle_buffer),
                    lambda: build(kind))
    return train(*recipe.tensors(), tf.constant(seed, tf.int64))

  return dataset_fn


def _build_eval_sequence(kind):
  @tf.function(input_signature=(
      tf.TensorSpec([None, len(kind[0])], tf.string),
      tf.TensorSpec([None], tf.int64),   # rows of all clients, concatenated
      tf.TensorSpec([None], tf.int64),   # client c's rows: [starts[c], ends[c])
      tf.TensorSpec([None], tf.int64),
      tf.TensorSpec([None], tf.int32),
      tf.TensorSpec([], tf.int32),
      tf.TensorSpec([None], tf.int32),   # tags
      tf.TensorSpec([], tf.int64),       # batch size
  ))
  def sequence(files, all_rows, starts, ends, shifts, num_classes, tags,
               batch_size):
    def client(files, start, end, shift, tag):
      return _raw(kind, files, all_rows[start:end], shift, num_classes).batch(
          batch_size).map(lambda b: (preprocessing.to_xy(b), tag))

    return tf.data.Dataset.from_tensor_slices(
        (files, starts, ends, shifts, tags)).flat_map(client).with_options(
            _options())

  return sequence


def eval_sequences(recipes: Sequence[Recipe], tags: Sequence[int],
                   batch_size: int) -> list[tf.data.Dataset]:
  """Every client's evaluation batches (`preprocessing.preprocess_for_eval`
  of its `raw_dataset`), each batch tagged with its client's tag: one
  sequence per kind of recipe, clients in order within it. Their graphs
  hold the recipes (file names and selected rows), not the examples."""
  if not recipes:
    raise ValueError('eval_sequences needs at least one client')
  by_kind = collections.defaultdict(list)
  for recipe, tag in zip(recipes, tags):
    by_kind[recipe.kind].append((recipe, tag))
  out = []
  for kind, members in by_kind.items():
    chosen = [r for r, _ in members]
    rows = [np.zeros(0, np.int64) if r.rows is None
            else np.asarray(r.rows, np.int64) for r in chosen]
    ends = np.cumsum([len(r) for r in rows], dtype=np.int64)
    sequence = _traced(('eval', kind), lambda kind=kind: _build_eval_sequence(kind))
    out.append(sequence(
        tf.constant([[f for f, _ in r.files] for r in chosen]),
        tf.constant(np.concatenate(rows + [np.zeros(0, np.int64)])),
        tf.constant(ends - [len(r) for r in rows]), tf.constant(ends),
        tf.constant([r.label_shift for r in chosen], tf.int32),
        tf.constant(max(max(r.num_classes, 1) for r in chosen), tf.int32),
        tf.constant(np.asarray([t for _, t in members], np.int32)),
        tf.constant(batch_size, tf.int64)))
  return out


class StoreClientData(tff.simulation.datasets.ClientData):
  """A federation split read from an array store, through recipes.

  `recipes[client_id]` says how to read each client and `counts` how many
  examples a recipe without rows gives (from the store's index);
  `from_split` gives every client of a store split whole. Views
  (`with_rows`, `with_label_shift`, `concat_clients`) make new recipes and
  read nothing. A federation may have no clients (validation on held-out
  clients has no test split).
  """

  def __init__(self, recipes: Mapping[str, Recipe],
               counts: Optional[Mapping[str, int]] = None,
               description: str = ''):
    self._recipes = dict(recipes)
    self._ids = list(self._recipes)
    self._counts = dict(counts or {})
    self.description = description
    self._by_id = None

  @classmethod
  def from_split(cls, split: array_store.StoreSplit) -> 'StoreClientData':
    recipes = {c: Recipe(((split.path(c), split.record),))
               for c in split.client_ids}
    counts = dict(zip(split.client_ids, (int(n) for n in split.num_examples)))
    return cls(recipes, counts, split.name)

  def recipe(self, client_id: str) -> Recipe:
    try:
      return self._recipes[client_id]
    except KeyError:
      example = f', e.g. {self._ids[0]!r}' if self._ids else ''
      raise ValueError(
          f'ID [{client_id}] is not a client in this ClientData; see client_ids'
          f' ({len(self._ids)} clients{example})') from None

  def num_examples(self, client_id: str) -> int:
    """From the store's index (or the rows of a view): reads no data."""
    recipe = self.recipe(client_id)
    if recipe.rows is not None:
      return len(recipe.rows)
    return self._counts[client_id]

  @property
  def client_ids(self) -> list[str]:
    return list(self._ids)

  @property
  def total_examples(self) -> int:
    return sum(self.num_examples(c) for c in self._ids)

  def create_tf_dataset_for_client(self, client_id: str) -> tf.data.Dataset:
    return raw_dataset(self.recipe(client_id))

  @property
  def serializable_dataset_fn(self):
    """A dataset function of the client id tensor (`ClientData`'s contract,
    for `create_tf_dataset_from_all_clients`). Holds every recipe in its
    graph; for federations whose clients are all of one kind of recipe."""
    if self._by_id is None:
      ids = self._ids
      kinds = {self._recipes[c].kind for c in ids}
      if len(kinds) != 1:
        raise ValueError(f'serializable_dataset_fn needs clients of one kind'
                         f' of recipe, found {len(kinds)}')
      (kind,) = kinds
      stacked = [self._recipes[c].tensors() for c in ids]
      table = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(
              tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), -1)
      files = tf.stack([t[0] for t in stacked])
      ends = tf.constant(np.cumsum([int(t[1].shape[0]) for t in stacked]),
                         tf.int64)
      all_rows = tf.concat([t[1] for t in stacked], 0)
      shifts = tf.stack([t[2] for t in stacked])
      num_classes = tf.reduce_max(tf.stack([t[3] for t in stacked]))

      def by_id(client_id):
        i = table.lookup(client_id)
        tf.debugging.assert_non_negative(i, message='unknown client id')
        start = tf.concat([[0], ends], 0)[i]
        return _raw(kind, files[i], all_rows[start:ends[i]], shifts[i],
                    num_classes)

      self._by_id = by_id
    return self._by_id

  @property
  def element_type_structure(self):
    return collections.OrderedDict(
        label=tf.TensorSpec(shape=[], dtype=tf.int32),
        pixels=tf.TensorSpec(shape=[28, 28], dtype=tf.float32))

  # --- views ------------------------------------------------------------------

  def _view(self, recipes, counts=None) -> 'StoreClientData':
    return StoreClientData(recipes, self._counts if counts is None else counts,
                           self.description)

  def with_rows(self, rows: Mapping[str, np.ndarray]) -> 'StoreClientData':
    """The clients of `rows`, each restricted to those row positions
    (positions in its current data, kept in the order given)."""
    recipes = {}
    for cid, selected in rows.items():
      base = self.recipe(cid)
      selected = np.asarray(selected, np.int64)
      if base.rows is not None:
        selected = np.asarray(base.rows, np.int64)[selected]
      recipes[cid] = dataclasses.replace(base, rows=selected)
    return self._view(recipes)

  def with_label_shift(self, client_ids, shift: int,
                       num_classes: int) -> 'StoreClientData':
    """Labels y -> (y + shift) mod num_classes for `client_ids`."""
    chosen = set(client_ids)
    return self._view({
        c: (dataclasses.replace(r, label_shift=shift, num_classes=num_classes)
            if c in chosen else r) for c, r in self._recipes.items()})

  def concat_clients(self, other: 'StoreClientData', client_ids,
                     apart=()) -> 'StoreClientData':
    """`client_ids`, each with its data here followed by its data in `other`
    where it has some there; those in `apart` with their data here only."""
    recipes, counts = {}, {}
    apart = set(apart)
    for cid in client_ids:
      both = cid in other._recipes and cid not in apart  # pylint: disable=protected-access
      recipes[cid] = self.concat(other, cid) if both else self.recipe(cid)
      counts[cid] = self.num_examples(cid) + (
          other.num_examples(cid) if both else 0)
    return self._view(recipes, counts)

  def subset(self, client_ids) -> 'StoreClientData':
    """The clients `client_ids`, as they are here."""
    return self._view({cid: self.recipe(cid) for cid in client_ids})

  def concat(self, other: 'StoreClientData', client_id: str) -> Recipe:
    """The recipe of this client's data followed by `other`'s (a held-out
    client evaluated on all of its data)."""
    first, second = self.recipe(client_id), other.recipe(client_id)
    if (first.rows is not None or second.rows is not None or
        first.label_shift != second.label_shift or
        len(first.files) + len(second.files) > _MAX_FILES):
      raise ValueError(f'cannot concatenate the data of client {client_id!r}'
                       ' of two views')
    return dataclasses.replace(first, files=first.files + second.files)
