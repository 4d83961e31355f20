"""The sampling chain shared by every sampler: the time grid, the noise, K steps
per compiled call, the final p(x, h | z_0) step and the chain's frames.

A sampler is a hashable object with `stochastic`, `init(z) -> carry` and
`step(model, params, graph, z_t, carry, *, t, s, noise) -> (z_s, carry)`; the
chain walks it down a grid of integer times T = t_0 > t_1 > ... > t_n = 0 and
ends with `p_xh_given_z0`. Noise is explicit: the step to time s draws from
`fold_in(rng, s)`, z_T from `fold_in(rng, T)` and the final step from
`fold_in(rng, T + 1)`, so on the full grid EDM's ancestral chain is the same
whatever K, and a respaced grid reuses the full grid's draws at its times.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from edm_zoo import center_of_gravity
from edm_zoo import masking
from edm_zoo.methods.diffusion import schedules
from edm_zoo.methods.diffusion.objective import Diffusion, Params


SPACINGS = ('uniform', 'quadratic', 'power_<p>', 'log_snr')


def _power(spacing: str) -> float | None:
  """p of a power-law spacing ('uniform' = 1, 'quadratic' = 2), else None."""
  name = {'uniform': 'power_1', 'quadratic': 'power_2'}.get(spacing, spacing)
  if not name.startswith('power_'):
    return None
  try:
    power = float(name[len('power_'):])
  except ValueError:
    return None
  return power if power > 0 else None


def time_grid(T: int, steps: int = 0, spacing: str = 'uniform',
              gamma: np.ndarray | None = None) -> np.ndarray:
  """[steps + 1] strictly descending integer times from T to 0 (steps 0: all T).

  Args:
    T: the model's number of diffusion steps.
    steps: reverse steps.
    spacing: 'uniform' in t; 'power_<p>' (t = T (1 - i / steps)^p: finer steps
      near the data for p > 1), 'quadratic' = 'power_2'; 'log_snr' (uniform in
      lambda = -gamma / 2).
    gamma: [T + 1] gamma(t / T) of the model, for 'log_snr'.

  Raises:
    ValueError: steps outside [1, T] or an unknown spacing.
  """
  steps = steps or T
  if not 1 <= steps <= T:
    raise ValueError(f'steps must be in [1, T={T}], got {steps}.')
  u = np.linspace(0.0, 1.0, steps + 1)
  power = _power(spacing)
  if power is not None:
    t = T * (1 - u)**power
  elif spacing == 'log_snr':
    if gamma is None or len(gamma) != T + 1:
      raise ValueError(f"spacing 'log_snr' needs the model's gamma at the T + 1 = {T + 1} times.")
    lam = -0.5 * np.asarray(gamma, np.float64)  # Decreasing in t.
    targets = lam[T] + (lam[0] - lam[T]) * u
    t = np.interp(targets, lam[::-1], np.arange(T, -1, -1, dtype=np.float64))
  else:
    raise ValueError(f'unknown spacing {spacing!r}; allowed: {list(SPACINGS)}.')
  grid = np.round(t).astype(np.int64)
  grid[0], grid[-1] = T, 0
  # Rounding can merge neighbours near 0: keep every step at least one apart.
  for i in range(steps - 1, 0, -1):
    grid[i] = max(grid[i], grid[i + 1] + 1)
  return grid.astype(np.int32)


class Prediction(NamedTuple):
  """What a deterministic step needs at (t, s): the schedule and the network's
  eps_hat and data prediction x_hat = (z_t - sigma_t eps_hat) / alpha_t."""
  gamma_t: jax.Array
  gamma_s: jax.Array
  alpha_t: jax.Array
  sigma_t: jax.Array
  alpha_s: jax.Array
  sigma_s: jax.Array
  eps_hat: jax.Array
  x_hat: jax.Array


def predict(model: Diffusion, params: Params, graph: jraph.GraphsTuple, z_t: jax.Array,
            t: jax.Array, s: jax.Array) -> Prediction:
  """The network at t and the schedule at t and s (all [n_graph] but eps/x_hat)."""
  gamma_s, gamma_t = model.gamma(params, s), model.gamma(params, t)
  alpha_t, sigma_t = schedules.alpha_sigma(gamma_t)
  alpha_s, sigma_s = schedules.alpha_sigma(gamma_s)
  eps_hat = model.eps(params, graph, z_t, t)
  x_hat = ((z_t - masking.per_node(sigma_t, graph) * eps_hat)
           / masking.per_node(alpha_t, graph))
  return Prediction(gamma_t, gamma_s, alpha_t, sigma_t, alpha_s, sigma_s, eps_hat, x_hat)


def p_xh_given_z0(model: Diffusion, params: Params, graph: jraph.GraphsTuple,
                  z_0: jax.Array, noise: jax.Array) -> dict[str, jax.Array]:
  """The final step: positions from N(mu_x, sigma_x), types by argmax, Z rounded.

  Returns:
    {'mu_x' [n_node, D], 'sigma_x' [n_graph], 'x' [n_node, 3] (not re-centred),
     'h_cat' [n_node, K] one-hot, 'h_int' [n_node, 1] integers (Z)}.
  """
  d = model.config.diffusion
  K = model.config.num_atom_types
  zeros = jnp.zeros(graph.n_node.shape[0])
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


def noise(model: Diffusion, graph: jraph.GraphsTuple, rng: jax.Array, index,
          fix_noise: bool) -> jax.Array:
  """The standard normal draw number `index` of a chain (CoG-free positions)."""
  key = jax.random.fold_in(rng, index)
  if fix_noise:
    return fixed_noise(key, graph, model.n_features)
  return model.sample_noise(key, graph)


@functools.partial(jax.jit, static_argnames=('model', 'sampler', 'unroll', 'fix_noise'))
def reverse_steps(model: Diffusion, params: Params, graph: jraph.GraphsTuple,
                  z: jax.Array, carry: Any, t_ints: jax.Array, s_ints: jax.Array,
                  rng: jax.Array, *, sampler, unroll: int = 1, fix_noise: bool = False):
  """`sampler`'s steps t_ints[i] -> s_ints[i] in one compiled `lax.scan`.

  Returns:
    (z, carry) after the last step.
  """
  n_graph = graph.n_node.shape[0]

  def step(state, ts):
    z, carry = state
    t_int, s_int = ts
    eps = (noise(model, graph, rng, s_int, fix_noise) if sampler.stochastic
           else jnp.zeros_like(z))
    t = jnp.full(n_graph, t_int, jnp.float32) / model.T
    s = jnp.full(n_graph, s_int, jnp.float32) / model.T
    return sampler.step(model, params, graph, z, carry, t=t, s=s, noise=eps), None

  (z, carry), _ = jax.lax.scan(step, (z, carry), (t_ints, s_ints), unroll=unroll)
  return z, carry


@functools.partial(jax.jit, static_argnames=('model', 'fix_noise'))
def final_step(model: Diffusion, params: Params, graph: jraph.GraphsTuple,
               z: jax.Array, rng: jax.Array, *, fix_noise: bool = False):
  # A latent model (GeoLDM) decodes its own molecules.
  last = getattr(model, 'p_xh_given_z0', None) or functools.partial(p_xh_given_z0, model)
  out = last(params, graph, z, noise(model, graph, rng, model.T + 1, fix_noise))
  out['x'] = center_of_gravity.remove_mean(out['x'], graph)
  return out


def model_grid(model: Diffusion, params: Params, steps: int = 0,
               spacing: str = 'uniform') -> np.ndarray:
  """`time_grid` of a model (its gamma, learned or not, for the log-SNR spacing)."""
  gamma = None
  if spacing == 'log_snr':
    gamma = np.asarray(model.gamma(params, jnp.arange(model.T + 1) / model.T))
  return time_grid(model.T, steps, spacing, gamma)


def sample(model: Diffusion, params: Params, graph: jraph.GraphsTuple, rng: jax.Array,
           sampler, *, steps: int = 0, spacing: str = 'uniform', jit_steps: int = 0,
           unroll: int = 1, fix_noise: bool = False, chain_every: int = 0
           ) -> dict[str, jax.Array]:
  """The whole chain z_T -> ... -> z_0 -> (x, h) on a grid of `steps` steps.

  Args:
    model: the diffusion model.
    params: its (EMA) parameters.
    graph: a padded batch whose `n_node` gives each molecule's size.
    rng: the chain's key (see the module docstring for its draws).
    sampler: the step rule (`edm_zoo.methods.diffusion.samplers.get`).
    steps: reverse steps (network evaluations before the final one); 0: T.
    spacing: how the steps are spread over [0, T] (`time_grid`).
    jit_steps: steps per compiled call (K); 0 compiles the whole chain (or
      `chain_every` steps) once, 1 calls the network step by step.
    unroll: `lax.scan` unroll factor inside a call.
    fix_noise: share one noise draw among all molecules (EDM's fix_noise).
    chain_every: if > 0, also return z every `chain_every` steps (a multiple of
      jit_steps) as `chain` [frames, n_node, D].

  Returns:
    `p_xh_given_z0`'s dict, with x re-centred per molecule.
  """
  T = model.T
  grid = model_grid(model, params, steps, spacing)
  n = len(grid) - 1
  K = max(1, min(int(jit_steps), n)) if jit_steps else (chain_every or n)
  if chain_every and chain_every % K:
    raise ValueError(f'chain_every={chain_every} must be a multiple of jit_steps={K}.')
  z = noise(model, graph, rng, T, fix_noise)
  carry = sampler.init(z)
  frames = [z] if chain_every else []
  done = 0
  while done < n:
    k = min(K, n - done)
    z, carry = reverse_steps(model, params, graph, z, carry, jnp.asarray(grid[done:done + k]),
                             jnp.asarray(grid[done + 1:done + k + 1]), rng,
                             sampler=sampler, unroll=unroll, fix_noise=fix_noise)
    done += k
    if chain_every and done % chain_every == 0:
      frames.append(z)
  out = dict(final_step(model, params, graph, z, rng, fix_noise=fix_noise))
  if chain_every:
    out['chain'] = jnp.stack(frames)
  return out
