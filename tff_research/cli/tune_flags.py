"""The `--tune*` flags of the study binaries, parsed into a `TuneConfig`.

Defined here once for `experiments/compare_algorithms.py` and
`experiments/scaffold_vs_fedavg.py` (importing this module defines them);
the library receives only the `comparison.TuneConfig` value.
"""

from __future__ import annotations

from typing import Optional

from absl import flags

from tff_research.cli import flags as flags_lib
from tff_research.studies import comparison

_TUNE = flags.DEFINE_boolean(
    'tune', False,
    "Choose each algorithm's client/server learning rates on a validation"
    ' split of the training clients first (Reddi et al. 2021).')
_TUNE_FACTORS = flags.DEFINE_list(
    # repr: the exact half-decades, so a tuned rate of 10^-1.5 x 10^0.5 is
    # 10^-1 (and is named so), not 0.09999 as 4 digits of sqrt(10) give.
    'tune_factors', [repr(f) for f in comparison.DEFAULT_TUNE_FACTORS],
    'With --tune: multipliers of each default learning rate (default'
    ' 10^-0.5, 1, 10^0.5).')
_TUNE_FRACTION = flags.DEFINE_float(
    'tune_validation_fraction', 0.2,
    "With --tune: fraction of each training client's examples"
    ' (eval_on=test_split) or of the training clients'
    ' (eval_on=heldout_clients) used for validation.')
_TUNE_ROUNDS = flags.DEFINE_integer(
    'tune_rounds', None,
    'With --tune: rounds of each tuning run (default --total_rounds).')
TUNE_FLAGS = ('tune_factors', 'tune_validation_fraction', 'tune_rounds')


def tune_config(tune, factors, fraction, rounds, present
                ) -> Optional[comparison.TuneConfig]:
  """The TuneConfig of the --tune* values (None without --tune); `present`:
  the names of the --tune_* flags given. ValueError: one line."""
  if not tune:
    for name in TUNE_FLAGS:
      if name in present:
        raise flags_lib.FlagError(f'--{name} applies only with --tune')
    return None
  try:
    values = tuple(float(f) for f in factors)
  except ValueError:
    raise flags_lib.FlagError(
        f'--tune_factors={",".join(factors)} is not valid: give positive'
        ' multipliers, e.g. 0.316,1,3.16') from None
  return comparison.TuneConfig(values, fraction, rounds)


def tune_config_from_flags() -> Optional[comparison.TuneConfig]:
  """`tune_config` of the parsed command line."""
  return tune_config(
      _TUNE.value, _TUNE_FACTORS.value, _TUNE_FRACTION.value,
      _TUNE_ROUNDS.value,
      [n for n in TUNE_FLAGS if flags.FLAGS[n].present])
