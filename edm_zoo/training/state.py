"""The train state and the pure train step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jraph
import optax

from edm_zoo import masking
from edm_zoo.diffusion.objective import Diffusion, dense_width
from edm_zoo.training import optimizer


class TrainState(NamedTuple):
  """Everything that changes during training (a pytree).

  Attributes:
    step: optimizer steps attempted (randomness is folded with it).
    params: model parameters.
    ema_params: their EMA (what evaluation and sampling use).
    opt_state: AdamW-amsgrad state.
    clip_queue: EDM's gradient-norm queue.
    nonfinite: consecutive steps skipped for a NaN/inf loss or gradient.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  clip_queue: optimizer.ClipQueue
  nonfinite: jax.Array


def init_state(model: Diffusion, tx: optax.GradientTransformation, rng: jax.Array,
               graph: jraph.GraphsTuple) -> TrainState:
  params = model.init(rng, graph)
  # A copy: params and EMA are donated to the step as separate buffers.
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params), clip_queue=optimizer.init_clip_queue(),
                    nonfinite=jnp.zeros([], jnp.int32))


def draw(model: Diffusion, graphs: jraph.GraphsTuple, key: jax.Array):
  """t_int [S, n_graph] and eps [S, n_node, D] for stacked shards.

  Shard d uses `fold_in(key, d)`, so a global batch draws the same numbers
  whatever the number of devices holding it.
  """
  def one(graph, d):
    k_t, k_eps = jax.random.split(jax.random.fold_in(key, d))
    t_int = jax.random.randint(k_t, graph.n_node.shape, 0, model.T + 1)
    return t_int, model.sample_noise(k_eps, graph)
  n_shards = graphs.n_node.shape[0]
  return jax.vmap(one)(graphs, jnp.arange(n_shards))


def loss_fn(model: Diffusion, params, graphs: jraph.GraphsTuple, t_int, eps):
  """Mean over every real molecule of the shards of EDM's train objective."""
  width = jnp.max(jax.vmap(dense_width)(graphs))

  def one(graph, t, e):
    terms = model.train_terms(params, graph, t, e, padded_n=width)
    mask = masking.graph_mask(graph)
    return jnp.sum(jnp.where(mask > 0, terms['nll_per_molecule'], 0.0)), jnp.sum(mask)
  total, count = jax.vmap(one)(graphs, t_int, eps)
  return jnp.sum(total) / jnp.maximum(jnp.sum(count), 1.0)


def apply_gradients(state: TrainState, grads, loss, *, tx, ema_decay: float,
                    clip_grad: bool = True):
  """Clip, AdamW step and EMA; a non-finite loss or gradient skips the update."""
  if clip_grad:
    clipped, queue, info = optimizer.clip_gradients(grads, state.clip_queue)
  else:
    clipped, queue = grads, state.clip_queue
    info = {'grad_norm': optax.global_norm(grads)}
  updates, opt_state = tx.update(clipped, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optimizer.ema_update(state.ema_params, params, ema_decay)
  finite = jnp.isfinite(loss) & jnp.isfinite(info['grad_norm'])
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new = TrainState(
      step=state.step + 1,
      params=keep(params, state.params), ema_params=keep(ema, state.ema_params),
      opt_state=keep(opt_state, state.opt_state),
      clip_queue=keep(queue, state.clip_queue),
      nonfinite=jnp.where(finite, 0, state.nonfinite + 1))
  return new, {'loss': loss, 'finite': finite, **info}


def train_step(state: TrainState, graphs: jraph.GraphsTuple, base_key: jax.Array, *,
               model: Diffusion, tx, ema_decay: float, clip_grad: bool = True):
  """One step on stacked shards [S, ...]: draws from fold_in(base_key, step)."""
  t_int, eps = draw(model, graphs, jax.random.fold_in(base_key, state.step))
  loss, grads = jax.value_and_grad(
      lambda p: loss_fn(model, p, graphs, t_int, eps))(state.params)
  return apply_gradients(state, grads, loss, tx=tx, ema_decay=ema_decay,
                         clip_grad=clip_grad)
