"""Evaluate a saved run's model on held-out clients (`experiments/evaluate.py`).

The run's `hparams.json` says how to rebuild its data, model, algorithm state
structure and held-out split, so the evaluation is of exactly the clients the
run held out. Only the data location and the evaluation scope may change.

An hparams.json that does not describe the run that wrote the checkpoints is
refused in one line naming the difference: the flags whose values differ
from those a checkpoint records (`config.json`), or, for checkpoints that
record none, the recorded model and algorithm and the arrays the checkpoint
holds instead.
"""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Any, Optional


from tff_research.evaluation import per_client
from tff_research.run import held_out_evaluation
from tff_research.run import run_directory
from tff_research.run import safe_checkpoints
from tff_research.run import training


def run_dir_of(checkpoint_dir: str) -> str:
  """The run directory whose checkpoints/ is `checkpoint_dir`."""
  if not os.path.isdir(checkpoint_dir):
    raise ValueError(
        f'--checkpoint_dir={checkpoint_dir} does not exist; expected'
        ' LOGDIR/NAME/checkpoints of a run of experiments/train.py'
    )
  run_dir = os.path.dirname(os.path.abspath(checkpoint_dir.rstrip('/')))
  if not os.path.exists(os.path.join(run_dir, 'hparams.json')):
    raise ValueError(
        f'{os.path.join(run_dir, "hparams.json")} not found: --checkpoint_dir'
        ' must be the checkpoints/ directory of a run of experiments/train.py'
    )
  return run_dir


def _load(manager, template, round_num: Optional[int], checkpoint_dir: str):
  """The program state of `round_num` (None: the newest that loads)."""
  if round_num is None:
    restored, _ = asyncio.run(manager.load_latest(template))
    if restored is None:
      raise ValueError(f'no checkpoint in {checkpoint_dir}')
    return restored
  versions = asyncio.run(manager.get_versions()) or []
  if round_num not in versions:
    raise ValueError(
        f'--round={round_num} has no checkpoint in {checkpoint_dir};'
        f' available: {versions}'
    )
  return asyncio.run(manager.load(round_num, template))


def evaluate_checkpoint(
    checkpoint_dir: str,
    *,
    round_num: Optional[int] = None,
    eval_on: Optional[str] = None,
    data_dir: Optional[str] = None,
    max_eval_clients: Optional[int] = None,
) -> dict[str, Any]:
  """Evaluates the model saved after `round_num` (default: latest).

  Returns the same scalar metrics the training loop logs (`loss`, `accuracy`,
  `accuracy_min`, `accuracy_p10`, `accuracy_median`, ...) plus `round`,
  `eval_on` and `per_client` (client id -> accuracy, loss, num_examples).
  """
  run_dir = run_dir_of(checkpoint_dir)
  directory = run_directory.RunDirectory(run_dir)
  recorded = run_directory.read_hparams(directory.hparams_path)
  directory.check_checkpoints(
      recorded, 'restore those values in hparams.json to evaluate it')
  if eval_on == 'heldout_clients' and recorded.get('eval_on') != eval_on:
    raise ValueError(
        '--eval_on=heldout_clients needs a run trained with'
        ' --eval_on=heldout_clients (this run trained on every client);'
        ' use --eval_on=test_split'
    )
  run = training.rebuild_run(run_dir, data_dir=data_dir, eval_on=eval_on,
                             max_eval_clients=max_eval_clients)
  manager = training.state_manager(checkpoint_dir)
  template = run.state_template()
  records = (f'{directory.hparams_path} records --model='
             f'{recorded.get("model")} and --algorithm='
             f'{recorded.get("algorithm")}')
  try:
    restored = _load(manager, template, round_num, checkpoint_dir)
  except safe_checkpoints.CheckpointMismatchError as e:
    raise ValueError(f'{records}, but {e}') from None
  except safe_checkpoints.MismatchedCheckpointError as e:
    raise ValueError(
        f'{records}, but checkpoint {e.path} holds another model or algorithm'
        f' ({e.reason}); it is intact: evaluate it with the hparams.json of'
        ' the run that wrote it') from None
  # Each held-out client is evaluated with the model the algorithm assigns it
  # (one global model, or its cluster's, or the cluster it chooses),
  # exactly as during training.
  evaluator = per_client.Evaluator(
      run.model_fn, parts=training.execution_layout(run.config)[0])
  result, _ = held_out_evaluation.EvalModels(
      run.algorithm, run.split, evaluator).evaluate(
          restored['state'], run.split.eval_datasets())
  out = collections.OrderedDict(
      round=int(restored['round']), eval_on=run.config.evaluation.eval_on
  )
  out.update(
      (k, v) for k, v in result.items()
      if not k.startswith('per_client') and k != 'confusion_matrix'
  )
  out['per_client'] = collections.OrderedDict(
      (cid, dict(accuracy=float(a), loss=float(l), num_examples=int(n)))
      for cid, a, l, n in zip(
          run.split.eval_client_ids,
          result['per_client_accuracy'],
          result['per_client_loss'],
          result['per_client_num_examples'],
      )
  )
  return out
