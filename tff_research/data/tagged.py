"""Several clients' datasets as one sequence, each element tagged with its client.

    tagged_sequence: ([tf.data.Dataset of E], [int]) -> tf.data.Dataset of (E, int32)

The clients' elements in order, unchanged, each paired with its client's
tag: what a computation that walks several clients in one call reads (the
per-client evaluation, the cohort client work). Built by a balanced tree of
`concatenate`s, so the graph stays shallow for hundreds of clients, and by
`zip` with a repeated constant rather than `map`: an eagerly built `map`
registers a function with TensorFlow's eager context that is never freed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf


def tagged_sequence(datasets: Sequence[tf.data.Dataset],
                    tags: Sequence[int]) -> tf.data.Dataset:
  """`datasets` concatenated, each element paired with its dataset's tag."""
  if not datasets or len(datasets) != len(tags):
    raise ValueError(f'tagged_sequence needs as many tags ({len(tags)}) as'
                     f' datasets ({len(datasets)}), and at least one')
  tagged = [tf.data.Dataset.zip(
      (ds, tf.data.Dataset.from_tensors(np.int32(t)).repeat()))
            for ds, t in zip(datasets, tags)]
  while len(tagged) > 1:
    tagged = [tagged[k].concatenate(tagged[k + 1]) if k + 1 < len(tagged)
              else tagged[k] for k in range(0, len(tagged), 2)]
  return tagged[0]
