"""The comparison: per-algorithm runs through the training entry point, and
a table whose numbers are those of the runs' metrics.csv."""

import csv
import json
import math

import pytest

from tff_research.algorithms import registry
from tff_research.studies import comparison
from tests import fl_testing


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
  """The drift comparison's numbers (`run_drift_comparison`)."""
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


# --- seeds, paired comparisons, tuning -----------------------------------------

import os  # pylint: disable=g-import-not-at-top,wrong-import-position
import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from scipy import stats  # pylint: disable=g-import-not-at-top,wrong-import-position

from tff_research.studies import statistics  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_seeded_configs_change_only_the_seed_and_the_run_name(tmp_path):
  config = fl_testing.config_for(dict(model='linear', total_rounds=2),
                                 tmp_path, 'cmp')
  configs = comparison.paper_default_configs(config, ['fedavg', 'fedadam'])
  seeded = comparison.seeded_configs(configs, (3, 5))
  for algorithm, by_seed in seeded.items():
    assert sorted(by_seed) == [3, 5]
    for seed, c in by_seed.items():
      assert c.experiment_name == f'{algorithm}_seed{seed}'
      assert c.seed == seed and c.data.seed == seed
      assert c.run_dir == str(tmp_path / 'cmp' / f'{algorithm}_seed{seed}')
      assert c.algorithm == configs[algorithm].algorithm
  assert comparison.check_baseline(None, ['fedadam', 'fedavg']) == 'fedavg'
  assert comparison.check_baseline(None, ['fedadam', 'fedprox']) == 'fedadam'
  with pytest.raises(ValueError, match='--baseline=fedsgd is not valid'):
    comparison.check_baseline('fedsgd', ['fedavg', 'fedadam'])
  with pytest.raises(ValueError, match='--baseline=fedsgd is not valid'):
    comparison.run_comparison(config, ['fedavg', 'fedadam'], seeds=(0, 1),
                              baseline='fedsgd')
  assert not (tmp_path / 'cmp').exists()


def test_seeds_report_of_fake_per_seed_results(tmp_path):
  """The multi-seed report from made-up per-seed results, no training."""
  final = {'fedavg': [0.70, 0.74, 0.72], 'scaffold': [0.75, 0.76, 0.78]}
  results = {a: {s: dict(final_accuracy=v[s], rounds_to_target=None)
                 for s in range(3)} for a, v in final.items()}
  curves = {a: {s: [(1, 0.1 * (s + 1)), (2, v[s])] for s in range(3)}
            for a, v in final.items()}
  text, agg = comparison.seeds_report(
      results, curves, metrics=('final_accuracy', 'rounds_to_target'),
      baseline='fedavg', title='t', root=str(tmp_path))
  interval = stats.t.interval(0.95, 2, loc=0.72,
                              scale=stats.sem(final['fedavg']))
  assert (agg.get('fedavg', 'final_accuracy').low,
          agg.get('fedavg', 'final_accuracy').high) == pytest.approx(interval)
  # Differences 0.05, 0.02, 0.06: mean 0.0433.., paired t as scipy's.
  ref = stats.ttest_rel(final['scaffold'], final['fedavg'])
  paired = agg.get('scaffold', 'final_accuracy').paired
  assert paired.p_value == pytest.approx(ref.pvalue)
  half = 0.72 - interval[0]
  assert (f'| fedavg | 3 | 0.720 ± {half:.3f} | [{interval[0]:.3f},'
          f' {interval[1]:.3f}] | (baseline) |  |') in text
  assert '| scaffold | 3 | 0.763 ± ' in text
  assert (f'| +0.043 [{paired.low:.3f}, {paired.high:.3f}] (n=3) |'
          f' {ref.pvalue:.3f} |') in text
  # No run reached the target: no table for it rather than zeros.
  assert 'rounds to target' not in text
  assert '| fedavg | 0.7000 | 0.7400 | 0.7200 |' in text
  # Two evaluations per run: no quarter windows to compare.
  assert ('| fedavg | 3 | - | n/a (a window without evaluations) | n/a |'
          in text)
  assert (tmp_path / comparison.PLOT_NAME).read_bytes()[:4] == b'\x89PNG'
  assert list(tmp_path.glob('events.out.tfevents.*'))


def test_climb_section_of_the_seeds_report():
  # Seed s rises by 0.01 (s + 1) per round: climbs 0.02, 0.04, 0.06 between
  # the quarters (4, 6] and (6, 8] of 8 rounds.
  curves = {'fedavg': {s: [(t, 0.5 + 0.01 * (s + 1) * t) for t in range(1, 9)]
                       for s in range(3)}}
  text = comparison.climb_markdown(curves)
  climbs = [0.02, 0.04, 0.06]
  low, high = stats.t.interval(0.95, 2, loc=0.04, scale=stats.sem(climbs))
  p = stats.ttest_1samp(climbs, 0.0).pvalue
  assert (f'| fedavg | 3 | (4, 6] -> (6, 8] | +0.040 [{low:.3f}, {high:.3f}]'
          f' | {p:.3f} |') in text, text


def test_fixed_rounds_section_of_the_seeds_report():
  # Three algorithms, three seeds, evaluated at rounds 10, 20, ..., 100:
  # reported at 10, 30 (>= 25), 50, 80 (>= 75) and 100.
  rng = np.random.default_rng(3)
  acc = {a: {s: {r: float(v) for r, v in zip(
      range(10, 101, 10), rng.uniform(0.5, 0.9, 10))} for s in range(3)}
         for a in ('fedavg', 'fedadam', 'fedyogi')}
  curves = {a: {s: sorted(c.items()) for s, c in by.items()}
            for a, by in acc.items()}
  text = comparison.fixed_rounds_markdown(curves, 'fedavg')
  lines = text.splitlines()
  assert lines[4] == ('| algorithm | n | round 10 | round 30 | round 50 |'
                      ' round 80 | round 100 |')
  at30 = [acc['fedadam'][s][30] for s in range(3)]
  low, high = stats.t.interval(0.95, 2, loc=np.mean(at30),
                               scale=stats.sem(at30))
  row = next(l for l in lines if l.startswith('| fedadam | 3 |'))
  assert row.split(' | ')[3] == f'{np.mean(at30):.3f} [{low:.3f}, {high:.3f}]'
  # Paired at round 80, both against fedavg; Holm over the two.
  base = [acc['fedavg'][s][80] for s in range(3)]
  p = [stats.ttest_rel([acc[a][s][80] for s in range(3)], base).pvalue
       for a in ('fedadam', 'fedyogi')]
  holm = sorted(p)
  holm = {holm[0]: min(1, 2 * holm[0])}
  holm[max(p)] = max(holm[min(p)], max(p))
  paired = text.split('Paired against fedavg')[1].splitlines()
  for a, pa in zip(('fedadam', 'fedyogi'), p):
    d = np.subtract([acc[a][s][80] for s in range(3)], base)
    row = next(l for l in paired if l.startswith(f'| {a} | '))
    cell = row.split(' | ')[4]
    assert cell.startswith(f'{d.mean():+.3f} [')
    assert cell.endswith(f', p {statistics.format_p(pa)} (Holm'
                         f' {statistics.format_p(holm[pa])})'), cell
  assert not any(l.startswith('| fedavg | ') for l in paired)
  # No baseline: the means only. No round every run evaluated: no section.
  assert 'Paired against' not in comparison.fixed_rounds_markdown(curves, None)
  assert comparison.fixed_rounds_markdown(
      {'a': {0: [(1, 0.5)]}, 'b': {0: [(2, 0.5)]}}, 'a') == ''


def test_validation_split_uses_only_training_data(tmp_path):
  """--validation_fraction (and --tune's validation): carved out of the
  training examples / clients, never the held-out ones."""
  from tff_research.data import federated_data  # pylint: disable=g-import-not-at-top
  from tff_research.run import client_split  # pylint: disable=g-import-not-at-top
  from tff_research.run import validation_split  # pylint: disable=g-import-not-at-top
  base = dict(model='linear', num_clients=8, total_rounds=1)
  config = fl_testing.config_for(dict(base, validation_fraction=0.25),
                                 tmp_path, 'cmp')
  full = federated_data.load_federated_data(config.data)
  data, evaluation = validation_split.carve(full, config.evaluation,
                                            config.seed)

  def examples(cd, cid):
    return sorted(tuple(np.asarray(e['pixels']).ravel().round(4).tolist()[::7])
                  + (int(e['label']),)
                  for e in cd.create_tf_dataset_for_client(cid)
                  .as_numpy_iterator())

  assert evaluation == config.evaluation
  for cid in full.client_ids:
    train, val = examples(data.train, cid), examples(data.test, cid)
    # The client's training examples, split ~ 3:1; its test split unused.
    assert sorted(train + val) == examples(full.train, cid)
    assert len(val) == round(0.25 * len(examples(full.train, cid)))
  held = dict(base, eval_on='heldout_clients', heldout_client_fraction=0.25,
              validation_fraction=0.5)
  config = fl_testing.config_for(held, tmp_path, 'cmp')
  data, evaluation = validation_split.carve(full, config.evaluation,
                                            config.seed)
  split = client_split.ClientSplit(full, config.evaluation, config.seed)
  assert sorted(data.client_ids) == sorted(split.train_client_ids)
  assert not set(data.client_ids) & set(split.eval_client_ids)
  assert evaluation.heldout_client_fraction == 0.5
  val_split = client_split.ClientSplit(data, evaluation, config.seed)
  assert len(val_split.eval_client_ids) == 3  # round(0.5 * 6)
  assert set(val_split.eval_client_ids) <= set(split.train_client_ids)
  with pytest.raises(ValueError,
                     match=r'--validation_fraction=1 is not valid: must be in'
                     r' \[0, 1\)'):
    fl_testing.config_for(dict(base, validation_fraction=1), tmp_path, 'x')


def test_tune_grid_keeps_the_paper_default_first(tmp_path):
  config = fl_testing.config_for(dict(model='linear'), tmp_path, 'cmp')
  configs = comparison.paper_default_configs(config, ['fedadam', 'fedsgd'])
  grid = comparison.tune_grid(configs['fedadam'], (0.1, 1.0, 10.0))
  assert len(grid) == 9
  assert grid[0] == pytest.approx({'client_learning_rate': 10**-1.5,
                                   'server_learning_rate': 10**-2.5})
  sgd = comparison.tune_grid(configs['fedsgd'], (0.5, 1.0))
  assert [list(p) for p in sgd] == [['server_learning_rate']] * 2
  with pytest.raises(ValueError, match='--tune_factors=0,1 is not valid'):
    comparison.TuneConfig((0.0, 1.0))
  # The flag's default parses to the exact half-decades: a point of the
  # default grid is a power of ten, named and shown as one.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from tff_research.cli import tune_flags  # pylint: disable=g-import-not-at-top
  tune = tune_flags.tune_config(True, flags.FLAGS['tune_factors'].default,
                                0.2, None, ())
  assert tune.factors == comparison.DEFAULT_TUNE_FACTORS
  corner = comparison.tune_grid(configs['fedadam'], tune.factors)[-1]
  assert comparison.hyperparameter_text(
      configs['fedadam'].algorithm.replace(**corner)).startswith(
          'eta_l=10^-1, eta=10^-2,')
  assert comparison._point_name('fedadam', corner) == 'fedadam_lrc0.1_lrs0.01'  # pylint: disable=protected-access
  with pytest.raises(ValueError,
                     match='--tune_validation_fraction=1 is not valid'):
    comparison.TuneConfig(validation_fraction=1)


def test_tuning_trains_on_validation_and_records_the_choice(
    tff_worker, tmp_path):
  values = dict(model='linear', num_clients=4, clients_per_round=2,
                total_rounds=1, eval_every=1, rounds_per_checkpoint=1,
                progress=False, batch_size=20)
  config = fl_testing.config_for(values, tmp_path, 'cmp')
  configs = comparison.paper_default_configs(config, ['fedsgd'])
  chosen, record = comparison.tune_hyperparameters(
      config, configs, comparison.TuneConfig((0.5, 1.0)), log=lambda _: None)
  saved = json.loads((tmp_path / 'cmp' / comparison.TUNING_NAME).read_text())
  assert saved == json.loads(json.dumps(record))
  grid = saved['algorithms']['fedsgd']['grid']
  assert len(grid) == 2
  accs = [g['validation_accuracy'] for g in grid]
  for g in grid:
    rows = fl_testing.read_csv(tmp_path / 'cmp' / g['run'] / 'metrics.csv')
    assert g['validation_accuracy'] == rows[-1]['eval_accuracy']
  best = grid[int(np.argmax(accs))]['values']  # first of ties: the default
  assert chosen['fedsgd'] == best == saved['algorithms']['fedsgd']['chosen']
  assert 'held out for validation' in saved['validation']
  # A tuning run is rebuilt from its own hparams.json: evaluating its
  # checkpoint reads the same validation data and gives the logged accuracy.
  from tff_research.run import checkpoint_evaluation as checkpoint  # pylint: disable=g-import-not-at-top
  run_dir = tmp_path / 'cmp' / grid[0]['run']
  hparams = json.loads((run_dir / 'hparams.json').read_text())
  assert hparams['validation_fraction'] == 0.2
  result = checkpoint.evaluate_checkpoint(str(run_dir / 'checkpoints'))
  assert result['accuracy'] == pytest.approx(grid[0]['validation_accuracy'],
                                             abs=1e-6)


def test_drift_comparison_tunes_around_the_given_learning_rates(
    tff_worker, tmp_path):
  """scaffold_vs_fedavg.py --tune: the grid is centred on the given rates
  (not the paper defaults), and the tuned runs use the choice."""
  values = dict(model='linear', num_clients=4, clients_per_round=2,
                total_rounds=1, eval_every=1, rounds_per_checkpoint=1,
                progress=False, batch_size=20, client_learning_rate=0.05)
  config = fl_testing.config_for(values, tmp_path, 'drift')
  path, _ = comparison.run_drift_comparison(
      config, ['fedavg'], given={'client_learning_rate': 0.05}, tune=comparison.TuneConfig(
          (0.5, 1.0), rounds=1), log=lambda _: None)
  saved = json.loads((tmp_path / 'drift' / comparison.TUNING_NAME
                      ).read_text())
  for algorithm in ('fedavg',):
    record = saved['algorithms'][algorithm]
    assert record['paper_default']['client_learning_rate'] == 0.05
    rates = sorted(g['values']['client_learning_rate']
                   for g in record['grid'])
    assert rates[0] == pytest.approx(0.025) and rates[-1] == 0.05
    tuned = json.loads((tmp_path / 'drift' / f'{algorithm}_tuned_seed0'
                        / 'hparams.json').read_text())
    assert tuned['client_learning_rate'] == pytest.approx(
        record['chosen']['client_learning_rate'])
    assert tuned['validation_fraction'] == 0.0  # the study itself: test data
  assert 'Tuned (`--tune`)' in open(path).read()


def test_compare_algorithms_binary_with_two_seeds(tff_worker, tmp_path):
  """End to end: the real binary, 2 seeds x 2 algorithms x 2 rounds."""
  args = [sys.executable, os.path.join(REPO, 'experiments',
                                       'compare_algorithms.py'),
          '--experiment_name=cmp', f'--logdir={tmp_path}',
          '--algorithms=fedavg,fedadam', '--model=linear', '--num_clients=6',
          '--clients_per_round=3', '--total_rounds=2', '--eval_every=1',
          '--rounds_per_checkpoint=2', '--batch_size=10', '--noprogress',
          '--seeds=2']
  out = subprocess.run(args, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  root = tmp_path / 'cmp'
  table = (root / 'comparison.md').read_text()
  finals = {}
  for algorithm in ('fedavg', 'fedadam'):
    finals[algorithm] = [fl_testing.read_csv(
        root / f'{algorithm}_seed{s}' / 'metrics.csv')[-1]['eval_accuracy']
                         for s in (0, 1)]
  mean, low, high = (np.mean(finals['fedavg']),) + tuple(stats.t.interval(
      0.95, 1, loc=np.mean(finals['fedavg']), scale=stats.sem(
          finals['fedavg'])))
  assert (f'| fedavg | 2 | {mean:.3f} ± {(high - low) / 2:.3f} |'
          f' [{low:.3f}, {high:.3f}] | (baseline) |  |') in table
  d = np.subtract(finals['fedadam'], finals['fedavg'])
  ref = stats.ttest_rel(finals['fedadam'], finals['fedavg'])
  row = next(l for l in table.splitlines() if l.startswith('| fedadam | 2 |'))
  assert f'| {d.mean():+.3f} [' in row and '(n=2) |' in row
  assert row.endswith(f'| {ref.pvalue:.3f} |') or ref.pvalue < 1e-3
  png = (root / comparison.PLOT_NAME).read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000
  saved = json.loads((root / comparison.JSON_NAME).read_text())
  assert saved['aggregate']['seeds'] == [0, 1]
  # A re-run reuses the finished runs: nothing trains again. (The library
  # path of the same flags; a second binary start would cost a TF import.)
  config = fl_testing.config_for(
      dict(model='linear', num_clients=6, clients_per_round=3,
           total_rounds=2, eval_every=1, rounds_per_checkpoint=2,
           batch_size=10, progress=False), tmp_path, 'cmp')
  lines = []
  comparison.run_comparison(config, ['fedavg', 'fedadam'], seeds=(0, 1),
                            log=lines.append)
  assert sum('nothing to do' in l for l in lines) == 4, lines
  assert (root / 'comparison.md').read_text() == table
