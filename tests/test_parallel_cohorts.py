"""`--parallel_cohorts`: a round's clients as cohorts side by side, one
thread each, on the local worker (`run.training.execution_layout`).

What it may change is the order of float additions only: a run with one
cohort and a run with three train the same model to 1e-6. The thread
setting must reach the worker process, and asking for another one replaces
the worker.
"""

import os

import numpy as np
import pytest

from tff_research.cli import flags
from tff_research.execution import worker
from tff_research.run import config as config_lib
from tff_research.run import training
from tests import fl_testing

SMALL = dict(dataset='digits', model='linear', num_clients=8,
             clients_per_round=5, client_learning_rate=0.01, batch_size=10,
             total_rounds=3, eval_every=3, rounds_per_checkpoint=3,
             progress=False)


def _environ(pid: int) -> dict[str, str]:
  with open(f'/proc/{pid}/environ', 'rb') as f:
    items = f.read().split(b'\0')
  return dict(i.decode().split('=', 1) for i in items if b'=' in i)


@pytest.mark.parametrize('parallel, workers, expected', [
    (None, '', (2, 1)),  # The default: the same on every machine.
    (1, '', (1, 0)),
    (3, '', (3, 1)),
    (None, 'h1:8000,h2:8000', (2, 0)),
    (2, 'h1:8000,h2:8000', (4, 0)),
])
def test_layout_of_cohorts_and_threads(tmp_path, parallel, workers, expected):
  config = fl_testing.config_for(SMALL, tmp_path, 'x', workers=workers,
                                 parallel_cohorts=parallel)
  assert training.execution_layout(config) == expected


def test_not_recorded_and_a_bad_value_is_one_line(tmp_path):
  config = fl_testing.config_for(SMALL, tmp_path, 'x', parallel_cohorts=3)
  assert config.parallel_cohorts == 3
  assert 'parallel_cohorts' not in config_lib.to_hparams(config)
  with pytest.raises(flags.FlagError) as e:
    flags.config_from_argv(['--experiment_name=x', '--parallel_cohorts=0'])
  assert str(e.value) == ('--parallel_cohorts=0 is not valid: must be an'
                          ' integer >= 1')


def test_thread_environment():
  env = worker.thread_environment(1, {'PATH': '/bin'})
  assert env == {'PATH': '/bin', 'TF_NUM_INTRAOP_THREADS': '1',
                 'TF_CPP_MIN_LOG_LEVEL': '1', 'MALLOC_ARENA_MAX': '2',
                 'MALLOC_MMAP_THRESHOLD_': '131072'}
  assert 'TF_NUM_INTRAOP_THREADS' not in worker.thread_environment(
      0, {'PATH': '/bin'})
  with pytest.raises(ValueError, match='--intra_op_threads=0 is not valid'):
    worker.check_arguments(8000, 10, 0)


def test_threads_reach_the_worker_and_another_setting_replaces_it(
    tff_runtime):
  if 'TF_NUM_INTRAOP_THREADS' in os.environ:
    pytest.skip('TF_NUM_INTRAOP_THREADS is set in this environment')
  tff_runtime.start(intra_op_threads=1)
  one = tff_runtime.worker_pid()
  assert _environ(one)['TF_NUM_INTRAOP_THREADS'] == '1'
  tff_runtime.start()  # No preference: the running worker is kept.
  assert tff_runtime.worker_pid() == one
  tff_runtime.start(intra_op_threads=0)
  default = tff_runtime.worker_pid()
  assert default != one
  assert 'TF_NUM_INTRAOP_THREADS' not in _environ(default)


def test_one_cohort_and_three_train_the_same_model(tff_worker, tmp_path):
  rows = {p: fl_testing.run_experiment(SMALL, tmp_path, f'p{p}',
                                       parallel_cohorts=p) for p in (1, 3)}
  for a, b in zip(fl_testing.final_state(tmp_path / 'p1'),
                  fl_testing.final_state(tmp_path / 'p3')):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  losses = {p: [r['train_loss'] for r in rows[p]] for p in rows}
  np.testing.assert_allclose(losses[1], losses[3], rtol=1e-6)
  # The model learned: equal do-nothing runs would pass the above too.
  assert losses[1][-1] < losses[1][0]
