"""Property-based fuzzing of train.py's flags: any combination of valid and
invalid values either builds a config or fails with one `FlagError` line,
never another exception, never a file."""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tff_research.algorithms import registry
from tff_research.cli import flags
from tff_research.run import config as config_lib

_NUMBERS = st.one_of(
    st.integers(-3, 12), st.floats(-2.0, 2.0, allow_nan=False),
    st.sampled_from([0, 1, 0.5, 1e-5, 1e9, float('inf'), float('nan')]))
_TEXT = st.sampled_from(['', 'x', 'none', '1,2;3', '1,x', '/tmp', 'a/b'])


def _values(name: str):
  """Values a user might type for flag `name`: its own and foreign ones."""
  enums = {
      'algorithm': list(registry.SPECS) + ['fedfoo'],
      'dataset': list(config_lib.DATASETS) + ['cifar'],
      'eval_on': list(config_lib.EVAL_ON) + ['train'],
      'sampling': ['fixed', 'poisson', 'bernoulli'],
      'dp': ['none', 'server', 'client', 'local'],
      'model': ['linear', 'mlp', 'cnn', 'resnet', 'no.such:module'],
      'client_optimizer': ['sgd', 'sgdm', 'adam', 'lbfgs'],
      'clustering': ['none', 'cosine', 'l2', 'manhattan'],
  }
  if name in enums:
    return st.sampled_from(enums[name])
  if name in ('weight_by_size', 'progress', 'dp_adaptive_clipping'):
    return st.sampled_from(['true', 'false', 'maybe'])
  if name in ('missing_classes', 'data_dir', 'logdir'):
    return _TEXT
  return _NUMBERS


_NAMES = [n for n in flags.all_flag_names() if n != 'experiment_name']


@st.composite
def _argv(draw):
  names = draw(st.lists(st.sampled_from(_NAMES), max_size=6, unique=True))
  argv = ['--experiment_name=fuzz']
  for name in names:
    argv.append(f'--{name}={draw(_values(name))}')
  return argv


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(argv=_argv())
def test_any_command_line_is_a_config_or_one_line(argv):
  before = set(os.listdir('.'))
  try:
    config = flags.config_from_argv(argv)
  except flags.FlagError as e:
    message = str(e)
    assert message and '\n' not in message, argv
    assert 'Traceback' not in message
  else:
    assert isinstance(config, config_lib.ExperimentConfig)
    # A valid config survives its own record (what a resume reads back).
    assert config_lib.from_hparams(config_lib.to_hparams(config)) == config
  assert set(os.listdir('.')) == before
