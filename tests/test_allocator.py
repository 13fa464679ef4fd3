"""execution.allocator: glibc's arenas capped before TensorFlow's threads.

The arena count is read from glibc's own report (`malloc_info`, one `<heap
nr=...>` element per arena) in a fresh process that imports TensorFlow as the
binaries do and runs ops on its thread pools.
"""

import os
import subprocess
import sys

import pytest

from tff_research.execution import allocator
from tff_research.execution import worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROGRAM = r'''
import ctypes, ctypes.util, os, re, sys, tempfile
from tff_research.cli import console
if sys.argv[1] == 'capped':
  console.import_tensorflow_quietly()
else:
  import tensorflow
import tensorflow as tf
# Ops from several Python threads at once, on TF's inter-op pool too.
import concurrent.futures
def work(i):
  x = tf.random.normal([256, 256], seed=i)
  for _ in range(50):
    x = tf.linalg.matmul(x, x) / 256.0
  return float(tf.reduce_sum(x))
with concurrent.futures.ThreadPoolExecutor(8) as pool:
  list(pool.map(work, range(32)))
libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.fdopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
fd = os.open(path, os.O_WRONLY | os.O_CREAT)
fp = libc.fdopen(fd, b'w')
libc.malloc_info(0, ctypes.c_void_p(fp))
libc.fclose(ctypes.c_void_p(fp))
print(len(re.findall(r'<heap nr=', open(path).read())))
'''


def _arenas(mode, env=None):
  env = dict(os.environ if env is None else env)
  env.pop('MALLOC_ARENA_MAX', None)
  env['PYTHONPATH'] = ROOT
  out = subprocess.run([sys.executable, '-c', _PROGRAM, mode], env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason='glibc only')
def test_binaries_cap_the_arenas_before_tensorflow_starts_its_threads():
  uncapped, capped = _arenas('plain'), _arenas('capped')
  assert uncapped > allocator.ARENAS  # the test can tell the two apart
  assert capped <= allocator.ARENAS


def test_worker_environment_caps_arenas_unless_the_user_chose():
  env = worker.thread_environment(None, {})
  assert env['MALLOC_ARENA_MAX'] == '2'
  assert env['MALLOC_MMAP_THRESHOLD_'] == '131072'
  mine = worker.thread_environment(
      3, {'MALLOC_ARENA_MAX': '4', 'MALLOC_MMAP_THRESHOLD_': '65536'})
  assert (mine['MALLOC_ARENA_MAX'], mine['MALLOC_MMAP_THRESHOLD_']) == (
      '4', '65536')


def test_a_user_setting_is_left_to_glibc(monkeypatch):
  monkeypatch.setenv('MALLOC_ARENA_MAX', '4')
  assert allocator.limit_arenas() is False
