"""EDM's ancestral sampler: p(z_s | z_t) steps and the final p(x, h | z_0).

Pure functions of params, the (padded) batch of molecules to generate, and
explicit noise; `sample` draws the noise from a key folded with the step index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph

from edm_zoo import center_of_gravity
from edm_zoo.diffusion.objective import Diffusion, Params


def sigma_and_alpha_t_given_s(gamma_t, gamma_s):
  """(sigma^2_{t|s}, sigma_{t|s}, alpha_{t|s}) in EDM's numerically stable form."""
  sigma2 = -jnp.expm1(jax.nn.softplus(gamma_s) - jax.nn.softplus(gamma_t))
  alpha = jnp.exp(0.5 * (jax.nn.log_sigmoid(-gamma_t) - jax.nn.log_sigmoid(-gamma_s)))
  return sigma2, jnp.sqrt(sigma2), alpha


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
  sigma2_ts, sigma_ts, alpha_ts = sigma_and_alpha_t_given_s(gamma_t, gamma_s)
  _, sigma_s = model.alpha_sigma(gamma_s)
  _, sigma_t = model.alpha_sigma(gamma_t)
  eps_hat = model.eps(params, graph, z_t, t)
  node = lambda v: model._per_node(v, graph)  # pylint: disable=protected-access
  mu = z_t / node(alpha_ts) - node(sigma2_ts / alpha_ts / sigma_t) * eps_hat
  sigma = sigma_ts * sigma_s / sigma_t
  z_s = mu + node(sigma) * noise
  z_s = jnp.concatenate(
      [center_of_gravity.remove_mean(z_s[:, :3], graph), z_s[:, 3:]], axis=-1)
  return {'mu': mu, 'sigma': sigma, 'z_s': z_s}


def p_xh_given_z0(model: Diffusion, params: Params, graph: jraph.GraphsTuple,
                  z_0: jax.Array, noise: jax.Array) -> dict[str, jax.Array]:
  """The final step: positions from N(mu_x, sigma_x), types by argmax, Z rounded.

  Returns:
    {'mu_x' [n_node, D], 'sigma_x' [n_graph], 'x' [n_node, 3] (not re-centred),
     'h_cat' [n_node, K] one-hot, 'h_int' [n_node, 1] integers (Z)}.
  """
  d = model.config.diffusion
  K = model.config.num_atom_types
  n_graph = graph.n_node.shape[0]
  zeros = jnp.zeros(n_graph)
  gamma_0 = model.gamma(params, zeros)
  alpha_0, sigma_0 = model.alpha_sigma(gamma_0)
  sigma_x = jnp.exp(0.5 * gamma_0)
  eps_hat = model.eps(params, graph, z_0, zeros)
  node = lambda v: model._per_node(v, graph)  # pylint: disable=protected-access
  mu_x = (z_0 - node(sigma_0) * eps_hat) / node(alpha_0)
  xh = mu_x + node(sigma_x) * noise
  mask = graph.nodes['mask'][:, None]
  x = xh[:, :3] * d.norm_values[0]
  h_cat = (z_0[:, 3:3 + K] * d.norm_values[1] + d.norm_biases[1]) * mask
  h_cat = jax.nn.one_hot(jnp.argmax(h_cat, axis=-1), K) * mask
  if d.include_charges:
    h_int = jnp.round((z_0[:, -1:] * d.norm_values[2] + d.norm_biases[2]) * mask) * mask
  else:
    h_int = jnp.zeros_like(z_0[:, :1])
  return {'mu_x': mu_x, 'sigma_x': sigma_x, 'x': x, 'h_cat': h_cat, 'h_int': h_int}


def sample(model: Diffusion, params: Params, graph: jraph.GraphsTuple,
           rng: jax.Array) -> dict[str, jax.Array]:
  """The whole chain z_T -> ... -> z_0 -> (x, h) in one `lax.scan`.

  Args:
    model: the diffusion model.
    params: its (EMA) parameters.
    graph: a padded batch whose `n_node` gives each molecule's size.
    rng: key; step k's noise comes from `fold_in(rng, k)`.

  Returns:
    `p_xh_given_z0`'s dict, with x re-centred per molecule.
  """
  T = model.T
  z = model.sample_noise(jax.random.fold_in(rng, T), graph)
  n_graph = graph.n_node.shape[0]

  def step(z, s_int):
    noise = model.sample_noise(jax.random.fold_in(rng, s_int), graph)
    s = jnp.full(n_graph, s_int, jnp.float32) / T
    t = jnp.full(n_graph, s_int + 1, jnp.float32) / T
    return p_zs_given_zt(model, params, graph, s, t, z, noise)['z_s'], None

  z, _ = jax.lax.scan(step, z, jnp.arange(T - 1, -1, -1))
  out = p_xh_given_z0(model, params, graph, z,
                      model.sample_noise(jax.random.fold_in(rng, T + 1), graph))
  out['x'] = center_of_gravity.remove_mean(out['x'], graph)
  return out
