"""Workload W of the benchmark, shared by every peer.

FedAvg on the EMNIST CNN (62 classes), 1 local epoch, batch 20, client
learning rate 0.1 (plain SGD), server learning rate 1.0, K clients per round.

Data: the writers of the shared FEMNIST subset (`../shared/data/femnist/
femnist_dev.npz`, schema in `../shared/README.md`) when present; otherwise a
synthetic `.npz` in the same schema and of the same shapes (201 writers, 4-165
train and about 16 test examples each, uint8 28x28 pixels, labels 0-61),
written once from the seed. Every peer reads the same `.npz` (the pipeline and
vanilla TFF through the TFF sqlite cache built from it).

The `Plan` fixes which writers train in each round. It is computed once by
`run.py` with the pipeline's own client-sampling rule
(`tff_research.data.sampling.sample_clients` over the sorted writer ids, which
is what `experiments/train.py --seed=S` does with TFF's sorted
`SqlClientData.client_ids`), so the pipeline, run unchanged, trains exactly the
plan's writers; `pipeline_peer` checks it round by round (`train_examples`).
The other peers read the plan and train the same writers in the same rounds.

This module imports only numpy at the top: the Flower peer loads it inside its
own virtual environment, which has no TFF.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Optional

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
SHARED_NPZ = os.path.join(REPO_ROOT, '..', 'shared', 'data', 'femnist', 'femnist_dev.npz')
KERAS_MODELS_PY = os.path.join(REPO_ROOT, 'tff_research', 'models', 'keras_models.py')

NUM_CLASSES = 62
MODEL = 'cnn'
EPOCHS = 1
BATCH_SIZE = 20
CLIENT_LR = 0.1
SERVER_LR = 1.0
SHUFFLE_BUFFER = 100   # the pipeline's and the TFF tutorial's default
EVAL_BATCH_SIZE = 100  # the pipeline's evaluation batch size
NPZ_KEYS = ('client_ids', 'train_pixels', 'train_labels', 'train_client',
            'test_pixels', 'test_labels', 'test_client')


# --- data ---------------------------------------------------------------------

def write_synthetic_npz(path: str, seed: int, num_writers: int = 201) -> str:
  """A synthetic FEMNIST `.npz` in the shared schema (same shapes and dtypes,
  writer sizes drawn like the real subset's: median about 150 train)."""
  rng = np.random.default_rng(seed)
  n_train = np.clip(rng.normal(140, 30, num_writers).astype(int), 4, 165)
  n_test = np.maximum(1, (n_train / 9).astype(int))
  def split(sizes):
    owner = np.repeat(np.arange(num_writers, dtype=np.int32), sizes)
    pixels = rng.integers(0, 256, (owner.size, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, owner.size).astype(np.int32)
    return pixels, labels, owner
  tr, te = split(n_train), split(n_test)
  tmp = path + '.tmp.npz'
  np.savez(tmp, client_ids=np.array([f'syn{i:04d}' for i in range(num_writers)]),
           train_pixels=tr[0], train_labels=tr[1], train_client=tr[2],
           test_pixels=te[0], test_labels=te[1], test_client=te[2])
  os.replace(tmp, path)
  return path


def write_subset_npz(src: str, dst: str, num_writers: int, seed: int) -> str:
  """`src` restricted to `num_writers` writers chosen by `seed` (for --smoke)."""
  with np.load(src) as z:
    a = {k: z[k] for k in NPZ_KEYS}
  rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
  has_train = np.unique(a['train_client'])
  keep = np.sort(rng.choice(has_train, min(num_writers, has_train.size), replace=False))
  remap = -np.ones(len(a['client_ids']), np.int32)
  remap[keep] = np.arange(keep.size, dtype=np.int32)
  out = {'client_ids': a['client_ids'][keep]}
  for split in ('train', 'test'):
    m = remap[a[f'{split}_client']] >= 0
    out[f'{split}_pixels'] = a[f'{split}_pixels'][m]
    out[f'{split}_labels'] = a[f'{split}_labels'][m]
    out[f'{split}_client'] = remap[a[f'{split}_client'][m]]
  tmp = dst + '.tmp.npz'
  np.savez(tmp, **out)
  os.replace(tmp, dst)
  return dst


def describe_npz(path: str) -> dict:
  with np.load(path) as z:
    return dict(writers=int(len(z['client_ids'])), train_examples=int(z['train_labels'].size),
                test_examples=int(z['test_labels'].size))


def _writer_counts(npz: str, split: str) -> dict[str, int]:
  with np.load(npz) as z:
    ids = [str(c) for c in z['client_ids'].tolist()]
    counts = np.bincount(z[f'{split}_client'], minlength=len(ids))
  return {c: int(n) for c, n in zip(ids, counts) if n > 0}


def load_writers(npz: str, writer_ids, split: str = 'train') -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{writer: (x float32 [n, 784] with 1.0 = background, y int32 [n])}."""
  wanted = set(writer_ids)
  with np.load(npz) as z:
    ids = [str(c) for c in z['client_ids'].tolist()]
    owner = z[f'{split}_client']
    pixels = z[f'{split}_pixels']
    labels = z[f'{split}_labels']
  out = {}
  for i, cid in enumerate(ids):
    if cid in wanted:
      m = owner == i
      x = pixels[m].reshape(-1, 784).astype(np.float32) / 255.0
      out[cid] = (x, labels[m].astype(np.int32))
  missing = wanted - set(out)
  if missing:
    raise ValueError(f'{npz}: no {split} examples for writers {sorted(missing)[:5]}')
  return out


# --- the plan -----------------------------------------------------------------

@dataclasses.dataclass
class Plan:
  """Which writers train in each round (rounds[0] is the pipeline's round 1)."""
  npz: str
  cache_dir: str
  data_description: str
  seed: int
  clients_per_round: int
  rounds: list[list[str]]
  eval_writers: list[str]          # every training writer with test examples
  train_counts: dict[str, int]

  @property
  def num_rounds(self) -> int:
    return len(self.rounds)

  def round_examples(self) -> list[int]:
    return [sum(self.train_counts[c] for c in r) for r in self.rounds]

  def all_writers(self) -> list[str]:
    return sorted({c for r in self.rounds for c in r})

  def save(self, path: str) -> str:
    with open(path, 'w') as f:
      json.dump(dataclasses.asdict(self), f)
    return path

  @classmethod
  def load(cls, path: str) -> 'Plan':
    with open(path) as f:
      return cls(**json.load(f))


def make_plan(npz: str, cache_dir: str, data_description: str, *,
              clients_per_round: int, num_rounds: int, seed: int) -> Plan:
  """The rounds the pipeline's `--seed=seed --clients_per_round=K` trains."""
  # The pipeline's own sampling rule (numpy only); main environment only.
  from tff_research.data import sampling  # pylint: disable=g-import-not-at-top
  train_counts = _writer_counts(npz, 'train')
  test_counts = _writer_counts(npz, 'test')
  ids = sorted(train_counts)  # TFF's SqlClientData sorts its client ids
  if clients_per_round > len(ids):
    raise ValueError(f'--clients={clients_per_round} exceeds the {len(ids)} writers of {npz}')
  rounds = [sampling.sample_clients(ids, r, seed=seed, clients_per_round=clients_per_round)
            for r in range(1, num_rounds + 1)]
  return Plan(npz=os.path.abspath(npz), cache_dir=os.path.abspath(cache_dir),
              data_description=data_description, seed=seed,
              clients_per_round=clients_per_round, rounds=rounds,
              eval_writers=[c for c in ids if c in test_counts],
              train_counts=train_counts)


# --- the model ----------------------------------------------------------------

def keras_cnn(seed: Optional[int]):
  """The project's EMNIST CNN (`tff_research.models` name `cnn`), 62 classes.

  Loaded from `tff_research/models/keras_models.py` by path so that the
  Flower environment (TensorFlow, no TFF) builds exactly the same layers.
  """
  spec = importlib.util.spec_from_file_location('_bench_keras_models', KERAS_MODELS_PY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.KERAS_MODELS[MODEL](NUM_CLASSES, seed)
