"""From an `ExperimentConfig` to a finished run, and back from a run directory.

`train(config)` is the Python entry point of every experiment (the binaries
call it with the config their flags describe):

    from tff_research.run import config, training
    cfg = config.ExperimentConfig(experiment_name='mine', model='cnn')
    rows = training.train(cfg)                       # built-in model and data
    rows = training.train(cfg, model=my_keras_fn,    # any Keras constructor
                          client_data=(train_cd, test_cd))  # any ClientData

`build_run(config)` assembles the pieces (data, model, client split,
algorithm) once; `rebuild_run(run_dir)` does the same from a run's
hparams.json, for evaluation, reports and tests.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import os
from typing import Any, Optional, Union

import tensorflow_federated as tff

from tff_research import algorithms
from tff_research import models
from tff_research.algorithms import client_state
from tff_research.data import federated_data
from tff_research.data import preprocessing
from tff_research.execution import runtime
from tff_research.run import attack_hook
from tff_research.run import client_data as client_data_lib
from tff_research.run import client_sampler
from tff_research.run import client_split
from tff_research.run import config as config_lib
from tff_research.run import dashboard
from tff_research.run import held_out_evaluation
from tff_research.run import hooks as hooks_lib
from tff_research.run import loop
from tff_research.run import release as release_lib
from tff_research.run import run_directory as run_directory_lib
from tff_research.run import run_lock
from tff_research.run import safe_checkpoints
from tff_research.run import startup
from tff_research.run import validation_split

ClientDataPair = tuple[tff.simulation.datasets.ClientData,
                       tff.simulation.datasets.ClientData]


@dataclasses.dataclass(frozen=True)
class Run:
  """The assembled pieces of a run."""

  config: config_lib.ExperimentConfig
  data: federated_data.FederatedData
  model_fn: Callable[[], tff.learning.models.VariableModel]
  split: client_split.ClientSplit
  algorithm: Any

  @property
  def directory(self) -> run_directory_lib.RunDirectory:
    return run_directory_lib.RunDirectory(self.config.run_dir)

  def state_template(self) -> dict[str, Any]:
    return {'round': 0, 'state': self.algorithm.initialize()}


def federated_data_from(
    client_data: Union[federated_data.FederatedData, ClientDataPair],
    num_classes: Optional[int] = None,
    description: str = 'your ClientData',
) -> federated_data.FederatedData:
  """A researcher's federation as the `FederatedData` the pipeline uses.

  `client_data` is (train, test) `tff.simulation.datasets.ClientData` whose
  elements are `OrderedDict(pixels=float32 [28, 28] or [784], label=int32)`
  (test holds a subset of train's client ids), or a FederatedData.
  """
  if isinstance(client_data, federated_data.FederatedData):
    return client_data
  train, test = client_data
  if num_classes is None:
    labels = [int(e['label']) for e in
              train.create_tf_dataset_from_all_clients().as_numpy_iterator()]
    num_classes = max(labels) + 1
  return federated_data.FederatedData(
      train, test, num_classes, tuple(train.client_ids),
      f'{description}: {len(train.client_ids)} clients, {num_classes} classes')


def build_run(
    config: config_lib.ExperimentConfig,
    *,
    model: Union[str, models.KerasConstructor, None] = None,
    client_data=None,
    log=print,
    phases: Optional[startup.StartupPhases] = None,
) -> Run:
  """Data, model, client split and algorithm of `config`, each built once.

  Args:
    config: the experiment.
    model: overrides `config.model` with a Keras constructor (a function of
      `num_classes` returning an uncompiled Keras model).
    client_data: overrides `config.data` with your federation (see
      `federated_data_from`).
    log: where one-off events (an array store built) are reported.
    phases: times the phases (data, split, algorithm) when given.
  """
  phases = phases or startup.StartupPhases()
  with phases.phase('data'):
    if client_data is None:
      data = federated_data.load_federated_data(config.data, log)
    else:
      data = federated_data_from(client_data)
  model_fn = models.model_fn(config.model if model is None else model,
                             data.num_classes, preprocessing.element_spec(),
                             seed=config.seed)
  with phases.phase('split'):
    evaluation = config.evaluation
    if evaluation.validation_fraction:
      data, evaluation = validation_split.carve(data, evaluation, config.seed)
    # Clustered FL's held-out clients have no cluster: each chooses one.
    split = client_split.ClientSplit(
        data, evaluation, config.seed,
        choose_model=config.algorithm.clustered)
  with phases.phase('algorithm'):
    directory = run_directory_lib.RunDirectory(config.run_dir)
    # Per-client rows (SCAFFOLD's c_i, clustered FL's sketches) live beside
    # the checkpoints that pin them.
    tables = client_state.Tables(os.path.join(config.run_dir, 'client_state'),
                                 directory.checkpoint_dir,
                                 run_directory_lib.CHECKPOINT_PREFIX)
    algorithm = algorithms.build_algorithm(
        config.algorithm, model_fn, split.train_client_ids, tables,
        cohorts=execution_layout(config)[0])
  return Run(config, data, model_fn, split, algorithm)


def execution_layout(config: config_lib.ExperimentConfig
                     ) -> tuple[int, int]:
  """(cohorts a FedAvg-family round's clients are packed into, intra-op
  threads of the local worker: 0 for TensorFlow's default).

  Locally, `parallel_cohorts` cohorts (unset: `LOCAL_PARALLEL_COHORTS`)
  train side by side, each on one thread: this CNN's small convolutions
  gain less from a second thread than from a second client
  (benchmarks/README.md). Held-out evaluation runs in as many parts. With
  remote workers each gets `parallel_cohorts` (unset: 1) contiguous
  cohorts, and its threads are set where it is started
  (`cli.worker --intra_op_threads`).
  """
  if config.workers:
    return len(config.workers) * (config.parallel_cohorts or 1), 0
  cohorts = config.parallel_cohorts or config_lib.LOCAL_PARALLEL_COHORTS
  return cohorts, (1 if cohorts > 1 else 0)


def start_runtime(config: config_lib.ExperimentConfig) -> None:
  """Starts (or reuses) the workers `config` executes on."""
  runtime.start(workers=config.workers,
                intra_op_threads=execution_layout(config)[1])


def state_manager(checkpoint_dir: str, keep_total: int = 3):
  """The run's checkpoints: atomic saves, damaged versions skipped on load."""
  return safe_checkpoints.SafeFileProgramStateManager(
      checkpoint_dir, prefix=run_directory_lib.CHECKPOINT_PREFIX,
      keep_total=keep_total, keep_first=False)


def train(
    config: config_lib.ExperimentConfig,
    *,
    model: Union[str, models.KerasConstructor, None] = None,
    client_data=None,
    log=print,
) -> list[dict[str, Any]]:
  """Trains `config` into `config.run_dir`, resuming what is there.

  Returns the metric rows of the rounds this call ran. Raises ValueError
  (one line) for a run directory that cannot be used, before anything is
  written.
  """
  directory = run_directory_lib.RunDirectory(config.run_dir)
  run_directory_lib.check_name(config.experiment_name)
  # Cheap checks first: a mismatched resume or a busy directory fails
  # before data is loaded.
  directory.check_compatible(config)
  holder = run_lock.holder_pid(config.run_dir)
  if holder is not None:
    raise run_lock.RunDirectoryInUseError(config.run_dir, holder)
  phases = startup.StartupPhases()
  with phases.phase('worker'):
    start_runtime(config)
  run = build_run(config, model=model, client_data=client_data, log=log,
                  phases=phases)
  log(f'Data: {run.data.description}')
  left_out = run.split.describe_left_out()
  if left_out:
    log(f'Evaluation: {left_out}')
  sampler = client_sampler.ClientSampler.from_config(
      run.split.train_client_ids, config.training, config.seed,
      config.algorithm.attack)
  log(phases.line())
  # One writer per run directory, for the rest of the run.
  with run_lock.hold(config.run_dir):
    directory.check_compatible(config)  # Another run may have started it.
    directory.write_hparams(config)
    return _train(config, run, sampler, directory, log)


def _train(config, run, sampler, directory, log):
  release = release_lib.MetricsRelease(directory.metrics_path, config.run_dir)
  attack = config.algorithm.attack
  # The same pure function of (seed, training clients) as the algorithm's.
  malicious = attack.malicious(run.split.train_client_ids)
  hooks = [
      dashboard.DashboardHook(
          data=run.data, sampler=sampler, run_directory=directory,
          writer=release.writer, hparams=config_lib.to_hparams(config)),
      hooks_lib.CommunicationHook(run.algorithm, directory),
      hooks_lib.DivergenceGuard(run.algorithm, {
          k: v for k, v in config.algorithm.values.items()
          if k in ('client_learning_rate', 'server_learning_rate')}),
  ]
  parts = execution_layout(config)[0]
  if attack.active:
    hooks.append(attack_hook.AttackHook(
        run.algorithm, attack, malicious, run.split, run.model_fn,
        run.data.num_classes, config.evaluation.eval_batch_size, parts))
  rows = loop.run_rounds(
      algorithm=run.algorithm,
      sampler=sampler,
      training_data=client_data_lib.TrainingData(
          run.data.train, config.training, config.seed,
          poison=attack.poison(run.data.num_classes), poisoned=malicious),
      state_manager=state_manager(directory.checkpoint_dir).bind_config(
          config_lib.to_hparams(config)),
      release=release,
      evaluation=held_out_evaluation.HeldOutEvaluation(
          run.algorithm, run.model_fn, run.split,
          config.evaluation.eval_every, run.data.num_classes, parts),
      hooks=hooks,
      total_rounds=config.training.total_rounds,
      rounds_per_checkpoint=config.training.rounds_per_checkpoint,
      name=config.run_dir,
      progress=config.progress,
      log=log,
  )
  return rows


def rebuild_run(run_dir: str, **overrides) -> Run:
  """The `Run` recorded in `run_dir`/hparams.json.

  `overrides` replace recorded flag values that do not change what was
  trained (`data_dir`, `eval_on`, `max_eval_clients`).
  """
  directory = run_directory_lib.RunDirectory(run_dir)
  values = run_directory_lib.read_hparams(directory.hparams_path)
  values.update({k: v for k, v in overrides.items() if v is not None})
  try:
    config = config_lib.from_hparams(values)
  except ValueError as e:
    raise run_directory_lib.RunDirError(
        f'{directory.hparams_path}: {e}') from None
  start_runtime(config)
  return build_run(config)
