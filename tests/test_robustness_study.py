"""The robustness study's grid, its configs and its command line (no
training: `test_robustness_wiring.py` trains)."""

import pytest

from tff_research.cli import flags
from tff_research.cli import robustness_flags
from tff_research.studies import robustness


def test_cells_are_the_clean_mean_then_each_rule_attack_and_fraction_once():
  cells = robustness.cells(['mean', 'median'], ['sign_flip', 'none'],
                           [0, 0.2])
  assert [c.label for c in cells] == [
      'mean_clean', 'median_clean', 'mean_sign_flip_0.2',
      'median_sign_flip_0.2']
  assert cells[3].reference() == 'mean_sign_flip_0.2'


def test_each_run_takes_its_rule_parameters_uniform_weights_and_the_seed():
  config, parameters = robustness_flags.base_config(dict(
      experiment_name='p', trim_fraction=0.2, byzantine_clients=2,
      attack_scale=10.0, seed=4, model='linear'))
  runs = robustness.configs(config, ['trimmed_mean', 'krum'], ['sign_flip'],
                            [0.0, 0.3], parameters)
  assert list(runs) == ['mean_clean', 'trimmed_mean_clean', 'krum_clean',
                        'trimmed_mean_sign_flip_0.3', 'krum_sign_flip_0.3']
  trimmed = runs['trimmed_mean_sign_flip_0.3'].algorithm
  assert trimmed.aggregation.values == dict(trim_fraction=0.2)
  assert not trimmed.weighted
  assert (trimmed.attack.kind, trimmed.attack.malicious_fraction,
          trimmed.attack.scale, trimmed.attack.seed) == ('sign_flip', 0.3,
                                                         10.0, 4)
  assert runs['krum_clean'].algorithm.aggregation.values == dict(
      byzantine_clients=2)
  # A clean run records the attack flags' defaults: studies of other
  # attacks share it.
  assert runs['mean_clean'].algorithm.attack.scale == 1.0
  assert runs['krum_sign_flip_0.3'].experiment_name == 'p_krum_sign_flip_0.3'


@pytest.mark.parametrize('given, line', [
    (dict(robust_aggregation='median'),
     '--robust_aggregation is set by robustness_study.py'),
    (dict(attack='backdoor'), '--attack is set by robustness_study.py'),
])
def test_flags_the_study_sets_are_refused(given, line):
  with pytest.raises(flags.FlagError, match=f'^{line}'):
    robustness_flags.base_config(dict(experiment_name='p', **given))


@pytest.mark.parametrize('grid, line', [
    ((['median', 'mode'], ['sign_flip'], ['0.2']),
     '--robust_aggregation=mode is not valid'),
    ((['median'], ['flip'], ['0.2']), '--attacks=flip is not valid'),
    ((['median'], ['sign_flip'], ['0.2', '2']),
     '--malicious_fractions=0.2,2 is not valid'),
])
def test_a_bad_grid_is_one_line(grid, line):
  with pytest.raises(ValueError, match=f'^{line}'):
    robustness_flags.parse_grid(*grid)


def test_an_unsound_cell_fails_before_anything_trains():
  config, parameters = robustness_flags.base_config(dict(
      experiment_name='p', byzantine_clients=4))
  with pytest.raises(ValueError, match='Krum needs more than'):
    robustness.configs(config, ['krum'], ['sign_flip'], [0.2], parameters)


def test_exact_attackers_per_round_label_attacked_runs_and_share_clean_ones():
  config, parameters = robustness_flags.base_config(dict(
      experiment_name='p', malicious_per_round='exact', attack_scale=10.0,
      model='linear'))
  runs = robustness.configs(config, ['mean', 'median'], ['sign_flip'],
                            [0.0, 0.2], parameters)
  assert list(runs) == ['mean_clean', 'median_clean',
                        'mean_sign_flip_0.2_exact', 'median_sign_flip_0.2_exact']
  assert runs['median_sign_flip_0.2_exact'].algorithm.attack.per_round == (
      'exact')
  # The clean runs are those of a study that sampled its attackers.
  sampled, _ = robustness_flags.base_config(dict(
      experiment_name='p', attack_scale=10.0, model='linear'))
  assert runs['mean_clean'] == robustness.configs(
      sampled, ['median'], ['sign_flip'], [0.0], {})['mean_clean']
