"""Where a round's metrics go: metrics.csv, TensorBoard scalars, histograms
and images, through TFF's release managers.

A round's metrics are groups: `{group: {name: value}}`. `train` is renamed
to the project's names; every other group (an algorithm's `dp`,
`clusters`, a hook's `communication`, ...) is logged as is: scalars as
`group_name` CSV columns and `group/name` TensorBoard scalars, arrays as
TensorBoard histograms only, uint8 [H, W, 1|3|4] arrays as images.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

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


class MetricsRelease:
  """Releases each round to metrics.csv and TensorBoard.

  The CSV release manager drops rows newer than a resumed round as the first
  new row is released, so `metrics.csv` never holds two histories.
  """

  def __init__(self, metrics_path: str, writer, summary_dir: str):
    self._csv = tff.program.CSVFileReleaseManager(
        metrics_path, key_fieldname='round')
    self._tb = tff.program.TensorBoardReleaseManager(summary_dir)
    self._writer = writer

  def release(self, round_num: int, groups: Mapping[str, Any]) -> dict:
    """Writes the round; returns its CSV row."""
    row, tb = to_row_and_summaries(groups)
    asyncio.run(self._csv.release(row, key=round_num))
    asyncio.run(self._tb.release(tb, key=round_num))
    with self._writer.as_default():
      for group, values in groups.items():
        for name, value in (values.items() if isinstance(values, Mapping)
                            else ()):
          array = np.asarray(value)
          if is_image(array):
            tf.summary.image(f'{group}/{name}', array[np.newaxis],
                             step=round_num)
    return row

  def flush(self) -> None:
    self._writer.flush()
