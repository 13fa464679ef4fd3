"""Sign flipping (model poisoning): a malicious client sends -s times the
update it honestly computed (s = `attack_scale`), the sign-flipping attack
used to test Byzantine-robust rules (Li et al. 2019, "RSA: Byzantine-Robust
Stochastic Aggregation Methods for Distributed Learning from Heterogeneous
Datasets"). A mean of n updates with one such attacker moves by
(sum_honest - s * own) / n: against the honest direction once s exceeds the
other clients' agreement.

Type signature, for a model-update structure V:

    sign_flip: (V, float) -> V
"""

from __future__ import annotations

import tensorflow as tf


def sign_flip(update, scale: float):
  """-scale * update, tensor by tensor (TensorFlow or numpy values)."""
  if not scale > 0:
    raise ValueError(f'--attack_scale={scale} is not valid: must be > 0')
  return tf.nest.map_structure(lambda t: -scale * t, update)
