r"""Trains a federated model and logs everything to TensorBoard.

  uv run python experiments/train.py --experiment_name=NAME [--logdir=logdir]
      [--dataset=digits|emnist|emnist_digits] [--model=linear|mlp|cnn|pkg.mod:fn]
      [--algorithm=fedavg] [--total_rounds=20] ...

Outputs under LOGDIR/NAME/: TensorBoard events, metrics.csv, hparams.json,
checkpoints/. Re-running the same command resumes from the latest checkpoint.
Run with --helpfull for every flag.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tff_research.cli import console  # pylint: disable=g-import-not-at-top
console.import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top

from tff_research.cli import binary  # pylint: disable=g-import-not-at-top
from tff_research.cli import flags  # pylint: disable=g-import-not-at-top
from tff_research.run import training  # pylint: disable=g-import-not-at-top


def run():
  config = flags.config_from_flags()
  rows = training.train(config)
  if rows:
    last = rows[-1]
    print(f'Round {last["round"]}: train loss'
          f' {last.get("train_loss", float("nan")):.4f}, held-out accuracy'
          f' {last.get("eval_accuracy", float("nan")):.4f}')
  print(f'Logs: {os.path.abspath(config.run_dir)}')
  print('TensorBoard: uv run tensorboard --logdir'
        f' {os.path.abspath(config.logdir)}')


def main(argv):
  del argv  # Positional arguments are rejected by the flags parser.
  binary.main_or_exit(run)


if __name__ == '__main__':
  app.run(main, flags_parser=flags.parse_flags_or_exit)
