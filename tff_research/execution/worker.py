"""One TFF remote-execution worker: TFF's C++ `worker_binary` with sane
settings (its command line: `python -m tff_research.cli.worker`).

The worker listens on every interface with NO authentication and NO TLS:
anyone who can reach the port can run arbitrary TensorFlow on it. Keep it on
a private network (see docs/scale_out.md).

Why a wrapper rather than the binary itself: the binary's default message
limit (10000 MB) overflows the `int` it is converted to, it says nothing when
it is ready, and a plain `kill` leaves it exiting by signal. `serve` starts
it with a limit of at most 2047 MB, logs one line once the port accepts
connections, forwards SIGTERM/SIGINT to it and returns 0 after it stopped;
the binary is started with `PR_SET_PDEATHSIG`, so it dies with this process
even on `kill -9`. Its own log goes to this process's stderr.

This module imports no TensorFlow (seconds and hundreds of MB a worker host
does not need); `runtime` starts its local worker from the same binary.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

from tff_research.execution import allocator

WORKER_BINARY = os.path.join(
    os.path.dirname(importlib.util.find_spec('tensorflow_federated').origin),
    'data', 'worker_binary')
# worker_binary stores its message limit in MB as an int of bytes: <= 2047.
MAX_MESSAGE_MEGABYTES = 2047
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
  """A `preexec_fn`: the kernel sends the child `sig` when its parent dies."""
  libc = ctypes.CDLL('libc.so.6', use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def thread_environment(intra_op_threads: Optional[int],
                       environ=None) -> dict[str, str]:
  """The worker's environment: `environ` (default ours) with glibc's arenas
  capped and its mmap threshold fixed (`allocator.environment`) and
  TensorFlow's intra-op threads set (None or 0:
  left as it is). TensorFlow reads
  `TF_NUM_INTRAOP_THREADS` when a session has no explicit setting, which is
  how TFF's worker creates its sessions."""
  env = allocator.environment(os.environ if environ is None else environ)
  # TF logs two INFO lines per graph it optimizes: noise in a worker log.
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  if intra_op_threads:
    env['TF_NUM_INTRAOP_THREADS'] = str(int(intra_op_threads))
  return env


def check_arguments(port, max_message_megabytes: int,
                    intra_op_threads: Optional[int] = None) -> None:
  """ValueError (one line) for a port, message limit or thread count out of
  range."""
  if port is None or not 1 <= port <= 65535:
    raise ValueError(f'--port={port} is not valid: must be in [1, 65535]')
  if not 1 <= max_message_megabytes <= MAX_MESSAGE_MEGABYTES:
    raise ValueError(
        f'--grpc_max_message_length_megabytes={max_message_megabytes} is not'
        f' valid: must be in [1, {MAX_MESSAGE_MEGABYTES}]')
  if intra_op_threads is not None and intra_op_threads < 1:
    raise ValueError(f'--intra_op_threads={intra_op_threads} is not valid:'
                     ' must be >= 1 (or unset: every core)')


def _listening(port: int) -> bool:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.settimeout(0.5)
    return s.connect_ex(('127.0.0.1', port)) == 0


def _wait_listening(process: subprocess.Popen, port: int,
                    ready_timeout: float, stopping: list[int]) -> str:
  """Waits until `port` accepts connections: 'listening', 'ended' (the
  worker exited or a signal came first) or 'timeout' (not listening within
  `ready_timeout`: the worker is then killed)."""
  deadline = time.monotonic() + ready_timeout
  while not _listening(port):
    if process.poll() is not None or stopping:
      return 'ended'
    if time.monotonic() > deadline:
      process.kill()
      process.wait()
      return 'timeout'
    time.sleep(0.05)
  return 'listening'


def serve(port: int, max_concurrent_computation_calls: int = -1,
          max_message_megabytes: int = MAX_MESSAGE_MEGABYTES,
          ready_timeout: float = 60.0,
          intra_op_threads: Optional[int] = None) -> int:
  """Runs the worker until it exits or SIGTERM/SIGINT; returns the exit
  status for the process (0: stopped by a signal). `intra_op_threads`: see
  `thread_environment` (None: TensorFlow's default)."""
  if _listening(port):
    print(f'error: port {port} is already in use; choose another --port',
          file=sys.stderr)
    return 1
  process = subprocess.Popen(
      [WORKER_BINARY, f'--port={port}',
       f'--max_concurrent_computation_calls={max_concurrent_computation_calls}',
       f'--grpc_max_message_length_megabytes={max_message_megabytes}'],
      stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
      env=thread_environment(intra_op_threads),
      preexec_fn=die_with_parent, close_fds=True)
  stopping = []

  def on_signal(signum, frame):
    del frame
    stopping.append(signum)
    if process.poll() is None:
      process.terminate()

  signal.signal(signal.SIGTERM, on_signal)
  signal.signal(signal.SIGINT, on_signal)
  ready = _wait_listening(process, port, ready_timeout, stopping)
  if ready == 'timeout':
    print(f'error: the TFF worker did not listen on port {port} within'
          f' {ready_timeout:g} s', file=sys.stderr)
    return 1
  if ready == 'listening':
    print(f'TFF worker (pid {process.pid}) listening on [::]:{port},'
          f' max message {max_message_megabytes} MB, max concurrent calls'
          f' {max_concurrent_computation_calls}; unauthenticated: keep this'
          ' port on a private network', file=sys.stderr, flush=True)
  while True:
    try:
      returncode = process.wait(timeout=1.0)
      break
    except subprocess.TimeoutExpired:
      continue
  if stopping:
    print(f'TFF worker on port {port} stopped'
          f' ({signal.Signals(stopping[0]).name})', file=sys.stderr,
          flush=True)
    return 0
  print(f'error: the TFF worker on port {port} exited with status'
        f' {returncode}', file=sys.stderr)
  return 1
