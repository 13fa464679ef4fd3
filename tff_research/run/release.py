"""Where a round's metrics go: metrics.csv, TensorBoard scalars, histograms
and images, through TFF's release managers.

A round's metrics are groups: `{group: {name: value}}`. `train` is renamed
to the project's names; every other group (an algorithm's `dp`,
`clusters`, a hook's `communication`, ...) is logged as is: scalars as
`group_name` CSV columns and `group/name` TensorBoard scalars, arrays as
TensorBoard histograms only, uint8 [H, W, 1|3|4] arrays as images.

One history per run, however often it is resumed:

* `MetricsRelease.start(r)` is called once the loop knows it will run rounds
  after round `r` (its checkpoint). Nothing is written before it, so a re-run
  with nothing to do creates no file. It cuts the TensorBoard history back to
  round `r` (`truncate_events`), as TFF's CSV release manager replaces the
  rows of `metrics.csv` newer than `r`. TensorBoard merges every event file
  of a run directory into one series per tag (files in name order) and
  would otherwise show the rounds a resumed run repeats twice; the Python
  loader drops them only after a `SessionLog.START` event, which TF 2's
  summary writers never write, and the Rust data server not at all.
* Every summary of an invocation (scalars, histograms, images, the
  dashboard's) goes to one writer, so one event file per invocation.
* A release that fails midway (e.g. no space left on device) leaves
  `metrics.csv` whole: a row appended in part is cut off and the temporary
  file of a rewrite is removed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
import glob
import os
from typing import Any, Optional
import uuid

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2

# TFF's metric names -> the names this project logs.
_TRAIN_RENAMES = {
    'sparse_categorical_accuracy': 'accuracy',
    'num_examples': 'examples',
}
# (group, name) -> its metrics.csv column, where not `group_name`.
_COLUMNS = {('train', 'round_seconds'): 'round_seconds',
            ('train', 'wall_seconds'): 'wall_seconds'}
# (group, name) -> its TensorBoard name, where not `name`.
_TAGS = {('train', 'clients'): 'num_clients'}
EVENT_FILE_PATTERN = 'events.out.tfevents.*'
# TFF's CSV release manager writes a rewrite to `PATH_tempNNNN` first.
_CSV_TEMP_SUFFIX = '_temp'


def is_image(array: np.ndarray) -> bool:
  return (array.dtype == np.uint8 and array.ndim == 3
          and array.shape[-1] in (1, 3, 4))


def to_row_and_summaries(
    groups: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metrics.csv row, TensorBoard structure) of a round's metric groups."""
  row = collections.OrderedDict()
  tb = collections.OrderedDict()
  for group, values in groups.items():
    if not isinstance(values, Mapping):
      continue
    tb_group = tb.setdefault(group, collections.OrderedDict())
    for name, value in values.items():
      if group == 'train':
        if name == 'num_batches':
          continue
        name = _TRAIN_RENAMES.get(name, name)
      array = np.asarray(value)
      if array.dtype.kind not in 'biuf' or is_image(array):
        continue
      tb_group[_TAGS.get((group, name), name)] = array
      if array.shape == ():
        row[_COLUMNS.get((group, name), f'{group}_{name}')] = array.item()
  return row, tb


def truncate_events(summary_dir: str, last_round: int) -> list[str]:
  """Cuts the event files of `summary_dir` (not its subdirectories) back to
  round `last_round`; returns the files changed or removed.

  Events of steps after `last_round` are dropped; with `last_round` 0 (no
  checkpoint: the run starts over and writes its step-0 events again) every
  event file is removed, and so is a file left with nothing but its header.
  A file is rewritten under a temporary name that TensorBoard does not read
  and renamed over the original, so a failure leaves it whole. A record cut
  short by a crash ends the file's readable part and is dropped too.
  """
  changed = []
  for path in sorted(glob.glob(os.path.join(glob.escape(summary_dir),
                                            EVENT_FILE_PATTERN))):
    records = list(event_file_loader.RawEventFileLoader(path).Load())
    kept = []
    for record in records:
      event = event_pb2.Event.FromString(record)
      if last_round and event.step <= last_round:
        kept.append((record, event.HasField('file_version')))
    if all(header for _, header in kept):
      os.remove(path)
      changed.append(path)
      continue
    if len(kept) == len(records) and _records_size(records) == (
        os.path.getsize(path)):
      continue
    temp = os.path.join(summary_dir, f'.truncating-{uuid.uuid4().hex}')
    try:
      with tf.io.TFRecordWriter(temp) as writer:
        for record, _ in kept:
          writer.write(record)
      os.replace(temp, path)
    finally:
      if os.path.exists(temp):
        os.remove(temp)
    changed.append(path)
  return changed


def _records_size(records: list[bytes]) -> int:
  """Bytes of `records` in TFRecord framing (length, 2 CRCs, data)."""
  return sum(len(r) + 16 for r in records)


class SummaryWriter:
  """A `tf.summary` writer of `logdir` whose event file is created when it
  is first used (`as_default`), not when it is constructed."""

  def __init__(self, logdir: str):
    self._logdir = logdir
    self._writer: Optional[tf.summary.SummaryWriter] = None

  def _open(self) -> tf.summary.SummaryWriter:
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self._logdir)
    return self._writer

  def as_default(self, step: Optional[int] = None):
    return self._open().as_default(step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    """Closes the event file (if any), dropping what a failing device
    cannot take, so nothing is flushed at exit after an error was reported."""
    writer, self._writer = self._writer, None
    if writer is not None:
      try:
        writer.close()
      except tf.errors.OpError:
        pass


class _TensorBoardRelease(tff.program.TensorBoardReleaseManager):
  """TFF's TensorBoard release manager writing through a given writer.

  TFF's constructor opens an event file of its own; this one shares the
  run's writer (`_summary_writer` is where TFF's `release` writes).
  """

  def __init__(self, writer: SummaryWriter):  # pylint: disable=super-init-not-called
    self._summary_writer = writer


class MetricsRelease:
  """Releases each round to metrics.csv and TensorBoard (module docstring).

  `writer` is the run's summary writer, for every other summary of the run.
  """

  def __init__(self, metrics_path: str, summary_dir: str):
    self._metrics_path = metrics_path
    self._summary_dir = summary_dir
    self.writer = SummaryWriter(summary_dir)
    self._csv: Optional[tff.program.CSVFileReleaseManager] = None
    self._tb = _TensorBoardRelease(self.writer)

  def start(self, start_round: int) -> None:
    """Prepares the run's files for the rounds after `start_round`."""
    for temp in glob.glob(glob.escape(self._metrics_path) + _CSV_TEMP_SUFFIX
                          + '*'):
      os.remove(temp)
    truncate_events(self._summary_dir, start_round)
    self._csv = tff.program.CSVFileReleaseManager(
        self._metrics_path, key_fieldname='round')

  def release(self, round_num: int, groups: Mapping[str, Any]) -> dict:
    """Writes the round; returns its CSV row."""
    if self._csv is None:
      raise RuntimeError('MetricsRelease.start() must be called first')
    row, tb = to_row_and_summaries(groups)
    self._release_csv(row, round_num)
    asyncio.run(self._tb.release(tb, key=round_num))
    with self.writer.as_default():
      for group, values in groups.items():
        for name, value in (values.items() if isinstance(values, Mapping)
                            else ()):
          array = np.asarray(value)
          if is_image(array):
            tf.summary.image(f'{group}/{name}', array[np.newaxis],
                             step=round_num)
    return row

  def _release_csv(self, row: Mapping[str, Any], round_num: int) -> None:
    """The CSV release; if it fails midway, its temporary file is removed
    and a row it appended only in part is cut off (rows end with a newline,
    so the file ends after the last one)."""
    try:
      asyncio.run(self._csv.release(row, key=round_num))
    except BaseException:
      for temp in glob.glob(glob.escape(self._metrics_path)
                            + _CSV_TEMP_SUFFIX + '*'):
        os.remove(temp)
      with open(self._metrics_path, 'rb') as f:
        content = f.read()
      if content and not content.endswith(b'\n'):
        os.truncate(self._metrics_path, content.rfind(b'\n') + 1)
      raise

  def flush(self) -> None:
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()
