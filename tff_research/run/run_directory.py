"""The files of one run, the rules for reusing them, and their readers.

One run owns one directory `LOGDIR/NAME/`:

    hparams.json      the run's ExperimentConfig (`config.to_hparams`)
    metrics.csv       one row per round (tff.program.CSVFileReleaseManager)
    events.out.*      TensorBoard (TensorBoardReleaseManager + summaries)
    checkpoints/      program state {'round': r, 'state': algorithm state}

This module is the one place that validates a run name, reads a run's
`hparams.json` and reads its `metrics.csv`, and decides whether a run
directory can be resumed with a config: by the flags recorded in
`hparams.json`, and by the values each checkpoint was trained with
(`checkpoints/round_N/config.json`, integrity-checked), so an edited
hparams.json cannot resume a run under values it was not trained with. It
also names a full disk (`DiskFullError`, `is_disk_full`).
"""

from __future__ import annotations

import csv
import errno
import json
import os
from collections.abc import Mapping
from typing import Any, Optional

from tff_research.run import config as config_lib
from tff_research.run import safe_checkpoints

CHECKPOINT_PREFIX = 'round_'
# How the OS words ENOSPC and EDQUOT; TensorFlow reports both as
# RESOURCE_EXHAUSTED with this text, which is all that tells them from OOM.
DISK_FULL_MESSAGES = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


class RunDirError(ValueError):
  """The run directory cannot be used for this run."""


class DiskFullError(ValueError):
  """A write failed because the device is full (one-line message)."""


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an exception it was raised from, is a full device:
  an OSError with errno ENOSPC or EDQUOT, or TensorFlow's error carrying
  that OS message (`ResourceExhaustedError: ... No space left on device`)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC,
                                                      errno.EDQUOT):
      return True
    if any(text in str(error) for text in DISK_FULL_MESSAGES):
      return True
    error = error.__cause__ or error.__context__
  return False


def check_name(name: Optional[str], flag: str = '--experiment_name') -> str:
  """`name` if it is a valid run name; RunDirError (one line) otherwise."""
  if not name or '/' in name or name in ('.', '..'):
    raise RunDirError(
        f'{flag}={name!r} is not valid: give a non-empty name without "/"')
  return name


def read_hparams(path: str) -> dict[str, Any]:
  """A run's hparams.json as a dict; RunDirError (one line) if unreadable."""
  try:
    with open(path) as f:
      values = json.load(f)
  except FileNotFoundError:
    raise RunDirError(f'{path} not found') from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RunDirError(f'{path} is not a readable hparams.json ({e})') from None
  if not isinstance(values, dict):
    raise RunDirError(f'{path} is not a JSON object of flag values')
  return values


def read_metrics(path: str) -> list[dict[str, Any]]:
  """A run's metrics.csv as rows sorted by round: numbers as float (round as
  int), empty cells as None. [] if the file does not exist."""
  if not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  out = []
  for row in rows:
    parsed = {}
    for key, value in row.items():
      if value in ('', None):
        parsed[key] = None
      else:
        try:
          parsed[key] = float(value)
        except ValueError:
          parsed[key] = value
    parsed['round'] = int(parsed['round'])
    out.append(parsed)
  return sorted(out, key=lambda r: r['round'])


def differences(old: Mapping[str, Any], new: Mapping[str, Any]
                ) -> list[tuple[str, Any, Any]]:
  """(flag, old value, new value) of each flag whose values differ, sorted;
  a flag missing on one side counts as None."""
  return [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


class RunDirectory:
  """The paths of a run and the rules for resuming it."""

  # Changing these between invocations does not change what a round computes.
  RESUMABLE_OVERRIDES = frozenset({
      'total_rounds', 'eval_every', 'rounds_per_checkpoint', 'progress',
      'max_eval_clients', 'data_dir', 'logdir',
      # A larger privacy budget lets a stopped DP run continue.
      'dp_target_epsilon',
  })

  def __init__(self, path: str):
    self.path = path
    self.hparams_path = os.path.join(path, 'hparams.json')
    self.metrics_path = os.path.join(path, 'metrics.csv')
    self.checkpoint_dir = os.path.join(path, 'checkpoints')

  def recorded_config(self) -> config_lib.ExperimentConfig:
    """The config recorded in hparams.json (RunDirError if unusable)."""
    values = read_hparams(self.hparams_path)
    try:
      return config_lib.from_hparams(values)
    except (ValueError, KeyError, TypeError) as e:
      raise RunDirError(
          f'{self.hparams_path} does not describe a valid run ({e})') from None

  @classmethod
  def identity(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The values of `hparams` that make a run this run: every flag but the
    ones a resume may change and the run's name.

    Normalized through the config when they describe one, so values recorded
    by older versions (other defaults, flags that did not exist) compare by
    what they mean.
    """
    try:
      values = config_lib.to_hparams(config_lib.from_hparams(hparams))
    except (ValueError, KeyError, TypeError):
      values = dict(hparams)
    return {k: v for k, v in values.items()
            if k not in cls.RESUMABLE_OVERRIDES and k != 'experiment_name'}

  def checkpoint_mismatch(self, hparams: Mapping[str, Any]
                          ) -> Optional[tuple[str, list[tuple[str, Any, Any]]]]:
    """(checkpoint path, differences (flag, trained value, value in
    `hparams`)) of the newest checkpoint whose recorded config differs from
    `hparams`, or None if every checkpoint that records one agrees.

    A checkpoint whose config.json fails its integrity check is skipped:
    loading it reports it, and resuming falls back past it.
    """
    expected = self.identity(hparams)
    versions = safe_checkpoints.list_versions(self.checkpoint_dir, CHECKPOINT_PREFIX)
    for version in sorted(versions, reverse=True):
      path = os.path.join(self.checkpoint_dir, f'{CHECKPOINT_PREFIX}{version}')
      try:
        trained = safe_checkpoints.recorded_config(path)
      except safe_checkpoints.CheckpointError:
        continue
      if trained is not None:
        found = differences(self.identity(trained), expected)
        if found:
          return path, found
    return None

  def check_checkpoints(self, hparams: Mapping[str, Any], advice: str
                        ) -> None:
    """RunDirError (one line, ending in `advice`) naming each flag whose
    value in `hparams` (this run's hparams.json) differs from the value a
    checkpoint here was trained with (`checkpoint_mismatch`)."""
    mismatch = self.checkpoint_mismatch(hparams)
    if mismatch is not None:
      path, found = mismatch
      flags = ', '.join(f'--{k}={old!r} (hparams.json: {new!r})'
                        for k, old, new in found)
      raise RunDirError(
          f'{self.hparams_path} does not match the checkpoint {path}, which'
          f' was trained with {flags}; {advice}')

  def check_compatible(self, config: config_lib.ExperimentConfig) -> None:
    """RunDirError if a run here used other hyperparameters than `config`:
    other values in hparams.json, or checkpoints trained with other values
    than hparams.json records (an edited hparams.json)."""
    if not os.path.exists(self.hparams_path):
      if os.path.isdir(self.path) and set(os.listdir(self.path)) - {'.lock'}:
        raise RunDirError(
            f'{self.path} exists and is not a tff-research run (no'
            ' hparams.json); choose another --experiment_name or --logdir')
      return
    recorded = config_lib.to_hparams(self.recorded_config())
    self.check_checkpoints(
        recorded, 'restore those values in hparams.json to resume, or use a'
        ' new --experiment_name')
    found = differences(self.identity(recorded),
                        self.identity(config_lib.to_hparams(config)))
    if found:
      key, old, value = found[0]
      raise RunDirError(
          f'--{key}={value!r} differs from {old!r} recorded in'
          f' {self.hparams_path}; resume with the same value or use a new'
          ' --experiment_name')

  def write_hparams(self, config: config_lib.ExperimentConfig) -> None:
    """Writes hparams.json atomically, unless it already holds `config`.

    Raises:
      DiskFullError: the device is full; hparams.json is as it was.
    """
    text = json.dumps(config_lib.to_hparams(config), indent=2, sort_keys=True)
    try:
      with open(self.hparams_path) as f:
        if f.read() == text:
          return
    except OSError:
      pass
    os.makedirs(self.path, exist_ok=True)
    tmp = self.hparams_path + '.tmp'
    try:
      with open(tmp, 'w') as f:
        f.write(text)
      os.replace(tmp, self.hparams_path)
    except OSError as e:
      if os.path.exists(tmp):
        os.remove(tmp)
      if is_disk_full(e):
        raise DiskFullError(
            f'no space left on device writing {self.hparams_path}; free space'
            ' there and re-run the same command') from None
      raise

  def metrics(self) -> list[dict[str, Any]]:
    return read_metrics(self.metrics_path)

  def last_logged(self, round_num: int, column: str) -> Optional[float]:
    """The value of `column` at the latest round <= `round_num` that has one
    (running totals and references continue across a resume)."""
    value = None
    if round_num == 0:
      return None
    for row in self.metrics():
      if row['round'] <= round_num and row.get(column) is not None:
        value = row[column]
    return value
