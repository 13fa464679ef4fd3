"""Adaptive clipping towards a quantile of update norms (Andrew et al. 2021,
"Differentially Private Learning with Adaptive Clipping", NeurIPS 2021).

Instead of a fixed clip C, the server tracks the gamma-quantile of the
clients' update norms. Each sampled client reports whether its update norm
was at most the current clip, b_i = 1[||Delta_i|| <= C_t]; the server
estimates the unclipped fraction from the *noised* count and takes a
geometric step towards the target quantile gamma (their Algorithm 1 with
geometric update, eta_C = 0.2):

    b_t     = clip_[0,1]( (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2 )
    C_{t+1} = C_t * exp(-eta_C * (b_t - gamma))

with m the expected number of clients per round. Centering the indicators at
1/2 halves their sensitivity (adding or removing a client moves the sum by at
most 1/2), exactly as `tensorflow_privacy.QuantileEstimatorQuery` does. The
count release is a second Gaussian mechanism (noise multiplier 2 sigma_b), so
to keep the total noise multiplier z the update noise multiplier grows to

    z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2),

computed by TFF's `adaptive_clip_noise_params` (default sigma_b = m / 20, the
paper's recommendation). The accountant then accounts z per round.
"""

from __future__ import annotations

import tensorflow as tf
# TFF's own split of one noise multiplier between the update and the
# clipped count (`adaptive_clip_noise_params`), which its DP factory uses
# and does not export: reusing it keeps z_Delta exactly TFF's.
from tensorflow_federated.python.aggregators import differential_privacy

# Andrew et al.'s recommended geometric learning rate: the clip moves by at
# most a factor exp(0.2) per round.
DEFAULT_CLIP_LEARNING_RATE = 0.2


def noise_split(
    noise_multiplier: float,
    expected_clients_per_round: float,
    clipped_count_stddev: float | None = None,
) -> tuple[float, float]:
  """(update noise multiplier z_Delta, count noise stddev sigma_b) for total z.

  Raises:
    ValueError (one line): z is too large for the count noise, i.e. there are
      too few expected clients per round to estimate the quantile privately.
  """
  try:
    return differential_privacy.adaptive_clip_noise_params(
        float(noise_multiplier), float(expected_clients_per_round),
        clipped_count_stddev,
    )
  except ValueError:
    limit = 2 * (
        clipped_count_stddev
        if clipped_count_stddev is not None
        else 0.05 * expected_clients_per_round
    )
    raise ValueError(
        f'--dp_noise_multiplier={noise_multiplier} is too large for adaptive'
        f' clipping with {expected_clients_per_round:g} expected clients per'
        f' round: the clipped-count noise needs noise multiplier < {limit:g}'
        ' (= expected clients / 10); sample more clients per round or use a'
        ' fixed --dp_clip'
    ) from None


def geometric_update(
    clip, noised_centered_count, expected_clients_per_round, target_quantile,
    learning_rate,
):
  """(next clip, estimated unclipped fraction b_t) in TensorFlow.

  Args:
    clip: the clip C_t used this round.
    noised_centered_count: sum_i (b_i - 1/2) + N(0, sigma_b^2).
    expected_clients_per_round: m.
    target_quantile: gamma, the fraction of updates to leave unclipped.
    learning_rate: eta_C.
  """
  unclipped = noised_centered_count / expected_clients_per_round + 0.5
  unclipped = tf.clip_by_value(unclipped, 0.0, 1.0)
  return clip * tf.exp(-learning_rate * (unclipped - target_quantile)), unclipped
