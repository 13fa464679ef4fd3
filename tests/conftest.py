"""Shared pytest fixtures.

The FEMNIST fixtures point at the project's shared data, which lives beside
the repository (``<repo>/../shared/data/femnist``) and is never copied into it.
"""

import pathlib

import pytest

_FEMNIST_DIR = pathlib.Path(__file__).resolve().parent.parent.parent / 'shared' / 'data' / 'femnist'


@pytest.fixture(scope='session')
def shared_femnist_npz() -> pathlib.Path:
  """``<repo>/../shared/data/femnist/femnist_dev.npz`` (201 FEMNIST writers)."""
  path = _FEMNIST_DIR / 'femnist_dev.npz'
  if not path.is_file():
    pytest.skip(f'../shared/data/femnist/femnist_dev.npz not found: expected {path} '
                '(shared FEMNIST subset beside the repo)')
  return path


@pytest.fixture(scope='session')
def shared_leaf_dir() -> pathlib.Path:
  """``<repo>/../shared/data/femnist/leaf_sample`` (LEAF JSON, six writers)."""
  path = _FEMNIST_DIR / 'leaf_sample'
  if not ((path / 'train').is_dir() and (path / 'test').is_dir()):
    pytest.skip(f'../shared/data/femnist/leaf_sample not found: expected {path} with '
                'train/ and test/ (LEAF JSON sample beside the repo)')
  return path


@pytest.fixture(scope='session', autouse=True)
def tff_runtime():
  """One managed TFF worker for the whole session, always stopped.

  Tests that run TFF computations in-process use it; the worker is started
  lazily by the first of them (importing TFF alone starts nothing).
  """
  from tff_research.execution import runtime  # pylint: disable=g-import-not-at-top
  yield runtime
  runtime.stop()


@pytest.fixture(autouse=True)
def worker_not_left_stopped(tff_runtime):
  """Restarts the worker a test stopped, so the next test does not inherit it.

  A binary's `main()` always ends with `runtime.stop()`, which leaves the
  stopped worker's context as TFF's default: every later TFF call in this
  process would raise "the TFF worker ... was stopped". Tests run in an
  order xdist picks, so a test must not depend on which ran before it.
  """
  yield
  if tff_runtime.stopped():
    tff_runtime.start()


@pytest.fixture
def tff_worker(tff_runtime):
  tff_runtime.start()
  return tff_runtime


@pytest.fixture(scope='session', autouse=True)
def parsed_flags():
  """absl flags parsed with defaults, so library code can read them."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope='session')
def emnist_cache_dir(shared_femnist_npz, tmp_path_factory) -> pathlib.Path:
  """A TFF `emnist_all.sqlite` cache built once from the shared FEMNIST npz."""
  from tff_research.data import build_emnist_cache  # pylint: disable=g-import-not-at-top
  from tff_research.data import femnist_arrays  # pylint: disable=g-import-not-at-top
  cache_dir = tmp_path_factory.mktemp('emnist_cache')
  build_emnist_cache.write_emnist_sqlite(
      femnist_arrays.load_femnist_arrays(str(shared_femnist_npz)), str(cache_dir))
  return cache_dir
