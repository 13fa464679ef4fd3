r"""Prints the noise multiplier that meets a privacy budget.

  uv run python -m tff_research.cli.calibrate --target_epsilon=E \
      --rounds=T [--dp=server|client] [--dp_delta=1e-5] \
      [--sampling=poisson --client_fraction=q |
       --sampling=fixed --num_clients=N (--clients_per_round=k |
                                          --client_fraction=f)] \
      [--accountant=rdp|pld]

The events are exactly those a training run accounts
(`tff_research.privacy.accounting`): the flags mirror `experiments/train.py`,
so the printed `--dp_noise_multiplier` can be pasted into its command line.
With --dp=client, --rounds is the number of rounds one client takes part in
(at most the run's --total_rounds) and sampling does not enter. Bad flags give
one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

from absl import flags

from tff_research.privacy import accounting
from tff_research.privacy import calibrate

# A FlagValues of its own: importing this module next to the experiment
# binaries' flags (which share several names) must not clash.
FLAGS = flags.FlagValues()
flags.DEFINE_float('target_epsilon', None, 'Privacy budget epsilon (> 0).',
                   flag_values=FLAGS)
flags.DEFINE_integer('rounds', None,
                     'Rounds of training (--dp=client: participations of one'
                     ' client).', flag_values=FLAGS)
flags.DEFINE_enum('dp', 'server', accounting.MODES,
                  'server: central DP-FedAvg; client: local DP.',
                  flag_values=FLAGS)
flags.DEFINE_float('dp_delta', 1e-5, 'delta, in (0, 1).', flag_values=FLAGS)
flags.DEFINE_enum('sampling', 'fixed', accounting.SAMPLING_METHODS,
                  'As train.py: fixed = k of N without replacement; poisson ='
                  ' each client with probability --client_fraction.',
                  flag_values=FLAGS)
flags.DEFINE_float('client_fraction', None,
                   'Poisson probability q, or the fixed fraction of clients.',
                   flag_values=FLAGS)
flags.DEFINE_integer('clients_per_round', None,
                     'k, with --sampling=fixed.', flag_values=FLAGS)
flags.DEFINE_integer('num_clients', None,
                     'N training clients, with --sampling=fixed.',
                     flag_values=FLAGS)
flags.DEFINE_enum('accountant', 'rdp', accounting.ACCOUNTANTS,
                  'rdp: what train.py reports as dp_epsilon and stops on;'
                  ' pld: tighter (Poisson or client-level only), slower.',
                  flag_values=FLAGS)
_SAMPLING_FLAGS = ('sampling', 'client_fraction', 'clients_per_round',
                   'num_clients')


def run(argv: list[str]) -> str:
  """Parses `argv` (argv[0] = program) and returns the line to print;
  ValueError (one line) for bad flags."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    raise ValueError(str(e)) from None
  if len(rest) > 1:
    raise ValueError(f'unexpected positional arguments {rest[1:]}')
  f = FLAGS
  return calibrate.noise_multiplier_line(
      f.target_epsilon, f.rounds, mode=f.dp, delta=f.dp_delta,
      sampling=f.sampling, client_fraction=f.client_fraction,
      clients_per_round=f.clients_per_round, num_clients=f.num_clients,
      accountant=f.accountant,
      given=[name for name in _SAMPLING_FLAGS if FLAGS[name].present])


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv if argv is None else argv
  if any(a in ('--help', '-h', '--helpfull') for a in argv[1:]):
    print(__doc__)
    print(FLAGS.get_help())
    return 0
  try:
    print(run(argv))
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
