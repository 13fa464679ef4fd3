"""What every experiment binary does around its work: one-line errors, a
quiet log, and a TFF worker that never outlives the process."""

from __future__ import annotations

import sys
from typing import Callable

from absl import flags
from absl import logging

from tff_research.execution import runtime
from tff_research.run import run_directory


def main_or_exit(run: Callable[[], object]) -> None:
  """Runs `run()`; a ValueError becomes one line on stderr and exit 1, and
  so does a full device wherever a write hits it (a traceback otherwise)."""
  runtime.install_signal_handlers()
  if not flags.FLAGS['verbosity'].present:
    # TFF/Keras log every model construction at INFO; keep the console for
    # the data line, the progress bar and the results.
    logging.set_verbosity(logging.WARNING)
  try:
    run()
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except Exception as e:  # pylint: disable=broad-except
    if not run_directory.is_disk_full(e):
      raise
    where = getattr(e, 'filename', None)
    print(f'error: no space left on device{f" writing {where}" if where else ""};'
          ' free space and re-run the same command', file=sys.stderr)
    sys.exit(1)
  finally:
    runtime.stop()
