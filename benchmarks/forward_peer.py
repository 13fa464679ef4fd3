"""The plain-TF forward-pass floor of a full held-out evaluation.

  python benchmarks/forward_peer.py --cache=DIR --out=FILE.json [--repeats=3]

Every test writer's examples of the cache's `all_test` split (read from its
array store into memory), evaluated by the benchmark's CNN in one compiled
loop over batches of 100 (`floor_peer.LocalTrainer.evaluate`): the
arithmetic of the pipeline's held-out evaluation, with nothing around it.
Writes the median seconds of `--repeats` warm passes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import floor_peer  # pylint: disable=g-import-not-at-top
from tff_research.data import array_store  # pylint: disable=g-import-not-at-top


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cache', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  db = os.path.join(args.cache, 'emnist_all.sqlite')
  store = array_store.open_store(db) or array_store.build_from_sqlite(db)
  split = store.split('all_test')
  pixels, labels = zip(*(split.read(c) for c in split.client_ids))
  trainer = floor_peer.LocalTrainer(0)
  x = trainer.tf.constant(np.concatenate(pixels).reshape(-1, 784))
  y = trainer.tf.constant(np.concatenate(labels))
  trainer.evaluate([(x, y)])  # Traces the loop.
  seconds = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    _, _, n = trainer.evaluate([(x, y)])
    seconds.append(time.perf_counter() - start)
  with open(args.out, 'w') as f:
    json.dump(dict(eval_seconds=seconds,
                   eval_seconds_median=statistics.median(seconds),
                   eval_num_examples=n, eval_num_clients=len(split.client_ids)),
              f)
  return 0


if __name__ == '__main__':
  sys.exit(main())
