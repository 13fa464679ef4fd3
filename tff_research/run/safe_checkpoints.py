"""Checkpoints that survive crashes and damaged files.

`SafeFileProgramStateManager` is a `tff.program.FileProgramStateManager` with
the same on-disk layout (`ROOT/round_N/`, a SavedModel per version, so runs
checkpointed by the plain manager resume unchanged) and these guarantees:

* **Atomic saves.** A version is written under a temporary name
  (`ROOT/.tmp-round_N-<hex>`), given a manifest of its files' sizes and
  SHA-256 (`round_N/integrity.json`), its arrays read back and compared with
  what was written, flushed to disk (fsync), and only then renamed to
  `round_N` (`os.rename`, atomic on POSIX). Old versions are pruned (as
  TFF's `keep_total` / `keep_first` / `keep_every_k` say) by renaming them to
  a temporary name first. A crash at any instant therefore leaves each `round_N` either
  complete or absent. Temporary entries of a crashed save are never read and
  are deleted by the next `save`. The read side (`load`, `load_latest`,
  `get_versions`) never writes, so an evaluation can read a directory a run
  is writing.
* **Falling back on damage.** `load_latest` tries versions newest first. A
  version that fails to load for any reason (truncated, zeroed or garbled
  file, missing file, a different structure, dtype or shape) is reported with
  one line, e.g. ``warning: checkpoint ckpt/round_10 is unreadable
  (variables/variables.index is truncated: 0 of 311 bytes); using round_5``,
  on stderr (or to the `warn` callback), and the next older one is tried. If
  none loads, `NoReadableCheckpointError` (a `ValueError`) names the directory
  and each version's problem, on one line.
* **Resuming past a bad version.** A resumed run re-saves the versions after
  the one it fell back to; `save` moves an unreadable version of the same
  number aside (`ROOT/.unreadable-round_N-<hex>`, kept for inspection) instead
  of raising `ProgramStateExistsError`, which it still raises for a readable
  one.
* **Dropping versions past a point.** `remove_versions_after(N)` removes
  every version newer than N (each atomically, as pruning does). The loop
  calls it when the divergence guard keeps round N as the last finite model:
  a guard that notices a non-finite model one round late (the start-of-round
  loss of round r + 1 reveals round r) may find round r already
  checkpointed, and a re-run must not resume from it.
* **The run's config with each version.** After `bind_config(hparams)`, every
  version saved holds `config.json` (`{"format": 1, "hparams": {...}}`),
  covered by the manifest's SHA-256 like every other file, so the values a
  version was trained with can be read back (`recorded_config`) and compared
  with the run that resumes or evaluates it. Versions saved without it
  (older runs) record nothing to compare.
* **Another model's checkpoints.** When every version fails to load because
  its arrays do not fit the state this run builds (another model or
  algorithm, not damage), `load_latest` raises `CheckpointMismatchError`
  naming the arrays found and the arrays expected, instead of advising to
  start over: the versions are intact.
* **A full disk.** A save that fails midway (e.g. no space left on device)
  removes its temporary entries before the error propagates, so the
  directory holds only the complete versions it held before.

Only local file systems are supported (the renames and fsyncs use `os`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping
import hashlib
import json
import os
import shutil
import sys
from typing import Any, Optional, Union
import uuid

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
# The helpers `tff.program.FileProgramStateManager` saves and loads with,
# which TFF does not export: reading and writing through them keeps the
# on-disk format exactly TFF's, so runs checkpointed by the plain manager
# resume here unchanged.
from tensorflow_federated.python.common_libs import serializable
from tensorflow_federated.python.program import file_utils
from tensorflow_federated.python.program import structure_utils

DEFAULT_PREFIX = 'round_'
MANIFEST = 'integrity.json'
CONFIG = 'config.json'
_FINGERPRINT = 'fingerprint.pb'
TEMP_PREFIX = '.tmp-'
ASIDE_PREFIX = '.unreadable-'
_MAX_REASON = 240

ProgramStateNotFoundError = tff.program.ProgramStateNotFoundError
ProgramStateExistsError = tff.program.ProgramStateExistsError


class CheckpointError(ValueError):
  """A checkpoint cannot be used (one-line message)."""


class UnreadableCheckpointError(CheckpointError):
  """One version exists but does not load; `reason` says why."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'checkpoint {path} is unreadable ({reason})')
    self.path = path
    self.reason = reason


class MismatchedCheckpointError(UnreadableCheckpointError):
  """One version is intact but holds another state structure."""


class NoReadableCheckpointError(CheckpointError):
  """Versions exist but none of them loads."""


class CheckpointMismatchError(NoReadableCheckpointError):
  """Versions exist and are intact, but hold another state structure."""


class _Damage(ValueError):
  """A problem found by this module's own checks (one-line message)."""


class _Mismatch(_Damage):
  """The version is intact but its arrays do not fit the expected state."""


def describe_error(e: BaseException) -> str:
  """`Type: first line of the message`, at most `_MAX_REASON` characters."""
  lines = str(e).strip().splitlines()
  text = f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__
  if len(text) > _MAX_REASON:
    text = text[:_MAX_REASON - 3] + '...'
  return text


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _files(root: str) -> list[str]:
  """Paths of the files under `root`, relative, sorted."""
  found = []
  for directory, _, names in os.walk(root):
    for name in names:
      found.append(os.path.relpath(os.path.join(directory, name), root))
  return sorted(found)


def _write_manifest(path: str) -> None:
  entries = {
      rel: {'bytes': os.path.getsize(os.path.join(path, rel)),
            'sha256': _sha256(os.path.join(path, rel))}
      for rel in _files(path) if rel != MANIFEST
  }
  with open(os.path.join(path, MANIFEST), 'w', encoding='utf-8') as f:
    json.dump({'format': 1, 'files': entries}, f, indent=1, sort_keys=True)


def _check_manifest(path: str) -> None:
  """Raises `_Damage` (one line) if a file differs from the manifest.

  A version without a manifest (written by TFF's own manager) is accepted:
  only loading it can tell.
  """
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.exists(manifest_path):
    return
  try:
    with open(manifest_path, encoding='utf-8') as f:
      entries = json.load(f)['files']
    entries = {str(rel): (int(e['bytes']), str(e['sha256']))
               for rel, e in entries.items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise _Damage(f'{MANIFEST} is damaged ({describe_error(e)})') from None
  for rel, (size, digest) in sorted(entries.items()):
    file_path = os.path.join(path, rel)
    if not os.path.isfile(file_path):
      raise _Damage(f'{rel} is missing')
    actual = os.path.getsize(file_path)
    if actual != size:
      what = 'truncated' if actual < size else 'longer than written'
      raise _Damage(f'{rel} is {what}: {actual} of {size} bytes')
    if _sha256(file_path) != digest:
      raise _Damage(f'{rel} is corrupted: its SHA-256 differs from {MANIFEST}')


def list_versions(root_dir: str, prefix: str = DEFAULT_PREFIX) -> list[int]:
  """Sorted versions N of the directories `root_dir/{prefix}N`; [] if none.

  Read-only. Temporary entries of an interrupted save and versions moved
  aside are not versions.
  """
  try:
    entries = list(os.scandir(root_dir))
  except (FileNotFoundError, NotADirectoryError):
    return []
  return sorted(int(e.name[len(prefix):]) for e in entries
                if e.name.startswith(prefix) and e.name[len(prefix):].isdigit()
                and e.is_dir())


def recorded_config(path: str) -> Optional[dict[str, Any]]:
  """The hparams recorded with the version at `path` (`bind_config`).

  None if it records none. Only `config.json` is checked against the
  manifest (its size and SHA-256), so this is cheap.

  Raises:
    UnreadableCheckpointError: `config.json` differs from the manifest, or
      the manifest or `config.json` is not valid JSON.
  """
  config_path = os.path.join(path, CONFIG)
  if not os.path.exists(config_path):
    return None
  try:
    with open(os.path.join(path, MANIFEST), encoding='utf-8') as f:
      entry = json.load(f)['files'].get(CONFIG)
    if entry is None:
      raise _Damage(f'{CONFIG} is not in {MANIFEST}')
    if (os.path.getsize(config_path) != int(entry['bytes'])
        or _sha256(config_path) != entry['sha256']):
      raise _Damage(f'{CONFIG} differs from its SHA-256 in {MANIFEST}')
    with open(config_path, encoding='utf-8') as f:
      return dict(json.load(f)['hparams'])
  except Exception as e:  # pylint: disable=broad-except
    reason = str(e) if isinstance(e, _Damage) else describe_error(e)
    raise UnreadableCheckpointError(path, reason) from None


def _digest(value: Any) -> tuple[str, tuple[int, ...], str]:
  """(dtype, shape, SHA-256 of the bytes) of one array value."""
  array = np.asarray(value)
  if array.dtype.kind in 'OSU':
    digest = hashlib.sha256()
    for item in array.ravel().tolist():
      item = item if isinstance(item, bytes) else str(item).encode()
      digest.update(len(item).to_bytes(8, 'little') + item)
    return 'string', array.shape, digest.hexdigest()
  array = np.ascontiguousarray(array)
  return array.dtype.str, array.shape, hashlib.sha256(array.data).hexdigest()


def _check_files(path: str) -> None:
  """Raises `_Damage` if a file differs from the manifest or the
  fingerprint does not parse."""
  _check_manifest(path)
  if os.path.exists(os.path.join(path, _FINGERPRINT)):
    # TF would log a damaged fingerprint as an ERROR traceback and go on.
    try:
      tf.saved_model.experimental.read_fingerprint(path)
    except Exception as e:  # pylint: disable=broad-except
      raise _Damage(
          f'{_FINGERPRINT} is damaged ({describe_error(e)})') from None


def _check_written(path: str, written: Any) -> None:
  """What `_read` checks of a version, without loading it as a module."""
  _check_files(path)
  _check_variables(path, written)


def _check_variables(path: str, written: Any) -> None:
  """Raises `_Damage` unless `path` holds exactly the arrays of `written`.

  Reads the SavedModel's variables with a `tf.train.CheckpointReader`, not
  `tf.saved_model.load`: loading a SavedModel creates new Python classes and
  functions that are never freed, so a run that loaded each version it saved
  would grow by about 0.5 MB per round. The leaves of `written` that TFF
  stores as variables (all but those TF cannot convert, e.g. None) are
  compared as a multiset of (dtype, shape, SHA-256), so a truncated, zeroed
  or missing value is caught; where each value sits in the structure is
  checked when a version is loaded (`_check_leaves`).
  """
  want = collections.Counter()
  for leaf in structure_utils.flatten(written):
    try:
      want[_digest(tf.convert_to_tensor(leaf).numpy())] += 1
    except ValueError:
      continue
  reader = tf.train.load_checkpoint(
      os.path.join(path, 'variables', 'variables'))
  got = collections.Counter(
      _digest(reader.get_tensor(key))
      for key in reader.get_variable_to_dtype_map()
      if key.endswith('.ATTRIBUTES/VARIABLE_VALUE'))
  if got != want:
    missing = sum((want - got).values())
    raise _Damage(f'{missing} of {sum(want.values())} arrays differ from'
                  ' what was written')


def _fsync_tree(root: str) -> None:
  for directory, _, names in os.walk(root):
    for name in names:
      fd = os.open(os.path.join(directory, name), os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _rename(src: str, dst: str) -> None:
  """`os.rename`; a module function so tests can simulate a crash here."""
  os.rename(src, dst)


def _check_leaves(structure: Any, state: Any) -> None:
  """Raises `_Damage` if an array leaf's dtype or shape differs.

  Only leaves of `structure` that are numpy values or tensors are checked
  (Python scalars and serialized objects carry no dtype to compare).
  """
  named = structure_utils.flatten_with_name(structure)
  loaded = structure_utils.flatten(state)
  for (name, want), got in zip(named, loaded):
    if isinstance(want, (tf.Tensor, tf.Variable)):
      want = want.numpy()
    if not isinstance(want, (np.ndarray, np.generic)):
      continue
    if want.dtype.kind in 'OSUV':
      continue
    got = np.asarray(got)
    if got.dtype != want.dtype or got.shape != want.shape:
      raise _Damage(
          f'{name or "value"} is {got.dtype}{list(got.shape)}, expected'
          f' {want.dtype}{list(want.shape)}')


def _array_specs(structure: Any) -> list[str]:
  """`dtype[shape]` of each non-scalar array leaf of `structure`, in order."""
  specs = []
  for leaf in structure_utils.flatten(structure):
    if isinstance(leaf, (tf.Tensor, tf.Variable)):
      leaf = leaf.numpy()
    if isinstance(leaf, (np.ndarray, np.generic)) and np.ndim(leaf):
      specs.append(f'{leaf.dtype}[{",".join(map(str, np.shape(leaf)))}]')
  return specs


def describe_arrays(structure: Any, shown: int = 4) -> str:
  """`N arrays (float32[784,10], float32[10], ... and K more)`, the first
  `shown` of the non-scalar arrays of `structure`."""
  specs = _array_specs(structure)
  more = f' and {len(specs) - shown} more' if len(specs) > shown else ''
  return f'{len(specs)} arrays ({", ".join(specs[:shown])}{more})'


def _print_warning(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


class SafeFileProgramStateManager(tff.program.FileProgramStateManager):
  """`FileProgramStateManager` with atomic saves and fallback on damage.

  The defaults are this project's layout (`checkpoints/round_N`, the 3 newest
  kept); see the module docstring for the guarantees.
  """

  def __init__(
      self,
      root_dir: Union[str, os.PathLike[str]],
      prefix: str = DEFAULT_PREFIX,
      keep_total: int = 3,
      keep_first: bool = False,
      keep_every_k: int = 1,
      *,
      warn: Optional[Callable[[str], None]] = None,
  ):
    """Returns a manager of the versions under `root_dir` (created if missing).

    Args:
      root_dir: the directory of the versions.
      prefix: version `N` lives in `root_dir/{prefix}N`.
      keep_total: as in `tff.program.FileProgramStateManager`.
      keep_first: as in `tff.program.FileProgramStateManager`.
      keep_every_k: as in `tff.program.FileProgramStateManager`.
      warn: receives each one-line warning (default: printed on stderr).
    """
    super().__init__(
        os.fspath(root_dir), prefix=prefix, keep_total=keep_total,
        keep_first=keep_first, keep_every_k=keep_every_k)
    self._warn_fn = warn or _print_warning
    self._config: Optional[dict[str, Any]] = None

  def bind_config(
      self, hparams: Mapping[str, Any]) -> 'SafeFileProgramStateManager':
    """Records `hparams` (JSON values) as `config.json` in every version
    saved from now on; returns this manager."""
    self._config = json.loads(json.dumps(dict(hparams)))
    return self

  @property
  def root_dir(self) -> str:
    return self._root_dir

  def _warn(self, message: str) -> None:
    logging.info('%s', message)
    self._warn_fn(message)

  # --- reading --------------------------------------------------------------

  def saved_versions(self) -> list[int]:
    """Sorted versions saved under `root_dir` (directories only).

    Synchronous, so a signal handler can ask it inside a running event loop.
    """
    return list_versions(self._root_dir, self._prefix)

  async def get_versions(self) -> Optional[list[int]]:
    """`saved_versions()`, or None if there are none (TFF's contract)."""
    return self.saved_versions() or None

  async def _read(self, path: str, structure: Any) -> Any:
    """The program state at `path`, as TFF's manager loads it, checked."""
    _check_files(path)
    program_state = await file_utils.read_saved_model(path)

    def _normalize(value):
      return value.numpy() if isinstance(value, tf.Tensor) else value

    normalized = structure_utils.map_structure(_normalize, program_state)

    def _deserialize_as(structure_value, value):
      if isinstance(structure_value, serializable.Serializable):
        value = type(structure_value).from_bytes(value)
      return value

    try:
      state = structure_utils.map_structure(
          _deserialize_as, structure, normalized)
      _check_leaves(structure, state)
    except (ValueError, TypeError) as e:
      reason = str(e) if isinstance(e, _Damage) else describe_error(e)
      raise _Mismatch(
          f'{reason}; it holds {describe_arrays(normalized)}; the state'
          f' expected has {describe_arrays(structure)}') from None
    return state

  async def load(self, version: int, structure: Any) -> Any:
    """The program state of `version`, shaped like `structure`.

    Raises:
      ProgramStateNotFoundError: there is no such version.
      UnreadableCheckpointError (a ValueError): it exists but does not load,
        or its structure, dtypes or shapes differ from `structure`.
    """
    path = self._get_path_for_version(version)
    if not os.path.isdir(path):
      raise ProgramStateNotFoundError(version)
    try:
      state = await self._read(path, structure)
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e) if isinstance(e, _Damage) else describe_error(e)
      kind = (MismatchedCheckpointError if isinstance(e, _Mismatch)
              else UnreadableCheckpointError)
      raise kind(path, reason) from None
    logging.info('Program state loaded: %s', path)
    return state

  async def load_latest(self, structure: Any) -> tuple[Any, int]:
    """The newest version that loads, and its number; `(None, 0)` if none.

    Versions that do not load are reported (one warning line each) and
    skipped.

    Raises:
      CheckpointMismatchError (a NoReadableCheckpointError): every version is
        intact but holds another structure (another model or algorithm).
      NoReadableCheckpointError (a ValueError): versions exist, none loads.
    """
    versions = self.saved_versions()
    if not versions:
      return None, 0
    failures: list[tuple[int, str, bool]] = []
    for version in sorted(versions, reverse=True):
      try:
        state = await self.load(version, structure)
      except ProgramStateNotFoundError:
        failures.append((version, 'removed while reading', False))
        continue
      except UnreadableCheckpointError as e:
        failures.append(
            (version, e.reason, isinstance(e, MismatchedCheckpointError)))
        continue
      for bad, reason, _ in failures:
        self._warn(
            f'warning: checkpoint {self._get_path_for_version(bad)} is'
            f' unreadable ({reason}); using {self._prefix}{version}')
      return state, version
    if all(mismatch for _, _, mismatch in failures):
      newest, reason, _ = failures[0]
      raise CheckpointMismatchError(
          f'the checkpoints in {self._root_dir} hold another model or'
          f' algorithm than this run builds ({self._prefix}{newest}:'
          f' {reason}); they are intact: run with the flags (and'
          ' hparams.json) of the run that wrote them')
    details = '; '.join(f'{self._prefix}{v}: {r}' for v, r, _ in failures)
    raise NoReadableCheckpointError(
        f'no readable checkpoint in {self._root_dir} ({details}); move the'
        ' directory away to start the run over')

  # --- writing --------------------------------------------------------------

  def _temp_path(self, kind: str, version: int) -> str:
    return os.path.join(
        self._root_dir, f'{kind}{self._prefix}{version}-{uuid.uuid4().hex}')

  def clean_temporary(self) -> list[str]:
    """Deletes temporary entries left by interrupted saves; returns them."""
    removed = []
    try:
      entries = list(os.scandir(self._root_dir))
    except FileNotFoundError:
      return removed
    for entry in entries:
      if entry.name.startswith(TEMP_PREFIX):
        if entry.is_dir(follow_symlinks=False):
          shutil.rmtree(entry.path, ignore_errors=True)
        else:
          try:
            os.remove(entry.path)
          except FileNotFoundError:
            pass
        removed.append(entry.path)
        logging.info('Removed temporary checkpoint entry %s', entry.path)
    return removed

  async def save(self, program_state: Any, version: int) -> None:
    """Saves `program_state` as `version`, atomically (see module docstring).

    Raises:
      ProgramStateExistsError: a readable `version` already exists.
    """
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool):
      raise TypeError(f'version must be an int, got {version!r}')
    version = int(version)
    path = self._get_path_for_version(version)
    os.makedirs(self._root_dir, exist_ok=True)
    self.clean_temporary()
    if os.path.lexists(path):
      try:
        await self.load(version, program_state)
      except (UnreadableCheckpointError, ProgramStateNotFoundError) as e:
        aside = self._temp_path(ASIDE_PREFIX, version)
        _rename(path, aside)
        reason = getattr(e, 'reason', describe_error(e))
        self._warn(
            f'warning: checkpoint {path} is unreadable ({reason}); moved it to'
            f' {aside} and saving it again')
      else:
        raise ProgramStateExistsError(version=version, path=self._root_dir)

    materialized = await tff.program.materialize_value(program_state)

    def _serialize(value):
      if isinstance(value, serializable.Serializable):
        value = value.to_bytes()
      return value

    serialized = structure_utils.map_structure(_serialize, materialized)
    temp = self._temp_path(TEMP_PREFIX, version)
    try:
      await file_utils.write_saved_model(serialized, temp)
      if self._config is not None:
        with open(os.path.join(temp, CONFIG), 'w', encoding='utf-8') as f:
          json.dump({'format': 1, 'hparams': self._config}, f, indent=1,
                    sort_keys=True)
      _write_manifest(temp)
      try:
        await asyncio.get_running_loop().run_in_executor(
            None, _check_written, temp, serialized)
      except Exception as e:  # pylint: disable=broad-except
        reason = str(e) if isinstance(e, _Damage) else describe_error(e)
        raise CheckpointError(
            f'checkpoint {path} did not read back after writing'
            f' ({reason}); nothing was replaced') from None
      _fsync_tree(temp)
      _rename(temp, path)
      _fsync_dir(self._root_dir)
    except BaseException:
      # TFF writes under `temp` + a suffix first; both are temporary entries.
      shutil.rmtree(temp, ignore_errors=True)
      self.clean_temporary()
      raise
    logging.info('Program state saved: %s', path)
    await self._remove_old_program_state()

  async def remove_versions_after(self, version: int) -> list[int]:
    """Removes every version newer than `version`; returns them, sorted.

    Each is renamed to a temporary name first, so it vanishes atomically and
    a crash midway leaves only complete versions (the newest then being an
    older one, which a resume would also pick). Versions moved aside by
    `save` and temporary entries are not versions and are left alone.
    """
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool):
      raise TypeError(f'version must be an int, got {version!r}')
    newer = [v for v in (await self.get_versions() or []) if v > version]
    # Newest first: if interrupted, what remains is still a prefix of rounds.
    for v in sorted(newer, reverse=True):
      await self._remove(v)
    return newer

  async def _remove(self, version: int) -> None:
    """Removes `version`: renamed away first, so it vanishes atomically."""
    path = self._get_path_for_version(version)
    if not os.path.lexists(path):
      return
    doomed = self._temp_path(TEMP_PREFIX, version)
    _rename(path, doomed)
    await asyncio.get_running_loop().run_in_executor(
        None, lambda: shutil.rmtree(doomed, ignore_errors=True))
    logging.info('Program state removed: %s', path)

