r"""One TFF remote-execution worker (`execution.worker`), from the command line.

  uv run python -m tff_research.cli.worker --port=8000 \
      [--max_concurrent_computation_calls=-1] \
      [--grpc_max_message_length_megabytes=2047] [--intra_op_threads=1]

A trainer reaches it with `experiments/train.py --workers=HOST:8000,...`.
The worker listens on every interface with NO authentication and NO TLS:
keep it on a private network (see docs/scale_out.md).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

from tff_research.execution import worker

_PORT = flags.DEFINE_integer(
    'port', None, 'TCP port to listen on (all interfaces), in [1, 65535].')
_MAX_CALLS = flags.DEFINE_integer(
    'max_concurrent_computation_calls', -1,
    'Computations the worker runs at once; <= 0 = no limit. A trainer sends'
    ' one per round (plus evaluation), so the default suits one trainer.')
_MAX_MB = flags.DEFINE_integer(
    'grpc_max_message_length_megabytes', worker.MAX_MESSAGE_MEGABYTES,
    'Largest gRPC message in MB, in [1, 2047] (the binary stores it in bytes'
    ' in an int).')
_INTRA_OP_THREADS = flags.DEFINE_integer(
    'intra_op_threads', None,
    'Threads each TensorFlow op may use (unset: every core). 1 with a'
    " trainer's --parallel_cohorts=C (C = this machine's cores) trains C"
    ' clients side by side, one per core (see docs/scale_out.md).')
_READY_TIMEOUT = flags.DEFINE_float(
    'ready_timeout', 60.0, 'Seconds to wait for the worker to listen.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected positional arguments {argv[1:]}')
  try:
    worker.check_arguments(_PORT.value, _MAX_MB.value,
                           _INTRA_OP_THREADS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  logging.set_verbosity(logging.WARNING)
  sys.exit(worker.serve(_PORT.value, _MAX_CALLS.value, _MAX_MB.value,
                        _READY_TIMEOUT.value, _INTRA_OP_THREADS.value))


if __name__ == '__main__':
  app.run(main)
