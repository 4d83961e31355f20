"""EDM's optimisation: AdamW-amsgrad as torch computes it, the adaptive gradient
clipping queue, and the parameter EMA.

torch's AdamW (amsgrad) differs from `optax.adamw(amsgrad)`: it keeps the max of
the *uncorrected* second moment, adds eps after dividing sqrt(v_max) by
sqrt(1 - beta2^t), and decays weights by lr * wd on the pre-update parameters.
`torch_adamw_amsgrad` is the optax chain with exactly that algebra.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class AmsgradState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  nu_max: optax.Updates


def scale_by_torch_amsgrad(b1: float = 0.9, b2: float = 0.999,
                           eps: float = 1e-8) -> optax.GradientTransformation:
  """m_hat / (sqrt(v_max) / sqrt(1 - b2^t) + eps) with torch's amsgrad v_max."""

  def init_fn(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return AmsgradState(jnp.zeros([], jnp.int32), zeros(), zeros(), zeros())

  def update_fn(updates, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.mu, updates)
    nu = jax.tree.map(lambda v, g: v * b2 + (1 - b2) * g * g, state.nu, updates)
    nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
    t = count.astype(jnp.float32)
    bc1 = 1 - b1**t
    sqrt_bc2 = jnp.sqrt(1 - b2**t)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) / sqrt_bc2 + eps) / bc1,
                       mu, nu_max)
    return out, AmsgradState(count, mu, nu, nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


def torch_adamw_amsgrad(lr: float, *, b1: float = 0.9, b2: float = 0.999,
                        eps: float = 1e-8, weight_decay: float = 1e-12,
                        warmup_steps: int = 0, warmup_start_factor: float = 0.0
                        ) -> optax.GradientTransformation:
  """torch.optim.AdamW(lr, betas, eps, weight_decay, amsgrad=True) as optax.

  With `warmup_steps`, the learning rate of step k (from 0) is
  lr * min(1, (k + 1) / warmup_steps): the whole update, weight decay included,
  is scaled, as a torch LambdaLR would scale AdamW's lr. With a
  `warmup_start_factor` f > 0 it is torch's LinearLR(start_factor=f,
  total_iters=warmup_steps) instead: lr * (f + (1 - f) min(k, warmup_steps) /
  warmup_steps) (SemlaFlow's, f = 0.01). With weight_decay 0 this is torch's Adam.
  """
  if warmup_steps < 0:
    raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}.')
  if warmup_steps and warmup_start_factor:
    f = warmup_start_factor
    scale = optax.scale_by_schedule(
        lambda count: -lr * (f + (1 - f) * jnp.minimum(count, warmup_steps) / warmup_steps))
  elif warmup_steps:
    scale = optax.scale_by_schedule(
        lambda count: -lr * jnp.minimum(1.0, (count + 1) / warmup_steps))
  else:
    scale = optax.scale(-lr)  # EDM: the state stays that of earlier checkpoints.
  return optax.chain(scale_by_torch_amsgrad(b1, b2, eps),
                     optax.add_decayed_weights(weight_decay), scale)


class ClipQueue(NamedTuple):
  """The last gradient norms, newest first (EDM's `utils.Queue`).

  Attributes:
    items: [max_len] values; only the first `count` are live.
    count: number of live items.
  """
  items: jax.Array
  count: jax.Array


def init_clip_queue(initial=(3000.0,), max_len: int = 50) -> ClipQueue:
  """EDM seeds the queue with one 3000 (so no clipping before iteration 50)."""
  initial = jnp.asarray(initial, jnp.float32)[:max_len]
  items = jnp.zeros(max_len, jnp.float32).at[:initial.shape[0]].set(initial)
  return ClipQueue(items, jnp.asarray(initial.shape[0], jnp.int32))


def max_grad_norm(queue: ClipQueue) -> jax.Array:
  """1.5 * mean + 2 * std (population) of the live items."""
  live = jnp.arange(queue.items.shape[0]) < queue.count
  n = queue.count.astype(jnp.float32)
  mean = jnp.sum(jnp.where(live, queue.items, 0.0)) / n
  var = jnp.sum(jnp.where(live, (queue.items - mean)**2, 0.0)) / n
  return 1.5 * mean + 2 * jnp.sqrt(var)


def clip_gradients(grads: Any, queue: ClipQueue):
  """EDM's `gradient_clipping`: returns (clipped grads, new queue, info).

  The total norm is clipped to max_grad_norm (scaled by max/(norm + 1e-6), as
  torch's `clip_grad_norm_`); the queue then receives min(norm, max).
  """
  norm = optax.global_norm(grads)
  threshold = max_grad_norm(queue)
  coef = jnp.minimum(threshold / (norm + 1e-6), 1.0)
  grads = jax.tree.map(lambda g: g * coef, grads)
  clipped = norm > threshold
  items = jnp.roll(queue.items, 1).at[0].set(jnp.minimum(norm, threshold))
  count = jnp.minimum(queue.count + 1, queue.items.shape[0])
  info = {'grad_norm': norm, 'max_grad_norm': threshold, 'clipped': clipped,
          'clip_coef': coef}
  return grads, ClipQueue(items, count), info


def clip_by_norm(grads: Any, max_norm: float):
  """torch's clip_grad_norm_(max_norm) (Lightning's gradient_clip_val): grads
  scaled by min(1, max_norm / (norm + 1e-6)); returns (grads, info)."""
  norm = optax.global_norm(grads)
  coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
  return (jax.tree.map(lambda g: g * coef, grads),
          {'grad_norm': norm, 'max_grad_norm': jnp.asarray(max_norm, jnp.float32),
           'clipped': norm > max_norm, 'clip_coef': coef})


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """ema <- decay * ema + (1 - decay) * params, every step (no warm-up)."""
  return jax.tree.map(lambda e, p: e * decay + (1 - decay) * p, ema_params, params)


class StepRules(NamedTuple):
  """GeoBFN's guards around a step (its `Gradient_clip` and `RecoverCallback`);
  the defaults turn them off (EDM has none).

  Attributes:
    skip_grad_norm: a step whose gradient norm (before clipping) exceeds this
      leaves the parameters, optimizer state and clipping queue as they were
      (0: never).
    spike_loss: a batch loss above this (or non-finite) is a spike: the *next*
      step's gradients are zeroed (GeoBFN sets them to None, so the update is
      skipped and the clipping queue receives a norm of 0) (0: off).
    spike_limit: a spike that brings the epoch's count above this asks for the
      parameters of the newest checkpoint (`recover` in the step's metrics) and
      sets the count to spike_limit // 2.
    steps_per_epoch: the count and the pending skip reset at every epoch start.
  """
  skip_grad_norm: float = 0.0
  spike_loss: float = 0.0
  spike_limit: int = 3
  steps_per_epoch: int = 0


class Guarded(NamedTuple):
  """An optimizer state with the spike rules' flags beside it.

  Attributes:
    inner: the optimizer's own state.
    skip_next: the next step's gradients are to be zeroed.
    spikes: spikes so far in this epoch.
  """
  inner: Any
  skip_next: jax.Array
  spikes: jax.Array


def guarded(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` whose state also carries `StepRules`' flags (set by the train step)."""

  def init_fn(params):
    return Guarded(tx.init(params), jnp.zeros([], bool), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    updates, inner = tx.update(updates, state.inner, params)
    return updates, state._replace(inner=inner)

  return optax.GradientTransformation(init_fn, update_fn)


def spike_flags(state: Guarded, loss: jax.Array, step: jax.Array, rules: StepRules
                ) -> tuple[Guarded, jax.Array]:
  """(state with this batch's spike counted, whether to recover) after a step
  whose loss is `loss` (GeoBFN's `on_train_batch_end`)."""
  spike = ~(loss <= rules.spike_loss) if rules.spike_loss else jnp.zeros([], bool)
  spikes = state.spikes + spike.astype(jnp.int32)
  recover = spike & (spikes > rules.spike_limit)
  spikes = jnp.where(recover, rules.spike_limit // 2, spikes)
  return state._replace(skip_next=spike, spikes=spikes), recover


def epoch_start(state: Guarded, step: jax.Array, rules: StepRules) -> Guarded:
  """The flags at the start of a step: reset when it is the first of an epoch."""
  if not rules.steps_per_epoch:
    return state
  new = step % rules.steps_per_epoch == 0
  return state._replace(skip_next=state.skip_next & ~new,
                        spikes=jnp.where(new, 0, state.spikes))
