"""EDM's ancestral sampler: z_s ~ p(z_s | z_t) for any s < t of the model's gamma.

On the full grid (s = t - 1/T) this is EDM's `sample_p_zs_given_zt`; on a
respaced grid it is the same posterior between non-adjacent times (DDPM's
respacing): the t|s transition comes from gamma(t) and gamma(s), whatever the
gap.
"""

from __future__ import annotations

import dataclasses

import jax
import jraph

from edm_zoo import center_of_gravity
from edm_zoo import masking
from edm_zoo.methods.diffusion import schedules
from edm_zoo.methods.diffusion.objective import Diffusion, Params


def p_zs_given_zt(model: Diffusion, params: Params, graph: jraph.GraphsTuple,
                  s: jax.Array, t: jax.Array, z_t: jax.Array, noise: jax.Array
                  ) -> dict[str, jax.Array]:
  """One reverse step z_t -> z_s.

  Args:
    model: the diffusion model.
    params: its parameters.
    graph: the batch (its nodes' data are ignored; sizes and masks matter).
    s, t: [n_graph] times in [0, 1], s < t.
    z_t: [n_node, D] current state (CoG-free positions).
    noise: [n_node, D] standard normal draw (`model.sample_noise`).

  Returns:
    {'mu', 'sigma' [n_graph], 'z_s'}; z_s has its positions re-centred.
  """
  gamma_s, gamma_t = model.gamma(params, s), model.gamma(params, t)
  alpha_ts, eps_coef, sigma = schedules.posterior(gamma_s, gamma_t)
  eps_hat = model.eps(params, graph, z_t, t)
  node = lambda v: masking.per_node(v, graph)
  mu = z_t / node(alpha_ts) - node(eps_coef) * eps_hat
  z_s = center_of_gravity.remove_mean_positions(mu + node(sigma) * noise, graph)
  return {'mu': mu, 'sigma': sigma, 'z_s': z_s}


@dataclasses.dataclass(frozen=True)
class Ancestral:
  """EDM's sampler on any time grid (stochastic: one noise draw per step)."""
  stochastic = True

  def init(self, z: jax.Array):
    del z
    return ()

  def step(self, model: Diffusion, params: Params, graph: jraph.GraphsTuple,
           z_t: jax.Array, carry, *, t: jax.Array, s: jax.Array, noise: jax.Array):
    return p_zs_given_zt(model, params, graph, s, t, z_t, noise)['z_s'], carry
