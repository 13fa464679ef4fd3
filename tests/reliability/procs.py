"""Helpers for tests that run real processes: /proc lookups and spawning."""

import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spawn(args, **kwargs):
  """Starts `args` in the repo with stdout/stderr on pipes and no stdin."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
  env.update(kwargs.pop('env', {}))
  return subprocess.Popen(
      args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
      stdin=subprocess.DEVNULL, env=env, **kwargs)


def python(code):
  return [sys.executable, '-c', code]


def children(parent_pid, name=b'worker_binary'):
  """Pids of live processes whose parent is `parent_pid` and cmdline has `name`."""
  found = []
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat') as f:
        stat = f.read()
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        cmdline = f.read()
    except OSError:
      continue
    ppid = int(stat.rsplit(')', 1)[1].split()[1])
    if ppid == parent_pid and name in cmdline and alive(int(entry)):
      found.append(int(entry))
  return found


def alive(pid):
  """Whether `pid` exists and is not a zombie."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      state = f.read().rsplit(')', 1)[1].split()[0]
    return state != 'Z'
  except OSError:
    return False


def wait_gone(pid, timeout=10.0):
  deadline = time.monotonic() + timeout
  while alive(pid) and time.monotonic() < deadline:
    time.sleep(0.05)
  return not alive(pid)


def wait_for_rounds(proc, metrics, rounds, timeout=300.0, poll=0.1):
  """Waits until the run `proc` logged `rounds` rows in its metrics.csv
  (`metrics`, a pathlib.Path); asserts it did so while still running."""
  def logged():
    return metrics.exists() and len(metrics.read_text().splitlines()) > rounds
  deadline = time.monotonic() + timeout
  while not logged() and time.monotonic() < deadline and proc.poll() is None:
    time.sleep(poll)
  assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
  assert logged(), f'{metrics}: fewer than {rounds} rounds in {timeout:.0f} s'


def kill_quietly(proc):
  """SIGKILL a process this test started (its worker dies with it)."""
  if proc.poll() is None:
    proc.kill()
  try:
    proc.communicate(timeout=30)
  except (subprocess.TimeoutExpired, ValueError):
    pass
