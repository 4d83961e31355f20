"""DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep solver of the
probability-flow ODE in log-SNR, deterministic.

With lambda = log(alpha / sigma) = -gamma / 2 (`schedules.half_log_snr`), the data
prediction x_hat = (z - sigma eps_hat) / alpha and h = lambda_s - lambda_t,

    z_s = (sigma_s / sigma_t) z_t - alpha_s expm1(-h) D,

with D = x_hat on the first step (first order, DPM-Solver++(1) = DDIM) and
D = (1 + 1 / 2r) x_hat - (1 / 2r) x_hat_prev with r = h_prev / h after it: one
network evaluation per step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import jraph

from edm_zoo import center_of_gravity
from edm_zoo import masking
from edm_zoo.methods.diffusion import schedules
from edm_zoo.methods.diffusion.samplers import chain
from edm_zoo.methods.diffusion.objective import Diffusion, Params


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2M:
  """The multistep solver; its carry is the previous step's x_hat and h."""
  stochastic = False

  def init(self, z: jax.Array):
    return {'x_prev': jnp.zeros_like(z), 'h_prev': jnp.zeros(()), 'first': jnp.ones((), bool)}

  def step(self, model: Diffusion, params: Params, graph: jraph.GraphsTuple,
           z_t: jax.Array, carry, *, t: jax.Array, s: jax.Array, noise: jax.Array):
    del noise
    p = chain.predict(model, params, graph, z_t, t, s)
    x_hat = p.x_hat
    h = schedules.half_log_snr(p.gamma_s) - schedules.half_log_snr(p.gamma_t)
    node = lambda v: masking.per_node(v, graph)
    # All molecules share the time grid, so one ratio r serves the batch.
    r = jnp.where(carry['first'], 1.0, carry['h_prev'] / h[0])
    second = (1 + 0.5 / r) * x_hat - (0.5 / r) * carry['x_prev']
    d = jnp.where(carry['first'], x_hat, second)
    z_s = node(p.sigma_s / p.sigma_t) * z_t - node(p.alpha_s * jnp.expm1(-h)) * d
    z_s = center_of_gravity.remove_mean_positions(z_s, graph)
    return z_s, {'x_prev': x_hat, 'h_prev': h[0], 'first': jnp.zeros((), bool)}
