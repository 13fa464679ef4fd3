"""The experiment flags: defined once, parsed once into an `ExperimentConfig`.

Only binaries use this module. `define_flags()` defines every flag (the
algorithm hyperparameters from the registered specs, their defaults from
`config.default_hparams()`), in recorded groups; `config_from_flags()` turns
the parsed flags into the config value the library receives, or raises
`FlagError` with one line. Nothing here writes flags back.

What is checked here is only what is about the command line itself: a flag
given that does not apply to the run (`--data_dir` with the offline digits,
`--dp_clip` without `--dp`). Ranges and combinations are checked by the
config values' constructors, once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import sys
from typing import Any, Optional

from absl import flags

from tff_research import attacks
from tff_research import models
from tff_research.aggregators import registry as aggregator_registry
from tff_research.algorithms import registry
from tff_research.attacks import config as attack_config
from tff_research.run import config as config_lib
from tff_research.run import run_directory

FLAGS = flags.FLAGS
FlagError = config_lib.FlagError


_DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, str: flags.DEFINE_string}

# (group, name, type, help); the default is the config's.
_FLAGS = (
    ('experiment', 'experiment_name', str,
     'Run name; outputs go to LOGDIR/NAME/.'),
    ('experiment', 'logdir', str,
     'Root of all run directories (TensorBoard --logdir).'),
    ('experiment', 'seed', int,
     'Seed of every random choice (partition, sampling, shuffling, init).'),
    ('experiment', 'progress', bool, 'Show a progress bar over rounds.'),
    ('data', 'dataset', str,
     'digits: scikit-learn handwritten digits (offline, bundled). emnist /'
     ' emnist_digits: TFF federated EMNIST (62 / 10 classes) from'
     ' --data_dir.'),
    ('data', 'data_dir', str,
     "Directory holding emnist_all.sqlite (TFF cache_dir). Default: TFF's"
     ' ~/.keras/datasets.'),
    ('data', 'num_clients', int,
     'Number of clients to partition centrally held data into.'),
    ('data', 'dirichlet_alpha', float,
     'Dirichlet label skew (Hsu et al. 2019); small = heterogeneous. Unset ='
     ' IID labels.'),
    ('data', 'data_balance', float,
     'Quantity skew in [0, 1]: 1 = equal client sizes, 0 = extremely'
     ' skewed.'),
    ('data', 'missing_classes', str,
     'Label groups clients lack, e.g. "1,3,7;2,5,8;4,6,9": client i lacks'
     ' group i mod (number of groups).'),
    ('data', 'test_fraction', float,
     "Fraction of each client's examples held out as its test split"
     ' (partitioned datasets only).'),
    ('data', 'permute_labels_fraction', float,
     'Fraction of clients whose labels are permuted y -> (y + shift) mod'
     ' num_classes, train and test (an incongruent federation); 0 = none.'),
    ('data', 'label_permutation_shift', int,
     'With --permute_labels_fraction: the shift, in [1, num_classes).'),
    ('model', 'model', str,
     'linear: softmax regression (TFF tutorial); mlp: 2x200 ReLU; cnn:'
     " EMNIST CNN; linear_variable: the tutorial's from-scratch"
     ' VariableModel; or package.module:function, a function of num_classes'
     ' returning an uncompiled Keras model.'),
    ('algorithm', 'algorithm', str, 'Federated algorithm: {algorithms}.'),
    ('algorithm', 'weight_by_size', bool,
     'Weight client updates by number of examples (false = uniform).'),
    ('training', 'total_rounds', int,
     'Rounds to train (a re-run with a larger value continues).'),
    ('training', 'clients_per_round', int,
     'Clients sampled per round (default 10, capped at the number of'
     ' training clients).'),
    ('training', 'client_fraction', float,
     'Fraction of training clients sampled per round (instead of'
     ' --clients_per_round).'),
    ('training', 'client_epochs', int, 'Local epochs per round.'),
    ('training', 'batch_size', int, 'Client batch size.'),
    ('training', 'shuffle_buffer', int,
     'Client shuffle buffer (TFF tutorial: 100).'),
    ('training', 'rounds_per_checkpoint', int,
     'Save a checkpoint every this many rounds (and after the last).'),
    ('training', 'sampling', str,
     'fixed: exactly --clients_per_round (or --client_fraction x clients)'
     ' without replacement; poisson: each client independently with'
     ' probability --client_fraction, as DP-FedAvg assumes (round sizes'
     ' vary; a round can be empty).'),
    ('evaluation', 'eval_every', int,
     'Evaluate on held-out data every this many rounds (and at the end).'),
    ('evaluation', 'eval_on', str,
     "test_split: each client's test examples; heldout_clients: clients"
     ' never trained on (with --clustering each chooses the cluster of least'
     ' loss on its train split and is evaluated on its test split).'),
    ('evaluation', 'heldout_client_fraction', float,
     'With --eval_on=heldout_clients: fraction of clients held out.'),
    ('evaluation', 'validation_fraction', float,
     'In [0, 1): evaluate on a validation split of the training data, never'
     " the test data: this fraction of each client's training examples"
     ' (test_split) or of the training clients (heldout_clients); 0 = off.'),
    ('evaluation', 'max_eval_clients', int,
     'Evaluate on at most this many clients (a fixed seeded subset); 0 ='
     ' all.'),
    ('dp', 'dp', str,
     'Differential privacy: none; server = central DP-FedAvg (clip on'
     ' clients, Gaussian noise on the sum at the server); client = local DP'
     ' (every client clips and noises its own update). Needs'
     ' --noweight_by_size.'),
    ('dp', 'dp_clip', float,
     'With --dp: L2 clip norm C of a client update (the initial clip with'
     ' --dp_adaptive_clipping).'),
    ('dp', 'dp_noise_multiplier', float,
     'With --dp: noise multiplier sigma >= 0; noise std = sigma x clip (see'
     ' `python -m tff_research.cli.calibrate`).'),
    ('dp', 'dp_delta', float,
     'With --dp: the delta epsilon is reported at, in (0, 1).'),
    ('dp', 'dp_target_epsilon', float,
     'With --dp: stop before the round that would exceed this epsilon.'),
    ('dp', 'dp_adaptive_clipping', bool,
     'With --dp=server: adapt the clip to --dp_target_quantile of update'
     ' norms (Andrew et al. 2021).'),
    ('dp', 'dp_target_quantile', float,
     'With --dp_adaptive_clipping: fraction of updates left unclipped, in'
     ' (0, 1).'),
    ('aggregation', 'robust_aggregation', str,
     'The model aggregator\'s rule: {aggregators} (docs/robustness.md);'
     ' mean = the non-finite-excluding mean. {unweighted} take no example'
     ' weight: add --noweight_by_size.'),
    ('attack', 'attack', str,
     'Simulated malicious clients: none; label_flip (y -> C - 1 - y);'
     ' sign_flip (send -s x the honest update); gaussian (send N(0, s^2));'
     ' backdoor (pixel trigger on half of the examples relabelled to'
     ' --backdoor_target, update boosted by s). s = --attack_scale.'),
    ('attack', 'malicious_fraction', float,
     'With --attack: fraction in [0, 1] of the training clients that attack'
     ' (a seeded subset, fixed for the run).'),
    ('attack', 'malicious_per_round', str,
     'With --attack: sampled = a round samples its clients uniformly, so'
     ' its attackers vary (hypergeometric); exact = every round has'
     ' round(--malicious_fraction x clients per round) of them (stratified'
     ' sampling, the Byzantine f-of-n model).'),
    ('attack', 'attack_scale', float,
     'With --attack=sign_flip|gaussian|backdoor: s > 0 (backdoor: the'
     ' model-replacement boost, 1 = none).'),
    ('attack', 'backdoor_target', int,
     'With --attack=backdoor: the class triggered examples are relabelled'
     ' to.'),
    ('simulation', 'dropout_rate', float,
     'Probability in [0, 0.9] that each selected client silently fails to'
     ' report in a round (pure in seed and round); a round where all drop'
     ' leaves the model unchanged.'),
)
# Flags of where and how a run executes, not of what it computes: parsed into
# the config like the others but not recorded in hparams.json
# (all_flag_names() lists the recorded ones), so a run may resume on other
# workers.
_EXECUTION_FLAGS = (
    ('execution', 'workers', str,
     'Comma-separated host:port of TFF workers (`python -m'
     " tff_research.cli.worker --port=P` on each) that run each round's client"
     ' work; unset = this machine. Unauthenticated: private network only.'
     ' See docs/scale_out.md.'),
    ('execution', 'parallel_cohorts', int,
     "A FedAvg-family round's clients run as this many cohorts at once on"
     ' each worker, each on one CPU thread (>= 1; unset: 2 on the local'
     ' worker, 1 per remote worker). Results agree to 1e-6 across values;'
     " a model with dropout draws other masks (see docs/training.md)."),
)
_ENUMS = {
    'dataset': config_lib.DATASETS,
    'eval_on': config_lib.EVAL_ON,
    'sampling': ('fixed', 'poisson'),
    'dp': ('none', 'server', 'client'),
    'attack': attacks.NAMES,
    'malicious_per_round': attack_config.PER_ROUND,
}


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines every experiment flag not yet defined in `flag_values`.

  Idempotent: called again after `algorithms.register`, it adds the new
  algorithm's hyperparameter flags.
  """
  defaults = config_lib.default_hparams()
  for group, name, kind, help_text in (*_entries(), *_EXECUTION_FLAGS):
    del group
    if name in flag_values:
      continue
    if name == 'algorithm':
      help_text = help_text.format(algorithms=', '.join(registry.SPECS))
    if name == 'robust_aggregation':
      help_text = help_text.format(
          aggregators=', '.join(aggregator_registry.SPECS),
          unweighted='|'.join(n for n, a in aggregator_registry.SPECS.items()
                              if not a.weighted))
    default = defaults.get(name)
    if name in aggregator_registry.all_parameters():
      default = aggregator_registry.all_parameters()[name].default
    if name == 'experiment_name':
      default = None
    if name in _ENUMS:
      flags.DEFINE_enum(name, default, _ENUMS[name], help_text,
                        flag_values=flag_values)
    elif name in registry.all_hyperparameters() and registry.all_hyperparameters()[name].choices:
      flags.DEFINE_enum(name, _flag_default(name), registry.all_hyperparameters()[name].choices,
                        help_text, flag_values=flag_values)
    elif name in registry.all_hyperparameters():
      _DEFINE[kind](name, _flag_default(name), help_text,
                    flag_values=flag_values)
    else:
      _DEFINE[kind](name, default, help_text, flag_values=flag_values)


def _flag_default(name: str) -> Any:
  # Shown by --helpfull; a hyperparameter not given takes its algorithm's
  # default, so the flag's own default is the shared one.
  return registry.all_hyperparameters()[name].default


def _hyperparameter_help(h) -> str:
  return f'{h.help} Applies to {registry.scope(h.name)}.'


def _entries():
  """(group, name, type, help) of every flag, the registered algorithms'
  hyperparameters included."""
  entries = list(_FLAGS)
  for p in aggregator_registry.all_parameters().values():
    entries.append(('aggregation', p.name, p.type,
                    f'{p.help} Valid: {p.range_text}.'))
  for h in registry.all_hyperparameters().values():
    group = 'clustering' if h in registry.CLUSTERING_HYPERPARAMETERS else (
        'algorithm')
    entries.append((group, h.name, h.type, _hyperparameter_help(h)))
  return entries


def all_flag_names() -> list[str]:
  return [name for _, name, _, _ in _entries()]


# Flags that apply only to some runs: name -> (applies(config), where).
_APPLIES: dict[str, tuple[Callable[[config_lib.ExperimentConfig], bool],
                          str]] = {
    'heldout_client_fraction': (
        lambda c: c.evaluation.eval_on == 'heldout_clients',
        'with --eval_on=heldout_clients'),
    'data_dir': (lambda c: c.data.dataset != 'digits',
                 'to --dataset=emnist|emnist_digits'),
    'label_permutation_shift': (
        lambda c: c.data.permute_labels_fraction > 0,
        'with --permute_labels_fraction > 0'),
    'dp_target_quantile': (
        lambda c: c.algorithm.dp is not None
        and c.algorithm.dp.adaptive_clipping,
        'with --dp_adaptive_clipping'),
    **{name: (lambda c, kinds=kinds: c.algorithm.attack.kind in kinds,
              f'with --attack={"|".join(kinds)}')
       for name, kinds in attack_config.APPLIES.items()},
    **{name: (lambda c: c.algorithm.dp is not None,
              'with --dp=server|client')
       for name in ('dp_clip', 'dp_noise_multiplier', 'dp_delta',
                    'dp_target_epsilon', 'dp_adaptive_clipping')},
}


def _check_applies(config: config_lib.ExperimentConfig,
                   given: Mapping[str, Any]) -> None:
  for name in given:
    if name in _APPLIES:
      applies, where = _APPLIES[name]
      if not applies(config):
        raise FlagError(f'--{name} applies only {where}')
  if 'num_clients' in given and config.data.dataset != 'digits' and (
      not config_lib.repartitions(config.data)):
    raise FlagError(
        f'--num_clients applies to --dataset={config.data.dataset} only when'
        ' it is re-partitioned (--dirichlet_alpha, --data_balance or'
        ' --missing_classes); EMNIST otherwise keeps its natural writers')


def build_config(given: Mapping[str, Any]) -> config_lib.ExperimentConfig:
  """The config of a command line that set exactly the flags in `given`.

  Pure: the same mapping gives the same config, whatever the process's
  flags. Raises FlagError (one line).
  """
  values = {**config_lib.default_hparams(), **given}
  try:
    run_directory.check_name(values.get('experiment_name'))
    config = config_lib.from_hparams(values, given=set(given))
    models.check_model_name(config.model)
  except ValueError as e:
    raise FlagError(str(e)) from None
  _check_applies(config, given)
  return config


def given_flags(flag_values: flags.FlagValues = FLAGS,
                names: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """name -> value of the experiment flags set on the command line."""
  if names is None:
    names = all_flag_names() + [name for _, name, _, _ in _EXECUTION_FLAGS]
  return {n: flag_values[n].value for n in names
          if n in flag_values and flag_values[n].present}


def config_from_flags(
    flag_values: flags.FlagValues = FLAGS) -> config_lib.ExperimentConfig:
  """The `ExperimentConfig` of the parsed flags (FlagError: one line)."""
  return build_config(given_flags(flag_values))


def config_from_argv(argv: Sequence[str]) -> config_lib.ExperimentConfig:
  """Parses train.py's flags from `argv` into a config, in a private
  `FlagValues` (the process's flags are untouched). Raises FlagError."""
  fv = flags.FlagValues()
  define_flags(fv)
  try:
    rest = fv(['train.py', *argv])
  except flags.Error as e:
    raise FlagError(str(e)) from None
  if len(rest) > 1:
    raise FlagError(f'unexpected positional arguments {rest[1:]}')
  return config_from_flags(fv)


def validate_train_argv(argv: Sequence[str]) -> tuple[int, dict[str, Any]]:
  """(total_rounds, hparams) of train.py's arguments `argv`, parsed in a
  private `FlagValues` (`config_from_argv`). Raises FlagError."""
  config = config_from_argv(argv)
  return config.training.total_rounds, config_lib.to_hparams(config)


def parse_flags_or_exit(argv: list[str]) -> list[str]:
  """absl `flags_parser`: one line on stderr and exit 2 on any bad flag."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if len(rest) > 1:
    print(
        f'error: unexpected positional arguments {rest[1:]}; every option is'
        ' a --flag',
        file=sys.stderr,
    )
    sys.exit(2)
  return rest


define_flags()
