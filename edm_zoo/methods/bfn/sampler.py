"""GeoBFN's any-step generation (`bfn4MolEGNN.forward`): n Bayesian updates of the
flow's means from the prior, then one final network call at t = 1.

Step i = 1..n: the network sees the means at t = max((i - 1) / n, t_min); a
sender sample y ~ N(x_hat, 1 / alpha_i) with accuracy alpha_i =
sigma_1^(-2i/n) (1 - sigma_1^(2/n)) updates mu <- (rho mu + alpha_i y) / (rho +
alpha_i), rho <- rho + alpha_i (rho starts at 1, mu at 0). The coordinates'
observation is clamped to +-10 and moved to zero CoG; the charge's is the bin
centre nearest the predicted bins' mean. The final call reads x_hat and the
charge's nearest bin centre; each atom takes the dataset type whose bin centre
is nearest (GeoBFN's `charge_decode`).

Noise is explicit: step i draws from `fold_in(rng, i)` ([n_node, 4]: 3 for the
coordinates, 1 for the charge), so a chain is the same whatever the batch's
padding, and `chain` replays a given noise sequence (parity).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from edm_zoo import center_of_gravity, masking
from edm_zoo.methods.bfn import flow
from edm_zoo.methods.bfn.objective import MEAN_CLAMP, BayesianFlow, Params


def check_steps(model: BayesianFlow, steps: int) -> int:
  """`steps` (0: the model's default), else a one-line ValueError."""
  steps = steps or model.T
  if steps < 1:
    raise ValueError(f'steps must be a positive number of Bayesian updates, got {steps}.')
  return int(steps)


def _step(model: BayesianFlow, params: Params, graph: jraph.GraphsTuple, n: int,
          state, i, noise):
  b = model.config.bfn
  mu_x, mu_c, rho_x, rho_c = state
  n_graph = graph.n_node.shape[0]
  t = jnp.maximum(jnp.full(n_graph, (i - 1) / n, jnp.float32), b.t_min)
  t_node = masking.per_node(t, graph)
  mu_c = jnp.clip(mu_c, -MEAN_CLAMP, MEAN_CLAMP)
  mu_x = center_of_gravity.remove_mean(jnp.clip(mu_x, -MEAN_CLAMP, MEAN_CLAMP), graph)
  pred = model.predict(params, graph, mu_x, mu_c, t, flow.gamma(t_node, b.sigma1_coord),
                       flow.gamma(t_node, b.sigma1_charges))
  alpha_x = flow.sender_accuracy(i, n, b.sigma1_coord)
  y_x = pred['x_pred'] + noise[:, :3] * jnp.sqrt(1 / alpha_x)
  y_x = center_of_gravity.remove_mean(jnp.clip(y_x, -MEAN_CLAMP, MEAN_CLAMP), graph)
  mu_x = (rho_x * mu_x + alpha_x * y_x) / (rho_x + alpha_x)
  alpha_c = flow.sender_accuracy(i, n, b.sigma1_charges)
  y_c = flow.nearest_centre(pred['k_hat'], b.bins) + noise[:, 3:4] * jnp.sqrt(1 / alpha_c)
  mu_c = (rho_c * mu_c + alpha_c * y_c) / (rho_c + alpha_c)
  mask = masking.node_mask(graph)[:, None]
  return (mu_x * mask, mu_c * mask, rho_x + alpha_x, rho_c + alpha_c), pred


def final_prediction(model: BayesianFlow, params: Params, graph: jraph.GraphsTuple,
                     mu_x: jax.Array, mu_c: jax.Array) -> dict[str, jax.Array]:
  """The last network call, at t = 1 on the clamped means (not re-centred, as
  GeoBFN's): `x_pred` and the charge's nearest bin centre `charge`."""
  b = model.config.bfn
  mu_x = jnp.clip(mu_x, -MEAN_CLAMP, MEAN_CLAMP)
  mu_c = jnp.clip(mu_c, -MEAN_CLAMP, MEAN_CLAMP)
  one = jnp.ones(graph.n_node.shape[0])
  pred = model.predict(params, graph, mu_x, mu_c, one, flow.gamma(1.0, b.sigma1_coord),
                       flow.gamma(1.0, b.sigma1_charges))
  return dict(pred, charge=flow.nearest_centre(pred['k_hat'], b.bins))


def _run(model: BayesianFlow, params: Params, graph: jraph.GraphsTuple, noise_of,
         inputs, *, n: int, record: bool) -> dict[str, jax.Array]:
  """The n-step chain; step i's noise is `noise_of(i, inputs[i - 1])`."""
  n_node = masking.node_mask(graph).shape[0]
  state = (jnp.zeros((n_node, 3)), jnp.zeros((n_node, 1)), jnp.float32(1.0),
           jnp.float32(1.0))

  def body(state, xs):
    i, x = xs
    new, pred = _step(model, params, graph, n, state, i, noise_of(i, x))
    out = ({'x_pred': pred['x_pred'], 'k_hat': pred['k_hat'], 'mu_x_in': state[0],
            'mu_charge_in': state[1]} if record else None)
    return new, out

  steps = jnp.arange(1, n + 1, dtype=jnp.float32)
  (mu_x, mu_c, _, _), frames = jax.lax.scan(body, state, (steps, inputs))
  out = dict(final_prediction(model, params, graph, mu_x, mu_c), mu_x=mu_x, mu_charge=mu_c)
  if record:
    out['frames'] = frames
  return out


@functools.partial(jax.jit, static_argnames=('model', 'n', 'record'))
def chain(model: BayesianFlow, params: Params, graph: jraph.GraphsTuple,
          noise: jax.Array, *, n: int, record: bool = False) -> dict[str, jax.Array]:
  """The n-step chain for the given noise [n, n_node, 4] (parity replays).

  Returns:
    `final_prediction`'s dict, the last means `mu_x`, `mu_charge` and, with
    `record`, every step's `x_pred` and `k_hat` ([n, n_node, ...]) and the means
    before each step.
  """
  return _run(model, params, graph, lambda i, eps: eps, noise, n=n, record=record)


@functools.partial(jax.jit, static_argnames=('model', 'n'))
def _sample(model, params, graph, rng, *, n):
  # Each step draws its own noise inside the scan: memory does not grow with n.
  mask = masking.node_mask(graph)[:, None]
  n_node = mask.shape[0]
  noise_of = lambda i, _: jax.random.normal(
      jax.random.fold_in(rng, i.astype(jnp.int32)), (n_node, 4)) * mask
  return _run(model, params, graph, noise_of, jnp.zeros(n), n=n, record=False)


def decode(model: BayesianFlow, charge: jax.Array, atomic_numbers) -> tuple[jax.Array, jax.Array]:
  """(type index [n_node], Z [n_node]): each atom's dataset type whose bin centre
  (2 Z - 1) / K - 1 is nearest its charge [n_node, 1]."""
  z = jnp.asarray(np.asarray(atomic_numbers), jnp.float32)
  anchors = (2 * z - 1) / model.config.bfn.bins - 1
  index = jnp.argmin(jnp.abs(charge - anchors), axis=-1)
  return index, z[index]


def sample(model: BayesianFlow, params: Params, graph: jraph.GraphsTuple, rng: jax.Array,
           *, steps: int = 0, atomic_numbers) -> dict[str, jax.Array]:
  """Molecules of the sizes in `graph` after `steps` Bayesian updates (0: the
  model's default), in the samplers' output convention: positions `x` (dataset
  units, zero CoG), one-hot `h_cat` and the atomic numbers `h_int` [n_node, 1].

  Raises:
    ValueError: a non-positive step count, or a dataset element whose Z is past
      the model's bins (one line).
  """
  n = check_steps(model, steps)
  if max(atomic_numbers) > model.config.bfn.bins:
    raise ValueError(f'geobfn bins charges 1..{model.config.bfn.bins}; the dataset has '
                     f'Z up to {max(atomic_numbers)}.')
  out = _sample(model, params, graph, rng, n=n)
  mask = masking.node_mask(graph)[:, None]
  index, z = decode(model, out['charge'], atomic_numbers)
  x = center_of_gravity.remove_mean(out['x_pred'], graph) * model.config.bfn.position_scale
  return {'x': x * mask, 'h_cat': jax.nn.one_hot(index, len(atomic_numbers)) * mask,
          'h_int': z[:, None] * mask, 'charge': out['charge']}
