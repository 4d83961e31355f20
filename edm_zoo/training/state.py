"""The train state and the pure train step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jraph
import optax
from jax.sharding import Mesh, PartitionSpec as P

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


def _shard(graphs: jraph.GraphsTuple, d: int) -> jraph.GraphsTuple:
  return jax.tree.map(lambda a: a[d], graphs)


def draw(model: Diffusion, graph: jraph.GraphsTuple, key: jax.Array, shard: jax.Array):
  """t_int [n_graph] and eps [n_node, D] of one shard: from fold_in(key, shard).

  Shard d of a global batch draws the same numbers whatever the number of
  devices holding the batch.
  """
  k_t, k_eps = jax.random.split(jax.random.fold_in(key, shard))
  t_int = jax.random.randint(k_t, graph.n_node.shape, 0, model.T + 1)
  return t_int, model.sample_noise(k_eps, graph)


def _local_sums(model: Diffusion, params, graphs, t_int, eps, width):
  """(sum of per-molecule objectives, molecules) over the shards held here.

  A Python loop over the (few) local shards: vmap would turn every gather and
  segment sum into a batched one, which XLA:CPU runs ~2x slower.
  """
  total, count = 0.0, 0.0
  for d in range(graphs.n_node.shape[0]):
    graph = _shard(graphs, d)
    terms = model.train_terms(params, graph, t_int[d], eps[d], padded_n=width)
    mask = masking.graph_mask(graph)
    total += jnp.sum(jnp.where(mask > 0, terms['nll_per_molecule'], 0.0))
    count += jnp.sum(mask)
  return total, count


def _local_width(graphs):
  return jnp.max(jnp.stack([dense_width(_shard(graphs, d))
                            for d in range(graphs.n_node.shape[0])]))


def loss_fn(model: Diffusion, params, graphs: jraph.GraphsTuple, t_int, eps):
  """Mean over every real molecule of the stacked shards [S, ...] (one device)."""
  total, count = _local_sums(model, params, graphs, t_int, eps, _local_width(graphs))
  return total / jnp.maximum(count, 1.0)


def loss_and_grads(model: Diffusion, params, graphs: jraph.GraphsTuple, key: jax.Array,
                   mesh: Mesh | None = None):
  """(loss, grads) of a global batch [S, ...] with noise drawn from `key`.

  With a mesh, each device draws for and differentiates its own shards
  (`shard_map`), then the sums are all-reduced: the result equals the
  single-device one up to float summation order.
  """
  def per_device(params, graphs, offset, all_reduce: bool):
    n_local = graphs.n_node.shape[0]
    draws = [draw(model, _shard(graphs, d), key, offset + d) for d in range(n_local)]
    t_int = [t for t, _ in draws]
    eps = [e for _, e in draws]
    width = _local_width(graphs)
    count = jnp.sum(graphs.globals[masking.MASK])
    if all_reduce:
      width = jax.lax.pmax(width, 'data')
      count = jax.lax.psum(count, 'data')

    def objective(p):
      total, _ = _local_sums(model, p, graphs, t_int, eps, width)
      return total / jnp.maximum(count, 1.0)
    loss, grads = jax.value_and_grad(objective)(params)
    if all_reduce:
      loss, grads = jax.lax.psum((loss, grads), 'data')
    return loss, grads

  if mesh is None or mesh.size == 1:
    return per_device(params, graphs, 0, False)
  n_shards = graphs.n_node.shape[0]

  def sharded(params, graphs):
    offset = jax.lax.axis_index('data') * (n_shards // mesh.size)
    return per_device(params, graphs, offset, True)
  return jax.shard_map(sharded, mesh=mesh, in_specs=(P(), P('data')),
                       out_specs=(P(), P()), check_vma=False)(params, graphs)


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
               model: Diffusion, tx, ema_decay: float, clip_grad: bool = True,
               mesh: Mesh | None = None):
  """One step on stacked shards [S, ...]: draws from fold_in(base_key, step)."""
  loss, grads = loss_and_grads(model, state.params, graphs,
                               jax.random.fold_in(base_key, state.step), mesh)
  return apply_gradients(state, grads, loss, tx=tx, ema_decay=ema_decay,
                         clip_grad=clip_grad)
