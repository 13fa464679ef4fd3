"""The algorithms (`SPECS`), their validated configuration, and the builder.

`AlgorithmConfig(algorithm, weighted=..., dp=..., **hyperparameters)` checks
every algorithm rule, here and in the specs, once: unknown algorithm, a
hyperparameter the algorithm does not use, a value out of range, the spec's
combination rules, and the two axes that wrap an algorithm:

* privacy (`dp`, a `privacy.DPConfig`): applies to specs with `dp_capable`
  (their model aggregator becomes the DP one) and needs uniform weighting;
* clustering (`clustering='cosine'|'l2'` and its hyperparameters): clustered
  FL (Sattler et al. 2020; Ghosh et al. 2020) runs a `clusterable`
  algorithm's rounds per cluster. It is an axis, not an algorithm: the
  clustered process is FedAvg with K models and per-client assignments;
* aggregation (`aggregation`, an `aggregators.config.AggregationConfig`):
  the robust rule of the model aggregator, composed before DP
  (`model_aggregator()`); every algorithm that aggregates model deltas
  through a factory takes it (the FedAvg family, FedSGD, SCAFFOLD, and
  clustered FL once per cluster);
* attack (`attack`, an `attacks.config.AttackConfig`): data attacks act in
  the run's data path and apply to every algorithm; update attacks wrap the
  client work of specs with `update_attacks`.

Adding an algorithm: write its module with a `SPEC`, add it to `SPECS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any, Optional

import tensorflow_federated as tff

from tff_research.algorithms import base
from tff_research.algorithms import client_state
from tff_research.algorithms import clustering as clustering_lib
from tff_research.algorithms import clustered
from tff_research.algorithms import fed_avg
from tff_research.algorithms import fed_prox
from tff_research.algorithms import fed_sgd
from tff_research.algorithms import hyperparameters as hp
from tff_research.algorithms import private
from tff_research.aggregators import collection
from tff_research.aggregators import config as aggregation_config
from tff_research.aggregators import excluding_mean
from tff_research.algorithms import scaffold
from tff_research.algorithms import server_optimizers
from tff_research.algorithms import spec as spec_lib
from tff_research.attacks import config as attack_config

ModelFn = Callable[[], tff.learning.models.VariableModel]

SPECS: dict[str, spec_lib.AlgorithmSpec] = {}


def register(spec: spec_lib.AlgorithmSpec) -> spec_lib.AlgorithmSpec:
  """Adds `spec` to the registry (tests register their own algorithms)."""
  if spec.name in SPECS and SPECS[spec.name] is not spec:
    raise ValueError(f'algorithm {spec.name!r} is registered twice')
  for h in spec.hyperparameters:
    known = _known_hyperparameter(h.name)
    if known is not None and known is not h:
      raise ValueError(
          f'hyperparameter {h.name!r} of {spec.name!r} is declared twice:'
          ' share one Hyperparameter object')
  SPECS[spec.name] = spec
  return spec


def _known_hyperparameter(name: str) -> Optional[spec_lib.Hyperparameter]:
  for s in SPECS.values():
    for h in s.hyperparameters:
      if h.name == name:
        return h
  for h in CLUSTERING_HYPERPARAMETERS:
    if h.name == name:
      return h
  return None


# --- the clustering axis ---
CLUSTERING_METRICS = ('none',) + clustered.METRICS
_CLUSTERED = lambda h: h.get('clustering', 'none') != 'none'  # pylint: disable=unnecessary-lambda-assignment
CLUSTERING_HYPERPARAMETERS = (
    spec_lib.Hyperparameter(
        'clustering', str, 'none',
        'Clustered FL, FedAvg within each cluster: none = one model; cosine ='
        ' clients grouped by the cosine similarity of their updates (Sattler'
        ' et al. 2020); l2 = by the L2 distance between them (Ghosh et al.'
        ' 2020).', choices=CLUSTERING_METRICS),
    spec_lib.Hyperparameter(
        'num_clusters', int, 2,
        'With --clustering: K in [1, 8], the most clusters that may form.',
        valid=lambda v: 1 <= v <= clustered.MAX_CLUSTERS,
        valid_text=f'must be in [1, {clustered.MAX_CLUSTERS}]',
        applies=_CLUSTERED, applies_text='--clustering=cosine|l2'),
    spec_lib.Hyperparameter(
        'recluster_every', int, 10,
        'With --clustering: rounds between clustering steps (>= 1).',
        valid=lambda v: v >= 1, valid_text='must be >= 1',
        applies=_CLUSTERED, applies_text='--clustering=cosine|l2'),
    spec_lib.Hyperparameter(
        'cluster_warmup_rounds', int, 10,
        'With --clustering: rounds of plain FedAvg before the first'
        ' clustering step (>= 0).',
        valid=lambda v: v >= 0, valid_text='must be >= 0',
        applies=_CLUSTERED, applies_text='--clustering=cosine|l2'),
    spec_lib.Hyperparameter(
        'split_rule', str, clustered.DEFAULT_SPLIT_RULE,
        "With --clustering: sattler = Sattler et al.'s Algorithm 1"
        ' (stationarity, complete-linkage bipartition, separation bound);'
        ' gap = every cross pair farther apart than every within pair.',
        choices=clustering_lib.SPLIT_RULES,
        applies=_CLUSTERED, applies_text='--clustering=cosine|l2'),
    spec_lib.Hyperparameter(
        'split_separation', str, clustered.DEFAULT_SPLIT_SEPARATION,
        'With --split_rule=sattler: group_mean = cosine of the two sides\''
        ' mean updates; pairwise_max = the paper\'s largest cross-pair'
        ' cosine (docs/clustered.md: it does not separate real writers).',
        choices=clustering_lib.SEPARATION_STATISTICS,
        applies=_CLUSTERED, applies_text='--clustering=cosine|l2'),
    spec_lib.Hyperparameter(
        'split_gamma_max', float, clustered.DEFAULT_SPLIT_GAMMA_MAX,
        'With --split_rule=sattler: split only if sqrt((1 - alpha) / 2)'
        ' exceeds it (0.775: alpha < -0.2; use ~0.64 with pairwise_max).',
        valid=lambda v: 0 <= v < 1, valid_text='must be in [0, 1)',
        applies=_CLUSTERED, applies_text='--clustering=cosine|l2'),
    spec_lib.Hyperparameter(
        'split_mean_norm_max', float, clustered.DEFAULT_SPLIT_MEAN_NORM_MAX,
        'With --split_rule=sattler: epsilon_1, split only when the mean'
        ' update norm is below it (inf = off).',
        valid=lambda v: v > 0, valid_text='must be > 0',
        applies=_CLUSTERED, applies_text='--clustering=cosine|l2'),
    spec_lib.Hyperparameter(
        'split_max_norm_min', float, clustered.DEFAULT_SPLIT_MAX_NORM_MIN,
        'With --split_rule=sattler: epsilon_2, split only when the largest'
        ' client update norm is above it (0 = off).',
        valid=lambda v: 0 <= v < float('inf'), valid_text='must be >= 0 and'
        ' finite', applies=_CLUSTERED, applies_text='--clustering=cosine|l2'),
)


def _build_clustered(config: 'AlgorithmConfig', model_fn, client_ids, tables):
  # Clustered FL keeps each client's cluster: state indexed by client_ids.
  h = config.values
  algorithm = clustered.build_clustered_fed_avg(
      model_fn,
      client_ids,
      tables=tables,
      client_optimizer=hp.build_client_optimizer(h),
      metric=h['clustering'],
      num_clusters=h['num_clusters'],
      recluster_every=h['recluster_every'],
      warmup_rounds=h['cluster_warmup_rounds'],
      server_learning_rate=h['server_learning_rate'],
      weighted=config.weighted,
      split_rule=h['split_rule'],
      split_separation=h['split_separation'],
      split_gamma_max=h['split_gamma_max'],
      split_mean_norm_max=h['split_mean_norm_max'],
      split_max_norm_min=h['split_max_norm_min'],
      model_aggregator=(None if config.aggregation.is_mean else
                        config.model_aggregator(len(client_ids))),
      update_fn=config.attack.update_fn(),
  )
  algorithm.set_attack(config.attack, client_ids)
  return algorithm


for _spec in (
    fed_avg.SPEC,
    fed_sgd.SPEC,
    fed_prox.SPEC,
    *server_optimizers.SPECS,
    scaffold.SPEC,
):
  register(_spec)


def algorithm_names() -> tuple[str, ...]:
  return tuple(SPECS)


def get_spec(algorithm: str) -> spec_lib.AlgorithmSpec:
  try:
    return SPECS[algorithm]
  except KeyError:
    raise ValueError(
        f'--algorithm={algorithm} is not valid; valid:'
        f' {", ".join(SPECS)}') from None


def hyperparameters_of(spec: spec_lib.AlgorithmSpec):
  """The hyperparameters `spec` may take: its own and its axes'."""
  axes = CLUSTERING_HYPERPARAMETERS if spec.clusterable else ()
  return (*spec.hyperparameters, *axes)


def all_hyperparameters() -> dict[str, spec_lib.Hyperparameter]:
  """Every hyperparameter of every registered algorithm, by name."""
  out = {}
  for s in SPECS.values():
    for h in hyperparameters_of(s):
      out.setdefault(h.name, h)
  for h in CLUSTERING_HYPERPARAMETERS:
    out.setdefault(h.name, h)
  return out


def scope(name: str) -> str:
  """Where hyperparameter `name` applies, for error messages."""
  users = [s.name for s in SPECS.values()
           if any(h.name == name for h in hyperparameters_of(s))]
  h = all_hyperparameters()[name]
  where = f'--algorithm={"|".join(users)}'
  if len(users) == len(SPECS):
    where = 'every --algorithm'
  elif len(users) > len(SPECS) / 2:
    others = [a for a in SPECS if a not in users]
    where = f'every --algorithm except {"|".join(others)}'
  return f'{h.applies_text} ({where})' if h.applies_text else where


def resolve(
    spec: spec_lib.AlgorithmSpec, given: Mapping[str, Any],
    lenient: bool = False,
) -> dict[str, Any]:
  """Given hyperparameters -> every hyperparameter `spec` uses, resolved.

  Raises ValueError (one line) for an unknown name, a value out of range or
  a hyperparameter that does not apply (to this algorithm, or with the other
  values, e.g. `client_momentum` without `client_optimizer=sgdm`); with
  `lenient`, hyperparameters that do not apply are dropped instead (a run
  recorded by an older version, a config derived for another algorithm).
  """
  if lenient:
    own = {h.name for h in hyperparameters_of(spec)}
    given = {k: v for k, v in given.items() if k in own}
  known = all_hyperparameters()
  for name in given:
    if name not in known:
      raise ValueError(
          f'{name!r} is not a hyperparameter of any algorithm; known:'
          f' {", ".join(sorted(known))}')
  own = {h.name: h for h in hyperparameters_of(spec)}
  values = {}
  for h in own.values():
    values[h.name] = (h.check(given[h.name]) if h.name in given
                      else spec.default(h))
  for name, value in given.items():
    if name not in own:
      raise ValueError(_does_not_apply(name, value, spec, values))
  for h in own.values():
    if h.applies is not None and not h.applies(values):
      if h.name in given and not lenient:
        raise ValueError(_does_not_apply(h.name, given[h.name], spec, values))
      del values[h.name]
  return values


def _does_not_apply(name, value, spec, values) -> str:
  shown = f'--{name}' if value is None else f'--{name}={value}'
  context = ''
  if name == 'client_momentum' and 'client_optimizer' in values:
    context = f' with --client_optimizer={values["client_optimizer"]}'
  return (f'{shown} does not apply to --algorithm={spec.name}{context}; it'
          f' applies to {scope(name)}')


_FIELDS = ('algorithm', 'weighted', 'dp', 'aggregation', 'attack')


@dataclasses.dataclass(frozen=True, init=False)
class AlgorithmConfig:
  """An algorithm and its resolved hyperparameters; valid by construction.

  `AlgorithmConfig('fedadam').server_learning_rate` is Reddi et al.'s
  10^-2.5; a hyperparameter the algorithm does not use reads as None.

  Attributes:
    algorithm: the registered name.
    weighted: weight client updates by their number of examples.
    hyperparameters: ((name, value), ...) of every hyperparameter the
      algorithm uses, resolved, sorted by name.
    dp: the DP mechanism (`privacy.dp_config.DPConfig`), None = no DP.
    aggregation: the robust rule (`aggregators.config.AggregationConfig`).
    attack: the simulated attack (`attacks.config.AttackConfig`).
  """

  algorithm: str
  weighted: bool
  hyperparameters: tuple[tuple[str, Any], ...]
  dp: Any
  aggregation: aggregation_config.AggregationConfig
  attack: attack_config.AttackConfig

  def __init__(self, algorithm: str = 'fedavg', *, weighted: bool = True,
               dp: Any = None, hyperparameters=(), lenient: bool = False,
               aggregation: Optional[
                   aggregation_config.AggregationConfig] = None,
               attack: Optional[attack_config.AttackConfig] = None,
               **given):
    spec = get_spec(algorithm)
    given = {**dict(hyperparameters), **given}
    values = resolve(spec, given, lenient)
    object.__setattr__(self, 'algorithm', algorithm)
    object.__setattr__(self, 'weighted', bool(weighted))
    object.__setattr__(self, 'hyperparameters', tuple(sorted(values.items())))
    object.__setattr__(self, 'dp', dp)
    object.__setattr__(self, 'aggregation',
                       aggregation or aggregation_config.AggregationConfig())
    object.__setattr__(self, 'attack', attack or attack_config.AttackConfig())
    if spec.check is not None:
      spec.check(self)
    self._check_dp()
    self._check_axes()

  def _check_axes(self) -> None:
    """The aggregation and attack axes against the algorithm (one line)."""
    rule = self.aggregation
    refusal = rule.refusal(weighted=self.weighted,
                           dp=None if self.dp is None else self.dp.mode)
    if refusal:
      raise ValueError(refusal)
    attack = self.attack
    if attack.attacks_updates and not self.spec.update_attacks:
      capable = '|'.join(s.name for s in SPECS.values() if s.update_attacks)
      what = (f'--attack={attack.kind}' if attack.kind != 'backdoor' else
              f'--attack=backdoor --attack_scale={attack.scale:g}')
      raise ValueError(
          f'{what} is not valid with --algorithm={self.algorithm}'
          ': it changes the update inside the client work, which only'
          f' --algorithm={capable} (and --clustering) expose; data attacks'
          ' (label_flip, backdoor with --attack_scale=1) apply to every'
          ' algorithm')

  def _check_dp(self) -> None:
    if self.dp is None:
      return
    spec = self.spec
    if not spec.dp_capable or self.clustered:
      capable = '|'.join(s.name for s in SPECS.values() if s.dp_capable)
      raise ValueError(
          f'--dp={self.dp.mode} is not valid with --algorithm={self.algorithm}'
          + (f' --clustering={self.clustering}' if self.clustered else '')
          + f': DP replaces the model aggregator of --algorithm={capable}'
          ' (without clustering)')
    if self.weighted:
      # As TFF's DifferentiallyPrivateFactory, which is unweighted only.
      raise ValueError(
          f'--dp={self.dp.mode} requires uniform client weighting (example'
          " weights would scale a client's clipped update by its data size"
          ' and break the sensitivity bound): add --noweight_by_size')

  def __getattr__(self, name: str):
    # Only called for names that are not fields: hyperparameters.
    if name.startswith('_') or name not in all_hyperparameters():
      raise AttributeError(name)
    return self.values.get(name)

  @property
  def values(self) -> dict[str, Any]:
    """name -> value of every hyperparameter the algorithm uses."""
    return dict(self.hyperparameters)

  @property
  def spec(self) -> spec_lib.AlgorithmSpec:
    return SPECS[self.algorithm]

  @property
  def clustered(self) -> bool:
    return self.values.get('clustering', 'none') != 'none'

  def model_aggregator(self, capacity: int = collection.DEFAULT_CAPACITY):
    """The model aggregator every algorithm that aggregates model deltas
    through a factory takes: the robust rule, then DP
    (`aggregators.config.AggregationConfig.compose`).

    Without DP, the rule's factory: the mean is the one that excludes
    non-finite client updates and counts them (`excluding_mean`, both a
    weighted and an unweighted factory; TFF's own mean averages a diverged
    client's zeroed delta into a uniform mean and counts nothing), and
    every rule reports the positions it kept (`kept_share`, float32[
    `capacity`]: the most clients a round can have, the training clients;
    0 = unknown, collection's default), except the plain mean of a run
    without an attack, which has no positions to count.
    With DP, the DP aggregator of `dp` (it zeroes non-finite updates and
    counts them itself), behind the rule if it is not the mean.
    """
    if self.dp is None and self.aggregation.is_mean and not self.attack.active:
      # Nothing counts kept positions: the plain excluding mean.
      return excluding_mean.ExcludingMeanFactory()
    dp_factory = None if self.dp is None else self.dp.model_aggregator()
    return self.aggregation.compose(
        dp_factory, int(capacity) or collection.DEFAULT_CAPACITY)

  def replace(self, **changes) -> 'AlgorithmConfig':
    """A copy with `changes` (fields or hyperparameters), re-validated.

    With another `algorithm`, the values that differed from this
    algorithm's defaults carry over where the new one uses them; the rest
    take the new algorithm's defaults.
    """
    fields = {k: changes.pop(k) for k in _FIELDS if k in changes}
    hyperparameters = self.values
    lenient = False
    if fields.get('algorithm', self.algorithm) != self.algorithm:
      known = all_hyperparameters()
      hyperparameters = {k: v for k, v in hyperparameters.items()
                         if v != self.spec.default(known[k])}
      lenient = True
    explicit = AlgorithmConfig(
        fields.get('algorithm', self.algorithm),
        weighted=fields.get('weighted', self.weighted),
        dp=fields.get('dp', self.dp), lenient=lenient,
        aggregation=fields.get('aggregation', self.aggregation),
        attack=fields.get('attack', self.attack),
        **{**hyperparameters, **changes})
    if lenient and changes:
      # Values given now must apply: validate them strictly.
      resolve(explicit.spec, {**{k: v for k, v in explicit.values.items()},
                              **changes})
    return explicit


def build_algorithm(
    config: AlgorithmConfig,
    model_fn: ModelFn,
    client_ids: Sequence[str] = (),
    tables: client_state.Tables = client_state.IN_MEMORY,
    cohorts: int = 1,
) -> base.FederatedAlgorithm:
  """The algorithm `config` describes, with its axes (clustering, DP).

  Args:
    config: a valid configuration.
    model_fn: builds a fresh `tff.learning.models.VariableModel`.
    client_ids: every training client, in a fixed order (per-client state is
      indexed by position in it).
    tables: where per-client rows live (a run's directory; memory by
      default).
    cohorts: the number of cohorts a round's clients run in, for the
      algorithms that train cohorts (the FedAvg family's
      `cohort_client_work`, SCAFFOLD's `scaffold_cohorts`): one per TFF
      worker.
  """
  client_ids = tuple(client_ids)
  if config.clustered:
    return _build_clustered(config, model_fn, client_ids, tables)
  if config.dp is not None:
    # The DP aggregator's denominator and the accountant need N.
    config = dataclasses.replace(
        config, dp=dataclasses.replace(config.dp, num_clients=len(client_ids)))
  if config.spec.per_client_state:
    algorithm = config.spec.build(config, model_fn, client_ids, tables)
  else:
    algorithm = config.spec.build(config, model_fn, client_ids)
  algorithm.cohorts = max(1, int(cohorts))
  algorithm.set_attack(config.attack, client_ids)
  if config.dp is not None:
    algorithm = private.PrivateAlgorithm(algorithm, config.dp, client_ids)
  return algorithm


def markdown_table() -> str:
  """The README's algorithm table, from the specs (a test keeps them equal)."""
  def mark(flag):
    return 'yes' if flag else '-'
  lines = ['| `--algorithm` | paper | how | `--dp` | `--clustering` |'
           ' per-client state | docs |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  for s in SPECS.values():
    lines.append(
        f'| `{s.name}` | {s.paper} | {s.summary} | {mark(s.dp_capable)} |'
        f' {mark(s.clusterable)} | {mark(s.per_client_state)} |'
        f' [{s.docs}]({s.docs}) |')
  return '\n'.join(lines)
