r"""Isolated versus federated training on three skewed silos.

  uv run python experiments/isolated_vs_federated.py \
      [--dataset=digits|emnist_digits] [--data_dir=DIR] [--logdir=logdir] \
      [--experiment_name=NAME] [--local_epochs=10] [--fedavg_rounds=3] \
      [--client_learning_rate=0.02] [--batch_size=20] [--shuffle_buffer=100] \
      [--test_fraction=0.2] [--seed=0]

Pooled digits are split into three silos; silo 1 never sees {1,3,7}, silo 2
{2,5,8}, silo 3 {4,6,9}. A 2x200 fully connected network is trained on each
silo alone (--local_epochs epochs), with FedAvg over all three (--fedavg_rounds
rounds of --local_epochs local epochs) and, as a baseline, on the pooled data.
Client SGD learning rate: 0.02 unless --client_learning_rate is given
(train.py's default of 0.1 leaves this network at chance).

Prints a table of every model's accuracy overall and on each missing-digit
subset, and writes confusion_*.png, results.md, results.json and TensorBoard
events (confusion matrices as images) to LOGDIR/NAME (default NAME:
isolated_vs_federated_DATASET). Runs offline by default (--dataset=digits).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tff_research.cli import console  # pylint: disable=g-import-not-at-top
console.import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top

from tff_research.cli import binary  # pylint: disable=g-import-not-at-top
from tff_research.cli import flags  # pylint: disable=g-import-not-at-top
from tff_research.reference import isolated_vs_federated  # pylint: disable=g-import-not-at-top

_LOCAL_EPOCHS = absl_flags.DEFINE_integer(
    'local_epochs', 10,
    'Epochs of isolated training, and local epochs per FedAvg round.')
_FEDAVG_ROUNDS = absl_flags.DEFINE_integer(
    'fedavg_rounds', 3, 'FedAvg rounds (all three silos every round).')


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(lambda: isolated_vs_federated.run_from_flags(
      flags.given_flags(), _LOCAL_EPOCHS.value, _FEDAVG_ROUNDS.value))


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
