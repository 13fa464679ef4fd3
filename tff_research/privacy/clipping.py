"""Client-side L2 clipping of a model update, robust to non-finite values.

Both DP aggregators (`dp_server`, `dp_client`) bound each client's influence
the same way: the whole update (every tensor of the structure together) is
scaled to global L2 norm at most C,

    clip(v) = v * min(1, C / ||v||_2),

the clipping of DP-FedAvg (McMahan et al. 2018, "Learning Differentially
Private Recurrent Language Models", Algorithm 1, `ClipFn`). An update that
holds a NaN or Inf anywhere is replaced by zeros before clipping: it carries
no usable signal, and zero is inside the clip ball, so the sensitivity bound
the privacy accounting relies on still holds, while a single broken client
cannot turn the aggregate into NaN.

Type signature of `build_clip_fn(value_type)`:

    (<value=V, clip=float32> -> <value=V, norm=float32, clipped=float32,
                                  nonfinite=float32>)

`norm` is the norm of the (zeroed if non-finite) update before clipping;
`clipped` and `nonfinite` are 0/1 indicators, summed over clients as counts.
"""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff


def check_value_type(value_type) -> None:
  """Raises TypeError unless `value_type` is a (structure of) float tensor(s)."""
  if isinstance(value_type, tff.FederatedType) or not (
      tff.types.is_structure_of_floats(value_type)
  ):
    raise TypeError(
        'DP aggregation needs an unplaced tensor or structure of float'
        f' tensors (a model update); got {value_type}'
    )


def clip_by_global_norm(value, clip):
  """(clipped value, norm, was clipped, was non-finite) in TensorFlow.

  The norm is accumulated in float64: a finite float32 update with entries
  near 1e20 has a squared norm that overflows float32, and treating it as
  infinite would zero it instead of clipping it.
  """
  flat = tf.nest.flatten(value)
  finite = tf.reduce_all(
      tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in flat])
  )
  flat = [tf.where(finite, t, tf.zeros_like(t)) for t in flat]
  norm = tf.sqrt(
      tf.add_n([tf.reduce_sum(tf.square(tf.cast(t, tf.float64))) for t in flat])
  )
  clip64 = tf.cast(clip, tf.float64)
  # norm == 0 gives clip / 0 = inf, so the scale is exactly 1.
  scale = tf.minimum(tf.constant(1.0, tf.float64), clip64 / norm)
  was_clipped = norm > clip64
  # Multiplying by exactly 1.0 would leave the value unchanged anyway; the
  # explicit branch documents that an update inside the ball is untouched.
  clipped = [
      tf.where(was_clipped, t * tf.cast(scale, t.dtype), t) for t in flat
  ]
  return (
      tf.nest.pack_sequence_as(value, clipped),
      tf.cast(norm, tf.float32),
      tf.cast(was_clipped, tf.float32),
      tf.cast(tf.logical_not(finite), tf.float32),
  )


def clip_with_counts(value, clip):
  """(clipped value, norm, counts) in TensorFlow, for one client.

  `counts` is what both DP aggregators sum over clients: `clients` (1),
  `clipped` and `nonfinite` (0/1, as `clip_by_global_norm`'s) and `excluded`
  (1 if the update's norm is 0). Norm 0 means non-finite, or zeroed already
  by TFF's client work, which replaces a non-finite delta by zeros before
  any aggregator sees it, so `nonfinite` alone misses it; a zero adds
  nothing to the sum, and it is counted as excluded.
  """
  clipped, norm, was_clipped, nonfinite = clip_by_global_norm(value, clip)
  counts = collections.OrderedDict(
      clients=tf.constant(1.0), clipped=was_clipped, nonfinite=nonfinite,
      excluded=tf.cast(tf.equal(norm, 0.0), tf.float32),
  )
  return clipped, norm, counts


def build_clip_fn(value_type) -> tff.Computation:
  """A TF computation clipping one client's update (see module docstring)."""
  check_value_type(value_type)

  @tff.tensorflow.computation(value_type, tf.float32)
  def clip_fn(value, clip):
    clipped, norm, was_clipped, nonfinite = clip_by_global_norm(value, clip)
    return collections.OrderedDict(
        value=clipped, norm=norm, clipped=was_clipped, nonfinite=nonfinite
    )

  return clip_fn
