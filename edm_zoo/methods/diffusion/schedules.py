"""Noise schedules gamma(t) = -log(alpha_t^2 / sigma_t^2) and their algebra.

The one home of the schedule and of everything derived from gamma (as
google-research/vdm keeps it beside the schedule): alpha and sigma, the SNR
weight of the loss, the t|s transition of the reverse step, the final step's
sigma_x. `polynomial_<p>` and `cosine` are EDM's predefined schedules: a float32
table of T + 1 values looked up at round(t * T), exactly as
`PredefinedNoiseSchedule` does (t = -1/T wraps to gamma[T], as torch indexing
does). `learned` is the VDM-style monotone network (`GammaNetwork`).
"""

from __future__ import annotations

import math
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np


def clip_noise_schedule(alphas2: np.ndarray, clip_value: float = 0.001) -> np.ndarray:
  """Clips alpha_t^2 / alpha_{t-1}^2 to [clip_value, 1] and re-accumulates."""
  alphas2 = np.concatenate([np.ones(1), alphas2])
  step = np.clip(alphas2[1:] / alphas2[:-1], clip_value, 1.0)
  return np.cumprod(step)


def polynomial_alphas2(T: int, precision: float, power: float) -> np.ndarray:
  steps = T + 1
  x = np.linspace(0, steps, steps)
  alphas2 = clip_noise_schedule((1 - np.power(x / steps, power))**2)
  return (1 - 2 * precision) * alphas2 + precision


def cosine_alphas2(T: int, s: float = 0.008) -> np.ndarray:
  steps = T + 2
  x = np.linspace(0, steps, steps)
  cumprod = np.cos(((x / steps) + s) / (1 + s) * np.pi * 0.5)**2
  cumprod = cumprod / cumprod[0]
  betas = np.clip(1 - cumprod[1:] / cumprod[:-1], 0, 0.999)
  return np.cumprod(1.0 - betas)


def gamma_table(name: str, T: int, precision: float) -> np.ndarray:
  """float32 [T + 1] table of a predefined schedule (`polynomial_<p>`, `cosine`)."""
  if name == 'cosine':
    alphas2 = cosine_alphas2(T)
  elif name.startswith('polynomial_'):
    try:
      power = float(name.split('_', 1)[1])
    except ValueError:
      raise ValueError(f'bad noise schedule {name!r}; e.g. polynomial_2.') from None
    alphas2 = polynomial_alphas2(T, precision, power)
  else:
    raise ValueError(f"unknown noise schedule {name!r}; allowed: 'polynomial_<p>',"
                     " 'cosine', 'learned'.")
  return (-(np.log(alphas2) - np.log(1 - alphas2))).astype(np.float32)


def lookup(table: jax.Array, t: jax.Array) -> jax.Array:
  """gamma[round(t * T)] for t in [-1/T, 1]."""
  T = table.shape[0] - 1
  return table[jnp.round(t * T).astype(jnp.int32)]


class PositiveLinear(hk.Module):
  """Linear layer with softplus-positive weights (monotone in its input)."""

  def __init__(self, output_size: int, *, weight_init_offset: float = -2.0,
               name: str | None = None):
    super().__init__(name=name)
    self._output_size = output_size
    self._offset = weight_init_offset

  def __call__(self, x):
    fan_in = x.shape[-1]
    limit = 1.0 / math.sqrt(fan_in)
    w_init = lambda shape, dtype: hk.initializers.RandomUniform(-limit, limit)(
        shape, dtype) + self._offset
    w = hk.get_parameter('w', [fan_in, self._output_size], x.dtype, init=w_init)
    b = hk.get_parameter('b', [self._output_size], x.dtype,
                         init=hk.initializers.RandomUniform(-limit, limit))
    return x @ jax.nn.softplus(w) + b


class GammaNetwork(hk.Module):
  """Learned monotone gamma(t), rescaled to [gamma_0, gamma_1] (init -5, 10)."""

  def __init__(self, *, name: str | None = 'gamma'):
    super().__init__(name=name)

  def _gamma_tilde(self, t):
    l1 = PositiveLinear(1, name='l1')(t)
    return l1 + PositiveLinear(1, name='l3')(
        jax.nn.sigmoid(PositiveLinear(1024, name='l2')(l1)))

  def __call__(self, t: jax.Array) -> jax.Array:
    t = t[:, None]
    g0 = hk.get_parameter('gamma_0', [1], t.dtype, init=hk.initializers.Constant(-5.))
    g1 = hk.get_parameter('gamma_1', [1], t.dtype, init=hk.initializers.Constant(10.))
    tilde_0 = self._gamma_tilde(jnp.zeros_like(t))
    tilde_1 = self._gamma_tilde(jnp.ones_like(t))
    normalized = (self._gamma_tilde(t) - tilde_0) / (tilde_1 - tilde_0)
    return (g0 + (g1 - g0) * normalized)[:, 0]


def learned_transform() -> hk.Transformed:
  return hk.without_apply_rng(hk.transform(lambda t: GammaNetwork()(t)))


class NoiseSchedule:
  """gamma(t) of a configured schedule, with its own (possibly empty) parameters.

  Args:
    name: 'polynomial_<p>', 'cosine' or 'learned'.
    T: number of diffusion steps.
    precision: the predefined schedules' precision s.
  """

  def __init__(self, name: str, T: int, precision: float):
    self.learned = name == 'learned'
    if self.learned:
      self._net = learned_transform()
      self.table = None
    else:
      self.table = jnp.asarray(gamma_table(name, T, precision))

  def init(self, rng: jax.Array) -> dict[str, Any]:
    """The schedule's parameters (empty for a predefined table)."""
    if not self.learned:
      return {}
    return dict(self._net.init(rng, jnp.zeros(1)))

  def __call__(self, params: dict[str, Any], t: jax.Array) -> jax.Array:
    """gamma(t) for t [n] in [0, 1] (params: exactly `init`'s modules)."""
    if self.learned:
      return self._net.apply(params, t)
    return lookup(self.table, t)


# --- The algebra of gamma.

def alpha_sigma(gamma: jax.Array) -> tuple[jax.Array, jax.Array]:
  """alpha_t = sqrt(sigmoid(-gamma_t)), sigma_t = sqrt(sigmoid(gamma_t))."""
  return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))


def snr_weight(gamma_s: jax.Array, gamma_t: jax.Array) -> jax.Array:
  """SNR(s) / SNR(t) - 1 with SNR = exp(-gamma): the weight of the L_t term."""
  return jnp.exp(-(gamma_s - gamma_t)) - 1


def transition(gamma_t: jax.Array, gamma_s: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(sigma^2_{t|s}, sigma_{t|s}, alpha_{t|s}) of q(z_t | z_s), s < t, in EDM's
  numerically stable form (expm1 and softplus of gamma)."""
  sigma2 = -jnp.expm1(jax.nn.softplus(gamma_s) - jax.nn.softplus(gamma_t))
  alpha = jnp.exp(0.5 * (jax.nn.log_sigmoid(-gamma_t) - jax.nn.log_sigmoid(-gamma_s)))
  return sigma2, jnp.sqrt(sigma2), alpha


def posterior(gamma_s: jax.Array, gamma_t: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The reverse step's p(z_s | z_t) = N(z_t / a - b eps_hat, c^2) for s < t, as
  (a = alpha_{t|s}, b = sigma^2_{t|s} / (alpha_{t|s} sigma_t),
   c = sigma_{t|s} sigma_s / sigma_t)."""
  sigma2_ts, sigma_ts, alpha_ts = transition(gamma_t, gamma_s)
  _, sigma_s = alpha_sigma(gamma_s)
  _, sigma_t = alpha_sigma(gamma_t)
  return alpha_ts, sigma2_ts / alpha_ts / sigma_t, sigma_ts * sigma_s / sigma_t


def half_log_snr(gamma: jax.Array) -> jax.Array:
  """lambda_t = log(alpha_t / sigma_t) = -gamma_t / 2, the ODE solvers' time."""
  return -0.5 * gamma


def sigma_over_alpha(gamma: jax.Array) -> jax.Array:
  """sigma_t / alpha_t = exp(gamma_t / 2) = 1 / sqrt(SNR(t)): the standard deviation
  of p(x | z_0) in data space."""
  return jnp.exp(0.5 * gamma)
