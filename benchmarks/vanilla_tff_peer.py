r"""Peer 2: vanilla TFF, as its "Federated Learning for Image Classification"
tutorial uses it.

  python benchmarks/vanilla_tff_peer.py --plan=PLAN.json --out=OUT.json

TFF's default execution context (the one `import tensorflow_federated` sets:
local C++ runtime, a `worker_binary` child); TFF's EMNIST loader on the same
sqlite cache the pipeline reads; the tutorial's `preprocess` (repeat, shuffle
100, batch 20, reshape to x/y, prefetch 10); the project's Keras CNN through
`tff.learning.models.from_keras_model`; `build_weighted_fed_avg` with
`build_sgdm(0.1)` on the clients and `build_sgdm(1.0)` on the server. Round r
trains the plan's writers; a round's seconds cover building its client
datasets and `process.next`, as the pipeline's `round_seconds` does.

TFF's default context leaves its worker running after Python exits, so the
driver (`run.py` via `procs.run_peer`) starts this script in a session of its
own, with output to a file, and kills the session's process group once the
script has written `--out`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import procs  # pylint: disable=g-import-not-at-top
import workload  # pylint: disable=g-import-not-at-top


def run(plan_path: str, out_path: str, log_path: str, timeout: float) -> dict:
  """Driver side: runs this script in its own session, kills the group after."""
  return procs.run_json_peer([sys.executable, os.path.abspath(__file__), f'--plan={plan_path}',
                              f'--out={out_path}'], out_path, log_path, timeout=timeout,
                             children='worker_binary')


def preprocess(dataset):
  """The tutorial's client pipeline."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def batch_format_fn(element):
    return collections.OrderedDict(
        x=tf.reshape(element['pixels'], [-1, 784]),
        y=tf.reshape(element['label'], [-1, 1]))
  return (dataset.repeat(workload.EPOCHS)
          .shuffle(workload.SHUFFLE_BUFFER, seed=1)
          .batch(workload.BATCH_SIZE)
          .map(batch_format_fn)
          .prefetch(10))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--plan', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  plan = workload.Plan.load(args.plan)
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  import tensorflow_federated as tff  # sets TFF's default (local C++) context
  # pylint: enable=g-import-not-at-top

  emnist_train, _ = tff.simulation.datasets.emnist.load_data(
      only_digits=False, cache_dir=plan.cache_dir)
  example = preprocess(emnist_train.create_tf_dataset_for_client(plan.rounds[0][0]))

  def model_fn():
    return tff.learning.models.from_keras_model(
        workload.keras_cnn(plan.seed),
        input_spec=example.element_spec,
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])

  process = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=workload.CLIENT_LR),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=workload.SERVER_LR))
  state = process.initialize()
  seconds, examples = [], []
  for writers in plan.rounds:
    start = time.perf_counter()
    data = [preprocess(emnist_train.create_tf_dataset_for_client(c)) for c in writers]
    result = process.next(state, data)
    state = result.state
    seconds.append(time.perf_counter() - start)
    examples.append(int(result.metrics['client_work']['train']['num_examples']))
  if examples != plan.round_examples():
    raise RuntimeError(f'vanilla TFF trained {examples} examples per round, the plan '
                       f'{plan.round_examples()}')
  with open(args.out, 'w') as f:
    json.dump(dict(round_seconds=seconds, round_examples=examples), f)
  return 0


if __name__ == '__main__':
  sys.exit(main())
