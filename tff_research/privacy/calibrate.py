"""The noise multiplier that meets a privacy budget, for the events a training
run accounts (`accounting`); its command line is `tff_research.cli.calibrate`.

  uv run python -m tff_research.cli.calibrate --target_epsilon=E --rounds=T ...

With mode 'client', `rounds` is the number of rounds one client takes part in
(at most the run's --total_rounds) and sampling does not enter.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Optional

from tff_research.data import sampling as sampling_lib
from tff_research.privacy import accounting

_FIXED_ONLY = ('clients_per_round', 'num_clients')


def _client_level(given: Collection[str]) -> None:
  for name in ('sampling', 'client_fraction', *_FIXED_ONLY):
    if name in given:
      raise ValueError(
          f'--{name} does not apply to --dp=client: the local guarantee'
          ' depends only on how many rounds a client takes part in'
          ' (--rounds)')


def _poisson(client_fraction: Optional[float],
             given: Collection[str]) -> accounting.Sampling:
  if client_fraction is None:
    raise ValueError('--sampling=poisson needs --client_fraction=q in (0, 1]')
  for name in _FIXED_ONLY:
    if name in given:
      raise ValueError(
          f'--{name} does not apply to --sampling=poisson (only q ='
          ' --client_fraction enters)')
  if not 0 < client_fraction <= 1:
    raise ValueError(
        f'--client_fraction={client_fraction} is not valid: must be in'
        ' (0, 1]')
  return accounting.Sampling('poisson', 1, probability=client_fraction)


def _fixed(num_clients: Optional[int], clients_per_round: Optional[int],
           client_fraction: Optional[float]) -> accounting.Sampling:
  if num_clients is None or num_clients < 1:
    raise ValueError(
        f'--num_clients={num_clients} is not valid: --sampling=fixed needs'
        ' the number of training clients N >= 1')
  if (clients_per_round is None) == (client_fraction is None):
    raise ValueError(
        '--sampling=fixed needs exactly one of --clients_per_round and'
        ' --client_fraction')
  k = sampling_lib.fixed_round_size(num_clients, clients_per_round,
                                    client_fraction)
  return accounting.Sampling('fixed', num_clients, clients_per_round=k)


def round_sampling(
    mode: str, sampling: str, *, client_fraction: Optional[float] = None,
    clients_per_round: Optional[int] = None,
    num_clients: Optional[int] = None, given: Collection[str] = (),
) -> Optional[accounting.Sampling]:
  """The client sampling a round is accounted with (None for client-level
  DP). `given`: the names of the sampling flags set on the command line, so
  that one that does not apply is an error. ValueError: one line."""
  if mode == 'client':
    _client_level(given)
    return None
  if sampling == 'poisson':
    return _poisson(client_fraction, given)
  return _fixed(num_clients, clients_per_round, client_fraction)


def _check_budget(target_epsilon: Optional[float], rounds: Optional[int],
                  delta: float) -> None:
  if target_epsilon is None or not target_epsilon > 0:
    raise ValueError(
        f'--target_epsilon={target_epsilon} is not valid: give a budget > 0')
  if rounds is None or rounds < 1:
    raise ValueError(f'--rounds={rounds} is not valid: must be >= 1')
  if not 0 < delta < 1:
    raise ValueError(f'--dp_delta={delta} is not valid: must be in (0, 1)')


def noise_multiplier_line(
    target_epsilon: Optional[float], rounds: Optional[int], *,
    mode: str = 'server', delta: float = 1e-5, sampling: str = 'fixed',
    client_fraction: Optional[float] = None,
    clients_per_round: Optional[int] = None,
    num_clients: Optional[int] = None, accountant: str = 'rdp',
    given: Collection[str] = (),
) -> str:
  """The `--dp_noise_multiplier=z` line that meets `target_epsilon` at
  `delta` after `rounds` rounds (participations, client-level), with the
  epsilon it achieves. The sampling arguments and `given` are those of
  `round_sampling`. ValueError: one line."""
  _check_budget(target_epsilon, rounds, delta)
  events = round_sampling(
      mode, sampling, client_fraction=client_fraction,
      clients_per_round=clients_per_round, num_clients=num_clients,
      given=given)
  if accountant == 'pld' and not accounting.pld_applies(mode, events):
    raise ValueError(
        '--accountant=pld does not handle --sampling=fixed (sampling without'
        ' replacement); use --accountant=rdp or --sampling=poisson')
  z = accounting.calibrate_noise_multiplier(
      target_epsilon=target_epsilon, count=rounds, mode=mode, delta=delta,
      sampling=events, accountant=accountant)
  achieved = accounting.make_accountant(accountant, mode, events).compose(
      accounting.dp_accounting.SelfComposedDpEvent(
          accounting.round_event(mode, z, events), rounds)
  ).get_epsilon(delta)
  what = (
      'client-level (local) DP, per participating client'
      if mode == 'client'
      else f'server-level DP, {events.describe()}'.replace(' of N=1', ''))
  return (
      f'--dp_noise_multiplier={z:.4f}  (epsilon {achieved:.4f} <='
      f' {target_epsilon:g} at delta {delta:g} after {rounds}'
      f' {"participations" if mode == "client" else "rounds"}; {what};'
      f' {accountant.upper()} accountant)')
