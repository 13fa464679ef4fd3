"""Checkpoints record the config they were trained with; a run directory
whose hparams.json says otherwise is refused in one line naming the flags.

Case 7: an edited hparams.json must not resume a run under values it was
not trained with. Case 2: evaluating a run whose hparams.json names another
model says so, with or without a recorded config (older checkpoints), and
never advises deleting the intact checkpoints.
"""

import hashlib
import json
import os

import pytest

from tff_research.run import checkpoint_evaluation
from tff_research.run import run_directory
from tff_research.run import safe_checkpoints
from tests import fl_testing

FLAGS = dict(model='linear', num_clients=4, clients_per_round=2,
             client_learning_rate=0.05, eval_every=10, rounds_per_checkpoint=1,
             progress=False, batch_size=10)


def _edit(path, **values):
  with open(path) as f:
    content = json.load(f)
  content.update(values)
  with open(path, 'w') as f:
    json.dump(content, f)


def test_edited_hparams_json_is_refused_naming_the_flag(tff_worker, tmp_path):
  run_dir = tmp_path / 'run'
  fl_testing.run_experiment(FLAGS, tmp_path, 'run', total_rounds=2)
  ckpt = run_dir / 'checkpoints'
  hparams = run_dir / 'hparams.json'
  original = hparams.read_text()
  metrics = (run_dir / 'metrics.csv').read_text()
  _edit(hparams, client_learning_rate=0.5)
  expected = (
      f'{hparams} does not match the checkpoint {ckpt}/round_2, which was'
      ' trained with --client_learning_rate=0.05 (hparams.json: 0.5); restore'
      ' those values in hparams.json to resume, or use a new'
      ' --experiment_name')
  # With the edited value on the command line, as with the original one.
  for lr in (0.5, 0.05):
    with pytest.raises(run_directory.RunDirError) as e:
      fl_testing.run_experiment(FLAGS, tmp_path, 'run', total_rounds=3,
                                client_learning_rate=lr)
    assert str(e.value) == expected
  assert (run_dir / 'metrics.csv').read_text() == metrics
  assert sorted(os.listdir(ckpt)) == ['round_1', 'round_2']
  # Each version records its config, integrity-checked like its weights.
  recorded = json.loads((ckpt / 'round_2' / 'config.json').read_text())
  assert recorded['hparams']['client_learning_rate'] == 0.05
  manifest = json.loads((ckpt / 'round_2' / 'integrity.json').read_text())
  assert manifest['files']['config.json']['sha256'] == hashlib.sha256(
      (ckpt / 'round_2' / 'config.json').read_bytes()).hexdigest()

  # A config.json edited to agree fails its integrity check and is not
  # trusted; the older checkpoint still names the trained value.
  _edit(ckpt / 'round_2' / 'config.json',
        hparams={**recorded['hparams'], 'client_learning_rate': 0.5})
  directory = run_directory.RunDirectory(str(run_dir))
  with pytest.raises(run_directory.RunDirError,
                     match=rf'the checkpoint {ckpt}/round_1, which was trained'
                     r' with --client_learning_rate=0.05 \(hparams.json: 0.5\)'):
    directory.check_compatible(
        fl_testing.config_for(FLAGS, tmp_path, 'run', total_rounds=3,
                              client_learning_rate=0.5))

  hparams.write_text(original)
  with pytest.raises(safe_checkpoints.UnreadableCheckpointError,
                     match='config.json differs from its SHA-256'):
    safe_checkpoints.recorded_config(str(ckpt / 'round_2'))
  rows = fl_testing.run_experiment(FLAGS, tmp_path, 'run', total_rounds=3)
  assert [r['round'] for r in rows] == [2, 3]  # round_2 was damaged


def test_evaluating_with_another_models_hparams_names_the_mismatch(
    tff_worker, tmp_path):
  run_dir = tmp_path / 'run'
  fl_testing.run_experiment(FLAGS, tmp_path, 'run', total_rounds=1)
  ckpt = run_dir / 'checkpoints'
  hparams = run_dir / 'hparams.json'
  _edit(hparams, model='cnn')
  with pytest.raises(ValueError) as e:
    checkpoint_evaluation.evaluate_checkpoint(str(ckpt))
  assert str(e.value) == (
      f'{hparams} does not match the checkpoint {ckpt}/round_1, which was'
      " trained with --model='linear' (hparams.json: 'cnn'); restore those"
      ' values in hparams.json to evaluate it')

  # A checkpoint that records no config (written before it did).
  version = ckpt / 'round_1'
  (version / 'config.json').unlink()
  manifest = json.loads((version / 'integrity.json').read_text())
  del manifest['files']['config.json']
  (version / 'integrity.json').write_text(json.dumps(manifest))
  with pytest.raises(ValueError) as e:
    checkpoint_evaluation.evaluate_checkpoint(str(ckpt))
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith(
      f'{hparams} records --model=cnn and --algorithm=fedavg, but the'
      f' checkpoints in {ckpt} hold another model or algorithm than this run'
      ' builds (round_1: ')
  assert ('; it holds 2 arrays (float32[784,10], float32[10]); the state'
          ' expected has 8 arrays (float32[3,3,1,32], float32[32],'
          ' float32[3,3,32,64], float32[64] and 4 more))') in message, message
  assert message.endswith('; they are intact: run with the flags (and'
                          ' hparams.json) of the run that wrote them')
  assert 'move the directory away' not in message
  # The linear run's hparams.json evaluates the same checkpoint.
  _edit(hparams, model='linear')
  assert checkpoint_evaluation.evaluate_checkpoint(str(ckpt))['round'] == 1
