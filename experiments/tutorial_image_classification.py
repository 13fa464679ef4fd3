r"""TFF's "Federated Learning for Image Classification" tutorial, reproduced.

  uv run python experiments/tutorial_image_classification.py \
      [--dataset=digits|emnist_digits] [--data_dir=DIR] \
      [--model=linear|linear_variable] [--logdir=logdir] \
      [--experiment_name=NAME] [--first_client=0]

FedAvg (client SGD 0.02, server SGD 1.0) of zero-initialised softmax regression
on the same first 10 clients every round: 5 local epochs, batch 20, shuffle
buffer 100 (seed 1), prefetch 10, 10 rounds; then federated evaluation on those
clients' train and test data. Model: without --model, the tutorial's own Keras
model (Dense + Softmax layer); --model=linear, the project's logits version;
--model=linear_variable, the from-scratch VariableModel.

Prints every round and a table next to the tutorial's own numbers; writes
TensorBoard events (train/, eval/), results.json and results.md to LOGDIR/NAME
(default NAME: tutorial_DATASET[_MODEL]). With --dataset=digits, --num_clients,
--test_fraction and --seed shape the partition (its first 10 clients train).
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
from tff_research.reference import tutorial  # pylint: disable=g-import-not-at-top

_FIRST_CLIENT = absl_flags.DEFINE_integer(
    'first_client', 0,
    'Train client_ids[first_client:first_client + 10] instead of the first 10'
    ' (0 = the tutorial); for measuring writer-to-writer spread.')


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(lambda: tutorial.run_from_flags(
      flags.given_flags(), _FIRST_CLIENT.value))


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
