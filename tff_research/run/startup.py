"""Where a run's start-up goes, measured in phases and reported once.

A run's start-up should not grow with the federation (no pass over every
client's data), so the time from process start to the first round is
split into named phases, printed as one line:

    Start-up 9.8 s: imports 6.2, worker 0.3, data 0.4, split 0.0,
    algorithm 2.6, evaluation 0.1, hooks 0.2

`imports` is the time from process start (the kernel's start time of this
process, /proc/self/stat) to the first phase: interpreter, TensorFlow and
TFF imports, flag parsing. Only a process's first run pays it: a study that
runs many in one process reports 0.0 for the later ones.
"""

from __future__ import annotations

import contextlib
import os
import time


def process_age_seconds() -> float:
  """Seconds since this process started (0.0 where /proc is missing)."""
  try:
    with open('/proc/self/stat', encoding='ascii') as f:
      # Field 22 (starttime, clock ticks after boot), after the command name
      # in parentheses, which may itself contain spaces.
      start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    with open('/proc/uptime', encoding='ascii') as f:
      uptime = float(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return 0.0
  return max(uptime - start_ticks / os.sysconf('SC_CLK_TCK'), 0.0)


_imports_counted = False


class StartupPhases:
  """Named phases timed with `with phases.phase('data'):`."""

  def __init__(self):
    global _imports_counted
    imports = 0.0 if _imports_counted else process_age_seconds()
    _imports_counted = True
    self.phases = {'imports': imports}
    self._began = time.monotonic() - self.phases['imports']

  @contextlib.contextmanager
  def phase(self, name: str):
    start = time.monotonic()
    try:
      yield
    finally:
      self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - start

  @property
  def total(self) -> float:
    return time.monotonic() - self._began

  def line(self) -> str:
    parts = ', '.join(f'{k} {v:.1f}' for k, v in self.phases.items())
    return f'Start-up {self.total:.1f} s: {parts}'
