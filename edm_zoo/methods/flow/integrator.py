"""SemlaFlow's sampler (`Integrator` with the 'uniform-sample' strategy and
`MolecularCFM._generate` of semlaflow/models/fm.py): Euler steps of the
coordinates and a discrete-flow step of every atom type and bond class, pure
functions of explicit uniforms.

Over a step from t to t + dt, with prediction p (softmax) and current class c:
  x <- x + dt (x_hat - x) / (1 - t);
  class k != c is taken with probability dt (1 + 2 eta (K - 1) t) / (1 - t) p_k
  + dt eta p_c (capped at 1), c keeps the rest (eta = cat_noise_level, 0 on the
  last step; t clamped to [1e-5, 1 - 1e-5]).
The sample is the network's prediction at the last step (argmax classes,
coordinates times coord_std), as SemlaFlow returns it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from edm_zoo.data import features
from edm_zoo.methods.flow.objective import (N_BOND_CLASSES, Dense, Params, SemlaFlow,
                                            categorical)
from edm_zoo.models import semla

T_EPS = 1e-5


def inverse_cdf(probs: jax.Array, u: jax.Array) -> jax.Array:
  """The class whose cumulative (normalised) probability interval holds u."""
  cdf = jnp.cumsum(probs, -1)
  cdf = cdf / cdf[..., -1:]
  return jnp.minimum(jnp.sum(cdf <= u[..., None], -1), probs.shape[-1] - 1)


def step_probs(curr: jax.Array, probs: jax.Array, t: jax.Array, dt: float,
               noise_level: float) -> jax.Array:
  """SemlaFlow's `_uniform_sample_step` transition probabilities; t broadcasts
  against curr (the integer classes)."""
  k = probs.shape[-1]
  times = jnp.clip(t, T_EPS, 1 - T_EPS)
  noise = jnp.where(times + dt < 1.0, noise_level, 0.0)
  mult = (1 + 2 * noise * (k - 1) * times) / (1 - times)
  p_curr = jnp.take_along_axis(probs, curr[..., None], -1)
  step = jnp.minimum(dt * mult[..., None] * probs + dt * noise[..., None] * p_curr, 1.0)
  own = jax.nn.one_hot(curr, k, dtype=bool)
  step = jnp.where(own, 0.0, step)
  stay = jnp.maximum(1.0 - jnp.sum(step, -1, keepdims=True), 0.0)
  return jnp.where(own, stay, step)


def euler_step(curr: dict[str, jax.Array], pred: dict[str, jax.Array], t: jax.Array,
               dt: float, u_types: jax.Array, u_bonds: jax.Array, noise_level: float
               ) -> dict[str, jax.Array]:
  """One step of `Integrator.step` on a dense batch.

  Args:
    curr: {'coords' [B, N, 3], 'types' [B, N], 'bonds' [B, N, N]} (classes).
    pred: the prediction {'coords', 'atomics' [B, N, V], 'bonds' [B, N, N, E]}
      as probabilities.
    t: [B] the current time.
    dt: the step.
    u_types, u_bonds: uniforms [B, N] and [B, N, N] for the categorical draws.
    noise_level: cat_noise_level.
  """
  coords = curr['coords'] + dt * (pred['coords'] - curr['coords']) / (1 - t[:, None, None])
  pt = step_probs(curr['types'], pred['atomics'], t[:, None], dt, noise_level)
  pb = step_probs(curr['bonds'], pred['bonds'], t[:, None, None], dt, noise_level)
  return {'coords': coords, 'types': inverse_cdf(pt, u_types),
          'bonds': inverse_cdf(pb, u_bonds)}


def prior(model: SemlaFlow, key: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """SemlaFlow's prior for molecules of mask [B, N]: centred standard normal
  coordinates, uniform types and bond classes (every ordered pair)."""
  b, n = mask.shape
  kx, kt, kb = jax.random.split(key, 3)
  x = semla.zero_com(jax.random.normal(kx, (b, n, 3)), mask) * mask[..., None]
  return {'coords': x,
          'types': categorical(jax.random.uniform(kt, (b, n)), model.vocab),
          'bonds': categorical(jax.random.uniform(kb, (b, n, n)), N_BOND_CLASSES)}


def integrate(model: SemlaFlow, params: Params, start: dict[str, jax.Array],
              mask: jax.Array, uniforms, steps: int) -> dict[str, jax.Array]:
  """`_generate` from `start` over a linear grid of `steps` steps; `uniforms(i)`
  -> (u_types, u_bonds) of step i. Returns the last prediction (probabilities,
  scaled coordinates) and the states each step started from ({'coords', 'types',
  'bonds', 't'} stacked over steps)."""
  grid = np.linspace(0, 1, steps + 1)
  dts = jnp.asarray(np.diff(grid), jnp.float32)
  pair = semla.pair_mask(mask, self_connect=True)
  noise_level = model.config.semla.cat_noise_level

  def network(curr, t, cond):
    out = model.network(params, curr['coords'], jax.nn.one_hot(curr['types'], model.vocab)
                        * mask[..., None], jax.nn.one_hot(curr['bonds'], N_BOND_CLASSES)
                        * pair[..., None], mask, t, cond)
    return {'coords': out['coords'], 'atomics': jax.nn.softmax(out['atomics'], -1),
            'bonds': jax.nn.softmax(out['bonds'], -1),
            'charges': jax.nn.softmax(out['charges'], -1)}

  def body(carry, i):
    curr, t, cond = carry
    pred = network(curr, t, cond)
    u_types, u_bonds = uniforms(i)
    nxt = euler_step(curr, pred, t, dts[i], u_types, u_bonds, noise_level)
    nxt['coords'] = nxt['coords'] * mask[..., None]
    cond = ({'coords': pred['coords'], 'atomics': pred['atomics'], 'bonds': pred['bonds']}
            if model.config.semla.self_condition else cond)
    return (nxt, t + dts[i], cond), dict(curr, t=t)

  b = mask.shape[0]
  cond0 = model.zero_cond(start['coords'], jnp.zeros(pair.shape + (N_BOND_CLASSES,)))
  t0 = jnp.zeros((b,), jnp.float32)
  carry = (start, t0, cond0)
  (curr, t, cond), states = jax.lax.scan(body, carry, jnp.arange(steps - 1))
  # The last step: only its prediction is the sample.
  final = network(curr, t, cond)
  states = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), states,
                        dict(curr, t=t))
  return final, states


@functools.partial(jax.jit, static_argnames=('model', 'steps'))
def _sample_dense(model: SemlaFlow, params, key, mask, steps: int):
  kp, ks = jax.random.split(key)
  start = prior(model, kp, mask)
  b, n = mask.shape

  def uniforms(i):
    k = jax.random.fold_in(ks, i)
    k1, k2 = jax.random.split(k)
    return jax.random.uniform(k1, (b, n)), jax.random.uniform(k2, (b, n, n))
  return integrate(model, params, start, mask, uniforms, steps)[0]


def check_steps(model: SemlaFlow, steps: int) -> int:
  """The number of Euler steps `steps` asks for (0: the model's default)."""
  steps = steps or model.T
  if steps < 1:
    raise ValueError(f'--steps must be >= 1 for semlaflow, got {steps}.')
  return steps


def sample(model: SemlaFlow, params: Params, graph: jraph.GraphsTuple, key: jax.Array,
           *, steps: int, atomic_numbers) -> dict[str, jax.Array]:
  """Molecules of the sizes in `graph` (padded, bonds or not): {'x' [n_node, 3]
  Angstrom, 'h_cat' one-hot types, 'h_int' [n_node, 1] Z, 'formal_charges'
  [n_node], 'bond_orders' [n_node, N] classes of each atom's row of pairs (its
  molecule's slots 0..N-1)}."""
  steps = check_steps(model, steps)
  d = Dense(graph, model.width)
  out = _sample_dense(model, params, key, d.mask, steps)
  types = jnp.argmax(out['atomics'], -1)
  z = jnp.asarray(atomic_numbers if model.atomic_numbers is None else model.atomic_numbers)
  charges = jnp.asarray(semla.CHARGE_CLASSES)[jnp.argmax(out['charges'], -1)]
  return {'x': d.to_nodes(out['coords'] * model.coord_std),
          'h_cat': d.to_nodes(jax.nn.one_hot(types, model.vocab)),
          'h_int': d.to_nodes(z[types])[:, None],
          'formal_charges': d.to_nodes(charges),
          'bond_orders': d.to_nodes(jnp.argmax(out['bonds'], -1))}
