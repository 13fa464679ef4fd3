r"""Peer 4: Flower's simulation engine (flwr 1.23, Ray) with TensorFlow clients.

Runs in its own virtual environment, `benchmarks/.flower-venv` (TensorFlow
2.14.1, flwr[simulation], numpy; no TFF), which `ensure_venv` creates when it
is missing:

  benchmarks/.flower-venv/bin/python benchmarks/flower_peer.py --plan=PLAN.json --out=OUT.json

`flwr.simulation.run_simulation` with K virtual SuperNodes, one Ray actor per
core (`client_resources = {num_cpus: 1}`), and the legacy `FedAvg` strategy
sampling every node each round (`fraction_fit = 1`, no federated
evaluation), initial parameters from the same CNN. Node `partition-id` i
trains the plan's i-th writer of the round (`config["round"]`), a
`NumPyClient` doing Keras `fit` (SGD 0.1, batch 20, 1 epoch, shuffled) as
Flower's TensorFlow examples do; the compiled model is cached per actor
process so it is not rebuilt every round. A round's seconds run from
`configure_fit` to the end of `aggregate_fit`.

`ensure_venv` and `run` are the driver side, used by `run.py` in the main
environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(BENCH_DIR, '.flower-venv')
VENV_PYTHON = os.path.join(VENV, 'bin', 'python')
REQUIREMENTS = ('flwr[simulation]', 'tensorflow==2.14.1', 'numpy')
sys.path.insert(0, BENCH_DIR)


# --- driver side (main environment) -------------------------------------------

def _venv_ready() -> bool:
  if not os.path.exists(VENV_PYTHON):
    return False
  probe = subprocess.run([VENV_PYTHON, '-c', 'import flwr, ray, tensorflow'],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
                         check=False)
  return probe.returncode == 0


def ensure_venv(log_path: str, timeout: float = 1800) -> tuple[bool, str]:
  """(ready, reason): creates the venv with uv when missing or broken."""
  if _venv_ready():
    return True, 'ready'
  steps = [['uv', 'venv', '--allow-existing', '--python', '3.11', VENV],
           ['uv', 'pip', 'install', '--python', VENV, *REQUIREMENTS]]
  with open(log_path, 'ab') as log:
    for cmd in steps:
      log.write(('$ ' + ' '.join(cmd) + '\n').encode())
      log.flush()
      try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
      except (OSError, subprocess.TimeoutExpired) as e:
        return False, f'`{" ".join(cmd[:3])}` failed: {e}'
      if done.returncode != 0:
        with open(log_path, errors='replace') as f:
          last = [l.strip() for l in f if l.strip()][-1:] or ['']
        return False, f'`{" ".join(cmd[:3])}` exited {done.returncode}: {last[0][:160]}'
  if not _venv_ready():
    return False, 'the venv was installed but cannot import flwr, ray and tensorflow'
  return True, 'installed'


def run(plan_path: str, out_path: str, log_path: str, timeout: float) -> dict:
  import procs  # pylint: disable=g-import-not-at-top
  env = dict(os.environ)
  for key in ('VIRTUAL_ENV', 'PYTHONHOME', 'PYTHONPATH'):
    env.pop(key, None)
  return procs.run_json_peer([VENV_PYTHON, os.path.abspath(__file__), f'--plan={plan_path}',
                              f'--out={out_path}'], out_path, log_path, timeout=timeout,
                             env=env)


# --- Flower side (its own venv; actors import this module by name) ------------

_CACHE: dict = {}
TIMES: dict[int, list[float]] = {}


def _actor_state():
  """Per actor process: the plan, every plan writer's data, the compiled CNN."""
  if not _CACHE:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import workload  # pylint: disable=g-import-not-at-top
    plan = workload.Plan.load(os.environ['BENCH_FLOWER_PLAN'])
    model = workload.keras_cnn(plan.seed)
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=workload.CLIENT_LR),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=['accuracy'])
    _CACHE.update(plan=plan, model=model,
                  data=workload.load_writers(plan.npz, plan.all_writers()))
  return _CACHE


def client_fn(context):
  import flwr  # pylint: disable=g-import-not-at-top
  import workload  # pylint: disable=g-import-not-at-top

  partition = int(context.node_config['partition-id'])

  class FemnistClient(flwr.client.NumPyClient):

    def fit(self, parameters, config):
      state = _actor_state()
      writer = state['plan'].rounds[int(config['round']) - 1][partition]
      x, y = state['data'][writer]
      model = state['model']
      model.set_weights(parameters)
      model.fit(x, y, batch_size=workload.BATCH_SIZE, epochs=workload.EPOCHS,
                shuffle=True, verbose=0)
      return model.get_weights(), len(y), {}

  return FemnistClient().to_client()


def _timed_fedavg(initial_weights, k: int):
  from flwr.common import ndarrays_to_parameters  # pylint: disable=g-import-not-at-top
  from flwr.server.strategy import FedAvg  # pylint: disable=g-import-not-at-top

  class TimedFedAvg(FedAvg):

    def configure_fit(self, server_round, parameters, client_manager):
      TIMES[server_round] = [time.perf_counter()]
      return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
      if failures:
        raise RuntimeError(f'round {server_round}: {len(failures)} Flower clients failed: '
                           f'{failures[0]!r}')
      out = super().aggregate_fit(server_round, results, failures)
      TIMES[server_round].append(time.perf_counter())
      return out

  return TimedFedAvg(
      fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=k, min_evaluate_clients=0,
      min_available_clients=k, on_fit_config_fn=lambda r: {'round': r},
      initial_parameters=ndarrays_to_parameters(initial_weights))


def flower_main(plan_path: str, out_path: str) -> int:
  os.environ['BENCH_FLOWER_PLAN'] = os.path.abspath(plan_path)
  # Ray actors start from this environment: let them import this module and
  # `workload` by name (so `client_fn` is pickled by reference).
  os.environ['PYTHONPATH'] = BENCH_DIR
  import flwr  # pylint: disable=g-import-not-at-top
  from flwr.server import ServerApp, ServerAppComponents, ServerConfig  # pylint: disable=g-import-not-at-top
  import flower_peer  # pylint: disable=g-import-not-at-top,import-self
  import workload  # pylint: disable=g-import-not-at-top

  plan = workload.Plan.load(plan_path)
  k = plan.clients_per_round
  initial = workload.keras_cnn(plan.seed).get_weights()

  def server_fn(context):
    del context
    return ServerAppComponents(strategy=flower_peer._timed_fedavg(initial, k),  # pylint: disable=protected-access
                               config=ServerConfig(num_rounds=plan.num_rounds))

  cpus = os.cpu_count() or 1
  flwr.simulation.run_simulation(
      server_app=ServerApp(server_fn=server_fn),
      client_app=flwr.client.ClientApp(client_fn=flower_peer.client_fn),
      num_supernodes=k,
      backend_config={
          'client_resources': {'num_cpus': 1, 'num_gpus': 0.0},
          'init_args': {'num_cpus': cpus, 'include_dashboard': False,
                        'object_store_memory': 512 * 1024 * 1024},
      })
  times = flower_peer.TIMES
  if sorted(times) != list(range(1, plan.num_rounds + 1)) or any(len(t) != 2 for t in times.values()):
    raise RuntimeError(f'Flower ran rounds {sorted(times)}, expected 1..{plan.num_rounds}')
  with open(out_path, 'w') as f:
    json.dump(dict(round_seconds=[times[r][1] - times[r][0] for r in sorted(times)],
                   actors=cpus), f)
  return 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--plan', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('FLWR_TELEMETRY_ENABLED', '0')
  os.environ.setdefault('RAY_DEDUP_LOGS', '0')
  return flower_main(args.plan, args.out)


if __name__ == '__main__':
  sys.exit(main())
