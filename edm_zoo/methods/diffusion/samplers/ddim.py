"""A DDIM-type sampler (Song, Meng, Ermon 2021) on the model's gamma.

From the network's eps_hat, x_hat = (z_t - sigma_t eps_hat) / alpha_t, then

    z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c noise,
    c = eta * (the ancestral posterior's standard deviation),

so eta = 0 is deterministic (the probability-flow ODE's first-order step) and
eta = 1 has the ancestral sampler's marginals.
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
class DDIM:
  """Args: eta: the share of the ancestral noise kept (0: deterministic)."""
  eta: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f'eta must be in [0, 1], got {self.eta}.')

  @property
  def stochastic(self) -> bool:
    return self.eta > 0

  def init(self, z: jax.Array):
    del z
    return ()

  def step(self, model: Diffusion, params: Params, graph: jraph.GraphsTuple,
           z_t: jax.Array, carry, *, t: jax.Array, s: jax.Array, noise: jax.Array):
    p = chain.predict(model, params, graph, z_t, t, s)
    _, _, sigma_ancestral = schedules.posterior(p.gamma_s, p.gamma_t)
    c = self.eta * sigma_ancestral
    node = lambda v: masking.per_node(v, graph)
    z_s = (node(p.alpha_s) * p.x_hat
           + node(jnp.sqrt(jnp.maximum(p.sigma_s**2 - c**2, 0.0))) * p.eps_hat)
    if self.stochastic:
      z_s = z_s + node(c) * noise
    return center_of_gravity.remove_mean_positions(z_s, graph), carry
