"""File descriptor 2, filtered: lines C++ code writes that are not the run's.

`stderr_without(is_dropped)` runs a span of code with stderr read through a
pipe, dropping each line `is_dropped` matches and passing every other line
on unchanged; it catches what C++ code writes too. `is_noise` matches
TensorFlow's known harmless lines (`NOISE`): what the binaries drop while
TensorFlow is imported (`cli.console`), and what the round loop drops with
TensorFlow's C++ echo of a full device's error, which it reports in its own
one line. `restore_stderr` points fd 2 back at the real stderr for a signal
handler's last line.
"""

import contextlib
import os
import re
import sys
import threading
from typing import Callable, Iterator, Optional

NOISE = (
    re.compile(r'Unable to register (cuDNN|cuFFT|cuBLAS) factory: Attempting'
               r' to register factory for plugin \w+ when one has already'
               r' been registered'),
    re.compile(r'TF-TRT Warning: Could not find TensorRT'),
    # tf.data's autotuning thread, told to stop because its iterator is
    # gone (a run ending early): harmless, and not the run's error.
    re.compile(r'root_dataset\.cc:\d+\] Optimization loop failed: CANCELLED:'
               r' Operation was cancelled'),
)


# While `stderr_without` captures file descriptor 2: a duplicate of the
# real stderr.
_real_stderr: Optional[int] = None


def is_noise(line: str) -> bool:
  return any(p.search(line) for p in NOISE)


@contextlib.contextmanager
def stderr_without(is_dropped: Callable[[str], bool]) -> Iterator[None]:
  """Runs the body with file descriptor 2 read through a pipe: each line for
  which `is_dropped(line)` is true is dropped, every other line is passed on
  to the real stderr as soon as it is complete (an unfinished last line when
  the body ends). Catches what C++ code writes too. Not nested: inside
  another capture the body runs unfiltered."""
  global _real_stderr
  if _real_stderr is not None:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  read_fd, write_fd = os.pipe()
  os.dup2(write_fd, 2)
  os.close(write_fd)
  _real_stderr = saved
  reader = threading.Thread(target=_forward,
                            args=(read_fd, saved, is_dropped), daemon=True)
  reader.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    restore_stderr()  # Closes the pipe's only write end: the reader ends.
    reader.join()
    os.close(read_fd)
    os.close(saved)


def restore_stderr() -> None:
  """Points file descriptor 2 back at the real stderr if `stderr_without`
  is capturing it (a signal handler about to print its last line and end
  the process calls this, since the reader would not pass that line on)."""
  global _real_stderr
  saved, _real_stderr = _real_stderr, None
  if saved is not None:
    os.dup2(saved, 2)


def _forward(read_fd: int, out_fd: int,
             is_dropped: Callable[[str], bool]) -> None:
  pending = b''
  while True:
    chunk = os.read(read_fd, 65536)
    if not chunk:
      break
    *lines, pending = (pending + chunk).split(b'\n')
    for line in lines:
      _write_kept(out_fd, line + b'\n', is_dropped)
  if pending:
    _write_kept(out_fd, pending, is_dropped)


def _write_kept(fd: int, line: bytes, is_dropped: Callable[[str], bool]
                ) -> None:
  if is_dropped(line.decode(errors='replace')):
    return
  while line:
    line = line[os.write(fd, line):]
