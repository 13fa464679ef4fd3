"""run.startup: the start-up line's phases."""

import time

from tff_research.run import startup


def test_only_the_first_run_of_a_process_counts_the_imports(monkeypatch):
  monkeypatch.setattr(startup, '_imports_counted', False)
  monkeypatch.setattr(startup, 'process_age_seconds', lambda: 40.0)
  first = startup.StartupPhases()
  with first.phase('data'):
    time.sleep(0.01)
  assert first.phases['imports'] == 40.0
  assert 40.01 <= first.total < 41.0
  # A second run in the same process (a study) imported nothing.
  second = startup.StartupPhases()
  assert second.phases['imports'] == 0.0
  assert second.total < 1.0
  assert second.line().startswith('Start-up 0.0 s: imports 0.0')


def test_process_age_is_the_time_since_this_process_started():
  age = startup.process_age_seconds()
  assert 0.0 < age < 24 * 3600
