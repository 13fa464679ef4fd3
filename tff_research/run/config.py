"""`ExperimentConfig`: everything a run is, as one frozen value.

The binaries build it once from their flags (`cli/flags.py`); the
library receives it and never reads absl flags. Studies derive variants with
`dataclasses.replace`. `hparams.json` is `to_hparams(config)`, a flat
mapping keyed by flag name, and `from_hparams` rebuilds the config from it
(also from runs recorded before a flag existed: missing keys take defaults).
`workers` and `parallel_cohorts` (where and how a run executes, not what it
computes) are not recorded: a run may be resumed on other workers, or
locally.

Each range rule lives in the constructor of the value it constrains
(`TrainConfig`, `EvaluationConfig`, `algorithms.AlgorithmConfig`,
`privacy.DPConfig`); rules across values in `ExperimentConfig`. They
raise ValueError; `FlagError` is the ValueError of a flag that does not apply
where it is given, raised by whoever decides which flags apply (the command
line, `cli.flags`, and the reference experiments, `reference.common`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
import dataclasses
from typing import Any, Optional

from tff_research import algorithms
from tff_research.aggregators import config as aggregation_config
from tff_research.algorithms import registry
from tff_research.attacks import config as attack_config
from tff_research.data import federated_data
from tff_research.data import partition
from tff_research.data import sampling
from tff_research.execution import remote
from tff_research.privacy import dp_config

EVAL_ON = ('test_split', 'heldout_clients')
DATASETS = federated_data.DATASETS
DEFAULT_CLIENTS_PER_ROUND = sampling.DEFAULT_CLIENTS_PER_ROUND


class FlagError(ValueError):
  """A flag value or combination is invalid (one line)."""


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def _at_least(obj, names, minimum):
  for name in names:
    value = getattr(obj, name)
    _require(value >= minimum,
             f'--{name}={value} is not valid: must be >= {minimum}')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How rounds run: budget, cohort, local work, checkpoints."""

  total_rounds: int = 20
  clients_per_round: Optional[int] = None
  client_fraction: Optional[float] = None
  client_epochs: int = 1
  batch_size: int = 20
  shuffle_buffer: int = 100
  rounds_per_checkpoint: int = 5
  # 'fixed': exactly k clients; 'poisson': each with client_fraction (DP).
  sampling: str = 'fixed'
  # Each selected client fails to report with this probability.
  dropout_rate: float = 0.0

  def __post_init__(self):
    _at_least(self, ('total_rounds', 'client_epochs', 'batch_size',
                     'shuffle_buffer', 'rounds_per_checkpoint'), 1)
    _require(self.clients_per_round is None or self.client_fraction is None,
             'set only one of --clients_per_round and --client_fraction')
    if self.clients_per_round is not None:
      _at_least(self, ('clients_per_round',), 1)
    if self.client_fraction is not None:
      _require(0 < self.client_fraction <= 1,
               f'--client_fraction={self.client_fraction} is not valid: must'
               ' be in (0, 1]')
    _require(self.sampling in sampling.SAMPLING_METHODS,
             f'--sampling={self.sampling} is not valid; valid:'
             f' {", ".join(sampling.SAMPLING_METHODS)}')
    if self.sampling == 'poisson':
      _require(self.client_fraction is not None,
               '--sampling=poisson includes each client independently with'
               ' probability --client_fraction: set --client_fraction (not'
               ' --clients_per_round)')
    _require(0.0 <= self.dropout_rate <= sampling.MAX_DROPOUT_RATE,
             f'--dropout_rate={self.dropout_rate} is not valid: must be in'
             f' [0, {sampling.MAX_DROPOUT_RATE}]')


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
  """When and on what the global model is evaluated."""

  eval_every: int = 5
  eval_on: str = 'test_split'
  heldout_client_fraction: float = 0.2
  max_eval_clients: int = 0
  eval_batch_size: int = 100
  # > 0: evaluate on a validation split of the training data instead
  # (run/validation_split.py).
  validation_fraction: float = 0.0

  def __post_init__(self):
    _at_least(self, ('eval_every', 'eval_batch_size'), 1)
    _require(self.eval_on in EVAL_ON,
             f'--eval_on={self.eval_on} is not valid; valid:'
             f' {", ".join(EVAL_ON)}')
    if self.eval_on == 'heldout_clients':
      _require(0 < self.heldout_client_fraction < 1,
               f'--heldout_client_fraction={self.heldout_client_fraction} is'
               ' not valid: must be in (0, 1)')
    _require(0.0 <= self.validation_fraction < 1.0,
             f'--validation_fraction={self.validation_fraction} is not valid:'
             ' must be in [0, 1) (0 = evaluate on the test data)')
    _require(self.max_eval_clients >= 0,
             f'--max_eval_clients={self.max_eval_clients} is not valid: must'
             ' be >= 0 (0 = all)')


def check_data(data: federated_data.DataConfig) -> None:
  """The ranges of a `DataConfig` (ValueError, one line)."""
  _require(data.dataset in DATASETS,
           f'--dataset={data.dataset} is not valid; valid: {", ".join(DATASETS)}')
  _at_least(data, ('num_clients',), 1)
  if data.dirichlet_alpha is not None:
    _require(data.dirichlet_alpha > 0,
             f'--dirichlet_alpha={data.dirichlet_alpha} is not valid: must be'
             ' > 0 (small = heterogeneous)')
  _require(0.0 <= data.data_balance <= 1.0,
           f'--data_balance={data.data_balance} is not valid: must be in'
           ' [0, 1]')
  _require(0.0 < data.test_fraction < 1.0,
           f'--test_fraction={data.test_fraction} is not valid: must be in'
           ' (0, 1)')
  _require(0.0 <= data.permute_labels_fraction <= 1.0,
           f'--permute_labels_fraction={data.permute_labels_fraction} is not'
           ' valid: must be in [0, 1]')
  if data.permute_labels_fraction:
    num_classes = num_classes_of(data.dataset)
    _require(1 <= data.label_permutation_shift < num_classes,
             f'--label_permutation_shift={data.label_permutation_shift} is not'
             f' valid for --dataset={data.dataset}: must be in [1,'
             f' {num_classes})')


def num_classes_of(dataset: str) -> int:
  return 62 if dataset == 'emnist' else 10


def repartitions(data: federated_data.DataConfig) -> bool:
  """Whether EMNIST is pooled and re-partitioned (its writers discarded)."""
  return (data.dirichlet_alpha is not None or data.data_balance != 1.0
          or bool(data.missing_classes))


def distributed_refusal(algorithm: registry.AlgorithmConfig) -> Optional[str]:
  """Why `algorithm` cannot run on remote workers, or None if it can.

  The one place the rule lives: the algorithm's spec (`distributed`) and
  the axes that wrap it. Every combination allowed here is tested equal to
  local execution (tests/test_scale_out.py).
  """
  spec = algorithm.spec
  if not spec.distributed:
    return (f'--algorithm={spec.name} has rounds that TFF\'s mergeable'
            ' execution cannot split across workers (one aggregation level,'
            ' results at the server); run it without --workers')
  return None


# Cohorts side by side on the local worker when --parallel_cohorts is unset:
# a constant, not the machine's cores, so that the same flags train the same
# model on any machine (the layout decides dropout masks; see
# ExperimentConfig.parallel_cohorts). 2 = the cores of the machines measured.
LOCAL_PARALLEL_COHORTS = 2


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """One run: what it trains, on what, how, and where its outputs go.

  Attributes:
    experiment_name: outputs go to `logdir/experiment_name/`.
    logdir: root of all runs.
    seed: every random choice of the run is a function of (seed, round).
    data: the federation (`data.federated_data.DataConfig`).
    model: a built-in model name (`models.MODEL_NAMES`) or
      `package.module:function`, a function of `num_classes` returning an
      uncompiled Keras model (see `models.resolve_model`).
    algorithm: the algorithm, its hyperparameters, DP and clustering.
    training: rounds, cohorts, local work, checkpoints.
    evaluation: held-out evaluation.
    progress: show a progress bar.
    workers: `host:port` of remote TFF workers that run each round's client
      work (`execution.remote`); empty = this machine. Not part of what
      the run computes: not in hparams.json, free to change on resume.
    parallel_cohorts: cohorts a FedAvg-family round's clients run in at
      once on each worker, each on one CPU thread; None =
      `LOCAL_PARALLEL_COHORTS` on the local worker, 1 per remote worker.
      Not in hparams.json: it changes the order of float additions
      (results agree to 1e-6) and, for a model with dropout, its masks
      (TensorFlow's seeded dropout restarts its sequence in every call).
  """

  experiment_name: str = 'experiment'
  logdir: str = 'logdir'
  seed: int = 0
  data: federated_data.DataConfig = federated_data.DataConfig()
  model: str = 'cnn'
  algorithm: registry.AlgorithmConfig = dataclasses.field(
      default_factory=registry.AlgorithmConfig)
  training: TrainConfig = TrainConfig()
  evaluation: EvaluationConfig = EvaluationConfig()
  progress: bool = True
  workers: tuple[str, ...] = ()
  parallel_cohorts: Optional[int] = None

  def __post_init__(self):
    object.__setattr__(self, 'workers', remote.parse_workers(self.workers))
    _require(self.parallel_cohorts is None or (
        isinstance(self.parallel_cohorts, int) and self.parallel_cohorts >= 1),
             f'--parallel_cohorts={self.parallel_cohorts!r} is not valid:'
             ' must be an integer >= 1')
    if self.workers:
      reason = distributed_refusal(self.algorithm)
      _require(reason is None, f'--workers does not apply: {reason}')
    if self.data.seed != self.seed:
      object.__setattr__(self, 'data',
                         dataclasses.replace(self.data, seed=self.seed))
    check_data(self.data)
    spec = self.algorithm.spec
    for name, (value, why) in spec.fixed_training.items():
      actual = getattr(self.training, name)
      _require(actual == value,
               f'--{name}={actual} does not apply to --algorithm='
               f'{spec.name}: {why}')
    self._check_robustness()
    dp = self.algorithm.dp
    if dp is not None:
      # The accountant assumes the loop's sampling: derive it, never restate.
      synced = dataclasses.replace(
          dp, sampling=self.training.sampling,
          clients_per_round=self.training.clients_per_round,
          client_fraction=self.training.client_fraction, seed=self.seed)
      if synced != dp:
        object.__setattr__(self, 'algorithm',
                           dataclasses.replace(self.algorithm, dp=synced))

  def _check_robustness(self) -> None:
    """An attack's seed is the run's (no attack keeps the default 0, so
    runs differing only in seed have equal algorithm configs); the rule
    against the round size and the backdoor target against the classes
    (one line each)."""
    attack = self.algorithm.attack
    if attack.active and attack.seed != self.seed:
      object.__setattr__(self, 'algorithm', dataclasses.replace(
          self.algorithm, attack=dataclasses.replace(attack, seed=self.seed)))
    attack.check_classes(num_classes_of(self.data.dataset))
    training = self.training
    refusal = attack.sampling_refusal(training.sampling,
                                      dp=self.algorithm.dp is not None)
    _require(refusal is None, refusal or '')
    if training.sampling == 'fixed' and training.client_fraction is None:
      refusal = self.algorithm.aggregation.refusal(
          weighted=self.algorithm.weighted,
          dp=None if self.algorithm.dp is None else self.algorithm.dp.mode,
          clients_per_round=(training.clients_per_round
                             or DEFAULT_CLIENTS_PER_ROUND))
      _require(refusal is None, refusal or '')

  @property
  def run_dir(self) -> str:
    import os  # pylint: disable=g-import-not-at-top
    return os.path.join(self.logdir, self.experiment_name)


# --- hparams.json: the config as a flat mapping keyed by flag name ---

_DP_FIELDS = {  # flag -> DPConfig field
    'dp_clip': 'clip', 'dp_noise_multiplier': 'noise_multiplier',
    'dp_delta': 'delta', 'dp_target_epsilon': 'target_epsilon',
    'dp_adaptive_clipping': 'adaptive_clipping',
    'dp_target_quantile': 'target_quantile',
}
_DP_DEFAULTS = {'dp_clip': None, 'dp_noise_multiplier': None,
                'dp_delta': 1e-5, 'dp_target_epsilon': None,
                'dp_adaptive_clipping': False, 'dp_target_quantile': 0.5}
_DATA_FIELDS = ('dataset', 'data_dir', 'num_clients', 'dirichlet_alpha',
                'data_balance', 'missing_classes', 'test_fraction',
                'permute_labels_fraction', 'label_permutation_shift')
_TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
_EVAL_FIELDS = ('eval_every', 'eval_on', 'heldout_client_fraction',
                'max_eval_clients', 'validation_fraction')


def _missing_classes_text(groups) -> str:
  return ';'.join(','.join(str(c) for c in g) for g in groups or ())


def to_hparams(config: ExperimentConfig) -> dict[str, Any]:
  """The flat flag-name -> value mapping hparams.json records.

  Hyperparameters the algorithm does not use are recorded as None.
  """
  out: dict[str, Any] = dict(experiment_name=config.experiment_name,
                             logdir=config.logdir, seed=config.seed,
                             progress=config.progress, model=config.model)
  for name in _DATA_FIELDS:
    out[name] = getattr(config.data, name)
  out['missing_classes'] = _missing_classes_text(config.data.missing_classes)
  alg = config.algorithm
  out['algorithm'] = alg.algorithm
  out['weight_by_size'] = alg.weighted
  values = alg.values
  for name in sorted(registry.all_hyperparameters()):
    out[name] = values.get(name)
  if out.get('clustering') is None:
    out['clustering'] = 'none'
  for name in _TRAIN_FIELDS:
    out[name] = getattr(config.training, name)
  for name in _EVAL_FIELDS:
    out[name] = getattr(config.evaluation, name)
  out[aggregation_config.FLAG] = alg.aggregation.name
  rule = alg.aggregation.values
  for name in aggregation_config.parameter_names():
    out[name] = rule.get(name)
  attack = alg.attack
  out.update(attack=attack.kind, malicious_fraction=attack.malicious_fraction,
             malicious_per_round=attack.per_round, attack_scale=attack.scale, backdoor_target=attack.backdoor_target)
  dp = alg.dp
  out['dp'] = 'none' if dp is None else dp.mode
  for flag, field in _DP_FIELDS.items():
    out[flag] = _DP_DEFAULTS[flag] if dp is None else getattr(dp, field)
  return out


def default_hparams() -> dict[str, Any]:
  """`to_hparams` of the default config: every flag's default."""
  return to_hparams(ExperimentConfig())


def from_hparams(
    values: Mapping[str, Any],
    given: Optional[Collection[str]] = None,
) -> ExperimentConfig:
  """Rebuilds the config from a flat mapping (hparams.json, or flags).

  Args:
    values: flag name -> value; missing names take their defaults (runs
      recorded before a flag existed).
    given: the names the user set explicitly (a command line). Algorithm
      hyperparameters among them must apply to the algorithm; hyperparameters
      not given take the algorithm's defaults. None (a recorded run): every
      recorded value that applies is used, the rest ignored.

  Raises:
    ValueError: a value or combination is invalid (one line).
  """
  v = {**default_hparams(), **values}
  data = federated_data.DataConfig(
      **{name: v[name] for name in _DATA_FIELDS if name != 'missing_classes'},
      missing_classes=partition.parse_missing_classes(v['missing_classes']
                                                      or ''),
      seed=v['seed'])
  spec = registry.get_spec(v['algorithm'])
  own = {h.name for h in registry.hyperparameters_of(spec)}
  if given is None:
    # Recorded values the algorithm does not use (e.g. client_momentum of
    # a run without sgdm) are dropped by resolving leniently.
    hyperparameters = {n: v[n] for n in own if v.get(n) is not None}
  else:
    hyperparameters = {n: v[n] for n in registry.all_hyperparameters()
                       if n in given}
  dp = None
  if v['dp'] != 'none':
    dp = dp_config.DPConfig(
        mode=v['dp'], **{field: v[flag] for flag, field in _DP_FIELDS.items()},
        sampling=v['sampling'], clients_per_round=v['clients_per_round'],
        client_fraction=v['client_fraction'], seed=v['seed'])
  if given is not None and v.get('clustering') == 'none' and (
      not spec.clusterable):
    hyperparameters.pop('clustering', None)  # 'none' is every algorithm's.
  algorithm = algorithms.AlgorithmConfig(
      v['algorithm'], weighted=v['weight_by_size'], dp=dp,
      lenient=given is None, aggregation=_aggregation(v, given),
      attack=attack_config.AttackConfig(
          kind=v['attack'], malicious_fraction=v['malicious_fraction'],
          per_round=v['malicious_per_round'],
          scale=v['attack_scale'], backdoor_target=v['backdoor_target'],
          seed=v['seed'] if v['attack'] != 'none' else 0),
      **hyperparameters)
  return ExperimentConfig(
      experiment_name=v['experiment_name'], logdir=v['logdir'],
      seed=v['seed'], data=data, model=v['model'], algorithm=algorithm,
      training=TrainConfig(**{n: v[n] for n in _TRAIN_FIELDS}),
      evaluation=EvaluationConfig(**{n: v[n] for n in _EVAL_FIELDS}),
      progress=v['progress'], workers=remote.parse_workers(
          v.get('workers') or ()),
      parallel_cohorts=v.get('parallel_cohorts'))


def _aggregation(v: Mapping[str, Any], given: Optional[Collection[str]]
                 ) -> aggregation_config.AggregationConfig:
  """The robust rule of flat values `v`: the parameters given on a command
  line (each must apply to the rule), or every recorded one the rule takes
  (a recorded run; missing ones take defaults)."""
  names = aggregation_config.parameter_names()
  if given is None:
    return aggregation_config.AggregationConfig(
        v[aggregation_config.FLAG], {n: v.get(n) for n in names},
        lenient=True)
  return aggregation_config.AggregationConfig(
      v[aggregation_config.FLAG], {n: v[n] for n in names if n in given})
