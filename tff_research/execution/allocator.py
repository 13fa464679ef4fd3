"""glibc's allocator set up for a long TensorFlow run.

glibc gives a thread that finds the allocator busy an arena of its own, up to
8 per core, and returns freed memory to the system only from the top of an
arena. TensorFlow's thread pools allocate and free tensors of every size from
many threads, so each arena's free space fragments and a process grows round
after round although it keeps no object: +0.22 MB a round in the training
process and +0.13 MB in TFF's worker (`benchmarks/run.py --soak`, 500
rounds), with Python's object count flat. With two arenas, rounds 50-500 grew
the training process by 42 MB instead of 97 MB and the worker by 10 MB
instead of 58 MB, and a round costs the same (CNN, 10 clients: 1.16 s either
way); `malloc_trim(0)` after each round gives back the free pages inside
every arena and halves what is left.

TFF's worker is a C++ binary that cannot be made to call `malloc_trim`, and
with two arenas it still grew 7.7-12.6 % over rounds 50-500. It gets a
fixed `M_MMAP_THRESHOLD` of 128 KiB instead: every allocation from 128 KiB
up (a tensor of 32 K floats) is a mapping of its own, returned whole when
freed, so large tensors no longer fragment the arenas: +4.1 and +4.9 % over
the same rounds, at a cost the machine hardly resolves (CNN medians of
rounds 3-8, alternating runs: -0.8 and -1.7 % at 10 clients a round; +1.1,
+1.1 and +4.4 % at 50). In the training process the same threshold cost 9 %
a round (it handles the state's large tensors between rounds, and trims).

* `limit_arenas()`: this process, through `mallopt`. glibc fixes the arena
  limit when a second thread first allocates, so binaries call it before
  TensorFlow is imported (`cli.console.import_tensorflow_quietly` does).
* `environment(env)`: TFF's worker's environment, with `MALLOC_ARENA_MAX`
  and `MALLOC_MMAP_THRESHOLD_` set.
* `release_free_memory()`: `malloc_trim(0)`, once a round.

A `MALLOC_ARENA_MAX` or `MALLOC_MMAP_THRESHOLD_` the user sets wins
everywhere. Off glibc each is a no-op. See mallopt(3) and malloc_trim(3).
"""

import ctypes
import ctypes.util
import functools
import os
from typing import Mapping, Optional

# Arenas per process (glibc's default on a 2-core machine is 16).
ARENAS = 2
_ENV = 'MALLOC_ARENA_MAX'
# The worker's fixed mmap threshold in bytes (glibc's default is 128 KiB,
# raised dynamically up to 32 MiB as large blocks are freed; setting it
# stops the raising).
WORKER_MMAP_THRESHOLD = 128 * 1024
_MMAP_ENV = 'MALLOC_MMAP_THRESHOLD_'
_M_ARENA_MAX = -8  # mallopt's parameter number, from <malloc.h>.


@functools.lru_cache(maxsize=1)
def _glibc() -> Optional[ctypes.CDLL]:
  """glibc, or None (another C library, or none found)."""
  name = ctypes.util.find_library('c')
  if not name:
    return None
  try:
    libc = ctypes.CDLL(name)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
  except (OSError, AttributeError):
    return None
  return libc


def limit_arenas() -> bool:
  """Caps this process at `ARENAS` arenas; True if the cap was set here.

  False when the user's `MALLOC_ARENA_MAX` already rules (glibc read it at
  start-up) or the C library is not glibc.
  """
  libc = _glibc()
  if libc is None or _ENV in os.environ:
    return False
  return bool(libc.mallopt(_M_ARENA_MAX, ARENAS))


def environment(env: Mapping[str, str]) -> dict[str, str]:
  """`env` for TFF's worker: `MALLOC_ARENA_MAX=ARENAS` and
  `MALLOC_MMAP_THRESHOLD_=WORKER_MMAP_THRESHOLD`, each unless `env` sets
  its own."""
  env = dict(env)
  env.setdefault(_ENV, str(ARENAS))
  env.setdefault(_MMAP_ENV, str(WORKER_MMAP_THRESHOLD))
  return env


def release_free_memory() -> None:
  """Returns the free pages of every arena to the system (`malloc_trim`)."""
  libc = _glibc()
  if libc is not None:
    libc.malloc_trim(0)
