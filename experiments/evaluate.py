r"""Evaluates a saved model on held-out clients.

  uv run python experiments/evaluate.py --checkpoint_dir=LOGDIR/NAME/checkpoints
      [--round=N] [--eval_on=test_split|heldout_clients] [--data_dir=DIR]
      [--max_eval_clients=K] [--output=FILE.json]

Prints the example-weighted mean and the per-client distribution of accuracy
and writes them, with every client's metrics, as JSON (default
LOGDIR/NAME/evaluation_round_N.json).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tff_research.cli import console  # pylint: disable=g-import-not-at-top
console.import_tensorflow_quietly()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

from tff_research.cli import binary  # pylint: disable=g-import-not-at-top
from tff_research.cli import flags as experiment_flags  # pylint: disable=g-import-not-at-top
from tff_research.run import checkpoint_evaluation  # pylint: disable=g-import-not-at-top

_CHECKPOINT_DIR = flags.DEFINE_string(
    'checkpoint_dir', None, 'LOGDIR/NAME/checkpoints of a training run.')
_ROUND = flags.DEFINE_integer(
    'round', None, 'Checkpointed round to evaluate (default: latest).')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'JSON output (default LOGDIR/NAME/evaluation_round_N.json).')

# Training flags that may be overridden here; every other training flag comes
# from the run's hparams.json and is an error on this command line.
_OVERRIDABLE = ('eval_on', 'data_dir', 'max_eval_clients')


def run():
  for name in experiment_flags.all_flag_names():
    if flags.FLAGS[name].present and name not in _OVERRIDABLE:
      raise ValueError(
          f'--{name} comes from the run\'s hparams.json; only'
          f' {", ".join("--" + n for n in _OVERRIDABLE)} can be set here'
      )
  if not _CHECKPOINT_DIR.value:
    raise ValueError('--checkpoint_dir is required')
  f = flags.FLAGS
  result = checkpoint_evaluation.evaluate_checkpoint(
      _CHECKPOINT_DIR.value,
      round_num=_ROUND.value,
      eval_on=f.eval_on if f['eval_on'].present else None,
      data_dir=f.data_dir if f['data_dir'].present else None,
      max_eval_clients=(
          f.max_eval_clients if f['max_eval_clients'].present else None),
  )
  run_dir = os.path.dirname(os.path.abspath(_CHECKPOINT_DIR.value.rstrip('/')))
  output = _OUTPUT.value or os.path.join(
      run_dir, f'evaluation_round_{result["round"]}.json')
  with open(output, 'w') as fh:
    json.dump(result, fh, indent=2)
  print(
      f'round {result["round"]} on {result["num_clients"]} {result["eval_on"]}'
      f' clients ({result["num_examples"]} examples): accuracy'
      f' {result["accuracy"]:.4f}, loss {result["loss"]:.4f}; per-client'
      f' accuracy min {result["accuracy_min"]:.4f}, p10'
      f' {result["accuracy_p10"]:.4f}, median {result["accuracy_median"]:.4f}'
  )
  print(f'wrote {output}')


def main(argv):
  del argv
  binary.main_or_exit(run)


if __name__ == '__main__':
  app.run(main, flags_parser=experiment_flags.parse_flags_or_exit)
