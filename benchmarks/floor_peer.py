r"""Peer 3, the compute floor: the plan's local training in plain TensorFlow.

  python benchmarks/floor_peer.py --plan=PLAN.json --out=OUT.json \
      --mode=sequential|parallel|eval [--workers=2 --threads=1]

Each client's local epoch (shuffle, batches of 20, SGD at 0.1, the project's
CNN with dropout in training mode) is ONE compiled `tf.function` whose loop
over batches runs inside the graph; the server averages the client models
weighted by examples (FedAvg with server learning rate 1.0). Data sit in
memory as tensors: no input pipeline, no metrics, no serialization.

* `sequential`: clients one after another, TensorFlow's default thread pools
  (all cores).
* `parallel`: `--workers` processes with `--threads` intra-op threads each;
  a round's clients are split between them (greedy by example count) and
  trained concurrently.
* `eval` (and after `sequential` training unless `--eval_repeats=0`): the
  forward-pass floor of the pipeline's evaluation: every plan evaluation
  writer's test examples, batches of 100, loss and accuracy sums, one
  compiled loop per client, all cores; 1 warm-up and `--eval_repeats` timed
  passes.

Writes {"round_seconds": [...], ...} to `--out`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=g-import-not-at-top

import procs  # pylint: disable=g-import-not-at-top
import workload  # pylint: disable=g-import-not-at-top


def run(plan_path: str, out_path: str, log_path: str, timeout: float, mode: str,
        workers: int = 2, threads: int = 1, eval_repeats: int = 3) -> dict:
  """Driver side: runs this script in a subprocess, returns its JSON + peak RSS."""
  return procs.run_json_peer(
      [sys.executable, os.path.abspath(__file__), f'--plan={plan_path}', f'--out={out_path}',
       f'--mode={mode}', f'--workers={workers}', f'--threads={threads}',
       f'--eval_repeats={eval_repeats}'], out_path, log_path, timeout=timeout)


class LocalTrainer:
  """The CNN plus one compiled local-epoch function."""

  def __init__(self, seed: int):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.tf = tf
    self.model = workload.keras_cnn(seed)
    self.variables = self.model.trainable_variables
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    batch, lr = workload.BATCH_SIZE, workload.CLIENT_LR
    model, variables = self.model, self.variables

    @tf.function(input_signature=[
        tf.TensorSpec([None, 784], tf.float32), tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([], tf.int32)])
    def local_epoch(x, y, seed):
      n = tf.shape(x)[0]
      order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([seed, 0]))
      x, y = tf.gather(x, order), tf.gather(y, order)
      loss = tf.constant(0.0)
      for i in tf.range((n + batch - 1) // batch):
        xb, yb = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
        with tf.GradientTape() as tape:
          loss = loss_fn(yb, model(xb, training=True))
        for v, g in zip(variables, tape.gradient(loss, variables)):
          v.assign_sub(lr * g)
      return loss

    @tf.function(input_signature=[
        tf.TensorSpec([None, 784], tf.float32), tf.TensorSpec([None], tf.int32)])
    def evaluate(x, y):
      eb = workload.EVAL_BATCH_SIZE
      n = tf.shape(x)[0]
      loss_sum, correct = tf.constant(0.0), tf.constant(0.0)
      for i in tf.range((n + eb - 1) // eb):
        xb, yb = x[i * eb:(i + 1) * eb], y[i * eb:(i + 1) * eb]
        logits = model(xb, training=False)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits)
        loss_sum += tf.reduce_sum(per_example)
        correct += tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), yb),
                                         tf.float32))
      return loss_sum, correct

    self._local_epoch = local_epoch
    self._evaluate = evaluate

  def weights(self) -> list[np.ndarray]:
    return [v.numpy() for v in self.variables]

  def set_weights(self, weights) -> None:
    for v, w in zip(self.variables, weights):
      v.assign(w)

  def train_clients(self, weights, clients, round_num: int):
    """Sum of n_i * w_i over `clients` [(x, y)], each from `weights`."""
    total, n_total = None, 0
    for j, (x, y) in enumerate(clients):
      self.set_weights(weights)
      self._local_epoch(x, y, self.tf.constant(round_num * 100003 + j, self.tf.int32))
      n = len(y)
      w = self.weights()
      total = [n * a for a in w] if total is None else [t + n * a for t, a in zip(total, w)]
      n_total += n
    return total, n_total

  def evaluate(self, clients) -> tuple[float, float, int]:
    loss, correct, n = 0.0, 0.0, 0
    for x, y in clients:
      l, c = self._evaluate(x, y)
      loss, correct, n = loss + float(l), correct + float(c), n + len(y)
    return loss, correct, n


def _to_tensors(tf, arrays):
  return {c: (tf.constant(x), tf.constant(y)) for c, (x, y) in arrays.items()}


def run_sequential(plan: workload.Plan, trainer: LocalTrainer) -> dict:
  data = _to_tensors(trainer.tf, workload.load_writers(plan.npz, plan.all_writers()))
  weights, seconds = trainer.weights(), []
  for r, writers in enumerate(plan.rounds, start=1):
    start = time.perf_counter()
    total, n = trainer.train_clients(weights, [data[c] for c in writers], r)
    weights = [t / n for t in total]
    seconds.append(time.perf_counter() - start)
  return dict(round_seconds=seconds, threads='default (all cores)')


def _worker(conn, plan_path: str, threads: int) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  plan = workload.Plan.load(plan_path)
  trainer = LocalTrainer(plan.seed)
  data = _to_tensors(tf, workload.load_writers(plan.npz, plan.all_writers()))
  conn.send(('ready', trainer.weights()))
  while True:
    msg = conn.recv()
    if msg is None:
      return
    weights, writers, round_num = msg
    conn.send(trainer.train_clients(weights, [data[c] for c in writers], round_num))


def _split(writers, counts, parts: int) -> list[list[str]]:
  """Greedy longest-first split of a round's writers by example count."""
  bins = [[] for _ in range(parts)]
  loads = [0] * parts
  for c in sorted(writers, key=lambda c: -counts[c]):
    i = loads.index(min(loads))
    bins[i].append(c)
    loads[i] += counts[c]
  return bins


def run_parallel(plan: workload.Plan, plan_path: str, workers: int, threads: int) -> dict:
  ctx = mp.get_context('spawn')
  pipes, procs = [], []
  for _ in range(workers):
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_worker, args=(child, plan_path, threads), daemon=True)
    p.start()
    pipes.append(parent)
    procs.append(p)
  try:
    # Every worker built the same initial model (same seed); start from one's.
    weights = [conn.recv()[1] for conn in pipes][0]
    seconds = []
    for r, writers in enumerate(plan.rounds, start=1):
      start = time.perf_counter()
      parts = _split(writers, plan.train_counts, workers)
      busy = [(conn, part) for conn, part in zip(pipes, parts) if part]
      for conn, part in busy:
        conn.send((weights, part, r))
      total, n_total = None, 0
      for conn, _ in busy:
        part_total, n = conn.recv()
        total = part_total if total is None else [a + b for a, b in zip(total, part_total)]
        n_total += n
      weights = [t / n_total for t in total]
      seconds.append(time.perf_counter() - start)
  finally:
    for conn in pipes:
      try:
        conn.send(None)
      except (BrokenPipeError, OSError):
        pass
    for p in procs:
      p.join(timeout=10)
      if p.is_alive():
        p.kill()
  return dict(round_seconds=seconds, threads=f'{workers} processes x {threads} intra-op threads')


def run_eval(plan: workload.Plan, repeats: int, trainer: LocalTrainer) -> dict:
  data = _to_tensors(trainer.tf, workload.load_writers(plan.npz, plan.eval_writers, 'test'))
  clients = [data[c] for c in plan.eval_writers]
  trainer.evaluate(clients)  # warm-up: traces the loop
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    _, _, n = trainer.evaluate(clients)
    seconds.append(time.perf_counter() - start)
  return dict(eval_seconds=seconds, eval_seconds_median=statistics.median(seconds),
              eval_num_examples=n, eval_num_clients=len(clients))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--plan', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--mode', choices=('sequential', 'parallel', 'eval'), required=True)
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--threads', type=int, default=1)
  parser.add_argument('--eval_repeats', type=int, default=3)
  args = parser.parse_args()
  plan = workload.Plan.load(args.plan)
  if args.mode == 'parallel':
    result = run_parallel(plan, args.plan, args.workers, args.threads)
  else:
    trainer = LocalTrainer(plan.seed)
    result = run_sequential(plan, trainer) if args.mode == 'sequential' else {}
    if args.mode == 'eval' or args.eval_repeats > 0:
      result.update(run_eval(plan, max(1, args.eval_repeats), trainer))
  with open(args.out, 'w') as f:
    json.dump(result, f)
  return 0


if __name__ == '__main__':
  sys.exit(main())
