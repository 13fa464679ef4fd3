r"""Round time and bytes per round: local execution against 1 and 2 workers.

  uv run python deploy/measure_round_time.py --data_dir=DIR [--rounds=6]
      [--clients_per_round=10] [--model=cnn]

Starts its loopback workers (`python -m tff_research.cli.worker`) and stops
them. Trains the same EMNIST-digits run three times (local, 1 worker, 2
workers) and prints, per mode, the median `round_seconds` of rounds 2..N
(round 1 includes tracing and compilation) and the bytes the controller
sent to / received from the workers per round (serialized gRPC requests,
counted in `remote._CountingStub`). The numbers quoted in
docs/scale_out.md come from this script.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tff_research.cli import console  # pylint: disable=g-import-not-at-top
console.import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import portpicker  # pylint: disable=g-import-not-at-top

from tff_research.execution import remote  # pylint: disable=g-import-not-at-top
from tff_research.execution import runtime  # pylint: disable=g-import-not-at-top
from tff_research.run import config as config_lib  # pylint: disable=g-import-not-at-top
from tff_research.run import run_directory  # pylint: disable=g-import-not-at-top
from tff_research.run import training  # pylint: disable=g-import-not-at-top

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'holds emnist_all.sqlite')
_ROUNDS = flags.DEFINE_integer('rounds', 6, 'rounds per mode')
_CLIENTS = flags.DEFINE_integer('clients_per_round', 10, 'cohort size')
_MODEL = flags.DEFINE_string('model', 'cnn', 'model')
_MODES = flags.DEFINE_list('modes', ['local', '1', '2'], 'local and/or worker counts')


def _worker(port):
  proc = subprocess.Popen(
      [sys.executable, '-m', 'tff_research.cli.worker', f'--port={port}'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 120
  import socket  # pylint: disable=g-import-not-at-top
  while time.monotonic() < deadline:
    with socket.socket() as s:
      if s.connect_ex(('127.0.0.1', port)) == 0:
        return proc
    time.sleep(0.2)
  raise RuntimeError(f'worker on {port} did not start')


def measure(mode, logdir):
  workers, procs = (), []
  if mode != 'local':
    ports = [portpicker.pick_unused_port() for _ in range(int(mode))]
    procs = [_worker(p) for p in ports]
    workers = tuple(f'127.0.0.1:{p}' for p in ports)
  try:
    config = config_lib.ExperimentConfig(
        experiment_name=f'mode_{mode}', logdir=logdir,
        data=config_lib.federated_data.DataConfig(
            dataset='emnist_digits', data_dir=_DATA_DIR.value),
        model=_MODEL.value, progress=False, workers=workers,
        training=config_lib.TrainConfig(
            total_rounds=_ROUNDS.value, clients_per_round=_CLIENTS.value,
            rounds_per_checkpoint=1000),
        evaluation=config_lib.EvaluationConfig(eval_every=1000,
                                               max_eval_clients=10))
    rows = training.train(config, log=lambda *a: None)
    stats = remote.stats()
    rows = run_directory.read_metrics(os.path.join(logdir, f'mode_{mode}',
                                                   'metrics.csv'))
    seconds = [r['round_seconds'] for r in rows[1:]]
    sent = received = None
    if stats is not None:
      # Whole run (initialize, rounds, the final evaluation) per round.
      sent = sum(stats.bytes_sent.values()) / _ROUNDS.value
      received = sum(stats.bytes_received.values()) / _ROUNDS.value
      for key, (calls, out, back) in sorted(
          stats.by_computation.items(), key=lambda kv: -kv[1][1]):
        print(f'  {mode} workers: {calls} calls, sent {out / 1e6:.2f} MB,'
              f' received {back / 1e6:.2f} MB: {key}', flush=True)
    return statistics.median(seconds), seconds, sent, received
  finally:
    runtime.stop()
    for p in procs:
      p.terminate()
      p.wait(30)


def main(argv):
  del argv
  logdir = tempfile.mkdtemp(prefix='scale_out_')
  for mode in _MODES.value:
    median, seconds, sent, received = measure(mode, logdir)
    traffic = ('' if sent is None else
               f', sent {sent / 1e6:.2f} MB/round, received'
               f' {received / 1e6:.2f} MB/round')
    print(f'{mode:>5}: median round {median:.2f} s (rounds 2..:'
          f' {", ".join(f"{s:.2f}" for s in seconds)}){traffic}', flush=True)


if __name__ == '__main__':
  app.run(main)
