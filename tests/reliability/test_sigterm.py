"""SIGTERM ends a run with one line: where it stopped, where a re-run resumes."""

import os
import re
import signal
import sys

from tests.reliability import procs


def test_sigterm_says_where_the_run_stopped_and_resumes(tmp_path):
  run_dir = tmp_path / 'run'
  proc = procs.spawn([
      sys.executable, 'experiments/train.py', f'--logdir={tmp_path}',
      '--experiment_name=run', '--model=linear', '--num_clients=4',
      '--clients_per_round=2', '--batch_size=10', '--total_rounds=500',
      '--rounds_per_checkpoint=2', '--eval_every=1000', '--noprogress'])
  try:
    procs.wait_for_rounds(proc, run_dir / 'metrics.csv', 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
  finally:
    procs.kill_quietly(proc)
  assert proc.returncode == -signal.SIGTERM
  lines = err.decode().strip().splitlines()
  assert len(lines) == 1, lines
  match = re.fullmatch(r'stopped at round (\d+); re-running the same command'
                       r' resumes after round (\d+)', lines[0])
  assert match, lines
  stopped, resumes = int(match[1]), int(match[2])
  saved = [int(n[len('round_'):]) for n in os.listdir(run_dir / 'checkpoints')
           if n.startswith('round_')]
  assert resumes == max(saved) and resumes % 2 == 0 and resumes >= 2
  assert resumes < stopped
  logged = len((run_dir / 'metrics.csv').read_text().splitlines()) - 1
  assert stopped - 1 <= logged <= stopped
