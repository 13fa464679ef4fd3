r"""FedAvg benchmark of the pipeline against vanilla TFF, a compute floor and Flower.

  uv run python benchmarks/run.py [--smoke] [--rounds=N] [--clients=10,50]
      [--trials=T] [--skip_flower] [--seed=S] [--synthetic] [--output=FILE]
  uv run python benchmarks/run.py --soak [--soak_rounds=500]
  uv run python benchmarks/run.py --scale [--scale_copies=24] [--large_cache=DIR]

Workload W (`workload.py`): FedAvg, the project's EMNIST CNN, 1 local epoch,
batch 20, on the shared FEMNIST writers (synthetic data of the same shapes if
absent), K clients per round. For every K and every trial the peers run one
after another, in an order rotated by trial, each in a subprocess of its own
(`procs.run_peer`) training the same writers in the same rounds; per peer the
first `--warmup` rounds of each run are discarded and the median of the rest,
pooled over trials, is reported; each ratio is taken within a trial and the
median over trials printed, every number measured in this one run. See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import numpy as np  # pylint: disable=g-import-not-at-top

import floor_peer  # pylint: disable=g-import-not-at-top
import flower_peer  # pylint: disable=g-import-not-at-top
import pipeline_peer  # pylint: disable=g-import-not-at-top
import procs  # pylint: disable=g-import-not-at-top
import scale  # pylint: disable=g-import-not-at-top
import vanilla_tff_peer  # pylint: disable=g-import-not-at-top
import workload  # pylint: disable=g-import-not-at-top

PEERS = ('pipeline', 'vanilla', 'floor_seq', 'floor_par', 'flower')
LABELS = {
    'pipeline': 'pipeline (experiments/train.py)',
    'vanilla': 'vanilla TFF (tutorial, default context)',
    'floor_seq': 'floor, sequential (plain TF, all cores)',
    'floor_par': 'floor, parallel (plain TF, {w} procs x {t} thread)',
    'flower': 'Flower 1.23 (Ray simulation, TF clients)',
}
CHILDREN = {'pipeline': 'worker_binary', 'vanilla': 'worker_binary', 'floor_seq': '',
            'floor_par': 'workers', 'flower': 'Ray processes'}


def log(msg: str) -> None:
  print(f'[bench {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def loadavg() -> str:
  with open('/proc/loadavg') as f:
    return ' '.join(f.read().split()[:3])


def _load1() -> float:
  with open('/proc/loadavg') as f:
    return float(f.read().split()[0])


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--smoke', action='store_true',
                 help='few rounds on a few writers, Flower skipped, no ratio asserted (CI)')
  p.add_argument('--rounds', type=int, help='rounds per peer run (default 6; smoke 3)')
  p.add_argument('--warmup', type=int, help='rounds discarded per run (default 2; smoke 1)')
  p.add_argument('--clients', help='clients per round, comma-separated (default 10,50; smoke 3)')
  p.add_argument('--trials', type=int, help='interleaved repetitions (default 2; smoke 1)')
  p.add_argument('--writers', type=int, help='restrict the federation to N seeded writers '
                 '(default all; smoke 12)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--skip_flower', action='store_true')
  p.add_argument('--peers', default=','.join(PEERS),
                 help=f'comma-separated subset of {",".join(PEERS)} (ratios need pipeline)')
  p.add_argument('--synthetic', action='store_true', help='synthetic data even if FEMNIST is present')
  p.add_argument('--data', default=workload.SHARED_NPZ, help='FEMNIST .npz (shared schema)')
  p.add_argument('--floor_workers', type=int, default=os.cpu_count() or 2)
  p.add_argument('--floor_threads', type=int, default=1)
  p.add_argument('--timeout', type=float, help='seconds per peer run (default 3600; smoke 600)')
  p.add_argument('--workdir', help='keep caches, logs and results here (default: a temp dir, '
                 'removed on success)')
  p.add_argument('--output', help='also write the markdown report to this file')
  p.add_argument('--soak', action='store_true', help='only the memory soak (see README)')
  p.add_argument('--soak_rounds', type=int, default=500)
  p.add_argument('--scale', action='store_true',
                 help='only the scale benchmark (scale.py): shared federation vs EMNIST-62 size')
  p.add_argument('--scale_copies', type=int, default=24,
                 help='copies of the shared writers in the large federation')
  p.add_argument('--large_cache', help='reuse a large cache built with --tile (else built)')
  p.add_argument('--scale_configs', default=','.join(scale.CONFIGS),
                 help=f'subset of {",".join(scale.CONFIGS)}')
  p.add_argument('--scale_rounds', type=int, default=4)
  args = p.parse_args(argv)
  smoke = args.smoke
  defaults = dict(rounds=3 if smoke else 6, warmup=1 if smoke else 2,
                  clients='3' if smoke else '10,50', trials=1 if smoke else 2,
                  writers=12 if smoke else 0, timeout=600.0 if smoke else 3600.0)
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if smoke:
    args.skip_flower = True
  args.clients = [int(c) for c in str(args.clients).split(',') if c.strip()]
  if not args.clients or min(args.clients) < 1:
    p.error('--clients must list positive integers')
  if args.rounds < 2 or not 1 <= args.warmup < args.rounds:
    p.error('need --rounds >= 2 and 1 <= --warmup < --rounds')
  if args.trials < 1:
    p.error('--trials must be >= 1')
  args.peers = [x.strip() for x in args.peers.split(',') if x.strip()]
  unknown = sorted(set(args.peers) - set(PEERS))
  if unknown:
    p.error(f'unknown --peers {unknown}; valid: {", ".join(PEERS)}')
  return args


# --- data and plans -------------------------------------------------------------

def prepare_data(args, workdir: str) -> tuple[str, str]:
  """(npz path, description) of the workload's data."""
  if not args.synthetic and os.path.exists(args.data):
    npz, what = os.path.abspath(args.data), f'FEMNIST ({os.path.relpath(args.data)})'
  else:
    why = '--synthetic' if args.synthetic else f'{args.data} not found'
    npz = workload.write_synthetic_npz(os.path.join(workdir, 'synthetic.npz'), args.seed)
    what = f'synthetic, FEMNIST shapes ({why})'
  if args.writers:
    npz = workload.write_subset_npz(npz, os.path.join(workdir, f'subset{args.writers}.npz'),
                                    args.writers, args.seed)
    what += f', {args.writers} writers chosen by seed {args.seed}'
  d = workload.describe_npz(npz)
  return npz, (f'{what}: {d["writers"]} writers, {d["train_examples"]} train / '
               f'{d["test_examples"]} test examples')


# --- running the peers ------------------------------------------------------------

def run_peer(peer: str, plan: workload.Plan, plan_path: str, tag: str, workdir: str,
             args) -> dict:
  out = os.path.join(workdir, 'out', f'{peer}_{tag}.json')
  log_path = os.path.join(workdir, 'logs', f'{peer}_{tag}.log')
  if peer == 'pipeline':
    name = f'pipeline_{tag}'
    shutil.rmtree(os.path.join(workdir, 'runs', name), ignore_errors=True)
    return pipeline_peer.run(plan, os.path.join(workdir, 'runs'), name, log_path, args.timeout)
  if peer == 'vanilla':
    return vanilla_tff_peer.run(plan_path, out, log_path, args.timeout)
  if peer == 'floor_seq':
    return floor_peer.run(plan_path, out, log_path, args.timeout, 'sequential')
  if peer == 'floor_par':
    return floor_peer.run(plan_path, out, log_path, args.timeout, 'parallel',
                          workers=args.floor_workers, threads=args.floor_threads,
                          eval_repeats=0)
  if peer == 'flower':
    return flower_peer.run(plan_path, out, log_path, args.timeout)
  raise ValueError(peer)


def run_benchmark(args, workdir: str) -> tuple[str, bool]:
  """(markdown report, whether any peer failed)."""
  for sub in ('out', 'logs', 'runs', 'plans', 'results'):
    os.makedirs(os.path.join(workdir, sub), exist_ok=True)
  load_start = loadavg()
  skipped = {p: 'not run (--peers)' for p in PEERS if p not in args.peers}
  if args.skip_flower:
    skipped['flower'] = 'skipped (--smoke)' if args.smoke else 'skipped (--skip_flower)'
  elif 'flower' not in skipped:
    log(f'Flower venv: {flower_peer.VENV}')
    ok, why = flower_peer.ensure_venv(os.path.join(workdir, 'logs', 'flower_install.log'))
    if not ok:
      skipped['flower'] = f'skipped: install failed ({why})'
      log(skipped['flower'])
  peers = [p for p in PEERS if p not in skipped]

  npz, data_description = prepare_data(args, workdir)
  log(f'data: {data_description}')
  cache_dir = os.path.join(workdir, 'cache')
  log('building the TFF sqlite cache with tff_research.cli.build_emnist_cache')
  pipeline_peer.build_cache(npz, cache_dir, os.path.join(workdir, 'logs', 'build_cache.log'))

  plans = {}
  for k in args.clients:
    plan = workload.make_plan(npz, cache_dir, data_description, clients_per_round=k,
                              num_rounds=args.rounds, seed=args.seed)
    plans[k] = (plan, plan.save(os.path.join(workdir, 'plans', f'k{k}.json')))

  results: dict[tuple[str, int], list[dict]] = {}
  failures: dict[tuple[str, int], str] = {}
  for trial in range(args.trials):
    for k in args.clients:
      plan, plan_path = plans[k]
      order = peers[trial % len(peers):] + peers[:trial % len(peers)]
      for peer in order:
        if (peer, k) in failures:
          continue
        log(f'trial {trial + 1}/{args.trials}, {k} clients/round: {peer} ...')
        load_before = _load1()
        try:
          res = run_peer(peer, plan, plan_path, f'k{k}_t{trial}', workdir, args)
        except procs.PeerError as e:
          failures[(peer, k)] = str(e).splitlines()[0]
          log(f'{peer} failed: {e}')
          continue
        res['load'] = (load_before + _load1()) / 2
        res['trial'] = trial
        results.setdefault((peer, k), []).append(res)
        # Kept on disk too, so a stopped run still leaves its numbers.
        with open(os.path.join(workdir, 'results', f'{peer}_k{k}_t{trial}.json'), 'w') as f:
          json.dump(res, f)
        measured = res['round_seconds'][args.warmup:]
        log(f'  {peer}: median {statistics.median(measured):.2f} s/round over '
            f'{len(measured)} rounds (all: {", ".join(f"{s:.2f}" for s in res["round_seconds"])})')
        if res.get('survivors_killed'):
          log(f'  killed leftover processes of {peer}: {", ".join(res["survivors_killed"])}')
  text = report(args, plans, results, failures, skipped, data_description, load_start)
  return text, bool(failures)


# --- the report -------------------------------------------------------------------

def _measured(runs: list[dict], warmup: int) -> list[float]:
  return [s for r in runs for s in r['round_seconds'][warmup:]]


def _fmt(x, digits=2) -> str:
  return '–' if x is None or (isinstance(x, float) and not math.isfinite(x)) else f'{x:.{digits}f}'


def report(args, plans, results, failures, skipped, data_description, load_start) -> str:
  median = {key: statistics.median(_measured(runs, args.warmup)) for key, runs in results.items()}
  floor_label = LABELS['floor_par'].format(w=args.floor_workers, t=args.floor_threads)
  lines = [
      '## FedAvg benchmark: EMNIST CNN (62 classes), 1 local epoch, batch 20',
      '',
      f'- data: {data_description}; seed {args.seed}',
      f'- {args.rounds} rounds per run, first {args.warmup} discarded, {args.trials} '
      f'interleaved trial(s): medians over {args.trials * (args.rounds - args.warmup)} '
      'measured rounds per peer and clients/round',
      f'- machine: {os.cpu_count()} cores, load average {load_start} at start, {loadavg()} at '
      'end (shared machine: absolute seconds are noisy, ratios come from this one run)',
      '',
      '| peer | clients/round | examples/round | median s/round | rounds measured | '
      'peak RSS process MB | peak RSS children MB | load | notes |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  ]
  for k in args.clients:
    plan = plans[k][0]
    examples = np.mean(plan.round_examples()[args.warmup:])
    for peer in PEERS:
      label = floor_label if peer == 'floor_par' else LABELS[peer]
      if peer in skipped or (peer, k) in failures:
        note = skipped.get(peer) or f'failed: {failures[(peer, k)][:200]}'
        lines.append(f'| {label} | {k} | {examples:.0f} | – | 0 | – | – | – | {note} |')
        continue
      runs = results[(peer, k)]
      main_mb = max(r['peak_main_mb'] for r in runs)
      child_mb = max(r['peak_children_mb'] for r in runs)
      child = f'{child_mb:.0f} ({CHILDREN[peer]})' if CHILDREN[peer] else '–'
      note = ''
      if peer == 'flower':
        note = f'{runs[0].get("actors", "?")} Ray actors, 1 CPU each'
      load = '/'.join(f'{r["load"]:.1f}' for r in runs)
      lines.append(f'| {label} | {k} | {examples:.0f} | {median[(peer, k)]:.2f} | '
                   f'{len(_measured(runs, args.warmup))} | {main_mb:.0f} | {child} | {load} | '
                   f'{note} |')

  def trial_medians(key) -> dict[int, float]:
    return {r['trial']: statistics.median(r['round_seconds'][args.warmup:])
            for r in results.get(key, [])}

  def ratio(a, b, b_alt=None):
    """Median over trials of a/b within the trial (the two ran minutes apart,
    under the same load); b_alt: use the faster of b and b_alt in each trial."""
    ta, tb, tc = trial_medians(a), trial_medians(b), trial_medians(b_alt) if b_alt else {}
    per_trial = []
    for t in sorted(ta):
      denominators = [d[t] for d in (tb, tc) if t in d]
      if denominators:
        per_trial.append(ta[t] / min(denominators))
    return statistics.median(per_trial) if per_trial else None

  lines += ['', '| ratio | ' + ' | '.join(f'{k} clients/round' for k in args.clients) + ' |',
            '| --- |' + ' ---: |' * len(args.clients)]
  row_floor, row_vanilla, row_flower, row_eval = [], [], [], []
  for k in args.clients:
    floors = [(median[(p, k)], p) for p in ('floor_seq', 'floor_par') if (p, k) in median]
    best = min(floors) if floors else None
    if best and ('pipeline', k) in median:
      which = 'sequential' if best[1] == 'floor_seq' else 'parallel'
      row_floor.append(f'{ratio(("pipeline", k), ("floor_seq", k), ("floor_par", k)):.2f} '
                       f'(faster floor overall: {which})')
    else:
      row_floor.append('–')
    row_vanilla.append(_fmt(ratio(('vanilla', k), ('pipeline', k))))
    flower = ratio(('flower', k), ('pipeline', k))
    if flower is not None:
      row_flower.append(_fmt(flower))
    elif 'flower' in skipped:
      row_flower.append(skipped['flower'])
    else:
      row_flower.append('failed' if ('flower', k) in failures else '–')
    pipe_eval = [r['eval_seconds'] for r in results.get(('pipeline', k), []) if r['eval_seconds']]
    floor_eval = [r['eval_seconds_median'] for r in results.get(('floor_seq', k), [])]
    if pipe_eval and floor_eval:
      pe, fe = statistics.median(pipe_eval), statistics.median(floor_eval)
      n = results[('floor_seq', k)][0]['eval_num_examples']
      n_pipe = results[('pipeline', k)][0]['eval_num_examples']
      same = '' if n_pipe == n else f'; the pipeline evaluated {n_pipe:.0f}'
      row_eval.append(f'{pe / fe:.2f} ({pe:.2f} s / {fe:.2f} s, {n} examples{same})')
    else:
      row_eval.append('–')
  lines += [
      '| pipeline / floor (s/round; the faster floor of each trial) | ' + ' | '.join(row_floor) + ' |',
      '| vanilla TFF / pipeline (s/round) | ' + ' | '.join(row_vanilla) + ' |',
      '| Flower / pipeline (s/round) | ' + ' | '.join(row_flower) + ' |',
      '| eval / forward floor (pipeline eval_seconds / plain-TF forward pass) | '
      + ' | '.join(row_eval) + ' |',
      '',
  ]
  pts = [(k, s) for k in args.clients for s in _measured(results.get(('pipeline', k), []),
                                                         args.warmup)]
  if len({k for k, _ in pts}) >= 2:
    slope, intercept = np.polyfit([k for k, _ in pts], [s for _, s in pts], 1)
    lines.append(f'Linear fit of pipeline s/round vs clients/round ({len(pts)} measured rounds): '
                 f'slope {slope:.3f} s per client, intercept {intercept:.2f} s')
  else:
    lines.append('Linear fit of pipeline s/round vs clients/round: needs two --clients values')
  return '\n'.join(lines) + '\n'


# --- the memory soak --------------------------------------------------------------

def run_soak(args, workdir: str) -> str:
  os.makedirs(os.path.join(workdir, 'logs'), exist_ok=True)
  rounds = args.soak_rounds
  marks = (50, rounds) if rounds > 50 else (max(1, rounds // 2), rounds)
  log(f'soak: train.py --model=mlp --dropout_rate=0.2, {rounds} rounds (digits)')
  load_start = loadavg()
  res = pipeline_peer.soak(os.path.join(workdir, 'runs'),
                           os.path.join(workdir, 'logs', 'soak.log'), rounds=rounds,
                           marks=marks, timeout=args.timeout)
  lines = [f'## Memory soak: experiments/train.py --model=mlp --dropout_rate=0.2 (digits), '
           f'{rounds} rounds',
           '',
           f'- {res["seconds"]:.0f} s; load average {load_start} at start, {loadavg()} at end',
           '',
           f'| process | RSS MB at round {marks[0]} | RSS MB at round {marks[1]} | '
           'growth MB/round | peak RSS MB |',
           '| --- | ---: | ---: | ---: | ---: |']
  a, b = res['marks'].get(marks[0]), res['marks'].get(marks[1])
  for i, (name, peak) in enumerate((('train.py (Python)', res['peak_main_mb']),
                                    ('worker_binary', res['peak_worker_mb']))):
    if a and b:
      growth = (b[i + 1] - a[i + 1]) / max(1, b[0] - a[0])
      lines.append(f'| {name} | {a[i + 1]:.0f} | {b[i + 1]:.0f} (row {b[0]}) | '
                   f'{growth:.2f} | {peak:.0f} |')
    else:
      lines.append(f'| {name} | – | – | – | {peak:.0f} |')
  return '\n'.join(lines) + '\n'


def run_scale(args, workdir: str) -> tuple[str, bool]:
  """The scale benchmark (scale.py); (report, whether a run failed)."""
  configs = [c.strip() for c in args.scale_configs.split(',') if c.strip()]
  unknown = sorted(set(configs) - set(scale.CONFIGS))
  if unknown:
    raise SystemExit(f'--scale_configs: unknown {unknown}; valid: {",".join(scale.CONFIGS)}')
  caches = scale.build_caches(args.data, workdir, args.scale_copies,
                              args.large_cache, log)
  forwards = {fed: scale.forward(cache, workdir, f'forward_{fed}')
              for fed, cache in caches.items()}
  results, failed = {}, False
  for config in configs:
    for fed, cache in caches.items():
      for k in scale.CLIENTS:
        name = f'{config}_{fed}_{k}'
        log(f'scale: {name} (load {loadavg()})')
        try:
          results[(config, fed, k)] = scale.run_one(
              config, cache, k, args.scale_rounds, workdir, name)
        except procs.PeerError as e:
          log(f'scale: {name} failed: {e}')
          failed = True
  return scale.report(results, forwards, caches, loadavg(), configs) + '\n', failed


def main(argv=None) -> int:
  args = parse_args(argv)

  def on_sigterm(signum, frame):
    del frame
    raise SystemExit(128 + signum)  # unwinds through run_peer, which kills its group
  signal.signal(signal.SIGTERM, on_sigterm)

  workdir = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix='tff-bench-')
  os.makedirs(workdir, exist_ok=True)
  started = time.monotonic()
  ok = False
  try:
    if args.soak:
      text, failed = run_soak(args, workdir), False
    elif args.scale:
      text, failed = run_scale(args, workdir)
    else:
      text, failed = run_benchmark(args, workdir)
    ok = not failed
  finally:
    if not ok or args.workdir:
      log(f'logs and outputs kept in {workdir}')
    else:
      shutil.rmtree(workdir, ignore_errors=True)
  text += f'\n(benchmark wall time {time.monotonic() - started:.0f} s)\n'
  print(text, flush=True)
  if args.output:
    with open(args.output, 'w') as f:
      f.write(text)
  if not ok:
    log('some peers failed: see the notes column and their logs')
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
