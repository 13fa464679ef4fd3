"""The comparison: per-algorithm runs through the training entry point, and
a table whose numbers are those of the runs' metrics.csv."""

import csv
import json
import math

import pytest

from tests import fl_testing
from tff_research.algorithms import registry
from tff_research.studies import comparison


def _write_run(run_dir, algorithm, rows, **hparams):
  run_dir.mkdir(parents=True)
  (run_dir / 'hparams.json').write_text(json.dumps(dict(
      algorithm=algorithm, client_optimizer='sgd', **hparams)))
  with open(run_dir / 'metrics.csv', 'w', newline='') as f:
    writer = csv.DictWriter(
        f, ['round', 'train_loss', 'round_seconds', 'eval_accuracy',
            'eval_seconds'])
    writer.writeheader()
    for row in rows:
      writer.writerow(row)


def _row(r, seconds, acc=None, eval_seconds=None):
  return dict(round=r, train_loss=1.0, round_seconds=seconds,
              eval_accuracy='' if acc is None else acc,
              eval_seconds='' if eval_seconds is None else eval_seconds)


def test_summary_reads_the_runs_numbers(tmp_path):
  _write_run(
      tmp_path / 'a', 'fedadam',
      [_row(1, 2.0), _row(2, 3.0, 0.75, 1.0), _row(3, 2.5),
       _row(4, 2.5, 0.82, 1.5), _row(5, 2.0, 0.79, 1.0)],
      client_learning_rate=10**-1.5, server_learning_rate=10**-2.5,
      server_beta_1=0.9, server_beta_2=0.999, server_epsilon=1e-4,
      server_momentum=None)
  s = comparison.summarize_run(str(tmp_path / 'a'), target_accuracy=0.8)
  assert (s.algorithm, s.rounds, s.final_accuracy, s.best_accuracy,
          s.rounds_to_target) == ('fedadam', 5, 0.79, 0.82, 4)
  assert s.wall_seconds == pytest.approx(12.0 + 3.5)
  assert s.hyperparameters == (
      'eta_l=10^-1.5, eta=10^-2.5, beta_1=0.9, beta_2=0.999, tau=0.0001')
  never = comparison.summarize_run(str(tmp_path / 'a'), target_accuracy=0.9)
  assert never.rounds_to_target is None


def test_table_ranks_by_final_accuracy(tmp_path):
  summaries = [
      comparison.RunSummary('fedsgd', 10, 0.4, 0.4, None, 5.0, 1.0, 'eta=0.1'),
      comparison.RunSummary('fedavg', 10, 0.9, 0.9, 6, 20.0, 2.0, 'eta=1'),
  ]
  table = comparison.comparison_markdown(
      summaries, description='d', budget='b', target_accuracy=0.8)
  lines = table.splitlines()
  rows = [l for l in lines if l.startswith('| fed')]
  assert rows == ['| fedavg | 0.9000 | 0.9000 | 6 | 22 | eta=1 |',
                  '| fedsgd | 0.4000 | 0.4000 | not in 10 | 6 | eta=0.1 |']
  assert 'rounds to 0.8' in table


def test_algorithm_hyperparameters_cannot_be_set_for_a_comparison(tmp_path):
  config = fl_testing.config_for({}, tmp_path, 'c')
  for name in ('server_learning_rate', 'algorithm', 'weight_by_size',
               'proximal_strength'):
    with pytest.raises(ValueError, match=f'--{name} cannot be set for a'
                       ' comparison'):
      comparison.run_comparison(config, ['fedavg', 'fedadam'],
                                given={'experiment_name': 'c', name: 1})
  with pytest.raises(ValueError, match='--algorithms=fedavg,fedfoo is not'
                     ' valid'):
    comparison.check_algorithms(['fedavg', 'fedfoo'])
  with pytest.raises(ValueError, match='names an algorithm twice'):
    comparison.check_algorithms(['fedavg', 'fedavg'])
  with pytest.raises(ValueError, match='--target_accuracy=1.5 is not valid'):
    comparison.run_comparison(config, ['fedavg'], target_accuracy=1.5)
  assert not list(tmp_path.iterdir())


def test_algorithms_and_client_learning_rates_come_from_the_specs():
  assert comparison.compared_algorithms() == tuple(registry.SPECS)
  assert comparison.client_learning_rate('fedavg') == pytest.approx(0.1)
  assert comparison.client_learning_rate('fedprox') == pytest.approx(0.1)
  assert comparison.client_learning_rate('fedadam') == pytest.approx(
      10**-1.5)
  assert comparison.client_learning_rate('fedsgd') is None
  for name, spec in registry.SPECS.items():
    assert comparison.client_learning_rate(name) == (
        spec.comparison_client_learning_rate)


def test_variant_configs_are_derived_from_the_command_lines(tmp_path):
  base = dict(model='linear', dirichlet_alpha=0.5, total_rounds=3)
  config = fl_testing.config_for(base, tmp_path, 'cmp')
  paper = comparison.paper_default_configs(config, list(registry.SPECS))
  for name, c in paper.items():
    # Each run is what train.py would run with --algorithm and the spec's
    # comparison client learning rate (and nothing else) added.
    extra = {} if comparison.client_learning_rate(name) is None else {
        'client_learning_rate': comparison.client_learning_rate(name)}
    expected = fl_testing.config_for(
        base, tmp_path / 'cmp', name, algorithm=name, **extra)
    assert c == expected, name
  given = dict(base, client_learning_rate=0.05, experiment_name='cmp')
  config = fl_testing.config_for(base, tmp_path, 'cmp',
                                 client_learning_rate=0.05)
  drift = comparison.given_hyperparameter_configs(
      config, comparison.DRIFT_ALGORITHMS, given)
  for name, c in drift.items():
    assert c == fl_testing.config_for(
        base, tmp_path / 'cmp', name, algorithm=name,
        client_learning_rate=0.05), name
  with pytest.raises(ValueError, match='--client_learning_rate=0.05 does not'
                     ' apply to --algorithm=fedsgd'):
    comparison.given_hyperparameter_configs(config, ['fedavg', 'fedsgd'],
                                            given)


def _write_metrics(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def test_curve_summary_first_evaluated_round_and_mb_to_target(tmp_path):
  """The drift comparison's numbers (formerly scaffold_experiment's)."""
  summaries = []
  for name, accs in (('fast', [0.5, 0.85, 0.79, 0.9]),
                     ('never', [0.1, 0.2, 0.3, 0.7])):
    rows = []
    for r in range(1, 9):
      acc = accs[r // 2 - 1] if r % 2 == 0 else ''
      rows.append(dict(round=r, eval_accuracy=acc, round_seconds=2.0 * r,
                       communication_cumulative_kb=1024.0 * r))
    _write_metrics(tmp_path / f'{name}.csv', rows)
    summaries.append(comparison.summarize_metrics(
        name, fl_testing.read_csv(tmp_path / f'{name}.csv'), 0.8))
  fast, never = summaries
  assert fast.curve == ((2, 0.5), (4, 0.85), (6, 0.79), (8, 0.9))
  assert fast.rounds_to_target == 4
  assert fast.mb_to_target == 4.0  # cumulative after round 4
  assert fast.final_accuracy == 0.9 and fast.best_accuracy == 0.9
  assert fast.seconds_per_round == 9.0
  assert fast.last_mean_accuracy == pytest.approx((0.5 + 0.85 + 0.79 + 0.9)
                                                  / 4)
  assert never.rounds_to_target is None and never.mb_to_target is None
  table = comparison.curve_markdown(summaries, 0.8)
  assert '| fast | 4 | 4.0 | 0.9000 | 0.7600 | 0.9000 | 9.0 |' in table
  assert '| never | - | - | 0.7000 | 0.3250 | 0.7000 | 9.0 |' in table
  assert '| round | fast | never |' in table
  assert '| 6 | 0.7900 | 0.3000 |' in table


def test_drift_comparison_refuses_a_given_algorithm_flag(tmp_path):
  config = fl_testing.config_for({}, tmp_path, 'c', algorithm='fedavg')
  with pytest.raises(ValueError, match='--algorithm=fedavg is not valid'):
    comparison.run_drift_comparison(
        config, given={'algorithm': 'fedavg', 'experiment_name': 'c'})
  assert not list(tmp_path.iterdir())


def test_comparison_runs_each_algorithm_and_tables_its_metrics(
    tff_worker, tmp_path):
  values = dict(
      dataset='digits', model='linear', num_clients=6, clients_per_round=3,
      total_rounds=2, eval_every=1, rounds_per_checkpoint=2, progress=False,
      batch_size=10, dirichlet_alpha=0.5)
  config = fl_testing.config_for(values, tmp_path, 'cmp')
  path, summaries = comparison.run_comparison(
      config, ['fedavg', 'fedadam'], given=values, target_accuracy=0.05)
  root = tmp_path / 'cmp'
  for summary, algorithm in zip(summaries, ['fedavg', 'fedadam']):
    hparams = json.loads((root / algorithm / 'hparams.json').read_text())
    assert hparams['algorithm'] == algorithm
    with open(root / algorithm / 'metrics.csv', newline='') as f:
      rows = list(csv.DictReader(f))
    assert [int(r['round']) for r in rows] == [1, 2]
    assert summary.final_accuracy == float(rows[-1]['eval_accuracy'])
    assert summary.rounds_to_target == 1  # any model beats 5% on 10 classes
    assert summary.wall_seconds == pytest.approx(sum(
        float(r['round_seconds']) + float(r['eval_seconds']) for r in rows))
  adam = json.loads((root / 'fedadam' / 'hparams.json').read_text())
  assert math.isclose(adam['client_learning_rate'], 10**-1.5)
  assert math.isclose(adam['server_learning_rate'], 10**-2.5)
  avg = json.loads((root / 'fedavg' / 'hparams.json').read_text())
  assert avg['server_beta_1'] is None and avg['server_learning_rate'] == 1.0
  table = open(path).read()
  assert path == str(root / 'comparison.md')
  assert 'digits re-partitioned into 6 clients (Dirichlet alpha=0.5)' in table
  assert '2 rounds, 3 clients/round' in table
  for s in summaries:
    assert f'| {s.algorithm} | {s.final_accuracy:.4f} |' in table
  saved = json.loads((root / 'comparison.json').read_text())
  assert saved['fedadam']['final_accuracy'] == summaries[1].final_accuracy
  # The table is a function of the runs: rewriting it changes nothing.
  comparison.write_comparison_table(str(root), ['fedavg', 'fedadam'], 0.05)
  assert open(path).read() == table
