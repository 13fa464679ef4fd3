r"""One TFF remote-execution worker: TFF's C++ `worker_binary` with sane flags.

  uv run python -m tff_research.worker --port=8000 \
      [--max_concurrent_computation_calls=-1] \
      [--grpc_max_message_length_megabytes=2047]

A trainer reaches it with `experiments/train.py --workers=HOST:8000,...`.
The worker listens on every interface with NO authentication and NO TLS:
anyone who can reach the port can run arbitrary TensorFlow on it. Keep it on
a private network (see docs/scale_out.md).

Why a wrapper rather than the binary itself: the binary's default message
limit (10000 MB) overflows the `int` it is converted to, it says nothing when
it is ready, and a plain `kill` leaves it exiting by signal. This starts it
with a limit of at most 2047 MB, logs one line once the port accepts
connections, forwards SIGTERM/SIGINT to it and exits 0 after it stopped; the
binary is started with `PR_SET_PDEATHSIG`, so it dies with this process even
on `kill -9`. Its own log goes to this process's stderr.
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

from absl import app
from absl import flags
from absl import logging

# `runtime.WORKER_BINARY`, found without importing TensorFlow (seconds and
# hundreds of MB this process does not need).
WORKER_BINARY = os.path.join(
    os.path.dirname(importlib.util.find_spec('tensorflow_federated').origin),
    'data', 'worker_binary')

_PORT = flags.DEFINE_integer(
    'port', None, 'TCP port to listen on (all interfaces), in [1, 65535].')
_MAX_CALLS = flags.DEFINE_integer(
    'max_concurrent_computation_calls', -1,
    'Computations the worker runs at once; <= 0 = no limit. A trainer sends'
    ' one per round (plus evaluation), so the default suits one trainer.')
_MAX_MB = flags.DEFINE_integer(
    'grpc_max_message_length_megabytes', 2047,
    'Largest gRPC message in MB, in [1, 2047] (the binary stores it in bytes'
    ' in an int).')
_READY_TIMEOUT = flags.DEFINE_float(
    'ready_timeout', 60.0, 'Seconds to wait for the worker to listen.')

MAX_MESSAGE_MEGABYTES = 2047
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
  """`preexec_fn` (as `runtime.die_with_parent`): SIGKILL when we die."""
  ctypes.CDLL('libc.so.6', use_errno=True).prctl(
      _PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _listening(port: int) -> bool:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.settimeout(0.5)
    return s.connect_ex(('127.0.0.1', port)) == 0


def _check_flags() -> None:
  if _PORT.value is None or not 1 <= _PORT.value <= 65535:
    raise app.UsageError(
        f'--port={_PORT.value} is not valid: must be in [1, 65535]')
  if not 1 <= _MAX_MB.value <= MAX_MESSAGE_MEGABYTES:
    raise app.UsageError(
        f'--grpc_max_message_length_megabytes={_MAX_MB.value} is not valid:'
        f' must be in [1, {MAX_MESSAGE_MEGABYTES}]')


def serve() -> int:
  """Runs the worker until it exits or SIGTERM/SIGINT; returns the status."""
  port = _PORT.value
  if _listening(port):
    print(f'error: port {port} is already in use; choose another --port',
          file=sys.stderr)
    return 1
  process = subprocess.Popen(
      [WORKER_BINARY, f'--port={port}',
       f'--max_concurrent_computation_calls={_MAX_CALLS.value}',
       f'--grpc_max_message_length_megabytes={_MAX_MB.value}'],
      stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
      # TF logs two INFO lines per graph it optimizes: noise in a worker log.
      env={'TF_CPP_MIN_LOG_LEVEL': '1', **os.environ},
      preexec_fn=_die_with_parent, close_fds=True)
  stopping = []

  def on_signal(signum, frame):
    del frame
    stopping.append(signum)
    if process.poll() is None:
      process.terminate()

  signal.signal(signal.SIGTERM, on_signal)
  signal.signal(signal.SIGINT, on_signal)
  deadline = time.monotonic() + _READY_TIMEOUT.value
  while not _listening(port):
    if process.poll() is not None or stopping:
      break
    if time.monotonic() > deadline:
      print(f'error: the TFF worker did not listen on port {port} within'
            f' {_READY_TIMEOUT.value:g} s', file=sys.stderr)
      process.kill()
      process.wait()
      return 1
    time.sleep(0.05)
  else:
    print(f'TFF worker (pid {process.pid}) listening on [::]:{port},'
          f' max message {_MAX_MB.value} MB, max concurrent calls'
          f' {_MAX_CALLS.value}; unauthenticated: keep this port on a private'
          ' network', file=sys.stderr, flush=True)
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected positional arguments {argv[1:]}')
  _check_flags()
  logging.set_verbosity(logging.WARNING)
  sys.exit(serve())


if __name__ == '__main__':
  app.run(main)
