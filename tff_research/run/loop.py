"""The round loop. It receives its collaborators and only loops.

Modelled on `tff.learning.programs.train_model`: the algorithm, the client
sampler, the clients' training data, the program state manager, the metrics
release, the held-out evaluation and the round hooks are built elsewhere
(`run/training.py`). Each round: sample, train, evaluate when due,
release, checkpoint when due. Resuming restores the latest checkpoint; every
random choice is a pure function of (seed, round), so a resumed run is the
run that would have happened without the interruption.

What the user sees when a run ends early, in one line each:

* SIGTERM: `stopped at round r; re-running the same command resumes after
  round c` (`runtime.on_termination`), c the newest checkpoint on disk.
* A full device, whichever write hits it (metrics, TensorBoard, a
  checkpoint): `DiskFullError` naming the round, what was being written and
  the round a re-run resumes after. The release and the state manager
  leave no partial file behind, the summary writer is closed so that
  nothing more is written at exit, and TensorFlow's C++ echo of the error
  is dropped (`_quiet`).
* The summaries of every round up to a checkpoint are flushed before that
  checkpoint is saved, so a resumed run's TensorBoard history has no gap.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Optional

import tensorflow_federated as tff
import tqdm

from tff_research.execution import allocator
from tff_research.execution import runtime
from tff_research.execution import stderr_filter
from tff_research.run import hooks as hooks_lib
from tff_research.run import run_directory


def run_rounds(*, algorithm, sampler, training_data, state_manager, release,
               evaluation, hooks, total_rounds: int, rounds_per_checkpoint: int,
               name: str = '', progress: bool = True,
               log=print) -> list[dict[str, Any]]:
  """Trains to `total_rounds`; returns the metric rows of the rounds run.

  Raises:
    ValueError: the run stopped (divergence: `hooks.StopRun`'s line).
    run_directory.DiskFullError (a ValueError): a write found no space.
  """
  initial = algorithm.initialize()
  restored, version = asyncio.run(
      state_manager.load_latest({'round': 0, 'state': initial}))
  state, start = (initial, 0) if restored is None else (
      restored['state'], int(restored['round']))
  if restored is not None:
    log(f'Resuming {name} after round {start} (checkpoint {version}).')
  if start >= total_rounds:
    log(f'{name} already has {start} rounds (--total_rounds={total_rounds});'
        ' nothing to do.')
    return []
  final, stop_reason = algorithm.plan_rounds(state, start, total_rounds,
                                             sampler)
  if final <= start:
    log(f'{name}: nothing to do; {stop_reason}')
    return []
  position = _Position(state_manager, start)
  runtime.on_termination(position.stopped_line)
  try:
    rows = _run(position, state, algorithm, sampler, training_data,
                state_manager, release, evaluation, hooks, final,
                rounds_per_checkpoint, name, progress)
  finally:
    runtime.on_termination(None)
  if stop_reason:
    log(stop_reason)
  return rows


class _Position:
  """The round in progress and the round a re-run resumes after."""

  def __init__(self, state_manager, start: int):
    self._state_manager = state_manager
    self.round = start + 1
    self.saved = start
    self.writing = 'the run\'s files'

  def resumes_after(self) -> int:
    # The directory itself: a save that completed an instant ago counts.
    versions = getattr(self._state_manager, 'saved_versions', None)
    return max(versions(), default=0) if versions else self.saved

  def stopped_line(self) -> str:
    after = self.resumes_after()
    resumes = (f'resumes after round {after}' if after else
               'starts it over (no round was checkpointed)')
    return f'stopped at round {self.round}; re-running the same command {resumes}'

  def disk_full(self, name: str) -> run_directory.DiskFullError:
    after = self.resumes_after()
    return run_directory.DiskFullError(
        f'no space left on device writing {self.writing} in {name}; the run'
        f' is intact up to round {after}: free space there and re-run the'
        f' same command to resume after round {after}')


def _run(position, state, algorithm, sampler, training_data, state_manager,
         release, evaluation, hooks, final, rounds_per_checkpoint, name,
         show_bar):
  """The rounds after `position.saved` up to `final`; their metric rows."""
  start = position.saved
  rows = []
  try:
    with _quiet():
      if hasattr(release, 'start'):
        release.start(start)
      for hook in hooks:
        if hasattr(hook, 'start'):
          hook.start(start, state)
    bar = tqdm.tqdm(range(start + 1, final + 1), desc=os.path.basename(name),
                    unit='round', disable=not show_bar, initial=start,
                    total=final)
    # Start of the current round's wall-clock span: the previous round's
    # release, so its checkpoint and flush count against this one.
    mark = time.monotonic()
    for round_num in bar:
      position.round = round_num
      position.writing = f'the outputs of round {round_num}'
      try:
        with _quiet():
          state, row = _round(round_num, state, algorithm, sampler,
                              training_data, evaluation, hooks, release,
                              final, mark)
        mark += row['wall_seconds']
      except hooks_lib.StopRun as stop:
        if stop.round_num is not None:
          _keep_as_latest(state_manager, stop.round_num, stop.state)
        release.flush()
        raise ValueError(str(stop)) from None
      if round_num % rounds_per_checkpoint == 0 or round_num == final:
        with _quiet():
          release.flush()
          position.writing = f'the checkpoint of round {round_num}'
          asyncio.run(state_manager.save(
              {'round': round_num, 'state': state}, round_num))
        position.saved = round_num
      # The round's tensors are freed; give their pages back (flat RSS).
      allocator.release_free_memory()
      bar.set_postfix(_postfix(row))
      rows.append(dict(round=round_num, **row))
    with _quiet():
      release.flush()
  except Exception as e:  # pylint: disable=broad-except
    if not run_directory.is_disk_full(e):
      raise
    if hasattr(release, 'close'):
      release.close()
    raise position.disk_full(name) from None
  return rows


def _quiet():
  """Drops TensorFlow's C++ log line of an op failing on a full device (the
  error it raises becomes this loop's one line) and TensorFlow's known noise
  (`stderr_filter.NOISE`). Not around the progress bar, whose updates end without
  a newline."""
  return stderr_filter.stderr_without(
      lambda line: stderr_filter.is_noise(line) or (
          'OP_REQUIRES failed' in line and any(
              m in line for m in run_directory.DISK_FULL_MESSAGES)))


def _keep_as_latest(state_manager, round_num: int, state) -> None:
  """Makes round `round_num` (0: none) the newest checkpoint.

  The guard may notice a non-finite model one round late (round r's model
  shows as round r + 1's non-finite start loss), when round r can already
  be checkpointed: newer versions are removed so a re-run never resumes
  from a non-finite model, and round `round_num` is saved unless it is on
  disk already (saving it again would raise ProgramStateExistsError).
  """
  asyncio.run(state_manager.remove_versions_after(round_num))
  if round_num:
    try:
      asyncio.run(state_manager.save({'round': round_num, 'state': state},
                                     round_num))
    except tff.program.ProgramStateExistsError:
      pass  # Checkpointed (and readable) already: it is the newest now.


def _round(round_num, state, algorithm, sampler, training_data, evaluation,
           hooks, release, final, mark):
  """One round: (new state, its metrics row).

  `train/round_seconds` times sampling, training and the hooks;
  `train/wall_seconds` everything since the previous round's release (its
  checkpoint included, and this round's evaluation), so the sum of
  `wall_seconds` is the loop's whole wall time.
  """
  began = time.monotonic()
  selected = sampler.sample(round_num)
  record = hooks_lib.RoundRecord(round_num, selected,
                                 sampler.reporting(selected, round_num), state)
  metrics = hooks_lib.call(hooks, 'before_round', record)
  if record.reporting or algorithm.runs_empty_rounds:
    state, trained = algorithm.next(
        state, round_num, record.reporting,
        training_data.datasets(round_num, record.reporting))
    if not record.reporting:  # Noise only: there is no training metric.
      trained = {k: v for k, v in trained.items()
                 if k not in ('train', 'clients')}
    metrics.update(trained)
  record.state, record.metrics = state, metrics
  metrics.setdefault('train', {})
  metrics['train'] = {**metrics['train'], 'clients': len(record.reporting)}
  _merge(metrics, hooks_lib.call(hooks, 'after_round', record))
  metrics['train']['round_seconds'] = time.monotonic() - began
  if evaluation.due(round_num, final):
    group, result = evaluation(state)
    _merge(metrics, {'eval': group})
    _merge(metrics, hooks_lib.call(hooks, 'on_evaluation', record, result))
    _merge(metrics, algorithm.report(state, round_num))
  metrics['train']['wall_seconds'] = time.monotonic() - mark
  return state, release.release(round_num, metrics)


def _merge(metrics: dict, groups: dict) -> None:
  for group, values in groups.items():
    metrics[group] = {**metrics.get(group, {}), **values}


def _postfix(row) -> dict[str, str]:
  postfix = {'loss': f'{row.get("train_loss", float("nan")):.3f}'}
  if 'eval_accuracy' in row:
    postfix['eval_acc'] = f'{row["eval_accuracy"]:.3f}'
  return postfix
