"""What the reference-experiment binaries share.

Both binaries accept `experiments/train.py`'s flags (so `--dataset`,
`--data_dir`, `--logdir`, ... mean exactly what they mean there), but each
experiment fixes most of what train.py makes configurable. A train.py flag
the experiment does not use is therefore an error naming the flags that do
apply, never silently ignored (google-research/federated's rule).

The library never reads flags: a binary passes the flags its command line
set (`flags.given_flags()`, flag -> value) and `values(given)` completes
them with train.py's defaults.

Each run writes into a fresh directory `LOGDIR/NAME/`; an existing non-empty
one is refused before any work, so a finished run's outputs are never mixed
with a new run's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import os
from typing import Any

from tff_research.run import config as config_lib
from tff_research.run import run_directory

FlagError = config_lib.FlagError


def values(given: Mapping[str, Any]) -> dict[str, Any]:
  """Every train.py flag: `given`, else its default (experiment_name: None)."""
  return {**config_lib.default_hparams(), 'experiment_name': None, **given}


def check_applicable(
    binary: str,
    given: Mapping[str, Any],
    allowed: Iterable[str],
    hints: Mapping[str, str] | None = None,
) -> None:
  """Raises FlagError for any flag in `given` not in `allowed`.

  Args:
    binary: the binary's file name, for the message.
    given: the train.py flags the command line set (flag -> value).
    allowed: the flags this binary reads, in the order the message lists
      them.
    hints: optional `flag -> sentence` explaining why a flag does not apply
      (e.g. what the experiment fixes it to).
  """
  allowed = list(allowed)
  hints = hints or {}
  for name in given:
    if name in allowed:
      continue
    hint = hints.get(name)
    if hint is None:
      hint = 'it accepts ' + ', '.join(f'--{n}' for n in allowed)
    raise FlagError(f'--{name} does not apply to {binary}: {hint}')


def require(ok: bool, message: str) -> None:
  if not ok:
    raise FlagError(message)


def check_positive(flag_values: Mapping[str, Any], *names: str) -> None:
  for name in names:
    value = flag_values[name]
    require(value is not None and value > 0,
            f'--{name}={value} is not valid: must be > 0')


def fresh_run_dir(logdir: str, name: str) -> str:
  """`logdir/name`, which must not exist yet or be empty.

  Raises:
    FlagError: `name` is not a plain directory name, or the directory
      already holds files.
  """
  try:
    run_directory.check_name(name)
  except run_directory.RunDirError as e:
    raise FlagError(str(e)) from None
  path = os.path.join(logdir, name)
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise FlagError(
        f'{path} already exists and is not empty; choose another'
        ' --experiment_name or --logdir (or delete it)')
  return path
