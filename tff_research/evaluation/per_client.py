"""Federated evaluation on held-out data: the weighted mean and its spread.

One federated computation evaluates the model on every held-out client and
returns each client's loss, accuracy and number of examples, so a run reports
the distribution (min, 10th percentile, median) that a mean hides, not just
the mean: fairness across clients is a first-class result in FL (Li et al.
2020, "Fair Resource Allocation in Federated Learning"). The example-weighted
mean of those rows is exactly what `tff.learning.algorithms.build_fed_eval`
reports (tests/test_evaluation.py checks the two against each other), so one
pass gives both. The same pass sums the held-out confusion matrix, which the
dashboard shows, so an evaluation round reads every held-out example once.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_research.algorithms import cohort_client_work
from tff_research.data import store_client_data
from tff_research.data import tagged


_NUM_METRICS = 3  # loss, accuracy, number of examples


def build_per_client_eval(
    model_fn: Callable[[], tff.learning.models.VariableModel],
    num_clients: int,
    num_classes: int = 0,
) -> tff.Computation:
  """Per-client metrics as a [num_clients, 3] tensor and the confusion matrix
  summed over clients (rows: true label) when `num_classes` > 0 ([0, 0]
  otherwise), in one call.

  The argument is every evaluated client's batches in one sequence, each
  batch tagged with its client's row: `tagged.tagged_sequence(datasets,
  indices)` builds it.
  Batches never mix clients, so row i = (loss, accuracy, num_examples) of
  client i is exactly what `build_fed_eval` computes for that client (the
  example-weighted mean of its batch losses). Why one sequence and not a
  federated map over clients: the model is built and the weights assigned
  once, and the runtime dispatches one call instead of one per client, which
  dominated the cost (held-out writers have ~10 examples each: 2.1 s for 96
  writers against a ~0.2 s forward pass, per client ~20 ms of overhead).

      (<M, <B, int32>*> -> <float64[num_clients, 3], int64[C, C]>)
  """
  with tf.Graph().as_default():
    model = model_fn()
    weights_type = tff.learning.models.weights_type_from_model(model)
    batch_type = tff.types.tensorflow_to_type(model.input_spec)

  @tff.tensorflow.computation(
      weights_type,
      tff.SequenceType(tff.StructType([batch_type, tff.TensorType(np.int32)])),
  )
  @tf.function
  def evaluate_all(incoming_weights, batches):
    with tf.init_scope():
      model = model_fn()
    tf.nest.map_structure(
        lambda v, t: v.assign(t),
        tff.learning.models.ModelWeights.from_model(model),
        incoming_weights,
    )

    # Accumulated from forward_pass's BatchOutput (not the model's metric
    # variables) so that any model whose predictions are class scores works
    # the same; the loss is the example-weighted mean of batch losses, which
    # is what TFF's `loss` metric reports.
    def reduce_fn(acc, element):
      batch, index = element
      output = model.forward_pass(batch, training=False)
      labels = tf.reshape(batch['y'], [-1])
      predicted = tf.argmax(
          output.predictions, axis=-1, output_type=labels.dtype
      )
      n = tf.cast(tf.shape(labels)[0], tf.float64)
      sums, confusion = acc
      if num_classes:
        confusion += tf.math.confusion_matrix(
            labels, predicted, num_classes=num_classes, dtype=tf.int64)
      row = tf.stack([
          tf.cast(output.loss, tf.float64) * n,
          tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float64)),
          n,
      ])
      return tf.tensor_scatter_nd_add(sums, [[index]], row[tf.newaxis]), (
          confusion)

    sums, confusion = batches.reduce(
        (tf.zeros([num_clients, _NUM_METRICS], tf.float64),
         tf.zeros([num_classes, num_classes], tf.int64)), reduce_fn)
    loss_sum, correct, count = tf.unstack(sums, axis=1)
    table = tf.stack([
        tf.math.divide_no_nan(loss_sum, count),
        tf.math.divide_no_nan(correct, count),
        count,
    ], axis=1)
    return table, confusion

  return evaluate_all


def build_parallel_eval(per_client_eval: tff.Computation) -> tff.Computation:
  """`per_client_eval` (`build_per_client_eval`) on several parts of the
  clients at once: each CLIENTS value is one part's tagged sequence, and
  the parts' tables and confusion matrices are summed. Parts hold disjoint
  clients, so every row is one part's row plus zeros: exactly the one-part
  result. Why: the runtime trains and evaluates its clients concurrently,
  so P parts use P cores even when each op runs on one thread (the local
  worker with `parallel_cohorts`); on TFF workers, the parts are split
  across them.

      (<M@SERVER, {<B, int32>*}@CLIENTS>
       -> <float64[num_clients, 3], int64[C, C]>@SERVER)
  """
  parameter = per_client_eval.type_signature.parameter
  weights_type, sequence_type = parameter[0], parameter[1]

  @tff.federated_computation(tff.FederatedType(weights_type, tff.SERVER),
                             tff.FederatedType(sequence_type, tff.CLIENTS))
  def evaluate_parts(weights, parts):
    return tff.federated_sum(tff.federated_map(
        per_client_eval, (tff.federated_broadcast(weights), parts)))

  return evaluate_parts


# The pooled examples a sequence built from memory may carry: its arrays are
# constants of the dataset graph TFF serializes into the call, and TFF
# refuses a dataset over 100 MB (`Serialized size of Dataset ... exceeds
# maximum allowed`), so a larger evaluation goes in several calls.
CHUNK_BYTES = 48 * 2**20


class PooledBatches:
  """Every client's evaluation batches, read once and held as arrays.

  Why: a run evaluates the same held-out datasets every evaluation round,
  and iterating hundreds of small per-client pipelines cost more than the
  forward pass itself (201 FEMNIST writers' 3,209 test examples, CNN: 2.2-
  2.4 s from per-client in-memory datasets, 0.74-0.77 s from this pool,
  against a 0.38-0.46 s plain-TF forward pass). This is the path of data
  held in memory (`ArrayClientData`, a researcher's own `ClientData`); data
  in an array store is read by the worker instead (`RecipeSource`).
  `sequence(indices)` is one dataset over the pooled arrays whose elements
  are exactly the clients' original batches, in order, each tagged with
  its client's row (what `tagged.tagged_sequence` builds from per-client
  datasets).
  """

  def __init__(self, spec, leaves: list[np.ndarray], batch_bounds: np.ndarray,
               client_batches: list[np.ndarray]):
    self._spec = spec
    self._leaves = leaves
    self._bounds = batch_bounds      # batch b = rows bounds[b]:bounds[b + 1]
    self._client_batches = client_batches  # client i -> its batch ids
    row_bytes = sum(a.itemsize * int(np.prod(a.shape[1:])) for a in leaves)
    self._client_bytes = np.array(
        [row_bytes * int(np.sum(batch_bounds[b + 1] - batch_bounds[b]))
         for b in client_batches], np.int64)

  def __len__(self) -> int:
    return len(self._client_batches)

  @classmethod
  def read(cls, datasets: Sequence[tf.data.Dataset]) -> Optional['PooledBatches']:
    """The pool of `datasets`' batches, or None where it cannot be one:
    element structures that differ or are not tensors with a leading batch
    dimension."""
    if not datasets:
      return None
    spec = datasets[0].element_spec
    specs = tf.nest.flatten(spec)
    if not all(isinstance(s, tf.TensorSpec) and s.shape.rank
               and s.shape[1:].is_fully_defined() for s in specs) or any(
                   d.element_spec != spec for d in datasets):
      return None
    columns = [[] for _ in specs]
    sizes, client_batches = [], []
    for ds in datasets:
      first = len(sizes)
      for batch in ds.as_numpy_iterator():
        arrays = tf.nest.flatten(batch)
        n = arrays[0].shape[0]
        if any(a.shape[0] != n for a in arrays):
          return None
        for column, a in zip(columns, arrays):
          column.append(a)
        sizes.append(n)
      client_batches.append(np.arange(first, len(sizes)))
    leaves = [np.concatenate(c) if c else
              np.zeros((0, *s.shape[1:]), s.dtype.as_numpy_dtype)
              for c, s in zip(columns, specs)]
    bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    return cls(spec, leaves, bounds, client_batches)

  def chunks(self, indices: Sequence[int],
             limit_bytes: int = CHUNK_BYTES) -> list[list[int]]:
    """`indices` cut, in order, into runs of clients whose examples add up
    to at most `limit_bytes` (a client larger than that alone)."""
    runs, run, size = [], [], 0
    for i in indices:
      if run and size + self._client_bytes[i] > limit_bytes:
        runs.append(run)
        run, size = [], 0
      run.append(i)
      size += int(self._client_bytes[i])
    return runs + [run] if run else runs

  def sequence(self, indices: Sequence[int]) -> tf.data.Dataset:
    """The batches of clients `indices`, in that order, tagged with their
    index; holds only those clients' examples."""
    batches = np.concatenate(
        [self._client_batches[i] for i in indices] + [np.zeros(0, np.int64)])
    tags = np.concatenate(
        [np.full(len(self._client_batches[i]), i, np.int32) for i in indices]
        + [np.zeros(0, np.int32)])
    sizes = self._bounds[batches + 1] - self._bounds[batches]
    rows = np.concatenate([np.arange(self._bounds[b], self._bounds[b + 1])
                           for b in batches] + [np.zeros(0, np.int64)])
    leaves = [tf.constant(a[rows]) for a in self._leaves]
    ends = np.cumsum(sizes, dtype=np.int64)
    spec = self._spec

    def batch(start, end, tag):
      return tf.nest.pack_sequence_as(
          spec, [a[start:end] for a in leaves]), tag

    # Built once per set of clients (a run, or a clustering of it), so the
    # function this registers with the eager context is not per round.
    return tf.data.Dataset.from_tensor_slices(
        (ends - sizes, ends, tags)).map(batch)


class EvalSource(abc.ABC):
  """The held-out clients' data, as the per-client evaluation reads it.

  `sequences(indices)` covers clients `indices` (positions in the
  evaluated list) with one or more tagged batch sequences (see
  `build_per_client_eval`), each small enough to be a computation's
  argument, whatever the number of clients.
  """

  @property
  @abc.abstractmethod
  def num_clients(self) -> int:
    """The number of evaluated clients (rows of the result)."""

  @abc.abstractmethod
  def sequences(self, indices: Sequence[int]) -> list[tf.data.Dataset]:
    """Tagged batch sequences of clients `indices`, in order."""


class RecipeSource(EvalSource):
  """Clients in an array store: one sequence whose graph holds the clients'
  recipes (file names, selected rows), read by the worker that runs the
  evaluation (`store_client_data.eval_sequences`: one per kind of recipe)."""

  def __init__(self, recipes: Sequence[store_client_data.Recipe],
               batch_size: int):
    self._recipes = list(recipes)
    self._batch_size = batch_size

  @property
  def num_clients(self) -> int:
    return len(self._recipes)

  def sequences(self, indices):
    indices = list(indices)
    return store_client_data.eval_sequences(
        [self._recipes[i] for i in indices], indices, self._batch_size)


class DatasetSource(EvalSource):
  """Clients given as datasets (data in memory, any `ClientData`): read
  once into a `PooledBatches` on first use, and evaluated in chunks of at
  most `chunk_bytes` of examples; datasets that cannot be pooled are
  evaluated from their sources (`tagged.tagged_sequence`)."""

  def __init__(self, datasets: Sequence[tf.data.Dataset],
               chunk_bytes: int = CHUNK_BYTES):
    self.datasets = list(datasets)
    self._chunk_bytes = chunk_bytes
    self._pool = None
    self._read = False

  @property
  def num_clients(self) -> int:
    return len(self.datasets)

  def sequences(self, indices):
    if not self._read:
      self._pool = PooledBatches.read(self.datasets)
      self._read = True
    if self._pool is None:
      return [tagged.tagged_sequence([self.datasets[i] for i in indices],
                                     indices)]
    return [self._pool.sequence(run)
            for run in self._pool.chunks(indices, self._chunk_bytes)]


class Evaluator:
  """Evaluates model weights on the held-out clients of an `EvalSource` (or a
  list of datasets, pooled as a `DatasetSource`).

  Computations are built once and reused every evaluation round; each set
  of clients' sequences is built once (a run evaluates the same clients
  every time). With `parts` > 1 the clients are evaluated in that many
  contiguous parts at once (`build_parallel_eval`); the result is the
  same.
  """

  def __init__(self, model_fn: Callable[[], tff.learning.models.VariableModel],
               num_classes: int = 0, chunk_bytes: int = CHUNK_BYTES,
               parts: int = 1):
    self._model_fn = model_fn
    self._num_classes = num_classes
    self._chunk_bytes = chunk_bytes
    self._parts = max(1, int(parts))
    # Built on first use for the number of evaluated clients, which is fixed
    # for a run; rebuilt only if it changes.
    self._per_client_eval = None
    self._num_clients = None
    # (source, indices) -> sequences. The source is kept so that its id
    # cannot be reused by another.
    self._inputs = {}
    # The `DatasetSource` of the last list of datasets evaluated.
    self._datasets_source = None

  def evaluate(
      self,
      model_weights: tff.learning.models.ModelWeights,
      clients,
  ) -> dict[str, object]:
    """Returns mean and per-client metrics of `clients` (an `EvalSource` or
    a list of datasets).

    Keys: `loss`, `accuracy` (example-weighted means over all evaluated
    examples, the quantity `build_fed_eval` reports), `num_examples`,
    `num_clients`, `accuracy_min`, `accuracy_p10`, `accuracy_median`, and
    `per_client_accuracy`/`per_client_loss`/`per_client_num_examples` (numpy
    arrays in the order given), and `confusion_matrix` (int64 [C, C], rows =
    true label; [0, 0] without `num_classes`).
    """
    source = self._source(clients)
    return self.evaluate_groups(
        [(model_weights, list(range(source.num_clients)))], source)

  def _source(self, clients) -> EvalSource:
    if isinstance(clients, EvalSource):
      return clients
    datasets = list(clients)
    cached = self._datasets_source
    if cached is None or len(cached.datasets) != len(datasets) or any(
        a is not b for a, b in zip(cached.datasets, datasets)):
      self._datasets_source = DatasetSource(datasets, self._chunk_bytes)
    return self._datasets_source

  def _calls(self, source: EvalSource, indices) -> list[list[tf.data.Dataset]]:
    """The sequences of `indices`, one list per call: call j holds every
    part's j-th sequence (a part has several for data pooled in chunks
    under TFF's serialization limit, or of several kinds)."""
    key = (id(source), tuple(indices))
    if key not in self._inputs:
      if len(self._inputs) >= 8:  # Clustered FL's groups change over time.
        self._inputs.clear()
      # Contiguous, as even as they can be: the cohorts' split.
      parts = [source.sequences(indices[run.start:run.stop])
               for run in cohort_client_work.split_cohorts(len(indices),
                                                           self._parts)]
      calls = [[p[j] for p in parts if j < len(p)]
               for j in range(max(len(p) for p in parts))]
      self._inputs[key] = (source, calls)
    return self._inputs[key][1]

  def evaluate_groups(
      self,
      groups: Sequence[tuple[tff.learning.models.ModelWeights, Sequence[int]]],
      clients,
  ) -> dict[str, object]:
    """Like `evaluate`, each group of clients with its own model.

    Per-client arrays are in the order of `clients`.
    """
    source = self._source(clients)
    n_clients = source.num_clients
    if self._num_clients != n_clients:
      self._per_client_eval = build_per_client_eval(
          self._model_fn, n_clients, self._num_classes)
      if self._parts > 1:
        self._per_client_eval = build_parallel_eval(self._per_client_eval)
      self._num_clients = n_clients
    table = np.zeros((n_clients, _NUM_METRICS))
    confusion = np.zeros((self._num_classes,) * 2, np.int64)
    for weights, indices in groups:
      indices = list(indices)
      if not indices:
        continue
      for call in self._calls(source, indices):
        rows, matrix = self._per_client_eval(
            weights, call if self._parts > 1 else call[0])
        table += rows
        confusion += np.asarray(matrix, np.int64)
    loss, acc, n = table.T
    total = max(n.sum(), 1.0)
    return collections.OrderedDict(
        loss=float(np.dot(loss, n) / total),
        accuracy=float(np.dot(acc, n) / total),
        num_examples=int(n.sum()),
        num_clients=n_clients,
        accuracy_min=float(acc.min()),
        accuracy_p10=float(np.percentile(acc, 10)),
        accuracy_median=float(np.median(acc)),
        per_client_accuracy=acc,
        per_client_loss=loss,
        per_client_num_examples=n,
        confusion_matrix=confusion,
    )
