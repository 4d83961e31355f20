"""EDM's ancestral sampler: p(z_s | z_t) steps and the final p(x, h | z_0).

Pure functions of params, the (padded) batch of molecules to generate, and
explicit noise; `sample` draws the noise from a key folded with the step index.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jraph

from edm_zoo import center_of_gravity
from edm_zoo import masking
from edm_zoo.diffusion import schedules
from edm_zoo.diffusion.objective import Diffusion, Params


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
  sigma2_ts, sigma_ts, alpha_ts = schedules.transition(gamma_t, gamma_s)
  _, sigma_s = schedules.alpha_sigma(gamma_s)
  _, sigma_t = schedules.alpha_sigma(gamma_t)
  eps_hat = model.eps(params, graph, z_t, t)
  node = lambda v: masking.per_node(v, graph)
  mu = z_t / node(alpha_ts) - node(sigma2_ts / alpha_ts / sigma_t) * eps_hat
  sigma = sigma_ts * sigma_s / sigma_t
  z_s = center_of_gravity.remove_mean_positions(mu + node(sigma) * noise, graph)
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
  alpha_0, sigma_0 = schedules.alpha_sigma(gamma_0)
  sigma_x = schedules.sigma_over_alpha(gamma_0)
  eps_hat = model.eps(params, graph, z_0, zeros)
  node = lambda v: masking.per_node(v, graph)
  mu_x = (z_0 - node(sigma_0) * eps_hat) / node(alpha_0)
  xh = mu_x + node(sigma_x) * noise
  mask = masking.node_mask(graph)[:, None]
  x = xh[:, :3] * d.norm_values[0]
  h_cat = (z_0[:, 3:3 + K] * d.norm_values[1] + d.norm_biases[1]) * mask
  h_cat = jax.nn.one_hot(jnp.argmax(h_cat, axis=-1), K) * mask
  if d.include_charges:
    h_int = jnp.round((z_0[:, -1:] * d.norm_values[2] + d.norm_biases[2]) * mask) * mask
  else:
    h_int = jnp.zeros_like(z_0[:, :1])
  return {'mu_x': mu_x, 'sigma_x': sigma_x, 'x': x, 'h_cat': h_cat, 'h_int': h_int}


def fixed_noise(rng: jax.Array, graph: jraph.GraphsTuple, n_features: int,
                max_atoms: int = 64) -> jax.Array:
  """EDM's `fix_noise`: one draw shared by every molecule (node k of each gets row k)."""
  base = jax.random.normal(rng, (max_atoms, 3 + n_features))
  index = masking.node_graph_index(graph)
  offsets = jnp.cumsum(graph.n_node) - graph.n_node
  within = jnp.arange(index.shape[0]) - offsets[index]
  z = base[jnp.clip(within, 0, max_atoms - 1)] * masking.node_mask(graph)[:, None]
  return center_of_gravity.remove_mean_positions(z, graph)


def _noise(model, graph, rng, index, fix_noise):
  key = jax.random.fold_in(rng, index)
  if fix_noise:
    return fixed_noise(key, graph, model.n_features)
  return model.sample_noise(key, graph)


@functools.partial(jax.jit, static_argnames=('model', 'n_steps', 'unroll', 'fix_noise'))
def reverse_steps(model: Diffusion, params: Params, graph: jraph.GraphsTuple,
                  z: jax.Array, first_s: jax.Array, rng: jax.Array, *, n_steps: int,
                  unroll: int = 1, fix_noise: bool = False) -> jax.Array:
  """`n_steps` reverse steps s = first_s, first_s - 1, ... in one compiled `lax.scan`.

  Step s uses the noise of `fold_in(rng, s)`, so a chain is the same whatever
  `n_steps` it is cut into.
  """
  n_graph = graph.n_node.shape[0]

  def step(z, i):
    s_int = first_s - i
    noise = _noise(model, graph, rng, s_int, fix_noise)
    s = jnp.full(n_graph, s_int, jnp.float32) / model.T
    t = jnp.full(n_graph, s_int + 1, jnp.float32) / model.T
    return p_zs_given_zt(model, params, graph, s, t, z, noise)['z_s'], None

  z, _ = jax.lax.scan(step, z, jnp.arange(n_steps), unroll=unroll)
  return z


@functools.partial(jax.jit, static_argnames=('model', 'fix_noise'))
def final_step(model: Diffusion, params: Params, graph: jraph.GraphsTuple,
               z: jax.Array, rng: jax.Array, *, fix_noise: bool = False):
  out = p_xh_given_z0(model, params, graph, z,
                      _noise(model, graph, rng, model.T + 1, fix_noise))
  out['x'] = center_of_gravity.remove_mean(out['x'], graph)
  return out


def sample(model: Diffusion, params: Params, graph: jraph.GraphsTuple,
           rng: jax.Array, *, jit_steps: int = 0, unroll: int = 1,
           fix_noise: bool = False, chain_every: int = 0) -> dict[str, jax.Array]:
  """The whole chain z_T -> ... -> z_0 -> (x, h), `jit_steps` steps per compiled call.

  Args:
    model: the diffusion model.
    params: its (EMA) parameters.
    graph: a padded batch whose `n_node` gives each molecule's size.
    rng: key; reverse step s draws from `fold_in(rng, s)`, z_T from `fold_in(rng, T)`.
    jit_steps: reverse steps per compiled call (K); 0 (default) compiles the
      whole chain (or `chain_every` steps) once, 1 calls the network step by step.
    unroll: `lax.scan` unroll factor inside a call.
    fix_noise: share one noise draw among all molecules (EDM's fix_noise).
    chain_every: if > 0, also return z every `chain_every` steps (must be a
      multiple of jit_steps) as `chain` [frames, n_node, D].

  Returns:
    `p_xh_given_z0`'s dict, with x re-centred per molecule.
  """
  T = model.T
  K = max(1, min(int(jit_steps), T)) if jit_steps else (chain_every or T)
  if chain_every and chain_every % K:
    raise ValueError(f'chain_every={chain_every} must be a multiple of jit_steps={K}.')
  z = _noise(model, graph, rng, T, fix_noise)
  frames = [z] if chain_every else []
  done = 0
  while done < T:
    n = min(K, T - done)
    z = reverse_steps(model, params, graph, z, jnp.int32(T - 1 - done), rng,
                      n_steps=n, unroll=unroll, fix_noise=fix_noise)
    done += n
    if chain_every and done % chain_every == 0:
      frames.append(z)
  out = dict(final_step(model, params, graph, z, rng, fix_noise=fix_noise))
  if chain_every:
    out['chain'] = jnp.stack(frames)
  return out
