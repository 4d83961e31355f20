"""The train state and the pure train step.

Randomness is explicit, as in the objective: `draw_noise` turns the step's key
into t and eps for every shard, `train_step` takes them as inputs. Training
jits both (`make_step_fns`); the parity replay feeds the reference's t and eps
to the same jitted step.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jraph
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from edm_zoo import augmentation
from edm_zoo import masking
from edm_zoo.methods.diffusion import gaussians
from edm_zoo.methods.diffusion.objective import Diffusion, dense_width
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


def new_state(params, tx: optax.GradientTransformation,
              clip_queue: optimizer.ClipQueue | None = None) -> TrainState:
  """Step 0 of a run from `params` (the EMA starts as their copy)."""
  # A copy: params and EMA are donated to the step as separate buffers.
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params),
                    clip_queue=optimizer.init_clip_queue() if clip_queue is None
                    else clip_queue,
                    nonfinite=jnp.zeros([], jnp.int32))


def init_state(model: Diffusion, tx: optax.GradientTransformation, rng: jax.Array,
               graph: jraph.GraphsTuple,
               clip_queue: optimizer.ClipQueue | None = None) -> TrainState:
  # Jitted: Haiku's init runs op by op otherwise (~5 s for the tiny model, every
  # start); the values are the same.
  return new_state(jax.jit(model.init)(rng, graph), tx, clip_queue)


def _shard(graphs: jraph.GraphsTuple, d: int) -> jraph.GraphsTuple:
  return jax.tree.map(lambda a: a[d], graphs)


def draw(model: Diffusion, graph: jraph.GraphsTuple, key: jax.Array, first: jax.Array):
  """t_int [n_graph] and eps [n_node, D] of one shard whose first molecule is
  molecule `first` of the global batch.

  Molecule j of the global batch draws from fold_in(key, j) alone, so a global
  batch gets the same t and noise on 1 device, on n devices of one process and
  on the devices of n processes.
  """
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(
      first + jnp.arange(graph.n_node.shape[0]))
  t = jax.vmap(lambda k: model.draw_time(jax.random.fold_in(k, 0)))(keys)
  # Block b of the noise from fold_in(k, 1 + b): block 0 is EDM's eps.
  eps = jnp.concatenate([gaussians.sample_noise_per_molecule(
      jax.vmap(lambda k: jax.random.fold_in(k, 1 + b))(keys), graph, model.n_features,
      max(model.n_nodes_histogram), centre=model.centred_noise)
      for b in range(model.noise_blocks)], -1)
  return t, eps


def _on_mesh(fn, mesh: Mesh | None, n_shards: int, in_specs, out_specs):
  """`fn(offset, *args)` on each device's shards (shard_map), or on all of them."""
  if mesh is None or mesh.size == 1:
    return functools.partial(fn, 0, all_reduce=False)

  def per_device(*args):
    offset = jax.lax.axis_index('data') * (n_shards // mesh.size)
    return fn(offset, *args, all_reduce=True)
  return jax.shard_map(per_device, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=False)


def _first_molecule(graphs: jraph.GraphsTuple, offset, d: int):
  """Index in the global batch of the first molecule of local shard d (the shards
  before it are full: `n_graph - 1` real molecules plus jraph's padding graph)."""
  return (offset + d) * (graphs.n_node.shape[1] - 1)


def draw_noise(model: Diffusion, graphs: jraph.GraphsTuple, key: jax.Array,
               mesh: Mesh | None = None) -> tuple[jax.Array, jax.Array]:
  """(t_int [S, n_graph], eps [S, n_node, D]) for the stacked shards [S, ...]."""
  def local(offset, graphs, all_reduce):
    del all_reduce
    draws = [draw(model, _shard(graphs, d), key, _first_molecule(graphs, offset, d))
             for d in range(graphs.n_node.shape[0])]
    return jnp.stack([t for t, _ in draws]), jnp.stack([e for _, e in draws])
  return _on_mesh(local, mesh, graphs.n_node.shape[0], P('data'),
                  (P('data'), P('data')))(graphs)


def rotate_molecules(graphs: jraph.GraphsTuple, key: jax.Array,
                     mesh: Mesh | None = None) -> jraph.GraphsTuple:
  """EDM's data augmentation on stacked shards [S, ...]: molecule j of the global
  batch rotated by `augmentation.random_rotation(fold_in(key, j))`, so that, like
  the noise, the rotation does not depend on the device layout."""
  def local(offset, graphs, all_reduce):
    del all_reduce
    rotated = []
    for d in range(graphs.n_node.shape[0]):
      graph = _shard(graphs, d)
      j = _first_molecule(graphs, offset, d) + jnp.arange(graph.n_node.shape[0])
      rotations = jax.vmap(
          lambda j: augmentation.random_rotation(jax.random.fold_in(key, j)))(j)
      rotated.append(augmentation.rotate(graph, rotations))
    return jax.tree.map(lambda *a: jnp.stack(a), *rotated)
  return _on_mesh(local, mesh, graphs.n_node.shape[0], P('data'), P('data'))(graphs)


def make_augment_fn(mesh: Mesh | None = None):
  """Jitted `(graphs, key, step) -> graphs` rotated from `fold_in(key, step)`."""
  kwargs = {}
  if mesh is not None:
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
    kwargs = dict(in_shardings=(data, replicated, replicated), out_shardings=data)
  return jax.jit(lambda graphs, key, step: rotate_molecules(
      graphs, jax.random.fold_in(key, step), mesh), **kwargs)


# Molecules a CPU device differentiates at once when the config leaves it to the
# platform: 4 parts of a published batch measured as fast as 1 with ~1/2 the
# peak memory (docs/performance_notes.md); accelerators run the whole share at once.
CPU_MICROBATCH_SIZE = 16


def parts_per_device(per_device: int, microbatch_size: int, platform: str) -> int:
  """The fewest equal parts of at most `microbatch_size` molecules (0: by
  `platform`, see `TrainConfig.microbatch_size`) that a device's `per_device`
  molecules split into."""
  size = microbatch_size or (CPU_MICROBATCH_SIZE if platform == 'cpu' else per_device)
  return next(k for k in range(1, max(per_device, 1) + 1)
              if per_device % k == 0 and per_device // k <= size)


def summed_value_and_grad(fn, params, *stacked):
  """(sum over d of fn(params, *shard d), its gradient) for arguments stacked
  [S, ...], one shard after the other (`lax.scan`).

  Only one shard's activations are alive at a time, so a step's memory follows
  the shard, not the batch. (A Python loop lets XLA keep every shard's; vmap
  would batch every gather and segment sum, which XLA:CPU runs ~2x slower.)
  """
  value_and_grad = jax.value_and_grad(fn)

  def add_shard(total, shard):
    return jax.tree.map(jnp.add, total, value_and_grad(params, *shard)), None
  zero = (jnp.zeros([], jnp.float32), jax.tree.map(jnp.zeros_like, params))
  total, _ = jax.lax.scan(add_shard, zero, stacked)
  return total


def _shard_sums(model: Diffusion, params, graph, t_int, eps, width):
  """(sum of per-molecule objectives, molecules) of one shard."""
  terms = model.train_terms(params, graph, t_int, eps, padded_n=width)
  return masking.graph_sum(terms['nll_per_molecule'], graph)


def _local_width(graphs):
  return jnp.max(jnp.stack([dense_width(_shard(graphs, d))
                            for d in range(graphs.n_node.shape[0])]))


def loss_and_grads(model: Diffusion, params, graphs: jraph.GraphsTuple, t_int: jax.Array,
                   eps: jax.Array, mesh: Mesh | None = None):
  """(loss, grads) of a global batch [S, ...] for the given t_int [S, n_graph] and
  eps [S, n_node, D]: the mean over every real molecule of the batch.

  Each device differentiates its shards one after the other
  (`summed_value_and_grad`). With a mesh, each device takes its own shards
  (`shard_map`), then the sums are all-reduced: the result equals the
  single-device one up to float summation order. EDM's l2 normaliser uses the
  global batch's largest molecule.
  """
  def local(offset, params, graphs, t_int, eps, all_reduce):
    del offset
    width = _local_width(graphs)
    count = jnp.sum(model.loss_units(graphs))
    if all_reduce:
      width = jax.lax.pmax(width, 'data')
      count = jax.lax.psum(count, 'data')
    count = jnp.maximum(count, 1.0)

    def shard_mean(p, graph, t, e):
      return _shard_sums(model, p, graph, t, e, width)[0] / count
    loss, grads = summed_value_and_grad(shard_mean, params, graphs, t_int, eps)
    if all_reduce:
      loss, grads = jax.lax.psum((loss, grads), 'data')
    return loss, grads
  return _on_mesh(local, mesh, graphs.n_node.shape[0],
                  (P(), P('data'), P('data'), P('data')), (P(), P()))(
                      params, graphs, t_int, eps)


def mean_loss_and_grads(sum_fn, params, graphs: jraph.GraphsTuple,
                        mesh: Mesh | None = None):
  """(loss, grads) of a per-molecule loss averaged over every real molecule of a
  global batch [S, ...], data parallel over the mesh like `loss_and_grads`.

  Args:
    sum_fn: (params, one shard's graph) -> (sum of the loss over its real
      molecules, their number).
    params: the parameters (replicated).
    graphs: the stacked shards.
    mesh: the devices holding the shards (None: this device).
  """
  def local(offset, params, graphs, all_reduce):
    del offset
    count = jnp.sum(masking.graph_mask(graphs))
    if all_reduce:
      count = jax.lax.psum(count, 'data')
    count = jnp.maximum(count, 1.0)
    loss, grads = summed_value_and_grad(lambda p, graph: sum_fn(p, graph)[0] / count,
                                        params, graphs)
    if all_reduce:
      loss, grads = jax.lax.psum((loss, grads), 'data')
    return loss, grads
  return _on_mesh(local, mesh, graphs.n_node.shape[0], (P(), P('data')), (P(), P()))(
      params, graphs)


def apply_gradients(state: TrainState, grads, loss, *, tx, ema_decay: float,
                    clip_grad: bool = True, clip_norm: float = 0.0,
                    rules: optimizer.StepRules = optimizer.StepRules()):
  """Clip, AdamW step and EMA; a non-finite loss or gradient skips the update.

  With a `Guarded` optimizer state, GeoBFN's rules (`optimizer.StepRules`): a
  step after a loss spike has its gradients zeroed (norm 0 enters the clipping
  queue, nothing is updated), a gradient norm above `skip_grad_norm` skips the
  update and the queue; the EMA is updated every step, as GeoBFN's callback does.
  """
  guard = isinstance(state.opt_state, optimizer.Guarded)
  flags = optimizer.epoch_start(state.opt_state, state.step, rules) if guard else None
  skip = flags.skip_next if guard else jnp.zeros([], bool)
  if guard:
    grads = jax.tree.map(lambda g: jnp.where(skip, jnp.zeros_like(g), g), grads)
  if clip_norm:
    clipped, info = optimizer.clip_by_norm(grads, clip_norm)
    queue = state.clip_queue
  elif clip_grad:
    clipped, queue, info = optimizer.clip_gradients(grads, state.clip_queue)
  else:
    clipped, queue = grads, state.clip_queue
    info = {'grad_norm': optax.global_norm(grads)}
  capped = (info['grad_norm'] > rules.skip_grad_norm if rules.skip_grad_norm
            else jnp.zeros([], bool))
  apply = ~skip & ~capped
  finite = jnp.isfinite(loss) & jnp.isfinite(info['grad_norm'])
  choose = lambda c, new, old: jax.tree.map(lambda n, o: jnp.where(c, n, o), new, old)
  opt_in = flags if guard else state.opt_state
  updates, opt_state = tx.update(clipped, opt_in, state.params)
  params = choose(apply & finite, optax.apply_updates(state.params, updates), state.params)
  opt_state = choose(apply & finite, opt_state, opt_in)
  extra = {}
  if guard:
    opt_state, recover = optimizer.spike_flags(opt_state, loss, state.step, rules)
    extra = {'skipped': ~apply, 'spikes': opt_state.spikes, 'recover': recover}
  new = TrainState(
      step=state.step + 1, params=params,
      ema_params=choose(finite, optimizer.ema_update(state.ema_params, params, ema_decay),
                        state.ema_params),
      opt_state=opt_state,
      clip_queue=choose(finite & ~capped, queue, state.clip_queue),
      nonfinite=jnp.where(finite, 0, state.nonfinite + 1))
  return new, {'loss': loss, 'finite': finite, 'nonfinite': new.nonfinite, **info,
               **extra}


def train_step(state: TrainState, graphs: jraph.GraphsTuple, t_int: jax.Array,
               eps: jax.Array, *, model: Diffusion, tx, ema_decay: float,
               clip_grad: bool = True, clip_norm: float = 0.0, mesh: Mesh | None = None,
               rules: optimizer.StepRules = optimizer.StepRules()):
  """One optimizer step on stacked shards [S, ...] with explicit t and noise."""
  loss, grads = loss_and_grads(model, state.params, graphs, t_int, eps, mesh)
  return apply_gradients(state, grads, loss, tx=tx, ema_decay=ema_decay,
                         clip_grad=clip_grad, clip_norm=clip_norm, rules=rules)


def make_step_fns(model: Diffusion, tx: optax.GradientTransformation, *,
                  ema_decay: float, clip_grad: bool = True, clip_norm: float = 0.0,
                  mesh: Mesh | None = None,
                  rules: optimizer.StepRules = optimizer.StepRules()):
  """(draw_fn, step_fn), jitted once: what training runs every step.

  `draw_fn(graphs, key, step)` -> (t_int, eps) from `fold_in(key, step)`;
  `step_fn(state, graphs, t_int, eps)` -> (state, metrics), donating `state`.
  With a mesh, the batch axis is sharded over it and the state replicated.
  """
  shardings = {}
  if mesh is not None:
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
    shardings = dict(draw=dict(in_shardings=(data, replicated, replicated),
                               out_shardings=(data, data)),
                     step=dict(in_shardings=(replicated, data, data, data),
                               out_shardings=replicated))
  draw_fn = jax.jit(
      lambda graphs, key, step: draw_noise(model, graphs, jax.random.fold_in(key, step),
                                           mesh), **shardings.get('draw', {}))
  step_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx, ema_decay=ema_decay,
                        clip_grad=clip_grad, clip_norm=clip_norm, mesh=mesh, rules=rules),
      donate_argnums=0, **shardings.get('step', {}))
  return draw_fn, step_fn
