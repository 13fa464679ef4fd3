r"""Builds TFF's `emnist_all.sqlite` (and its client array store) from FEMNIST.

  uv run python -m tff_research.cli.build_emnist_cache \
      --input=../shared/data/femnist/femnist_dev.npz --cache_dir=/tmp/emnist \
      [--tile=K] [--overwrite]

What it writes and why: `tff_research.data.build_emnist_cache`. A bad input
or a failed write is one line `error: ...` on stderr and exit status 1.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from tff_research.data import build_emnist_cache

_INPUT = flags.DEFINE_string(
    'input', None, 'FEMNIST source: a .npz file or a LEAF directory with train/ and test/.')
_CACHE_DIR = flags.DEFINE_string(
    'cache_dir', None,
    f'Directory to write {build_emnist_cache.DB_FILENAME} into (TFF cache_dir).')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, f'Replace an existing {build_emnist_cache.DB_FILENAME}.')
_TILE = flags.DEFINE_integer(
    'tile', 1, 'Write K copies of every writer under new ids (ID_tNN): 24 copies'
    ' of the shared 201 writers reach federated EMNIST-62\'s size. Never'
    ' commit the result.', lower_bound=1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _INPUT.value or not _CACHE_DIR.value:
    raise app.UsageError('--input and --cache_dir are required')
  try:
    path, store = build_emnist_cache.build_cache(
        _INPUT.value, _CACHE_DIR.value, tile=_TILE.value,
        overwrite=_OVERWRITE.value)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {path} and its array store {store}')
  summary = build_emnist_cache.split_summary(path)
  for split in build_emnist_cache.SPLITS:
    clients, examples = summary.get(split, (0, 0))
    print(f'  {split}: {clients} clients, {examples} examples')
  return 0


if __name__ == '__main__':
  app.run(main)
