"""--algorithm and its hyperparameter flags: what is rejected, what is
resolved, and what a run records."""

import os
import subprocess
import sys

import pytest

from tff_research import algorithms
from tff_research.cli import flags
from tff_research.run import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv):
  """The config train.py builds from `argv` (a private FlagValues)."""
  return flags.config_from_argv(['--experiment_name=x'] + argv)


@pytest.mark.parametrize('argv,message', [
    (['--algorithm=fedadam', '--proximal_strength=0.1'],
     r'^--proximal_strength=0.1 does not apply to --algorithm=fedadam; it'
     r' applies to --algorithm=fedprox$'),
    (['--algorithm=fedavg', '--server_beta_1=0.5'],
     r'--server_beta_1=0.5 does not apply to --algorithm=fedavg; it applies to'
     r' --algorithm=fedadam\|fedyogi'),
    (['--algorithm=fedadagrad', '--server_beta_2=0.9'],
     r'--server_beta_2=0.9 does not apply to --algorithm=fedadagrad'),
    (['--algorithm=fedavg', '--server_momentum=0.9'],
     r'--server_momentum=0.9 does not apply to --algorithm=fedavg; it applies to'
     r' --algorithm=fedavgm'),
    (['--algorithm=fedavgm', '--server_epsilon=0.01'],
     r'--server_epsilon=0.01 does not apply to --algorithm=fedavgm'),
    (['--client_momentum=0.5'],
     r'--client_momentum=0.5 does not apply to --algorithm=fedavg with'
     r' --client_optimizer=sgd; it applies to --client_optimizer=sgdm'),
    (['--algorithm=fedsgd', '--client_learning_rate=0.1'],
     r'--client_learning_rate=0.1 does not apply to --algorithm=fedsgd'),
    (['--algorithm=fedsgd', '--client_optimizer=adam'],
     r'--client_optimizer=adam does not apply to --algorithm=fedsgd'),
    (['--algorithm=fedsgd', '--noweight_by_size'],
     r'--noweight_by_size is not valid with --algorithm=fedsgd'),
    (['--algorithm=fedsgd', '--client_epochs=2'],
     r'--client_epochs=2 does not apply to --algorithm=fedsgd'),
    (['--algorithm=fedprox', '--proximal_strength=-1'],
     r'--proximal_strength=-1.0 is not valid: must be >= 0'),
    (['--algorithm=fedadam', '--server_learning_rate=-0.01'],
     r'--server_learning_rate=-0.01 is not valid: must be > 0'),
    (['--algorithm=fedadam', '--client_learning_rate=-1'],
     r'--client_learning_rate=-1.0 is not valid: must be > 0'),
    (['--algorithm=fedyogi', '--server_beta_2=1'],
     r'--server_beta_2=1.0 is not valid: must be in \[0, 1\)'),
    (['--algorithm=fedavgm', '--server_momentum=-0.1'],
     r'--server_momentum=-0.1 is not valid: must be in \[0, 1\)'),
    (['--algorithm=fedadam', '--server_epsilon=0'],
     r'--server_epsilon=0.0 is not valid: must be > 0'),
])
def test_bad_algorithm_flags_are_one_line_errors(argv, message):
  with pytest.raises(flags.FlagError, match=message) as e:
    parse(argv)
  assert '\n' not in str(e.value)


def test_unset_hyperparameters_take_the_algorithms_defaults():
  recorded = config_lib.to_hparams(parse(['--algorithm=fedadam']))
  assert recorded['server_learning_rate'] == pytest.approx(10**-2.5)
  assert (recorded['server_beta_1'], recorded['server_beta_2'],
          recorded['server_epsilon']) == (0.9, 0.999, 1e-4)
  assert recorded['server_momentum'] is None
  assert recorded['proximal_strength'] is None
  # Rebuilding from the record (a resume) changes nothing.
  assert config_lib.to_hparams(config_lib.from_hparams(recorded)) == recorded


def test_explicit_values_win_and_unused_ones_are_cleared():
  config = parse(['--algorithm=fedavgm', '--server_learning_rate=0.5',
                  '--client_optimizer=sgdm']).algorithm
  assert config == algorithms.AlgorithmConfig(
      algorithm='fedavgm', client_optimizer='sgdm', server_learning_rate=0.5,
      server_momentum=0.9, client_momentum=0.9)
  # Another algorithm derived from it (as the comparison does) does not
  # inherit fedavgm's defaults; what was given explicitly stays.
  config = config.replace(algorithm='fedadagrad', client_optimizer='sgd')
  assert config.server_momentum is None and config.client_momentum is None
  assert config.server_learning_rate == 0.5
  assert config.server_epsilon == 1e-2


@pytest.mark.parametrize('algorithm', ['fedavg', 'fedsgd', 'fedprox',
                                       'fedavgm', 'fedadam', 'fedyogi',
                                       'fedadagrad'])
def test_recorded_hparams_rebuild_the_same_config(algorithm):
  live = parse([f'--algorithm={algorithm}'])
  assert config_lib.from_hparams(config_lib.to_hparams(live)) == live
  assert live.algorithm == algorithms.AlgorithmConfig(algorithm=algorithm)


def test_runs_recorded_before_these_flags_still_load():
  old = {'algorithm': 'fedavg', 'client_optimizer': 'sgd',
         'client_learning_rate': 0.1, 'server_learning_rate': 1.0,
         'weight_by_size': True}
  assert config_lib.from_hparams(old).algorithm == algorithms.AlgorithmConfig()


def test_parsing_leaves_the_process_flags_alone():
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  before = {n: absl_flags.FLAGS[n].value for n in flags.all_flag_names()}
  parse(['--algorithm=fedadam', '--server_learning_rate=0.5'])
  assert {n: absl_flags.FLAGS[n].value
          for n in flags.all_flag_names()} == before


@pytest.mark.slow  # A subprocess import of TF/TFF: ~30 s on 2 cores.
def test_train_binary_rejects_a_foreign_hyperparameter_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'experiments', 'train.py'),
       f'--logdir={tmp_path}', '--experiment_name=bad', '--algorithm=fedadam',
       '--proximal_strength=0.1'],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode != 0
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert errors == ['error: --proximal_strength=0.1 does not apply to'
                    ' --algorithm=fedadam; it applies to --algorithm=fedprox']
  assert not (tmp_path / 'bad').exists()
