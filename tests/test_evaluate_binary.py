"""experiments/evaluate.py re-evaluates a checkpoint exactly as training did."""

import csv
import json
import os
import subprocess
import sys

import pytest

from tff_research.run import checkpoint_evaluation
from tests import fl_testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('eval_on', ['test_split', 'heldout_clients'])
def test_checkpoint_evaluation_reproduces_the_logged_metrics(
    tff_worker, tmp_path, eval_on):
  fl_testing.run_experiment(
      dict(model='linear', num_clients=8, clients_per_round=3,
           client_learning_rate=0.01, total_rounds=2, eval_every=2,
           rounds_per_checkpoint=1, progress=False, eval_on=eval_on),
      tmp_path, 'run')
  with open(tmp_path / 'run' / 'metrics.csv', newline='') as f:
    logged = list(csv.DictReader(f))[-1]
  result = checkpoint_evaluation.evaluate_checkpoint(
      str(tmp_path / 'run' / 'checkpoints'))
  assert result['round'] == 2
  assert result['accuracy'] == pytest.approx(float(logged['eval_accuracy']))
  assert result['loss'] == pytest.approx(float(logged['eval_loss']))
  assert result['num_clients'] == int(logged['eval_num_clients'])
  if eval_on == 'heldout_clients':
    # 20 % of 8 clients held out, never trained on.
    assert result['num_clients'] == 2
  # Round 1's checkpoint is a different model.
  r1 = checkpoint_evaluation.evaluate_checkpoint(
      str(tmp_path / 'run' / 'checkpoints'), round_num=1)
  assert r1['round'] == 1 and r1['loss'] != pytest.approx(result['loss'])
  with pytest.raises(ValueError, match=r'--round=7 has no checkpoint'):
    checkpoint_evaluation.evaluate_checkpoint(
        str(tmp_path / 'run' / 'checkpoints'), round_num=7)


def test_evaluate_binary_writes_json_and_rejects_training_flags(
    tff_worker, tmp_path):
  # The run is trained in-process (train.py's library path): the binary
  # under test is evaluate.py.
  fl_testing.run_experiment(
      dict(model='linear', num_clients=4, clients_per_round=2, total_rounds=1,
           progress=False, client_learning_rate=0.01), tmp_path, 'r')
  evaluate = [sys.executable, os.path.join(REPO, 'experiments', 'evaluate.py'),
              f'--checkpoint_dir={tmp_path}/r/checkpoints']
  proc = subprocess.run(evaluate, capture_output=True, text=True, timeout=300,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'accuracy' in proc.stdout
  out = json.loads((tmp_path / 'r' / 'evaluation_round_1.json').read_text())
  assert len(out['per_client']) == out['num_clients']
  bad = subprocess.run(evaluate + ['--model=cnn'], capture_output=True,
                       text=True, timeout=300, cwd=REPO)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1].startswith(
      "error: --model comes from the run's hparams.json")
