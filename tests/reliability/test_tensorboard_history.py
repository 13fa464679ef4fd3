"""A resumed run is one TensorBoard curve; a no-op re-run writes nothing.

TensorBoard reads every event file of a run directory, in name order, into
one series per tag. Round 3 of this run is logged, then lost (its
checkpoint removed, as a kill before its save would), so the re-run trains
round 3 again: TensorBoard must show it once, with the re-run's value.
"""

import os

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from tests import fl_testing

FLAGS = dict(model='linear', num_clients=4, clients_per_round=2,
             client_learning_rate=0.05, eval_every=10, rounds_per_checkpoint=2,
             progress=False, batch_size=10)


def _event_files(run_dir):
  return {n: os.path.getsize(os.path.join(run_dir, n))
          for n in os.listdir(run_dir) if n.startswith('events.out.tfevents.')}


def _events(run_dir, tag):
  """The events of `tag` as TensorBoard loads them from `run_dir`."""
  # 0: keep every event (the default keeps a sample of 10 per tag).
  acc = event_accumulator.EventAccumulator(
      run_dir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc.Tensors(tag)


def _series(run_dir, tag):
  """(step, value) of the scalar `tag`."""
  return [(e.step, float(tf.make_ndarray(e.tensor_proto)))
          for e in _events(run_dir, tag)]


def test_resumed_run_is_one_curve_and_noop_rerun_adds_no_file(
    tff_worker, tmp_path):
  run_dir = str(tmp_path / 'run')
  fl_testing.run_experiment(FLAGS, tmp_path, 'run', total_rounds=3)
  assert len(_event_files(run_dir)) == 1  # One writer per invocation.
  first = dict(_series(run_dir, 'train/loss'))
  assert sorted(first) == [1, 2, 3]
  os.rename(os.path.join(run_dir, 'checkpoints', 'round_3'),
            os.path.join(tmp_path, 'lost_round_3'))

  rows = fl_testing.run_experiment(FLAGS, tmp_path, 'run', total_rounds=4)
  assert [r['round'] for r in rows] == [3, 4]
  series = _series(run_dir, 'train/loss')
  assert [step for step, _ in series] == [1, 2, 3, 4]
  logged = {r['round']: r['train_loss'] for r in fl_testing.read_csv(
      os.path.join(run_dir, 'metrics.csv'))}
  for step, value in series:
    np.testing.assert_allclose(value, logged[step], rtol=1e-6)
  assert [e.step for e in _events(run_dir, 'data/example_digits')] == [0]
  files = _event_files(run_dir)
  assert len(files) == 2

  fl_testing.run_experiment(FLAGS, tmp_path, 'run', total_rounds=4)
  assert _event_files(run_dir) == files


def test_truncate_events_drops_later_steps_torn_records_and_empty_files(
    tmp_path):
  from tff_research.run import release  # pylint: disable=g-import-not-at-top
  logdir = str(tmp_path)
  writer = tf.summary.create_file_writer(logdir, filename_suffix='.a')
  with writer.as_default():
    for step in range(6):
      tf.summary.scalar('x', float(step), step=step)
  writer.close()
  (full,) = _event_files(logdir)
  with open(os.path.join(logdir, full), 'ab') as f:
    f.write(b'\x30\x00\x00')  # A record torn by a crash mid-write.
  tf.summary.create_file_writer(logdir, filename_suffix='.b').close()
  assert len(_event_files(logdir)) == 2  # The second holds only its header.

  changed = release.truncate_events(logdir, 3)
  assert len(changed) == 2
  assert list(_event_files(logdir)) == [full]
  assert _series(logdir, 'x') == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
  assert release.truncate_events(logdir, 3) == []  # Already cut back.
  assert sorted(os.listdir(logdir)) == [full]  # No temporary file left.
  release.truncate_events(logdir, 0)  # No checkpoint: the run starts over.
  assert os.listdir(logdir) == []
