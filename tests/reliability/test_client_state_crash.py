"""SCAFFOLD killed (SIGKILL) at each step of a round resumes bit-exactly.

A round of SCAFFOLD with its control variates on disk (`client_state`)
writes, in order: the new c_i rows into free slots, their flush, the
journal records naming them, the checkpoint (a temporary directory, then
its rename). A real `experiments/train.py` process is killed at each of
these steps of round 3; the same command is then re-run and must end with
the model, the server state, the participation counts and every c_i equal
(`np.array_equal`) to those of an uninterrupted run. The kill points are
injected by a driver that wraps the table's and the checkpoint manager's
methods, then runs the binary unchanged.
"""

import asyncio
import signal
import sys

import numpy as np
import pytest
import tensorflow as tf

from tff_research.run import training
from tests import fl_testing
from tests.reliability import procs

FLAGS = dict(algorithm='scaffold', model='linear', num_clients=6,
             clients_per_round=3, client_learning_rate=0.05, eval_every=10,
             rounds_per_checkpoint=1, progress=False, batch_size=10,
             total_rounds=4)
CRASH_ROUND = 3

_DRIVER = r'''
import os, runpy, signal, sys
step, crash_round = sys.argv[1], int(sys.argv[2])
sys.argv = ['experiments/train.py'] + sys.argv[3:]
from tff_research.algorithms import client_state
from tff_research.run import safe_checkpoints

def die():
  os.kill(os.getpid(), signal.SIGKILL)

Table = client_state.ClientStateTable
now = {'round': 0}
write, write_slot, append = Table.write, Table._write_slot, Table._append_journal

def tracking_write(self, round_num, *args, **kwargs):
  now['round'] = round_num
  return write(self, round_num, *args, **kwargs)

def crashing_write_slot(self, slot, raw):
  write_slot(self, slot, raw)
  if step == 'slot_written' and now['round'] == crash_round:
    die()

def crashing_append(self, records):
  if now['round'] == crash_round:
    if step == 'rows_synced':
      die()
    if step == 'journal_torn':
      path = os.path.join(self._directory, client_state.JOURNAL)
      with open(path, 'ab') as f:
        f.write(records.tobytes()[:len(records.tobytes()) // 2])
        f.flush()
        os.fsync(f.fileno())
      die()
  append(self, records)

Table.write, Table._write_slot = tracking_write, crashing_write_slot
Table._append_journal = crashing_append
save = safe_checkpoints.SafeFileProgramStateManager.save
rename = safe_checkpoints._rename

async def crashing_save(self, program_state, version):
  if step == 'journal_synced' and version == crash_round:
    die()
  await save(self, program_state, version)
  if step == 'checkpointed' and version == crash_round:
    die()

def crashing_rename(src, dst):
  if step == 'checkpoint_renaming' and dst.endswith(f'round_{crash_round}'):
    die()
  rename(src, dst)

safe_checkpoints.SafeFileProgramStateManager.save = crashing_save
safe_checkpoints._rename = crashing_rename
runpy.run_path('experiments/train.py', run_name='__main__')
'''

STEPS = ('slot_written', 'rows_synced', 'journal_torn', 'journal_synced',
         'checkpoint_renaming', 'checkpointed')
FAST = ('journal_torn', 'checkpoint_renaming')


def _args(tmp_path, name):
  return [f'--{k}={v}' for k, v in FLAGS.items()] + [
      f'--logdir={tmp_path}', f'--experiment_name={name}']


def _final(run_dir):
  run = training.rebuild_run(str(run_dir))
  manager = training.state_manager(run.directory.checkpoint_dir)
  restored, version = asyncio.run(manager.load_latest(run.state_template()))
  state = fl_testing.with_table_rows(run.algorithm, restored['state'])
  leaves = [np.asarray(x) for x in tf.nest.flatten(state)]
  return leaves, version, state['client_controls']


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('straight')
  fl_testing.run_experiment(FLAGS, tmp_path, 'straight')
  return _final(tmp_path / 'straight')


@pytest.mark.parametrize('step', [
    pytest.param(s, marks=() if s in FAST else pytest.mark.slow)
    for s in STEPS])
def test_killed_at_each_step_of_a_round_resumes_bit_exactly(
    tff_worker, tmp_path, straight, step):
  crashed = procs.spawn([sys.executable, '-c', _DRIVER, step,
                         str(CRASH_ROUND)] + _args(tmp_path, 'run'))
  _, err = crashed.communicate(timeout=600)
  assert crashed.returncode == -signal.SIGKILL, err.decode()[-2000:]
  rerun = procs.spawn([sys.executable, 'experiments/train.py']
                      + _args(tmp_path, 'run'))
  out, err = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, err.decode()[-2000:]
  # It resumed after the last checkpoint the kill left: round 3's own
  # checkpoint only when the kill came after it.
  resumed_after = CRASH_ROUND if step == 'checkpointed' else CRASH_ROUND - 1
  assert f'after round {resumed_after} ' in (out + err).decode()
  want, want_version, _ = straight
  got, version, controls = _final(tmp_path / 'run')
  assert version == want_version == 4
  assert len(got) == len(want)
  for i, (x, y) in enumerate(zip(got, want)):
    assert x.dtype == y.dtype and x.shape == y.shape, i
    assert np.array_equal(x, y), f'leaf {i} differs'
  # The c_i did train: some row is not zero.
  assert any(np.any(c) for c in controls)
