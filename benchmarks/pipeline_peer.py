"""Peer 1: this pipeline's real `experiments/train.py`, default telemetry on.

`build_cache` turns the workload's `.npz` into TFF's sqlite cache with the
project's own builder (`python -m tff_research.cli.build_emnist_cache`), once
per data set. `run` starts

  experiments/train.py --dataset=emnist --data_dir=CACHE --model=cnn
      --clients_per_round=K --client_epochs=1 --batch_size=20 --seed=S
      --total_rounds=R --eval_every=E --experiment_name=NAME --logdir=LOGDIR

in a subprocess (everything else at its default: TensorBoard, metrics.csv,
dashboard, checkpoints, progress bar), samples the RSS of the process and of
its TFF `worker_binary` child from /proc, and reads per-round seconds from the
`wall_seconds` column of `LOGDIR/NAME/metrics.csv` (everything since the
previous round was written, checkpoints included) less `eval_seconds`, and the
evaluation time
from `eval_seconds` of the last evaluation round. `E = R - 1` (for R >= 3) so
rounds R - 1 and R evaluate and the reported evaluation is the second, warm
one (the first traces TFF's evaluation computation).

`soak` is the memory soak: `--model=mlp --dropout_rate=0.2` on the default
digits data for 500 rounds, RSS of both processes mapped to rounds through the
row count of metrics.csv while it runs.
"""

from __future__ import annotations

import csv
import os
import sys
from typing import Optional

import procs
import workload

TRAIN_PY = os.path.join(workload.REPO_ROOT, 'experiments', 'train.py')
WORKER_NAME = 'worker_binary'


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


def build_cache(npz: str, cache_dir: str, log_path: str, timeout: float = 900) -> str:
  db = os.path.join(cache_dir, 'emnist_all.sqlite')
  if not os.path.exists(db):
    procs.run_peer([sys.executable, '-m', 'tff_research.cli.build_emnist_cache',
                    f'--input={npz}', f'--cache_dir={cache_dir}'],
                   log_path, timeout=timeout, env=_env(), cwd=workload.REPO_ROOT)
  return db


def read_metrics(path: str) -> list[dict[str, str]]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _float(row: dict[str, str], key: str) -> Optional[float]:
  value = row.get(key, '')
  return float(value) if value not in ('', None) else None


def eval_every(num_rounds: int) -> int:
  return num_rounds - 1 if num_rounds >= 3 else num_rounds


def run(plan: workload.Plan, logdir: str, name: str, log_path: str,
        timeout: float) -> dict:
  cmd = [sys.executable, TRAIN_PY, '--dataset=emnist', f'--data_dir={plan.cache_dir}',
         f'--model={workload.MODEL}', f'--clients_per_round={plan.clients_per_round}',
         f'--client_epochs={workload.EPOCHS}', f'--batch_size={workload.BATCH_SIZE}',
         f'--seed={plan.seed}', f'--total_rounds={plan.num_rounds}',
         f'--eval_every={eval_every(plan.num_rounds)}',
         f'--experiment_name={name}', f'--logdir={logdir}']
  result = procs.run_peer(cmd, log_path, timeout=timeout, env=_env(), cwd=workload.REPO_ROOT)
  rows = read_metrics(os.path.join(logdir, name, 'metrics.csv'))
  if len(rows) != plan.num_rounds:
    raise procs.PeerError(f'{name}: metrics.csv has {len(rows)} rows, expected '
                          f'{plan.num_rounds} (a stale run directory?)')
  examples = [int(float(r['train_examples'])) for r in rows]
  if examples != plan.round_examples():
    raise procs.PeerError(
        f'{name}: the pipeline trained {examples} examples per round but the plan\'s '
        f'writers have {plan.round_examples()}: its client sampling no longer matches '
        'workload.make_plan, so the peers would not train the same clients')
  evals = [r for r in rows if _float(r, 'eval_seconds') is not None]
  last_eval = evals[-1] if evals else {}
  return dict(
      # The whole round as the loop lived it (checkpoint, release and the
      # dashboard included), less the evaluation the other peers do not do.
      round_seconds=[float(r['wall_seconds']) - (_float(r, 'eval_seconds') or 0.0)
                     for r in rows],
      eval_seconds=_float(last_eval, 'eval_seconds'),
      eval_num_examples=_float(last_eval, 'eval_num_examples'),
      eval_rounds=[int(r['round']) for r in evals],
      **result.memory(WORKER_NAME),
  )


class _SoakSampler:
  """Maps RSS samples to rounds through the metrics.csv row count."""

  def __init__(self, metrics_path: str, marks: tuple[int, ...]):
    self.metrics_path = metrics_path
    self.marks = marks
    self.at_mark: dict[int, tuple[int, float, float]] = {}
    self.last: Optional[tuple[int, float, float]] = None

  def rows(self) -> int:
    try:
      with open(self.metrics_path, 'rb') as f:
        return max(0, f.read().count(b'\n') - 1)
    except OSError:
      return 0

  def __call__(self, monitor: procs.TreeMonitor) -> None:
    n = self.rows()
    main = monitor.procs.get(monitor.root)
    workers = [r for p, r in monitor.procs.items() if WORKER_NAME in r.name and p != monitor.root]
    if main is None or not main.last_rss_kb:
      return
    sample = (n, main.last_rss_kb / 1024, sum(w.last_rss_kb for w in workers) / 1024)
    self.last = sample
    for m in self.marks:
      if n >= m and m not in self.at_mark:
        self.at_mark[m] = sample


def soak(logdir: str, log_path: str, rounds: int = 500, marks=(50, 500),
         timeout: float = 7200) -> dict:
  name = 'soak_mlp_dropout'
  cmd = [sys.executable, TRAIN_PY, '--model=mlp', '--dropout_rate=0.2',
         f'--total_rounds={rounds}', f'--experiment_name={name}', f'--logdir={logdir}']
  sampler = _SoakSampler(os.path.join(logdir, name, 'metrics.csv'),
                         tuple(m for m in marks if m <= rounds))
  result = procs.run_peer(cmd, log_path, timeout=timeout, env=_env(), cwd=workload.REPO_ROOT,
                          interval=0.25, on_sample=sampler)
  marks_out = dict(sampler.at_mark)
  if rounds not in marks_out and sampler.last is not None:
    marks_out[rounds] = sampler.last  # the process ended between two samples
  return dict(rounds=rounds, marks={m: marks_out.get(m) for m in marks if m <= rounds},
              peak_main_mb=result.monitor.root_peak_mb(),
              peak_worker_mb=result.monitor.children_peak_mb(WORKER_NAME),
              seconds=result.seconds)
