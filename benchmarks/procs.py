"""Peer subprocesses: own session, output to a log file, RSS read from /proc.

Every peer of the benchmark runs as a child process started by `run_peer`:

* stdin is closed and stdout/stderr go to a log file, never to our pipes, so a
  grandchild that outlives its parent (TFF's `worker_binary` under TFF's
  default context, Ray's daemons) cannot hang whoever reads our output;
* the child gets a session (process group) of its own and
  `PR_SET_PDEATHSIG=SIGKILL`, so it dies with us even on `kill -9`;
* a monitor thread walks the child's process tree every `interval` seconds and
  records each process's peak RSS (`VmHWM`, and the largest `VmRSS` seen);
* when the child exits (or times out, or we are interrupted) its process group
  is killed, and so is every descendant the monitor saw that is still alive
  (Ray starts some daemons in sessions of their own). A pid is only killed if
  its start time is the one recorded, so a recycled pid is never touched.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Optional, Sequence

_PR_SET_PDEATHSIG = 1
_PAGE_KB = os.sysconf('SC_PAGE_SIZE') // 1024


class PeerError(RuntimeError):
  """A peer process failed; the message names it and its log."""


def _stat(pid: int) -> Optional[tuple[int, int, str]]:
  """(ppid, start time in clock ticks, state) of `pid`, or None if it is gone."""
  try:
    with open(f'/proc/{pid}/stat', 'rb') as f:
      raw = f.read()
  except OSError:
    return None
  # The command name may contain spaces and parentheses: split after the last ')'.
  fields = raw[raw.rindex(b')') + 2:].split()
  return int(fields[1]), int(fields[19]), fields[0].decode()


def _status_kb(pid: int) -> dict[str, int]:
  """VmRSS and VmHWM of `pid` in kB ({} if it is gone)."""
  out = {}
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith(('VmRSS:', 'VmHWM:')):
          key, value = line.split(':', 1)
          out[key] = int(value.split()[0])
  except OSError:
    pass
  return out


def comm(pid: int) -> str:
  try:
    with open(f'/proc/{pid}/comm') as f:
      return f.read().strip()
  except OSError:
    return '?'


def descendants(root: int) -> list[int]:
  """Every live descendant of `root` (children first), read from /proc."""
  children: dict[int, list[int]] = {}
  for name in os.listdir('/proc'):
    if name.isdigit():
      st = _stat(int(name))
      if st is not None:
        children.setdefault(st[0], []).append(int(name))
  out, stack = [], list(children.get(root, ()))
  while stack:
    pid = stack.pop()
    out.append(pid)
    stack.extend(children.get(pid, ()))
  return out


@dataclasses.dataclass
class ProcessPeak:
  pid: int
  name: str
  start_ticks: int
  peak_kb: int = 0
  last_rss_kb: int = 0


class TreeMonitor(threading.Thread):
  """Samples the RSS of `root` and its descendants until `stop()`."""

  def __init__(self, root: int, interval: float = 0.5,
               on_sample: Optional[Callable[['TreeMonitor'], None]] = None):
    super().__init__(daemon=True)
    self.root = root
    self.interval = interval
    self.on_sample = on_sample
    self.procs: dict[int, ProcessPeak] = {}
    # The largest sum of VmRSS over the tree at one sample: what the
    # machine needed at once (a lower bound: a sample can miss a spike).
    self.tree_peak_kb = 0
    self._stop_event = threading.Event()
    self._lock = threading.Lock()

  def sample(self) -> None:
    pids = [self.root] + descendants(self.root)
    with self._lock:
      total = 0
      for pid in pids:
        st = _stat(pid)
        if st is None:
          continue
        rec = self.procs.get(pid)
        if rec is None or rec.start_ticks != st[1]:
          rec = self.procs[pid] = ProcessPeak(pid, comm(pid), st[1])
        kb = _status_kb(pid)
        if 'VmRSS' in kb:
          rec.last_rss_kb = kb['VmRSS']
          rec.peak_kb = max(rec.peak_kb, kb['VmRSS'], kb.get('VmHWM', 0))
          total += kb['VmRSS']
      self.tree_peak_kb = max(self.tree_peak_kb, total)
    if self.on_sample is not None:
      self.on_sample(self)

  def run(self) -> None:
    while not self._stop_event.is_set():
      self.sample()
      self._stop_event.wait(self.interval)

  def stop(self) -> None:
    self._stop_event.set()
    if self.is_alive():
      self.join(timeout=5)

  def root_peak_mb(self) -> float:
    rec = self.procs.get(self.root)
    return rec.peak_kb / 1024 if rec else float('nan')

  def children_peak_mb(self, name_filter: Optional[str] = None) -> float:
    """Sum of the peak RSS of every descendant seen (or those whose name
    contains `name_filter`): an upper bound of their simultaneous peak."""
    with self._lock:
      recs = [r for p, r in self.procs.items() if p != self.root and
              (name_filter is None or name_filter in r.name)]
    return sum(r.peak_kb for r in recs) / 1024

  def current_kb(self, pid: int) -> int:
    return _status_kb(pid).get('VmRSS', 0)

  def kill_survivors(self) -> list[str]:
    """SIGKILLs every recorded descendant that is still the one recorded
    (same start time) and still running (not a zombie)."""
    killed = []
    with self._lock:
      recs = [r for p, r in self.procs.items() if p != self.root]
    for rec in recs:
      st = _stat(rec.pid)
      if st is not None and st[1] == rec.start_ticks and st[2] not in ('Z', 'X'):
        try:
          os.kill(rec.pid, signal.SIGKILL)
          killed.append(f'{rec.name}[{rec.pid}]')
        except ProcessLookupError:
          pass
    return killed


def _die_with_parent() -> None:
  libc = ctypes.CDLL('libc.so.6', use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclasses.dataclass
class PeerRun:
  returncode: int
  seconds: float
  log_path: str
  monitor: TreeMonitor
  survivors_killed: list[str]

  def log_tail(self, lines: int = 15) -> str:
    try:
      with open(self.log_path, errors='replace') as f:
        return ''.join(f.readlines()[-lines:])
    except OSError:
      return ''

  def memory(self, children: Optional[str] = None) -> dict:
    """The peer's peak RSS (its main process, its descendants or those named
    `children`) and the survivors killed, as every peer reports them."""
    return dict(peak_main_mb=self.monitor.root_peak_mb(),
                peak_children_mb=self.monitor.children_peak_mb(children),
                peak_together_mb=self.monitor.tree_peak_kb / 1024,
                survivors_killed=self.survivors_killed)


def run_json_peer(cmd: Sequence[str], out_path: str, log_path: str, *,
                  timeout: float, env: Optional[dict[str, str]] = None,
                  children: Optional[str] = None) -> dict:
  """`run_peer(cmd)`, then the JSON the peer wrote to `out_path` plus its
  `PeerRun.memory(children)`."""
  result = run_peer(cmd, log_path, timeout=timeout, env=env)
  with open(out_path) as f:
    out = json.load(f)
  out.update(result.memory(children))
  return out


def run_peer(cmd: Sequence[str], log_path: str, *, timeout: float,
             env: Optional[dict[str, str]] = None, cwd: Optional[str] = None,
             interval: float = 0.5,
             on_sample: Optional[Callable[[TreeMonitor], None]] = None,
             check: bool = True) -> PeerRun:
  """Runs `cmd` to completion as described in the module docstring."""
  start = time.monotonic()
  with open(log_path, 'wb') as log:
    log.write(('$ ' + ' '.join(cmd) + '\n').encode())
    log.flush()
    proc = subprocess.Popen(
        list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env=env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
  monitor = TreeMonitor(proc.pid, interval=interval, on_sample=on_sample)
  monitor.start()
  timed_out = False
  try:
    try:
      proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      timed_out = True
  finally:
    monitor.stop()
    try:
      os.killpg(proc.pid, signal.SIGKILL)
      time.sleep(0.2)  # let the group's members die before looking for others
    except ProcessLookupError:
      pass
    survivors = monitor.kill_survivors()
    proc.wait()
  run = PeerRun(proc.returncode, time.monotonic() - start, log_path, monitor,
                survivors)
  if check and (timed_out or proc.returncode != 0):
    why = f'timed out after {timeout:.0f} s' if timed_out else f'exit code {proc.returncode}'
    raise PeerError(f'{os.path.basename(cmd[1]) if len(cmd) > 1 else cmd[0]} {why}; '
                    f'log {log_path}:\n{run.log_tail()}')
  return run
