"""The SCAFFOLD vs FedAvg study's summaries and table."""

import csv

import numpy as np
import pytest

from tff_research import scaffold_experiment
from tff_research import experiment_flags


def _write_metrics(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def test_comparison_reports_first_evaluated_round_reaching_target(tmp_path):
  runs = {}
  for name, accs in (('fast', [0.5, 0.85, 0.79, 0.9]),
                     ('never', [0.1, 0.2, 0.3, 0.7])):
    run_dir = tmp_path / name
    run_dir.mkdir()
    rows = []
    for r in range(1, 9):
      acc = accs[r // 2 - 1] if r % 2 == 0 else ''
      rows.append(dict(round=r, eval_accuracy=acc, round_seconds=2.0 * r,
                       communication_cumulative_kb=1024.0 * r))
    _write_metrics(run_dir / 'metrics.csv', rows)
    runs[name] = str(run_dir)
  results = scaffold_experiment.summarize(runs, target=0.8)
  assert results['fast']['curve'] == [(2, 0.5), (4, 0.85), (6, 0.79),
                                      (8, 0.9)]
  assert results['fast']['rounds_to_target'] == 4
  assert results['fast']['mb_to_target'] == 4.0  # cumulative after round 4
  assert results['fast']['final_accuracy'] == 0.9
  assert results['fast']['best_accuracy'] == 0.9
  assert results['fast']['seconds_per_round'] == 9.0
  assert results['never']['rounds_to_target'] is None
  table = scaffold_experiment.comparison_table(results, 0.8)
  np.testing.assert_allclose(results['fast']['last_mean_accuracy'],
                             (0.5 + 0.85 + 0.79 + 0.9) / 4)
  assert '| fast | 4 | 4.0 | 0.9000 | 0.7600 | 0.9000 | 9.0 |' in table
  assert '| never | - | - | 0.7000 | 0.3250 | 0.7000 | 9.0 |' in table
  assert '| 6 | 0.7900 | 0.3000 |' in table


def test_comparison_refuses_a_given_algorithm_flag():
  experiment_flags.FLAGS.unparse_flags()
  experiment_flags.FLAGS(['x', '--algorithm=fedavg', '--experiment_name=c'])
  try:
    with pytest.raises(ValueError, match='--algorithm=fedavg is not valid'):
      scaffold_experiment.run_comparison()
  finally:
    experiment_flags.FLAGS.unparse_flags()
    experiment_flags.FLAGS.mark_as_parsed()
