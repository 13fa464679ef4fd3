"""One writer per run directory: an OS file lock held for the run's lifetime.

`hold(run_dir)` takes a non-blocking exclusive `fcntl.flock` on
`RUN_DIR/.lock` and writes the holder's pid into that file (for the message
of whoever is refused). A second process on the same directory gets
`RunDirectoryInUseError` (a `ValueError`, one line naming the holder's pid)
at once, instead of two runs interleaving checkpoints and metrics.

The kernel releases a flock when the last descriptor of it closes, so a lock
left by a process that was killed (`kill -9` included) or crashed never
blocks the next run; the stale pid left in the file is simply overwritten.
The descriptor is not inherited by child processes (Python opens files
non-inheritable), so a subprocess such as the TFF worker cannot keep the
lock alive after its parent is gone.

Nothing but the directory (created if missing, since it is the run's own)
and `.lock` is ever written: a refused process leaves the directory as it
found it. The lock file is never deleted (deleting it would let two processes
lock two different files of the same name). Local file systems only: flock
over NFS may not exclude processes on other machines.

The same lock serves other one-holder claims under another file name
(`filename=`): a sweep claims each of its runs (`sweep_logs/NAME.lock`), so
two sweeps of one config never start the same run, and serializes the
writes to its logdir's shared files (`hold(..., wait=True)` blocks until
the holder is done instead of refusing).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Iterator, Optional, Union

LOCK_FILENAME = '.lock'
_PID_WAIT_SECONDS = 1.0


class RunDirectoryInUseError(ValueError):
  """Another process holds the run directory (one-line message)."""

  def __init__(self, run_dir: str, holder_pid: Optional[int]):
    who = f'pid {holder_pid}' if holder_pid is not None else 'pid unknown'
    if holder_pid == os.getpid():
      who += ', this process'
    super().__init__(
        f'{run_dir} is in use by another run ({who}); wait for it or choose'
        ' another --experiment_name')
    self.run_dir = run_dir
    self.holder_pid = holder_pid


class RunLock:
  """A held lock on a run directory; `release()` (idempotent) frees it."""

  def __init__(self, run_dir: str, fd: int, filename: str = LOCK_FILENAME):
    self.run_dir = run_dir
    self.path = os.path.join(run_dir, filename)
    self._fd: Optional[int] = fd

  @property
  def held(self) -> bool:
    return self._fd is not None

  def release(self) -> None:
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # No stale pid for the next reader.
      fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
      os.close(fd)

  def __enter__(self) -> 'RunLock':
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _read_pid(fd: int) -> Optional[int]:
  """The pid in the lock file; waits briefly for a holder that just locked."""
  deadline = time.monotonic() + _PID_WAIT_SECONDS
  while True:
    try:
      text = os.pread(fd, 64, 0).decode('ascii', 'replace').strip()
    except OSError:
      text = ''
    if text.isdigit():
      return int(text)
    if time.monotonic() >= deadline:
      return None
    time.sleep(0.02)


def holder_pid(run_dir: Union[str, os.PathLike[str]],
               filename: str = LOCK_FILENAME) -> Optional[int]:
  """The pid holding `run_dir` (its lock `filename`), or None if no live
  process holds it.

  Read-only: never creates the directory or the lock file.
  """
  path = os.path.join(os.fspath(run_dir), filename)
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read_pid(fd)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


def acquire(run_dir: Union[str, os.PathLike[str]],
            filename: str = LOCK_FILENAME, *, wait: bool = False) -> RunLock:
  """Locks `run_dir` (its lock `filename`) for this process, or refuses at
  once (`wait`: waits for the holder to release it).

  Creates `run_dir` if it does not exist (no one can hold a directory that
  does not exist), then `run_dir/filename`.

  Raises:
    RunDirectoryInUseError (a ValueError): a live process holds it.
    ValueError: `run_dir` cannot be created or locked (one line).
  """
  run_dir = os.fspath(run_dir)
  path = os.path.join(run_dir, filename)
  try:
    if not os.path.isdir(run_dir):
      os.makedirs(run_dir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  except OSError as e:
    raise ValueError(f'cannot lock {run_dir}: {e.strerror or e}') from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    pid = _read_pid(fd)
    os.close(fd)
    raise RunDirectoryInUseError(run_dir, pid) from None
  except OSError as e:
    os.close(fd)
    raise ValueError(f'cannot lock {run_dir}: {e.strerror or e}') from None
  try:
    data = f'{os.getpid()}\n'.encode('ascii')
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
  except OSError:
    pass  # The lock holds; only the message of a refused process suffers.
  return RunLock(run_dir, fd, filename)


@contextlib.contextmanager
def hold(run_dir: Union[str, os.PathLike[str]], filename: str = LOCK_FILENAME,
         *, wait: bool = False) -> Iterator[RunLock]:
  """`with hold(run_dir): ...` runs with `run_dir` locked, always released
  (`filename` and `wait` as in `acquire`).

  Raises:
    RunDirectoryInUseError (a ValueError): another live process holds it.
  """
  lock = acquire(run_dir, filename, wait=wait)
  try:
    yield lock
  finally:
    lock.release()
