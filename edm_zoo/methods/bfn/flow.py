"""The Bayesian flow of continuous and discretised variables (Graves et al. 2023,
§4-5) as GeoBFN computes it (`bfn_base.bfnBase`): the accuracy schedule beside
its algebra, the flow's update, the discretised output distribution and the
continuous-time loss.

A continuous variable x with sender accuracy schedule beta(t) = sigma_1^(-2t) - 1
has the flow distribution p_F(mu | x, t) = N(gamma(t) x, gamma(t) (1 - gamma(t)))
with gamma(t) = 1 - sigma_1^(2t). The discretised variable (K bins on [-1, 1])
flows the same way; the network's Gaussian over it is read as bin probabilities.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def gamma(t: jax.Array, sigma1: float) -> jax.Array:
  """gamma(t) = 1 - sigma_1^(2t): the flow mean's weight on the data."""
  return 1 - jnp.power(jnp.asarray(sigma1, jnp.float32), 2 * t)


def bayesian_flow(x: jax.Array, t: jax.Array, sigma1: float, noise: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """(mu, gamma): a draw of p_F(mu | x, t) from standard normal `noise`.

  Args:
    x: [n, d] data.
    t: [n, 1] times.
    sigma1: the variable's sigma_1.
    noise: [n, d] standard normal.
  """
  g = gamma(t, sigma1)
  return g * x + noise * jnp.sqrt(g * (1 - g)), g


def data_prediction(mu: jax.Array, g: jax.Array, eps: jax.Array) -> jax.Array:
  """x_hat = mu / gamma - sqrt((1 - gamma) / gamma) eps_hat (the network predicts
  the flow's noise)."""
  return mu / g - jnp.sqrt((1 - g) / g) * eps


def bin_centres(bins: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(centres k_c, left edges k_l, right edges k_r), each [bins]: k_c = (2k - 1) / K
  - 1 for k = 1..K."""
  k = jnp.arange(1, bins + 1, dtype=jnp.float32)
  c = (2 * k - 1) / bins - 1
  return c, c - 1 / bins, c + 1 / bins


def discretised_cdf(mu: jax.Array, sigma: jax.Array, x: jax.Array) -> jax.Array:
  """[n, K] the Gaussian's CDF at x [K], 1 from x >= 1 and 0 at x <= -1 (the
  first and last bins take the tails)."""
  f = 0.5 * (1 + jax.lax.erf((x - mu) / (sigma * math.sqrt(2))))
  f = jnp.where(x >= 1, 1.0, f)
  return jnp.where(x <= -1, 0.0, f)


def bin_probabilities(mu: jax.Array, sigma: jax.Array, bins: int) -> jax.Array:
  """[n, K] p_O of each bin for a Gaussian N(mu, sigma^2) ([n, 1] each)."""
  _, left, right = bin_centres(bins)
  return discretised_cdf(mu, sigma, right) - discretised_cdf(mu, sigma, left)


def nearest_centre(value: jax.Array, bins: int) -> jax.Array:
  """The bin centre nearest to `value` [n, 1] (ties: the lower bin, as argmin)."""
  c, _, _ = bin_centres(bins)
  return c[jnp.argmin(jnp.abs(value - c), axis=-1)][:, None]


def continuous_time_loss(t: jax.Array, sigma1: float, x_pred: jax.Array,
                         x: jax.Array) -> jax.Array:
  """[n] L^inf = -ln(sigma_1) sigma_1^(-2t) ||x_hat - x||^2 per row (t [n, 1])."""
  s1 = jnp.asarray(sigma1, jnp.float32)
  return -jnp.log(s1) * jnp.sum((x_pred - x)**2, -1) * jnp.power(s1, -2 * t[:, 0])


def sender_accuracy(i: jax.Array, n: int, sigma1: float) -> jax.Array:
  """alpha_i = sigma_1^(-2i/n) (1 - sigma_1^(2/n)): the accuracy of step i of n."""
  s1 = jnp.asarray(sigma1, jnp.float32)
  return jnp.power(s1, -2 * i / n) * (1 - jnp.power(s1, 2 / n))
