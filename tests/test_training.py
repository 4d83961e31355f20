"""The training loop: randomness, learning, NaNs (resume and sharding:
test_multiprocess.py)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edm_zoo import config as config_lib
from edm_zoo import evaluation
from edm_zoo.data import batching, registry
from edm_zoo.methods.diffusion import Diffusion
from edm_zoo.training import loop, optimizer
from edm_zoo.training import state as train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


@pytest.fixture(scope='module')
def tiny():
  config = config_lib.build('tiny')
  hist = registry.statistics('qm9').n_nodes_histogram
  model = Diffusion(config, hist)
  source = registry.load('qm9', 'valid')
  graphs, _ = next(batching.sharded_batches(source, 8, 2, n_nodes_histogram=hist))
  return config, model, graphs


def test_draws_differ_between_steps_and_repeat_with_the_seed(tiny):
  _, model, graphs = tiny
  graph = jax.tree.map(lambda a: a[0], graphs)
  step_key = lambda seed, step: jax.random.fold_in(jax.random.PRNGKey(seed), step)
  t0, e0 = train_state.draw(model, graph, step_key(0, 0), 0)
  t1, e1 = train_state.draw(model, graph, step_key(0, 1), 0)
  t0b, e0b = train_state.draw(model, graph, step_key(0, 0), 0)
  assert not np.array_equal(t0, t1) and not np.allclose(e0, e1)
  np.testing.assert_array_equal(t0, t0b)
  np.testing.assert_array_equal(e0, e0b)
  _, e_other_shard = train_state.draw(model, graph, step_key(0, 0), 1)
  assert not np.allclose(e0, e_other_shard), 'shards draw different noise'


def test_non_finite_step_is_skipped(tiny):
  config, model, graphs = tiny
  tx = optimizer.torch_adamw_amsgrad(1e-3)
  state = train_state.init_state(model, tx, jax.random.PRNGKey(0),
                                 jax.tree.map(lambda a: a[0], graphs))
  grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), state.params)
  new, info = train_state.apply_gradients(state, grads, jnp.float32(1.0), tx=tx,
                                          ema_decay=0.99)
  assert not bool(info['finite']) and int(new.nonfinite) == 1 and int(new.step) == 1
  for a, b in zip(jax.tree.leaves((new.params, new.ema_params, new.opt_state,
                                   new.clip_queue)),
                  jax.tree.leaves((state.params, state.ema_params, state.opt_state,
                                   state.clip_queue))):
    np.testing.assert_array_equal(a, b)
  grads = jax.tree.map(jnp.ones_like, state.params)
  new, info = train_state.apply_gradients(new, grads, jnp.float32(1.0), tx=tx,
                                          ema_decay=0.99)
  assert bool(info['finite']) and int(new.nonfinite) == 0


def test_repeated_non_finite_steps_stop_the_run(tmp_path, monkeypatch):
  real = train_state._shard_sums  # pylint: disable=protected-access

  def poisoned(*args, **kwargs):
    total, count = real(*args, **kwargs)
    return total * jnp.nan, count
  monkeypatch.setattr(train_state, '_shard_sums', poisoned)
  config = config_lib.build('tiny', max_nonfinite=3, total_steps=10)
  with pytest.raises(loop.TrainingError, match='3 non-finite steps in a row'):
    loop.train(config, str(tmp_path), progress=False)


@pytest.mark.parametrize('per_device, size, platform, parts', [
    (64, 0, 'cpu', 4), (64, 0, 'gpu', 1), (64, 16, 'gpu', 4), (64, 64, 'cpu', 1),
    (40, 16, 'cpu', 4), (8, 0, 'cpu', 1), (6, 4, 'cpu', 2), (7, 4, 'cpu', 7)])
def test_a_devices_share_splits_into_the_fewest_equal_parts_that_fit(
    per_device, size, platform, parts):
  assert train_state.parts_per_device(per_device, size, platform) == parts


def test_a_batch_split_into_parts_takes_the_same_step_with_less_memory():
  config = config_lib.build('tiny', nf=32)
  hist = registry.statistics('qm9').n_nodes_histogram
  model = Diffusion(config, hist)
  source = registry.load('qm9', 'valid')
  whole, _ = next(batching.sharded_batches(source, 16, 1, n_nodes_histogram=hist))
  parts, _ = next(batching.sharded_batches(source, 16, 4, n_nodes_histogram=hist))
  params = train_state.init_state(model, optimizer.torch_adamw_amsgrad(1e-3),
                                  jax.random.PRNGKey(0),
                                  jax.tree.map(lambda a: a[0], whole)).params
  draw = jax.jit(lambda g: train_state.draw_noise(model, g, jax.random.PRNGKey(3)))
  grad_fn = jax.jit(lambda p, g, t, e: train_state.loss_and_grads(model, p, g, t, e))
  results, temp_bytes = [], []
  for graphs in (whole, parts):
    t_int, eps = draw(graphs)
    results.append(grad_fn(params, graphs, t_int, eps))
    temp_bytes.append(grad_fn.lower(params, graphs, t_int, eps).compile()
                      .memory_analysis().temp_size_in_bytes)
  (loss_whole, grads_whole), (loss_parts, grads_parts) = results
  # Noise is drawn per molecule of the global batch, whatever the split.
  np.testing.assert_allclose(loss_parts, loss_whole, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_parts), jax.tree.leaves(grads_whole)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # One part's activations are alive at a time, not the batch's.
  assert temp_bytes[1] < 0.6 * temp_bytes[0], temp_bytes


# Resume after kill -9 (20 random moments) and 1 device = 2 devices = 2 processes:
# tests/test_multiprocess.py.


@pytest.mark.slow
def test_validation_nll_falls_within_a_few_hundred_steps(tmp_path):
  config = config_lib.build('tiny', nf=32, batch_size=16, total_steps=300,
                            eval_every_steps=300, eval_molecules=128,
                            checkpoint_every_steps=1000, log_every_steps=50,
                            train_molecules=0)
  hist = registry.statistics('qm9').n_nodes_histogram
  model = Diffusion(config, hist)
  graphs, _ = next(batching.sharded_batches(registry.load('qm9', 'train'), 16, 1,
                                            n_nodes_histogram=hist))
  init = train_state.init_state(model, optimizer.torch_adamw_amsgrad(1e-3),
                                jax.random.fold_in(jax.random.PRNGKey(0), 0),
                                jax.tree.map(lambda a: a[0], graphs))
  before = evaluation.nll(model, init.params, registry.load('qm9', 'valid'), batch_size=16,
                          limit=128, n_nodes_histogram=hist, progress=False)['nll']
  result = loop.train(config, str(tmp_path), progress=False)
  print(f'validation NLL {before:.1f} -> {result["val_nll"]:.1f} nats/molecule')
  # Measured: ~1600 -> ~790 nats/molecule; demand at least a 30% drop.
  assert result['val_nll'] < 0.7 * before, (before, result['val_nll'])


def test_warmup_scales_the_first_updates_and_then_leaves_edm_schedule():
  params = {'w': jnp.array([0.5, -1.0, 2.0])}
  grads = [{'w': jnp.array([0.3, -2.0, 1e-3]) * (k + 1)} for k in range(5)]

  def updates(tx):
    state, out = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      out.append(u['w'])
    return out
  plain = updates(optimizer.torch_adamw_amsgrad(1e-3))
  warm = updates(optimizer.torch_adamw_amsgrad(1e-3, warmup_steps=4))
  for k, (p, w) in enumerate(zip(plain, warm)):
    np.testing.assert_allclose(w, p * min(1.0, (k + 1) / 4), rtol=1e-6)
  # Without a warm-up the optimizer state is EDM's (checkpoints restore as before).
  no_warmup = optimizer.torch_adamw_amsgrad(1e-3).init(params)
  assert jax.tree.structure(no_warmup) == jax.tree.structure(
      optimizer.torch_adamw_amsgrad(1e-3, warmup_steps=0).init(params))
  with pytest.raises(ValueError, match='warmup_steps'):
    config_lib.build('tiny', warmup_steps=-1)
