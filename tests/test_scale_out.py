"""Scale-out: the same runs on TFF remote workers (`--workers=host:port,...`).

Real processes: each worker is `python -m tff_research.cli.worker --port=P` on
127.0.0.1 (ports from portpicker), started and stopped here. A run on two
workers must train the same model as the same run on this machine (to
1e-6, every leaf of the checkpointed state and every per-client row it
points to), for every algorithm that runs distributed; a killed worker must
end the run with one line naming it, leave nothing behind, and the re-run
after a restart must finish with the model of an uninterrupted run.
"""

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_research import algorithms
from tff_research.algorithms import fed_avg
from tff_research.algorithms import registry
from tff_research.cli import flags
from tff_research.execution import remote
from tff_research.execution import runtime
from tff_research.run import training
from tests import fl_testing
from tests.reliability import procs

TRAIN = os.path.join(procs.REPO, 'experiments', 'train.py')

# 8 digit clients, 5 per round (3 + 2 across two workers), linear model.
SMALL = dict(dataset='digits', model='linear', num_clients=8,
             clients_per_round=5, client_learning_rate=0.01, batch_size=10,
             total_rounds=3, eval_every=3, rounds_per_checkpoint=1,
             progress=False)

_DP = dict(weight_by_size=False, dp_clip=0.5, dp_noise_multiplier=0.5)
# name -> flags; the first ones are the quick set, the rest are slow.
VARIANTS = {
    'fedavg': dict(algorithm='fedavg'),
    'fedadam': dict(algorithm='fedadam'),
    'dp_server': dict(algorithm='fedavg', dp='server', **_DP),
    'scaffold': dict(algorithm='scaffold'),
    'scaffold_median': dict(algorithm='scaffold', weight_by_size=False,
                            robust_aggregation='median'),
    # A rule's kept share follows the order split workers finish in.
    'scaffold_label_flip_median': dict(
        algorithm='scaffold', weight_by_size=False, robust_aggregation='median',
        attack='label_flip', malicious_fraction=0.25),
    # A collecting rule over the workers' cohorts' tables of member updates,
    # attacked per member: positions must follow the clients' order.
    'fedavg_median_sign_flip': dict(
        algorithm='fedavg', weight_by_size=False, robust_aggregation='median',
        attack='sign_flip', malicious_fraction=0.25, attack_scale=3),
    'fedsgd': dict(algorithm='fedsgd', client_learning_rate=None),
    'fedprox': dict(algorithm='fedprox'),
    'fedavgm': dict(algorithm='fedavgm'),
    'fedyogi': dict(algorithm='fedyogi'),
    'fedadagrad': dict(algorithm='fedadagrad'),
    'dp_client': dict(algorithm='fedavg', dp='client', **_DP),
    'dp_server_adaptive': dict(algorithm='fedadam', dp='server',
                               dp_adaptive_clipping=True,
                               **dict(_DP, dp_noise_multiplier=0.2)),
    # Every path of clustered FL's round: a clustering step that splits
    # (gamma_max 0) at round 1, a round that keeps projected updates
    # (round 2, in the window of the step at round 3), and a step whose
    # clients first walk the split tree (round 3). Its per-client state
    # (assignments, projected updates, their weights) is compared too.
    'clustered': dict(algorithm='fedavg', clustering='cosine',
                      num_clusters=3, cluster_warmup_rounds=0,
                      recluster_every=2, split_gamma_max=0,
                      permute_labels_fraction=0.5),
    # A Gaussian attacker's noise is what its cluster aggregates and what
    # the server sketches; its seed must survive the split.
    'clustered_gaussian': dict(algorithm='fedavg', clustering='cosine',
                               num_clusters=3, cluster_warmup_rounds=0,
                               recluster_every=2, split_gamma_max=0,
                               attack='gaussian', malicious_fraction=0.25,
                               attack_scale=0.01),
    # Each cluster's rule runs over its own clients: one process per cluster.
    'clustered_median': dict(algorithm='fedavg', clustering='cosine',
                             num_clusters=3, cluster_warmup_rounds=0,
                             recluster_every=2, split_gamma_max=0,
                             permute_labels_fraction=0.5,
                             weight_by_size=False,
                             robust_aggregation='median',
                             attack='label_flip', malicious_fraction=0.25),
}
# Client-level DP draws each client's noise from its own unseeded RNG, by
# design (privacy/dp_client.py): two local runs differ too. It must run split
# and finish; its model cannot be compared.
_UNSEEDED = ('dp_client',)
# Quick: plain FedAvg, server DP (its seeded noise must survive the split),
# SCAFFOLD (its clients' rows must come back to the right clients),
# clustered FL (its per-client results must come back in the clients'
# order) and a rule over cohorts' tables (the same); the server optimizers'
# state never leaves the server (slow set).
_QUICK = ('fedavg', 'dp_server', 'scaffold', 'clustered',
          'fedavg_median_sign_flip')


class Worker:
  """One `python -m tff_research.cli.worker` process on `port`."""

  def __init__(self, port):
    self.port = port
    self.address = f'127.0.0.1:{port}'
    self.proc = procs.spawn(
        [sys.executable, '-m', 'tff_research.cli.worker', f'--port={port}'])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      line = self.proc.stderr.readline().decode()
      if 'listening on' in line:
        break
      if not line and self.proc.poll() is not None:
        pytest.fail(f'worker on {port} did not start: rc {self.proc.returncode}')
    else:
      procs.kill_quietly(self.proc)
      pytest.fail(f'worker on {port} did not listen')
    # Its log keeps coming: drain it so the pipe never fills.
    self._drain = subprocess.Popen(['cat'], stdin=self.proc.stderr,
                                   stdout=subprocess.DEVNULL)
    (self.binary_pid,) = procs.children(self.proc.pid)

  def stop(self):
    """SIGTERM: the wrapper stops the binary and exits 0."""
    if self.proc.poll() is None:
      self.proc.terminate()
    rc = self.proc.wait(30)
    self._drain.wait(30)
    assert procs.wait_gone(self.binary_pid), 'worker_binary left behind'
    return rc

  def kill(self):
    procs.kill_quietly(self.proc)
    self._drain.wait(30)
    procs.wait_gone(self.binary_pid)


def _start_workers(n, ports=None):
  ports = ports or [portpicker.pick_unused_port() for _ in range(n)]
  workers = []
  try:
    for p in ports:
      workers.append(Worker(p))
  except BaseException:
    for w in workers:
      w.kill()
    raise
  return workers


@pytest.fixture(scope='module')
def two_workers():
  workers = _start_workers(2)
  yield ','.join(w.address for w in workers)
  runtime.stop()  # disconnect before the workers go
  assert [w.stop() for w in workers] == [0, 0]


def _latest_state(run_dir):
  """The latest checkpoint, per-client table rows (clustered FL's projected
  updates) read in place of their index."""
  run = training.rebuild_run(str(run_dir))
  restored, _ = asyncio.run(training.state_manager(
      run.directory.checkpoint_dir).load_latest(run.state_template()))
  return dict(restored, state=fl_testing.with_table_rows(run.algorithm,
                                                         restored['state']))


def _assert_same_model(run_a, run_b):
  a, b = fl_testing.final_state(run_a), fl_testing.final_state(run_b)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def _variant_params():
  for name in VARIANTS:
    marks = () if name in _QUICK else (pytest.mark.slow,)
    yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize('name', _variant_params())
def test_two_workers_train_the_same_model_as_local(two_workers, tmp_path,
                                                   name):
  # None drops a flag of SMALL that does not apply (FedSGD: no client lr).
  base = {k: v for k, v in {**SMALL, **VARIANTS[name]}.items()
          if v is not None}
  local = fl_testing.run_experiment(base, tmp_path, 'local')
  distributed = fl_testing.run_experiment(
      base, tmp_path, 'distributed', workers=two_workers)
  stats = remote.stats()
  # Every round's `next` was split across both workers, which both worked.
  assert stats.split_calls >= SMALL['total_rounds'], stats
  assert all(v > 0 for v in stats.bytes_sent.values()), stats
  assert [r['round'] for r in distributed] == [1, 2, 3]
  if name in _UNSEEDED:
    assert all(np.isfinite(r['train_loss']) for r in distributed)
    return
  for a, b in zip(local, distributed):
    np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-6)
    for key in ('robustness_kept_clients', 'attack_kept_malicious'):
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6,
                                   err_msg=key)
  _assert_same_model(tmp_path / 'local', tmp_path / 'distributed')
  if name.startswith('clustered'):  # A split happened: assignments tested.
    state = _latest_state(tmp_path / 'local')['state']
    assert int(state['num_clusters']) >= 2
    assert len(set(np.asarray(state['assignments']).tolist())) >= 2


def test_per_client_results_come_back_in_the_clients_order(two_workers):
  """TFF's mergeable context joins the slices of a CLIENTS-placed result
  in the order the workers finish (clients [0 1 2 | 3 4] come back
  [3 4 0 1 2] when the second slice finishes first), which put clustered FL's
  per-client state on the wrong clients; the runtime returns them in the
  clients' order. The first slice is made the slow one."""
  runtime.start(workers=two_workers.split(','))

  @tff.tensorflow.computation(np.int32, np.int32)
  def client_fn(work, tag):
    m = tf.ones([200, 200]) / 200.0
    spun = tf.while_loop(lambda i, a: i < work,
                         lambda i, a: (i + 1, tf.matmul(a, m)), (0, m))[1]
    return tag + tf.cast(tf.reduce_sum(spun) * 0, tf.int32)

  @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS),
                             tff.FederatedType(np.int32, tff.CLIENTS))
  def per_client(work, tag):
    return tff.federated_map(client_fn, (work, tag))

  before = remote.stats().split_calls
  for work in ([0] * 5, [2000, 0, 0, 0, 0]):
    tags = per_client([np.int32(w) for w in work],
                      [np.int32(t) for t in range(5)])
    assert [int(t) for t in tags] == [0, 1, 2, 3, 4]
  assert remote.stats().split_calls == before + 2


@pytest.mark.parametrize('argv,message', [
    (['--workers=localhost'], r"'localhost' is not valid: expected host:port"),
    (['--workers=localhost:0'], r'port 0 is not in \[1, 65535\]'),
    (['--workers=10.0.0.1:99999'], r'port 99999 is not in \[1, 65535\]'),
    (['--workers=a:1,a:1'], r'lists a:1 twice'),
])
def test_bad_workers_flag_is_one_line(argv, message):
  with pytest.raises(flags.FlagError, match=message) as e:
    flags.config_from_argv(['--experiment_name=x'] + argv)
  assert '\n' not in str(e.value)


@pytest.fixture
def local_only_registered():
  """FedAvg registered as an algorithm whose spec is not distributed."""
  algorithms.register(dataclasses.replace(fed_avg.SPEC, name='local_only',
                                          distributed=False))
  yield
  del registry.SPECS['local_only']


def test_refused_algorithm_is_one_line(local_only_registered):
  del local_only_registered
  with pytest.raises(flags.FlagError) as e:
    flags.config_from_argv(['--experiment_name=x', '--algorithm=local_only',
                            '--workers=127.0.0.1:8000'])
  assert str(e.value) == (
      "--workers does not apply: --algorithm=local_only has rounds that TFF's"
      ' mergeable execution cannot split across workers (one aggregation'
      ' level, results at the server); run it without --workers')


def test_scaffold_is_accepted_with_workers():
  config = flags.config_from_argv(['--experiment_name=x',
                                   '--algorithm=scaffold',
                                   '--workers=127.0.0.1:8000'])
  assert config.workers == ('127.0.0.1:8000',)


def test_clustering_runs_on_workers():
  config = flags.config_from_argv(['--experiment_name=x', '--clustering=cosine',
                                   '--workers=127.0.0.1:8000'])
  assert config.workers == ('127.0.0.1:8000',)
  assert config.algorithm.clustered


def test_workers_are_not_part_of_the_run(tmp_path):
  """Not recorded, not compared: a run may resume on other workers."""
  config = fl_testing.config_for(SMALL, tmp_path, 'x',
                                 workers='h1:8000,h2:8000')
  assert config.workers == ('h1:8000', 'h2:8000')
  from tff_research.run import config as config_lib  # pylint: disable=g-import-not-at-top
  assert 'workers' not in config_lib.to_hparams(config)
  assert config_lib.from_hparams(config_lib.to_hparams(config)).workers == ()


def _lines(err):
  return [l for l in err.decode(errors='replace').splitlines()
          if l.strip() and 'pkg_resources' not in l and not l.startswith('20')
          and 'tensorflow/' not in l and not l.startswith(' ')]


def test_unreachable_worker_at_start_fails_fast_with_one_line(tmp_path):
  port = portpicker.pick_unused_port()
  t0 = time.monotonic()
  proc = subprocess.run(
      [sys.executable, TRAIN, '--experiment_name=x', f'--logdir={tmp_path}',
       '--model=linear', f'--workers=127.0.0.1:{port}'],
      capture_output=True, cwd=procs.REPO, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 1
  ours = _lines(proc.stderr)
  assert ours == [
      f'error: the TFF worker at 127.0.0.1:{port} is unreachable: no gRPC'
      ' connection within 10 s; start it there with `python -m'
      ' tff_research.cli.worker --port=PORT` or fix --workers'], ours
  assert time.monotonic() - t0 < 120
  assert not (tmp_path / 'x' / 'hparams.json').exists()


def _train_argv(tmp_path, name, workers, total_rounds):
  return [sys.executable, TRAIN, f'--experiment_name={name}',
          f'--logdir={tmp_path}', '--model=linear', '--num_clients=8',
          '--clients_per_round=5', '--client_learning_rate=0.01',
          '--batch_size=10', f'--total_rounds={total_rounds}',
          '--eval_every=5', '--rounds_per_checkpoint=2', '--progress=false',
          f'--workers={workers}']


@pytest.mark.slow  # two training binaries and a local run: minutes here
def test_killed_worker_ends_the_run_with_one_line_and_resume_matches(
    tmp_path):
  rounds = 10
  workers = _start_workers(2)
  try:
    _kill_and_resume(tmp_path, workers, rounds)
  finally:  # never leave a worker behind, whatever failed
    for w in workers:
      w.kill()


def _kill_and_resume(tmp_path, workers, rounds):
  addresses = ','.join(w.address for w in workers)
  argv = _train_argv(tmp_path, 'killed', addresses, rounds)
  metrics = tmp_path / 'killed' / 'metrics.csv'
  trainer = procs.spawn(argv)
  try:
    procs.wait_for_rounds(trainer, metrics, 3)
    victim = workers[1]
    t0 = time.monotonic()
    victim.kill()  # SIGKILL the wrapper; its binary dies with it.
    out, err = trainer.communicate(timeout=120)
    elapsed = time.monotonic() - t0
  finally:
    procs.kill_quietly(trainer)
  assert trainer.returncode == 1, err.decode()[-3000:]
  ours = _lines(err)
  assert len(ours) == 1, ours
  assert ours[0].startswith(f'error: the TFF worker at {victim.address} '), ours
  assert 'the last checkpoint is intact' in ours[0]
  # The documented bound for a dead worker: unreachable_timeout (5 s) plus
  # a watchdog tick and probe; generous slack for a loaded 2-core machine.
  assert elapsed < 30, f'{elapsed:.1f} s'
  assert procs.wait_gone(victim.binary_pid), 'killed worker left behind'
  assert procs.children(trainer.pid) == []
  assert portpicker.is_port_free(victim.port), 'port still held'
  logged = fl_testing.read_csv(metrics)
  assert 3 <= len(logged) < rounds
  assert any(p.name.startswith('round_')
             for p in (tmp_path / 'killed' / 'checkpoints').iterdir())
  del out

  # Restart the worker on the same port; the same command resumes.
  workers[1] = Worker(victim.port)
  proc = subprocess.run(argv, capture_output=True, cwd=procs.REPO,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr.decode()[-3000:]
  assert [w.stop() for w in workers] == [0, 0]
  logged = fl_testing.read_csv(metrics)
  assert [int(r['round']) for r in logged] == list(range(1, rounds + 1))
  # An uninterrupted run (locally: shown equal to distributed above).
  fl_testing.run_experiment(
      dict(SMALL, total_rounds=rounds, eval_every=5, rounds_per_checkpoint=2),
      tmp_path, 'straight')
  _assert_same_model(tmp_path / 'killed', tmp_path / 'straight')


_HANG = """
import os, sys
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tff_research.execution import runtime
runtime.start(workers=[sys.argv[1]], stall_timeout=3.0)

@tff.tensorflow.computation(np.int64)
def spin(n):
  return tf.while_loop(lambda i: i < n, lambda i: i + 1,
                       [tf.constant(0, tf.int64)])[0]

assert spin(10) == 10
print('ready', flush=True)
spin(10**10)
"""


def test_hung_worker_is_declared_failed_after_stall_timeout():
  (worker,) = _start_workers(1)
  proc = procs.spawn(procs.python(_HANG) + [worker.address])
  try:
    assert proc.stdout.readline().decode().strip() == 'ready'
    time.sleep(1.0)
    os.kill(worker.binary_pid, signal.SIGSTOP)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - t0
  finally:
    procs.kill_quietly(proc)
    os.kill(worker.binary_pid, signal.SIGCONT)
    assert worker.stop() == 0
  assert proc.returncode == 1
  ours = _lines(err)
  assert len(ours) == 1, ours
  assert ours[0].startswith(
      f'error: the TFF worker at {worker.address} made no progress for'), ours
  assert 'stall timeout of 3 s' in ours[0]
  # stall timeout + one probe deadline (5 s) + a tick, with slack.
  assert elapsed < 3 + 5 + 10, f'{elapsed:.1f} s'
