r"""Where one FedAvg round's time goes: the breakdown of benchmarks/README.md.

  uv run python benchmarks/round_profile.py --data_dir=CACHE [--clients=10] [--rounds=6]

CACHE is an EMNIST cache of the workload's writers (`run.py --workdir=DIR`
leaves one in DIR/cache; or `python -m tff_research.cli.build_emnist_cache
--input=../shared/data/femnist/femnist_dev.npz --cache_dir=CACHE`). The
workload is run.py's (the EMNIST CNN, K clients, 1 epoch, batch 20). For the
same K clients of each round, one after another in the same process and
TFF worker, it times:

* `round, cohort`: the pipeline's round (`algorithm.next`: the round's
  clients in one TFF call, `algorithms/cohort_client_work.py`);
* `round, per client`: the same round through TFF's own client work (one
  TensorFlow call per client, `build_model_delta_client_work`);
* `data in the worker`: the worker reading the round's client datasets to
  the end (read, decode, shuffle, batch), from the array store and from TFF's
  SQLite `tf.Example` rows;
* `dispatch, per client` / `dispatch, cohort`: the two rounds on clients of
  one example each: what a round costs besides arithmetic and data;
* `floor`: plain TensorFlow training the same clients' examples in memory
  (benchmarks/floor_peer.py's compiled local epoch), all cores.

Each line gives the median wall seconds and the median CPU seconds (this
process plus the worker) over rounds 2..R, and the machine's load. Run it
alone: two timed jobs on two cores measure each other.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_TICK = os.sysconf('SC_CLK_TCK')


def _cpu(pid) -> float:
  with open(f'/proc/{pid}/stat') as f:
    fields = f.read().rsplit(')', 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / _TICK


class _Timer:
  """Wall and CPU seconds (this process plus the worker) per label."""

  def __init__(self, worker_pid: int):
    self.pids = (os.getpid(), worker_pid)
    self.wall = collections.defaultdict(list)
    self.cpu = collections.defaultdict(list)

  def time(self, label, fn, *args):
    c0, t0 = sum(_cpu(p) for p in self.pids), time.perf_counter()
    out = fn(*args)
    self.wall[label].append(time.perf_counter() - t0)
    self.cpu[label].append(sum(_cpu(p) for p in self.pids) - c0)
    return out

  def lines(self):
    for label, walls in self.wall.items():
      yield (f'| {label} | {statistics.median(walls[1:]):.3f} |'
             f' {statistics.median(self.cpu[label][1:]):.3f} |')


def _count_in_worker():
  """A TFF computation that reads every client dataset to the end in the
  worker and returns the examples read."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  cache = {}

  def run(datasets):
    spec = datasets[0].element_spec
    if 'fn' not in cache:
      @tff.tensorflow.computation(tff.SequenceType(
          tff.types.tensorflow_to_type(spec)))
      def count(ds):
        return ds.reduce(np.int64(0), lambda n, b: n + tf.cast(
            tf.shape(tf.nest.flatten(b)[-1])[0], tf.int64))

      @tff.federated_computation(tff.FederatedType(count.type_signature.parameter,
                                                   tff.CLIENTS))
      def total(data):
        return tff.federated_sum(tff.federated_map(count, data))
      cache['fn'] = total
    return cache['fn'](datasets)
  return run


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data_dir', required=True)
  p.add_argument('--clients', type=int, default=10)
  p.add_argument('--rounds', type=int, default=6)
  args = p.parse_args(argv)

  from tff_research.algorithms import base  # pylint: disable=g-import-not-at-top
  from tff_research.algorithms import client_metrics  # pylint: disable=g-import-not-at-top
  from tff_research.algorithms import fed_avg  # pylint: disable=g-import-not-at-top
  from tff_research.algorithms import hyperparameters as hp  # pylint: disable=g-import-not-at-top
  from tff_research.data import emnist  # pylint: disable=g-import-not-at-top
  from tff_research.execution import runtime  # pylint: disable=g-import-not-at-top
  from tff_research.run import client_data  # pylint: disable=g-import-not-at-top
  from tff_research.run import client_sampler  # pylint: disable=g-import-not-at-top
  from tff_research.run import training  # pylint: disable=g-import-not-at-top
  from tests import fl_testing  # pylint: disable=g-import-not-at-top
  import floor_peer  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  runtime.start()
  config = fl_testing.config_for(
      dict(dataset='emnist', data_dir=args.data_dir, model='cnn',
           clients_per_round=args.clients, client_epochs=1, batch_size=20,
           client_learning_rate=0.1, progress=False), '/tmp', 'profile')
  run = training.build_run(config)
  ids = run.split.train_client_ids
  per_client = base.LearningProcessAlgorithm(fed_avg.build_fed_avg(
      run.model_fn, server_optimizer=hp.server_sgd(config.algorithm.values),
      client_optimizer=hp.build_client_optimizer(config.algorithm.values),
      weighted=True, model_aggregator=config.algorithm.model_aggregator(),
      metrics_aggregator=client_metrics.for_clients(ids)))
  sampler = client_sampler.ClientSampler.from_config(ids, config.training,
                                                     config.seed)
  store = client_data.TrainingData(run.data.train, config.training,
                                   config.seed)
  sqlite_train, _ = emnist.load_emnist(False, args.data_dir, reader='sqlite')
  sqlite = client_data.TrainingData(sqlite_train, config.training,
                                    config.seed)
  tiny = client_data.TrainingData(
      run.data.train.with_rows({c: [0] for c in ids}), config.training,
      config.seed)
  trainer = floor_peer.LocalTrainer(config.seed)
  count = _count_in_worker()
  timer = _Timer(runtime.worker_pid())
  states = {'cohort': run.algorithm.initialize(),
            'per client': per_client.initialize()}
  algorithms = {'cohort': run.algorithm, 'per client': per_client}
  for r in range(1, args.rounds + 1):
    chosen = sampler.sample(r)
    for name, algorithm in algorithms.items():
      states[name], _ = timer.time(f'round, {name}', algorithm.next,
                                   states[name], r, chosen,
                                   store.datasets(r, chosen))
      timer.time(f'dispatch, {name}', algorithm.next, states[name], r, chosen,
                 tiny.datasets(r, chosen))
    timer.time('data in the worker, array store', count,
               store.datasets(r, chosen))
    timer.time('data in the worker, SQLite', count, sqlite.datasets(r, chosen))
    arrays = []
    for cid in chosen:
      batch = list(run.data.train.create_tf_dataset_for_client(cid).batch(
          10**6).as_numpy_iterator())[0]
      arrays.append((batch['pixels'].reshape(-1, 784).astype(np.float32),
                     batch['label'].astype(np.int32)))
    timer.time('floor (plain TF, in memory)', trainer.train_clients,
               trainer.weights(), arrays, r)
  runtime.stop()
  print(f'{args.clients} clients a round, median of rounds 2-{args.rounds};'
        f' load average {os.getloadavg()[0]:.2f} at the end\n')
  print('| step | wall s | CPU s (process + worker) |\n| --- | ---: | ---: |')
  for line in timer.lines():
    print(line)
  return 0


if __name__ == '__main__':
  sys.exit(main())
