"""Sweeps: config checks, run naming, skip/resume after a kill, results."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tff_research.cli import flags as flags_lib
from tff_research.studies import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stands in for experiments/train.py: resumes after its latest checkpoint,
# one slow round at a time, and logs each invocation's starting round.
_FAKE_TRAIN = textwrap.dedent('''
    import csv, os, sys, time
    args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
    run = os.path.join(args['logdir'], args['experiment_name'])
    ckpt = os.path.join(run, 'checkpoints')
    os.makedirs(ckpt, exist_ok=True)
    done = max([int(d[6:]) for d in os.listdir(ckpt)] + [0])
    with open(os.path.join(args['logdir'], 'invocations.txt'), 'a') as f:
      f.write(f"{args['experiment_name']} {done}\\n")
    path = os.path.join(run, 'metrics.csv')
    rows = []
    if os.path.exists(path):
      rows = [r for r in csv.DictReader(open(path)) if int(r['round']) <= done]
    for r in range(done + 1, int(args['total_rounds']) + 1):
      time.sleep(float(args.get('seconds_per_round', '0.3')))
      # With dropout, everyone drops in the last round: no train loss.
      dropped = r == int(args['total_rounds']) and args['dropout_rate'] != '0.0'
      rows.append({'round': r, 'train_loss': '' if dropped else 1.0 / r,
                   'eval_accuracy': 0.1 * r + float(args['dropout_rate']),
                   'communication_cumulative_kb': 10.0 * r})
      with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
      os.makedirs(os.path.join(ckpt, f'round_{r}'))
''')


def _config(tmp_path, **overrides):
  raw = dict(logdir=str(tmp_path / 'logs'), parallel=1,
             base={'total_rounds': 3, 'seconds_per_round': 0.3},
             grid={'dropout_rate': [0.0, 0.5], 'seed': [0, 1]})
  raw.update(overrides)
  path = tmp_path / 'sweep.json'
  path.write_text(json.dumps(raw))
  return path


def _fake_validate(argv):
  flags = dict(a[2:].split('=', 1) for a in argv)
  return int(flags['total_rounds']), flags


def test_expand_names_runs_and_passes_flags(tmp_path):
  config = sweep.load_config(str(_config(tmp_path)), parallel=2)
  assert config.parallel == 2
  runs = sweep.expand(config, _fake_validate)
  assert [r.name for r in runs] == [
      'dropout_rate=0.0,seed=0', 'dropout_rate=0.0,seed=1',
      'dropout_rate=0.5,seed=0', 'dropout_rate=0.5,seed=1']
  assert runs[2].flags == {'total_rounds': 3, 'seconds_per_round': 0.3,
                           'dropout_rate': 0.5, 'seed': 0}
  assert runs[2].total_rounds == 3
  assert sweep.flag_args({'a': True, 'b': False, 'c': None, 'd': 0.5}) == [
      '--a', '--nob', '--d=0.5']


@pytest.mark.parametrize('overrides,message', [
    (dict(grid={}), r'"grid" must be a non-empty object'),
    (dict(grid={'seed': []}), r'grid "seed" must be a non-empty list'),
    (dict(grid={'seed': [0, 0]}), r'grid "seed" repeats a value'),
    (dict(grid={'experiment_name': ['a']}), r"\['experiment_name'\] are set by"),
    (dict(base={'seed': 1}, grid={'seed': [0]}), r"\['seed'\] are in both"),
    (dict(colour='red'), r"unknown keys \['colour'\]"),
    (dict(parallel=0), r'parallel=0 is not valid: must be an int >= 1'),
])
def test_bad_configs_are_one_line_errors(tmp_path, overrides, message):
  with pytest.raises(sweep.SweepError, match=message) as e:
    sweep.load_config(str(_config(tmp_path, **overrides)))
  assert '\n' not in str(e.value)


def test_bad_run_flags_name_the_run(tmp_path):
  config = sweep.load_config(str(_config(
      tmp_path, base={}, grid={'dropout_rate': [0.5, 0.95]})))
  with pytest.raises(sweep.SweepError,
                     match=r'run dropout_rate=0.95: --dropout_rate=0.95 is not'
                     r' valid'):
    sweep.expand(config, flags_lib.validate_train_argv)


def test_run_flags_are_parsed_in_private_flag_values(tmp_path):
  from absl import flags  # pylint: disable=g-import-not-at-top
  before = flags.FLAGS.flag_values_dict()
  total_rounds, hparams = flags_lib.validate_train_argv(
      ['--logdir=L', '--experiment_name=a', '--algorithm=fedadam',
       '--total_rounds=7', '--model=linear'])
  assert total_rounds == 7
  assert (hparams['algorithm'], hparams['model'], hparams['logdir']) == (
      'fedadam', 'linear', 'L')
  assert hparams['server_learning_rate'] == pytest.approx(10**-2.5)
  assert flags.FLAGS.flag_values_dict() == before
  config = sweep.load_config(str(_config(
      tmp_path, base={}, grid={'data_dir': ['a/b']})))
  with pytest.raises(sweep.SweepError, match=r"run 'data_dir=a/b': "):
    sweep.expand(config, _fake_validate)


_DRIVER = textwrap.dedent('''
    import sys
    sys.path.insert(0, {repo!r})
    from tff_research.studies import sweep
    from tests import test_sweep
    config = sweep.load_config({config!r})
    runs = sweep.expand(config, test_sweep._fake_validate)
    status = sweep.run_sweep(config, runs, train_script={fake!r},
                             poll_seconds=0.05)
    sweep.write_results(config, sweep.results(config, runs))
    print(status)
''')


def test_killed_sweep_resumes_without_redoing_anything(tmp_path):
  config_path = _config(tmp_path)
  fake = tmp_path / 'fake_train.py'
  fake.write_text(_FAKE_TRAIN)
  logdir = tmp_path / 'logs'
  driver = _DRIVER.format(repo=REPO, config=str(config_path), fake=str(fake))

  proc = subprocess.Popen([sys.executable, '-c', driver], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  # Kill the sweep (SIGKILL: no cleanup of its own) once the second run is
  # part-way: one run complete, one with a checkpoint, two not started.
  second = logdir / 'dropout_rate=0.0,seed=1' / 'checkpoints' / 'round_1'
  deadline = time.monotonic() + 120
  while not second.exists():
    assert proc.poll() is None, proc.stdout.read().decode()
    assert time.monotonic() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  time.sleep(1.0)  # The run dies with the sweep (PR_SET_PDEATHSIG).
  invocations = (logdir / 'invocations.txt').read_text().split('\n')[:-1]
  assert invocations == ['dropout_rate=0.0,seed=0 0',
                         'dropout_rate=0.0,seed=1 0']
  partial = sweep.checkpointed_round(str(logdir), 'dropout_rate=0.0,seed=1')
  assert 1 <= partial < 3
  time.sleep(1.0)
  # Nothing kept running after the kill.
  assert sweep.checkpointed_round(
      str(logdir), 'dropout_rate=0.0,seed=1') == partial

  out = subprocess.run([sys.executable, '-c', driver], cwd=REPO, check=True,
                       capture_output=True, text=True, timeout=120).stdout
  assert "'dropout_rate=0.0,seed=0': 'skipped'" in out
  invocations = (logdir / 'invocations.txt').read_text().split('\n')[:-1]
  # The complete run was not started again; the partial one resumed after
  # its checkpoint; the rest ran once.
  assert invocations[2:] == [f'dropout_rate=0.0,seed=1 {partial}',
                             'dropout_rate=0.5,seed=0 0',
                             'dropout_rate=0.5,seed=1 0']
  with open(logdir / 'results.csv', newline='') as f:
    table = list(csv.DictReader(f))
  assert [r['run'] for r in table] == [
      'dropout_rate=0.0,seed=0', 'dropout_rate=0.0,seed=1',
      'dropout_rate=0.5,seed=0', 'dropout_rate=0.5,seed=1']
  for row in table:
    assert row['rounds'] == '3' and row['complete'] == 'True'
    assert float(row['eval_accuracy']) == pytest.approx(
        0.3 + float(row['dropout_rate']))
    assert float(row['communication_cumulative_kb']) == 30.0
    # The last train loss logged (round 2 when round 3 had no reports).
    assert float(row['train_loss']) == pytest.approx(
        1 / 3 if row['dropout_rate'] == '0.0' else 1 / 2)
  # No round was logged twice.
  with open(logdir / 'dropout_rate=0.0,seed=1' / 'metrics.csv') as f:
    assert [r['round'] for r in csv.DictReader(f)] == ['1', '2', '3']
  md = (logdir / 'results.md').read_text().splitlines()
  assert md[0].startswith('| run | dropout_rate | seed | rounds |')
  assert len(md) == 2 + 4


@pytest.mark.slow
def test_real_sweep_binary_resumes_after_kill(tmp_path):
  """experiments/sweep.py with real train.py runs (minutes on 2 cores)."""
  logdir = tmp_path / 'logs'
  config = tmp_path / 'sweep.json'
  config.write_text(json.dumps(dict(
      logdir=str(logdir),
      base=dict(model='linear', num_clients=6, clients_per_round=3,
                client_learning_rate=0.01, total_rounds=2, eval_every=2,
                rounds_per_checkpoint=1, batch_size=10),
      grid=dict(dropout_rate=[0.0, 0.5]))))
  argv = [sys.executable, os.path.join(REPO, 'experiments', 'sweep.py'),
          f'--config={config}']
  proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  first = logdir / 'dropout_rate=0.0' / 'checkpoints' / 'round_2'
  deadline = time.monotonic() + 900
  while not first.exists():
    assert proc.poll() is None and time.monotonic() < deadline
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=120)
  mtime = os.path.getmtime(logdir / 'dropout_rate=0.0' / 'metrics.csv')
  out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'skip   dropout_rate=0.0' in out.stdout
  assert os.path.getmtime(
      logdir / 'dropout_rate=0.0' / 'metrics.csv') == mtime
  with open(logdir / 'results.csv', newline='') as f:
    table = list(csv.DictReader(f))
  assert [(r['run'], r['rounds']) for r in table] == [
      ('dropout_rate=0.0', '2'), ('dropout_rate=0.5', '2')]
  assert all(r['eval_accuracy'] for r in table)


def test_seeds_report_pairs_configurations_by_seed(tmp_path):
  """--seeds on a sweep: the grid's seed values, runs named ...,seed=S, and
  results_seeds.md from the runs' metrics (hand-written, no training)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  config = sweep.load_config(str(_config(tmp_path)))
  seeded = sweep.with_seeds(config, (0, 1, 2))
  assert seeded.grid == {'dropout_rate': [0.0, 0.5], 'seed': [0, 1, 2]}
  with pytest.raises(sweep.SweepError, match='--seeds conflicts with "seed"'):
    sweep.with_seeds(sweep.SweepConfig('l', {'seed': 1}, {'a': [1]}), (0,))
  runs = sweep.expand(seeded, _fake_validate)
  assert [r.name for r in runs][:3] == [
      'dropout_rate=0.0,seed=0', 'dropout_rate=0.0,seed=1',
      'dropout_rate=0.0,seed=2']
  assert sweep.check_baseline(runs, None) == 'dropout_rate=0.0'
  with pytest.raises(sweep.SweepError, match='--baseline=x is not valid'):
    sweep.check_baseline(runs, 'x')
  final = {'dropout_rate=0.0': [0.80, 0.84, 0.79],
           'dropout_rate=0.5': [0.70, 0.76, 0.71]}
  for run in runs:
    acc = final[sweep.configuration_name(run)][run.grid_values['seed']]
    path = tmp_path / 'logs' / run.name
    os.makedirs(path / 'checkpoints' / 'round_3')
    with open(path / 'metrics.csv', 'w', newline='') as f:
      w = csv.DictWriter(f, ['round', 'eval_accuracy', 'eval_loss'])
      w.writeheader()
      w.writerow({'round': 1, 'eval_accuracy': acc / 2, 'eval_loss': 2.0})
      w.writerow({'round': 3, 'eval_accuracy': acc, 'eval_loss': 1.0})
  md = sweep.write_seed_results(seeded, runs, sweep.results(seeded, runs))
  text = open(md).read()
  base = final['dropout_rate=0.0']
  low, high = stats.t.interval(0.95, 2, loc=sum(base) / 3,
                               scale=stats.sem(base))
  assert (f'| dropout_rate=0.0 | 3 | 0.810 ± {(high - low) / 2:.3f} |'
          f' [{low:.3f}, {high:.3f}] | (baseline) |  |') in text
  ref = stats.ttest_rel(final['dropout_rate=0.5'], base)
  # Differences -0.10, -0.08, -0.08: mean -0.0867.
  assert (f'| -0.087 [') in text and f'(n=3) | {ref.pvalue:.3f} |' in text
  assert '| dropout_rate=0.5 | 0.7000 | 0.7600 | 0.7100 |' in text
  saved = json.loads(open(md[:-3] + '.json').read())
  assert saved['metrics']['eval_accuracy']['dropout_rate=0.5']['paired'][
      'p_value'] == pytest.approx(ref.pvalue)
  png = tmp_path / 'logs' / 'accuracy_curves.png'
  assert png.read_bytes()[:4] == b'\x89PNG'


# A fake train.py that, like the real one, holds its run directory's lock
# and is refused with one line when another process holds it.
_LOCKING_TRAIN = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, {repo!r})
    from tff_research.run import run_lock
    args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
    try:
      lock = run_lock.acquire(os.path.join(args['logdir'],
                                           args['experiment_name']))
    except ValueError as e:
      print(f'error: {{e}}', file=sys.stderr)
      sys.exit(1)
    print(f'trained by pid {{os.getpid()}}', flush=True)
''')

# A sweep that starts its runs once every sweep of the test is ready (the
# imports take long and vary), and prints its pid and status as JSON.
_CONCURRENT_DRIVER = textwrap.dedent('''
    import json, os, sys, time
    sys.path.insert(0, {repo!r})
    from tff_research.studies import sweep
    from tests import test_sweep
    ready = {ready!r}
    open(ready + sys.argv[1], 'w').close()
    while not all(os.path.exists(ready + s) for s in ('a', 'b')):
      time.sleep(0.01)
    config = sweep.load_config({config!r})
    runs = sweep.expand(config, test_sweep._fake_validate)
    status = sweep.run_sweep(config, runs, train_script={fake!r},
                             poll_seconds=0.05)
    print(json.dumps(dict(pid=os.getpid(), status=status)))
''')


def test_two_sweeps_of_one_config_share_the_runs(tmp_path):
  config_path = _config(tmp_path, base={'total_rounds': 3,
                                        'seconds_per_round': 1.0})
  fake = tmp_path / 'fake_train.py'
  fake.write_text(_LOCKING_TRAIN.format(repo=REPO) + _FAKE_TRAIN)
  logdir = tmp_path / 'logs'
  driver = _CONCURRENT_DRIVER.format(repo=REPO, ready=str(tmp_path / 'ready-'),
                                     config=str(config_path), fake=str(fake))
  sweeps = [subprocess.Popen([sys.executable, '-c', driver, name], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for name in ('a', 'b')]
  outputs = [p.communicate(timeout=600) for p in sweeps]
  for p, (out, err) in zip(sweeps, outputs):
    assert p.returncode == 0, err[-2000:]
  results = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
  names = ['dropout_rate=0.0,seed=0', 'dropout_rate=0.0,seed=1',
           'dropout_rate=0.5,seed=0', 'dropout_rate=0.5,seed=1']
  # Every run was trained once, by one sweep, from round 0.
  invocations = (logdir / 'invocations.txt').read_text().splitlines()
  assert sorted(invocations) == [f'{n} 0' for n in names]
  for name in names:
    ran = [r for r in results if r['status'][name] == 'done']
    assert len(ran) == 1, [r['status'][name] for r in results]
    other = next(r for r in results if r is not ran[0])
    assert other['status'][name] in (f'done by pid {ran[0]["pid"]}',
                                     'skipped')
    log = (logdir / 'sweep_logs' / f'{name}.log').read_text()
    assert len(re.findall(r'^trained by pid \d+$', log, re.M)) == 1, log
  # The sweeps overlapped: one waited for a run the other was training.
  # (Each run lasts 3 s, so only a sweep stalled for the other's whole
  # 12 s could find every run finished, 'skipped'; per sweep, that happened
  # under a loaded CI machine, so it is asserted over both.)
  assert any(s.startswith('done by pid ') for r in results
             for s in r['status'].values()), results
