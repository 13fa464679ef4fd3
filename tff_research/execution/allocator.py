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
every arena and halves what is left. (A fixed `M_MMAP_THRESHOLD` also stops
the growth but costs 9 % a round: each large tensor is then a fresh mapping.)

* `limit_arenas()`: this process, through `mallopt`. glibc fixes the arena
  limit when a second thread first allocates, so binaries call it before
  TensorFlow is imported (`cli.console.import_tensorflow_quietly` does).
* `environment(env)`: a child process's environment (TFF's worker) with
  `MALLOC_ARENA_MAX` set.
* `release_free_memory()`: `malloc_trim(0)`, once a round.

A `MALLOC_ARENA_MAX` the user sets wins everywhere. Off glibc each is a no-op.
See mallopt(3) and malloc_trim(3).
"""

import ctypes
import ctypes.util
import functools
import os
from typing import Mapping, Optional

# Arenas per process (glibc's default on a 2-core machine is 16).
ARENAS = 2
_ENV = 'MALLOC_ARENA_MAX'
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
  """`env` with `MALLOC_ARENA_MAX=ARENAS`, unless it sets its own."""
  env = dict(env)
  env.setdefault(_ENV, str(ARENAS))
  return env


def release_free_memory() -> None:
  """Returns the free pages of every arena to the system (`malloc_trim`)."""
  libc = _glibc()
  if libc is not None:
    libc.malloc_trim(0)
