"""experiments/train.py end to end: outputs, resume, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tff_research.cli import flags
from tff_research.run import run_directory
from tests import fl_testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A run small enough for a unit test: 6 digit clients, linear model.
SMALL = dict(
    model='linear', num_clients=6, clients_per_round=3, client_learning_rate=0.01,
    eval_every=2, rounds_per_checkpoint=2, progress=False, batch_size=10)


_read_csv = fl_testing.read_csv


def _run(tmp_path, name, **overrides):
  return fl_testing.run_experiment(SMALL, tmp_path, name, **overrides)


def test_run_writes_every_output(tff_worker, tmp_path):
  rows = _run(tmp_path, 'a', total_rounds=3)
  run_dir = tmp_path / 'a'
  assert [r['round'] for r in rows] == [1, 2, 3]
  logged = _read_csv(run_dir / 'metrics.csv')
  assert [int(r['round']) for r in logged] == [1, 2, 3]
  for column in ('train_loss', 'train_accuracy', 'train_examples',
                 'communication_kb_down'):
    assert all(r[column] for r in logged), column
  # Evaluation on rounds 2 and 3 (every 2, and at the end) only.
  assert [bool(r['eval_accuracy']) for r in logged] == [False, True, True]
  assert 0.0 <= float(logged[-1]['eval_accuracy']) <= 1.0
  np.testing.assert_allclose(float(logged[0]['train_loss']),
                             rows[0]['train_loss'], rtol=1e-6)
  # Linear model, 10 classes: (784*10 + 10) float32 down and up per client.
  assert float(logged[0]['communication_kb_down']) == pytest.approx(
      3 * 7850 * 4 / 1024)
  hparams = json.loads((run_dir / 'hparams.json').read_text())
  assert set(hparams) == set(flags.all_flag_names())
  assert hparams['client_learning_rate'] == 0.01
  assert sorted(os.listdir(run_dir / 'checkpoints')) == ['round_2', 'round_3']
  assert any(p.startswith('events.out.tfevents') for p in os.listdir(run_dir))


def test_resume_continues_exactly_where_a_straight_run_goes(tff_worker,
                                                            tmp_path):
  straight = _run(tmp_path, 'straight', total_rounds=4)
  first = _run(tmp_path, 'resumed', total_rounds=2)
  # Same command with more rounds: resumes after the round-2 checkpoint.
  second = _run(tmp_path, 'resumed', total_rounds=4)
  assert [r['round'] for r in first] == [1, 2]
  assert [r['round'] for r in second] == [3, 4]
  for a, b in zip(straight, first + second):
    for key in ('train_loss', 'train_accuracy', 'train_examples'):
      assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
  np.testing.assert_allclose(straight[-1]['eval_accuracy'],
                             second[-1]['eval_accuracy'], atol=1e-7)
  logged = _read_csv(tmp_path / 'resumed' / 'metrics.csv')
  assert [int(r['round']) for r in logged] == [1, 2, 3, 4]
  # Running totals continue across the resume.
  np.testing.assert_allclose(
      float(logged[-1]['communication_cumulative_kb']),
      4 * float(logged[0]['communication_kb_total']), rtol=1e-9)
  # A finished run has nothing to do.
  assert _run(tmp_path, 'resumed', total_rounds=4) == []


def test_resume_after_a_crash_between_checkpoints_drops_stale_rows(
    tff_worker, tmp_path):
  _run(tmp_path, 'crash', total_rounds=3)  # checkpoints at 2 and 3
  ckpt = tmp_path / 'crash' / 'checkpoints'
  # Simulate a crash after round 3 was logged but before it was checkpointed.
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(ckpt / 'round_3')
  rows = _run(tmp_path, 'crash', total_rounds=3)
  assert [r['round'] for r in rows] == [3]
  logged = _read_csv(tmp_path / 'crash' / 'metrics.csv')
  assert [int(r['round']) for r in logged] == [1, 2, 3]


def test_resume_with_different_hparams_is_refused_and_changes_nothing(
    tff_worker, tmp_path):
  _run(tmp_path, 'b', total_rounds=2)
  before = {p: os.path.getmtime(tmp_path / 'b' / p)
            for p in os.listdir(tmp_path / 'b')}
  with pytest.raises(run_directory.RunDirError,
                     match=r'--client_learning_rate=0.5 differs from 0.01'):
    _run(tmp_path, 'b', total_rounds=4, client_learning_rate=0.5)
  after = {p: os.path.getmtime(tmp_path / 'b' / p)
           for p in os.listdir(tmp_path / 'b')}
  assert before == after


@pytest.mark.parametrize('argv,message', [
    (['--client_learning_rate=-1'], r'--client_learning_rate=-1.0 is not valid'),
    (['--total_rounds=0'], r'--total_rounds=0 is not valid: must be >= 1'),
    (['--clients_per_round=3', '--client_fraction=0.5'], r'only one of'),
    (['--client_fraction=1.5'], r'--client_fraction=1.5 is not valid'),
    (['--dirichlet_alpha=0'], r'--dirichlet_alpha=0.0 is not valid'),
    (['--data_balance=2'], r'--data_balance=2.0 is not valid'),
    (['--missing_classes=1,x'], r'x'),
    (['--heldout_client_fraction=0.3'], r'applies only with --eval_on='),
    (['--data_dir=/tmp'], r'--data_dir applies only to'),
    (['--dataset=emnist', '--num_clients=5'], r'--num_clients applies to'),
])
def test_bad_flags_are_one_line_errors(argv, message):
  with pytest.raises(flags.FlagError, match=message) as e:
    flags.config_from_argv(['--experiment_name=x'] + argv)
  assert '\n' not in str(e.value)


def _rejects_before_writing_anything(tmp_path, argv):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'experiments', 'train.py'),
       f'--logdir={tmp_path}', '--experiment_name=bad'] + argv,
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert not (tmp_path / 'bad').exists()


def test_binary_rejects_an_unparsable_flag_before_writing_anything(tmp_path):
  # absl's parse error path. The config's value checks are
  # test_bad_flags_are_one_line_errors (in-process); a ValueError raised in
  # a binary's run() becoming one line is test_missing_emnist_cache_... here
  # and the evaluate binary's test.
  _rejects_before_writing_anything(tmp_path, ['--dataset=cifar'])


@pytest.mark.slow
@pytest.mark.parametrize('argv', [['--client_learning_rate=-1'],
                                  ['positional']])
def test_binary_rejects_bad_values_before_writing_anything(tmp_path, argv):
  _rejects_before_writing_anything(tmp_path, argv)


def test_missing_emnist_cache_is_a_one_line_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'experiments', 'train.py'),
       f'--logdir={tmp_path}', '--experiment_name=e', '--dataset=emnist_digits',
       f'--data_dir={tmp_path}/nocache'],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 1
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert 'emnist_all.sqlite' in errors[0]
  assert 'build_emnist_cache' in errors[0]
  assert not (tmp_path / 'e').exists()
