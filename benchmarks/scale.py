r"""The scale benchmark: the pipeline at the shared federation and at EMNIST-62 size.

  uv run python benchmarks/run.py --scale [--scale_copies=24]
      [--large_cache=DIR] [--scale_configs=fedavg,scaffold,dp_server,clustered,median]
      [--scale_rounds=4] [--workdir=DIR] [--output=FILE]

Two federations, built from the shared FEMNIST writers with the project's
own builder: *small*, the 201 writers as they are, and *large*, the same
writers tiled `--scale_copies` times under new ids (24: 4,824 writers,
672,384 / 77,016 examples, at least federated EMNIST-62's 3,400 writers and
671,585 / 77,483 examples). `--large_cache=DIR` reuses a large cache built
before (`python -m tff_research.cli.build_emnist_cache --tile=24`), which
takes ~15 minutes and ~6 GB.

For each configuration (FedAvg, SCAFFOLD, `--dp=server`, `--clustering=
cosine`, `--robust_aggregation=median`; the EMNIST CNN, 1 epoch, batch 20, `--rounds_per_checkpoint=1`),
each federation and K in (10, 50) clients per round, `experiments/train.py`
runs `--scale_rounds` rounds in its own process, one after another, and the
report gives, per configuration and federation, and the large/small ratio:

* start-up: the run's own `Start-up` line (process start to the loop);
* seconds per round at K = 10 and 50: median over rounds 2.. of
  `wall_seconds - eval_seconds` (training, hooks, checkpoint, release);
* checkpoint seconds: median over rounds 2.. of `wall_seconds -
  round_seconds - eval_seconds` (the checkpoint and the release);
* checkpoint bytes: the last checkpoint directory, and the per-client
  table files (`client_state/`) written by the run;
* full held-out evaluation (every test writer, K = 10 run, its warm second
  evaluation) against a plain-TF forward pass over the same examples
  (`forward_peer.py`, batches of 100, one compiled loop): eval / forward;
* peak RSS of the process and of its TFF worker: the sum of each one's
  own peak (`VmHWM`, an upper bound: the two peaks need not coincide), and
  the largest sum of the two at one sample (every 0.5 s, a lower bound).
"""

from __future__ import annotations

import os
import re
import statistics
import sys

import pipeline_peer
import procs
import workload

CONFIGS = {
    'fedavg': [],
    'scaffold': ['--algorithm=scaffold'],
    'dp_server': ['--dp=server', '--noweight_by_size', '--dp_clip=1.0',
                  '--dp_noise_multiplier=1.0'],
    'clustered': ['--clustering=cosine'],
    # A rule that needs every update: its cohorts' tables of member updates.
    'median': ['--robust_aggregation=median', '--noweight_by_size'],
}
CLIENTS = (10, 50)
_STARTUP = re.compile(r'Start-up ([0-9.]+) s: (.*)')


def build_caches(npz: str, workdir: str, copies: int, large_cache, log) -> dict:
  """{'small': cache dir, 'large': cache dir}, built unless given."""
  caches = {}
  for name, tile, given in (('small', 1, None), ('large', copies, large_cache)):
    cache = given or os.path.join(workdir, f'cache_{name}')
    if not os.path.exists(os.path.join(cache, 'emnist_all.sqlite')):
      log(f'building the {name} cache ({tile} copies) in {cache}')
      procs.run_peer([sys.executable, '-m', 'tff_research.cli.build_emnist_cache',
                      f'--input={npz}', f'--cache_dir={cache}', f'--tile={tile}'],
                     os.path.join(workdir, f'build_{name}.log'), timeout=7200,
                     cwd=workload.REPO_ROOT)
    caches[name] = cache
  return caches


def _du(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def run_one(config: str, cache: str, clients: int, rounds: int, workdir: str,
            name: str) -> dict:
  logdir = os.path.join(workdir, 'runs')
  evaluate = clients == CLIENTS[0]
  cmd = [sys.executable, pipeline_peer.TRAIN_PY, '--dataset=emnist',
         f'--data_dir={cache}', f'--model={workload.MODEL}',
         f'--clients_per_round={clients}', '--client_epochs=1',
         f'--batch_size={workload.BATCH_SIZE}', f'--total_rounds={rounds}',
         '--rounds_per_checkpoint=1', '--progress=false',
         f'--experiment_name={name}', f'--logdir={logdir}',
         # The K = 10 run evaluates every test writer twice (rounds R - 1 and
         # R: the second is warm); the K = 50 run evaluates one writer.
         f'--eval_every={rounds - 1 if evaluate else rounds}',
         *([] if evaluate else ['--max_eval_clients=1']), *CONFIGS[config]]
  log_path = os.path.join(workdir, f'{name}.log')
  run = procs.run_peer(cmd, log_path, timeout=7200, env=pipeline_peer._env(),  # pylint: disable=protected-access
                       cwd=workload.REPO_ROOT)
  with open(log_path, errors='replace') as f:
    match = _STARTUP.search(f.read())
  rows = pipeline_peer.read_metrics(os.path.join(logdir, name, 'metrics.csv'))
  num = lambda r, k: float(r[k]) if r.get(k) not in (None, '') else 0.0
  measured = rows[1:]
  run_dir = os.path.join(logdir, name)
  checkpoints = os.path.join(run_dir, 'checkpoints')
  last = sorted(os.listdir(checkpoints))[-1]
  out = dict(
      startup_seconds=float(match.group(1)) if match else None,
      startup_phases=match.group(2) if match else '',
      round_seconds=statistics.median(
          num(r, 'wall_seconds') - num(r, 'eval_seconds') for r in measured),
      checkpoint_seconds=statistics.median(
          num(r, 'wall_seconds') - num(r, 'round_seconds')
          - num(r, 'eval_seconds') for r in measured),
      checkpoint_bytes=_du(os.path.join(checkpoints, last)),
      table_bytes=_du(os.path.join(run_dir, 'client_state')),
      **run.memory(pipeline_peer.WORKER_NAME),
  )
  if evaluate:
    out['eval_seconds'] = num(rows[-1], 'eval_seconds')
    out['eval_num_examples'] = int(num(rows[-1], 'eval_num_examples'))
  return out


def forward(cache: str, workdir: str, name: str) -> dict:
  out = os.path.join(workdir, f'{name}.json')
  return procs.run_json_peer(
      [sys.executable, os.path.join(workload.BENCH_DIR, 'forward_peer.py'),
       f'--cache={cache}', f'--out={out}'], out,
      os.path.join(workdir, f'{name}.log'), timeout=3600)


def _mb(x) -> str:
  return f'{x / 2**20:,.1f} MB'


def _ratio(a, b) -> str:
  return f'{a / b:.2f}' if a and b else '-'


def report(results: dict, forwards: dict, caches: dict, load: str,
           configs=tuple(CONFIGS)) -> str:
  lines = ['## Scale: shared federation (small) and EMNIST-62 size (large)', '',
           f'Machine load (1/5/15 min) at the end: {load}.', '',
           '| configuration | measure | small | large | large / small |',
           '| --- | --- | ---: | ---: | ---: |']

  def row(config, label, small, large, fmt):
    lines.append(f'| {config} | {label} | {fmt(small)} | {fmt(large)} |'
                 f' {_ratio(large, small)} |')

  seconds = lambda x: f'{x:.2f} s' if x is not None else '-'
  for config in configs:
    r = {(fed, k): results.get((config, fed, k)) for fed in caches
         for k in CLIENTS}
    if any(v is None for v in r.values()):
      lines.append(f'| {config} | failed: see the logs | | | |')
      continue
    s10, l10 = r[('small', 10)], r[('large', 10)]
    row(config, 'start-up', s10['startup_seconds'], l10['startup_seconds'],
        seconds)
    for k in CLIENTS:
      row(config, f's/round, {k} clients', r[('small', k)]['round_seconds'],
          r[('large', k)]['round_seconds'], seconds)
    row(config, 'checkpoint + release s/round', s10['checkpoint_seconds'],
        l10['checkpoint_seconds'], seconds)
    row(config, 'checkpoint bytes', s10['checkpoint_bytes'],
        l10['checkpoint_bytes'], _mb)
    row(config, 'client-state table bytes (10 clients x 4 rounds)',
        s10['table_bytes'], l10['table_bytes'], _mb)
    for fed in caches:
      fwd = forwards[fed]['eval_seconds_median']
      r[(fed, 10)]['eval_over_forward'] = r[(fed, 10)]['eval_seconds'] / fwd
    row(config, 'held-out evaluation s', s10['eval_seconds'],
        l10['eval_seconds'], seconds)
    row(config, 'eval / plain-TF forward', s10['eval_over_forward'],
        l10['eval_over_forward'], lambda x: f'{x:.2f}')
    peak = {fed: max(r[(fed, k)]['peak_main_mb'] + r[(fed, k)]['peak_children_mb']
                     for k in CLIENTS) for fed in caches}
    row(config, 'peak RSS, process + worker', peak['small'], peak['large'],
        lambda x: f'{x:,.0f} MB')
    together = {fed: max(r[(fed, k)]['peak_together_mb'] for k in CLIENTS)
                for fed in caches}
    row(config, 'peak RSS, both at one sample', together['small'],
        together['large'], lambda x: f'{x:,.0f} MB')
  lines += ['', 'Examples evaluated: ' + ', '.join(
      f'{fed} {forwards[fed]["eval_num_examples"]:,} (forward'
      f' {forwards[fed]["eval_seconds_median"]:.2f} s)' for fed in caches),
      'Start-up phases (large, FedAvg, 10 clients): '
      + results[('fedavg', 'large', 10)]['startup_phases']
      if ('fedavg', 'large', 10) in results else '']
  return '\n'.join(lines)
