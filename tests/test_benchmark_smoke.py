"""`benchmarks/run.py --smoke` runs end to end and prints a complete table.

A real subprocess on pipes (stdin closed): the peers' TFF workers must not
hold our pipes open, every peer row must carry finite numbers, and the
ratios must be computed. No ratio's value is asserted (the machine is shared).
"""

import math
import os
import re
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(REPO, 'benchmarks', 'run.py')
TIMEOUT_S = 840  # 2-3 min on an idle 2-core machine; about 10 at load 20

HEADER = ('| peer | clients/round | examples/round | median s/round | rounds measured | '
          'peak RSS process MB | peak RSS children MB | load | notes |')
MEASURED_PEERS = (
    'pipeline (experiments/train.py)',
    'vanilla TFF (tutorial, default context)',
    'floor, sequential (plain TF, all cores)',
    'floor, parallel (plain TF,',
)
RATIOS = (
    'pipeline / floor',
    'vanilla TFF / pipeline',
    'eval / forward floor',
)


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip('|').split('|')]


def _number(cell: str) -> float:
  match = re.match(r'^-?\d+(\.\d+)?', cell)
  assert match, f'not a number: {cell!r}'
  return float(match.group(0))


def _run_smoke() -> tuple[int, str, str]:
  proc = subprocess.Popen(
      [sys.executable, RUN_PY, '--smoke'], cwd=REPO, stdin=subprocess.DEVNULL,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    out, err = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)  # run.py kills its peers' process groups
    try:
      out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, err = proc.communicate()
    raise AssertionError(f'run.py --smoke did not finish in {TIMEOUT_S} s:\n{err[-3000:]}')
  return proc.returncode, out, err


# About 2.5 min of the not-slow suite's budget for a developer tool: run
# before publishing benchmark numbers (README, benchmarks/README.md).
@pytest.mark.slow
def test_smoke_prints_every_peer_with_finite_numbers():
  code, out, err = _run_smoke()
  assert code == 0, f'exit {code}\nstdout:\n{out}\nstderr:\n{err[-4000:]}'
  lines = out.splitlines()
  assert HEADER in lines, out

  for label in MEASURED_PEERS:
    rows = [l for l in lines if l.startswith(f'| {label}')]
    assert rows, f'no row for {label!r}:\n{out}'
    for row in rows:
      cells = _cells(row)
      # clients/round, examples/round, median s/round, rounds measured, peak RSS process
      values = [_number(c) for c in cells[1:6]]
      assert all(math.isfinite(v) for v in values), row
      assert values[2] > 0 and values[3] >= 1 and values[4] > 0, row
  flower = [l for l in lines if l.startswith('| Flower')]
  assert flower and 'skipped' in flower[0], out

  for name in RATIOS:
    rows = [l for l in lines if l.startswith(f'| {name}')]
    assert rows, f'no ratio row {name!r}:\n{out}'
    value = _number(_cells(rows[0])[1])
    assert math.isfinite(value) and value > 0, rows[0]
  assert 'Linear fit of pipeline' in out
  # communicate() returned: no peer's child (TFF's worker_binary under the
  # default context included) kept our pipes open.


def test_tree_monitor_peak_together_is_between_the_bounds():
  """A parent and its child each hold 200 MB for 2 s: the largest sum at
  one sample is at least their 400 MB and at most the sum of their own
  peaks (`VmHWM`)."""
  sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
  try:
    import procs  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  hold = ('import time, numpy as np; a = np.ones(200 * 2**20, np.uint8);'
          ' time.sleep(2)')
  code = (f'import subprocess, sys; c = subprocess.Popen([sys.executable, "-c",'
          f' {hold!r}]); exec({hold!r}); c.wait()')
  proc = subprocess.Popen([sys.executable, '-c', code])
  monitor = procs.TreeMonitor(proc.pid, interval=0.1)
  monitor.start()
  proc.wait(timeout=60)
  monitor.stop()
  together = monitor.tree_peak_kb / 1024
  upper = monitor.root_peak_mb() + monitor.children_peak_mb()
  assert 400 <= together <= upper, (together, upper)
