"""Gaussian noise (model poisoning): a malicious client sends N(0, s^2 I)
(s = `attack_scale`) in place of its update, the Gaussian Byzantine client
of Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent".

The noise is a pure function of (run seed, round, client id): `noise_seed`
derives a stateless TensorFlow seed from them, and `gaussian_update` draws
with `tf.random.stateless_normal`, so a resumed run sends exactly the noise
of an uninterrupted one.

Type signatures, for a model-update structure V:

    noise_seed: (int, int, str) -> int64[2]
    gaussian_update: (V, float, int64[2]) -> V   (same shapes and dtypes)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tff_research.data import sampling


def noise_seed(seed: int, round_num: int, client_id: str) -> np.ndarray:
  """int64[2], the stateless seed of `client_id`'s noise in `round_num`."""
  rng = sampling.round_rng(seed, round_num, f'gaussian_attack/{client_id}')
  return rng.integers(0, 2**62, size=2, dtype=np.int64)


def gaussian_update(like, scale: float, seed):
  """N(0, scale^2) noise shaped like the update `like`.

  Args:
    like: the honest update (only its shapes and dtypes are used).
    scale: the standard deviation s > 0.
    seed: int64[2] from `noise_seed` (a tensor inside a TF computation).
  """
  if not scale > 0:
    raise ValueError(f'--attack_scale={scale} is not valid: must be > 0')
  flat = tf.nest.flatten(like)
  seeds = tf.random.experimental.stateless_split(
      tf.cast(seed, tf.int64), num=max(len(flat), 1))
  return tf.nest.pack_sequence_as(like, [
      tf.random.stateless_normal(tf.shape(t), seed=seeds[i], stddev=scale,
                                 dtype=tf.convert_to_tensor(t).dtype)
      for i, t in enumerate(flat)])
