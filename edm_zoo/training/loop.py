"""The training loop: data-parallel steps, logging, evaluation, checkpoints, resume."""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

import jax
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from edm_zoo import conditioning
from edm_zoo import config as config_lib
from edm_zoo import evaluation
from edm_zoo.data import batching, qm9
from edm_zoo.diffusion.objective import Diffusion
from edm_zoo.training import checkpoint, metrics_log, optimizer
from edm_zoo.training import state as train_state


class TrainingError(RuntimeError):
  """A run that cannot go on (e.g. repeated non-finite steps)."""


def _statistics_meta(stats: qm9.Statistics) -> dict[str, Any]:
  return {'atom_types': list(stats.atom_types), 'type_counts': list(stats.type_counts),
          'n_nodes_histogram': {str(k): v for k, v in stats.n_nodes_histogram.items()}}


def train(config: config_lib.Config, workdir: str, *, data_dir: str | None = None,
          progress: bool = True) -> dict[str, Any]:
  """Trains (or resumes) a run in `workdir`; returns the final metrics.

  Batches are split over every device (`jax.devices()`, all processes): the
  batch axis is sharded, parameters replicated. Step k's t and noise come from
  `fold_in(fold_in(key(seed), 1), k)` and the shard index.
  """
  t = config.train
  stats = qm9.dataset_statistics(config.dataset, data_dir)
  hist = stats.n_nodes_histogram
  train_src = qm9.load_dataset(config.dataset, 'train', data_dir)
  if t.train_molecules:
    train_src = evaluation.Subset(train_src, t.train_molecules)
  valid_src = qm9.load_dataset(config.dataset, 'valid', data_dir)
  test_src = qm9.load_dataset(config.dataset, 'test', data_dir)
  normalizer = None
  if config.conditioning:
    normalizer = conditioning.fit_normalizer(config, data_dir)
    train_src, valid_src, test_src = (conditioning.ConditionedSource(s, normalizer)
                                      for s in (train_src, valid_src, test_src))

  model = Diffusion(config, hist)
  tx = optimizer.torch_adamw_amsgrad(t.lr, weight_decay=t.weight_decay)
  devices = jax.devices()
  n_shards = len(devices)
  mesh = Mesh(np.array(devices), ('data',))
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  local = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
  budgets = batching.default_budgets(t.batch_size // max(n_shards, 1), hist)
  batches = functools.partial(
      batching.sharded_batches, train_src, t.batch_size, n_shards, t.seed,
      budgets=budgets, shards=local)

  steps_per_epoch = math.ceil(len(train_src) / t.batch_size)
  total_steps = t.total_steps or t.epochs * steps_per_epoch
  eval_every = t.eval_every_steps or t.eval_every_epochs * steps_per_epoch

  first, _ = next(batches(epoch=0))
  key = jax.random.PRNGKey(t.seed)
  state = train_state.init_state(model, tx, jax.random.fold_in(key, 0),
                                 jax.tree.map(lambda a: a[0], first))
  ckpt = checkpoint.Checkpointer(workdir, t.keep_last)
  meta = {'config': config_lib.to_dict(config), 'epoch': 0, 'position': 0,
          'statistics': _statistics_meta(stats), 'best_val_nll': None,
          'jax_version': jax.__version__}
  if normalizer is not None:
    meta['property_norms'] = normalizer.to_dict()
  if ckpt.latest_step() is not None:
    state, restored = ckpt.restore(state)
    if config_lib.from_dict(restored['config']) != config:
      raise TrainingError(f'{workdir} holds a run with another config; use a new '
                          '--workdir or the same flags.')
    meta.update(epoch=restored['epoch'], position=restored['position'],
                best_val_nll=restored['best_val_nll'])
    logging.info('resumed from step %d (epoch %d, molecule %d)', int(state.step),
                 meta['epoch'], meta['position'])
  step = int(state.step)
  writer = metrics_log.MetricsWriter(workdir, resume_step=step)
  state = jax.device_put(state, replicated)
  step_fn = jax.jit(
      functools.partial(train_state.train_step, model=model, tx=tx,
                        ema_decay=t.ema_decay, clip_grad=t.clip_grad, mesh=mesh),
      in_shardings=(replicated, data_sharding, replicated),
      out_shardings=replicated, donate_argnums=0)
  noise_key = jax.random.fold_in(key, 1)
  nll_fn = evaluation.make_nll_fn(model)
  evaluate = functools.partial(
      evaluation.nll, model, batch_size=t.batch_size, seed=t.seed,
      passes=t.nll_passes, limit=t.eval_molecules, n_nodes_histogram=hist,
      nll_fn=nll_fn, progress=progress)

  saved = [None]

  def save(val_nll=None):
    if saved[0] == step and val_nll is None:
      return
    saved[0] = step
    epoch, position = meta['epoch'], meta['position']
    if position >= len(train_src):
      epoch, position = epoch + 1, 0
    ckpt.save(step, jax.device_get(state), {**meta, 'epoch': epoch, 'position': position},
              val=val_nll)

  bar = tqdm.tqdm(total=total_steps, initial=step, disable=not progress,
                  desc='train', dynamic_ncols=True)
  last_time, last_step = time.time(), step
  result: dict[str, Any] = {}
  while step < total_steps:
    for graphs, consumed in batches(epoch=meta['epoch'], start=meta['position']):
      graphs = jax.tree.map(
          lambda a: jax.make_array_from_process_local_data(data_sharding, a), graphs)
      state, metrics = step_fn(state, graphs, noise_key)
      metrics = jax.device_get(metrics)
      step += 1
      meta['position'] += consumed
      if not metrics['finite']:
        n_bad = int(jax.device_get(state.nonfinite))
        logging.warning('step %d: non-finite loss or gradient (%d in a row); skipped.',
                        step, n_bad)
        writer.write(step, {'nonfinite_step': 1.0})
        if n_bad >= t.max_nonfinite:
          raise TrainingError(
              f'{n_bad} non-finite steps in a row at step {step}; stopped. The last '
              f'good checkpoint is in {workdir}/checkpoints (lower --lr?).')
      bar.update(1)
      bar.set_postfix(loss=f"{float(metrics['loss']):.4f}",
                      epoch=meta['epoch'], refresh=False)
      if step % t.log_every_steps == 0:
        now = time.time()
        writer.write(step, {'loss': metrics['loss'], 'grad_norm': metrics['grad_norm'],
                            'max_grad_norm': metrics.get('max_grad_norm', np.nan),
                            'clipped': float(metrics.get('clipped', False)),
                            'steps_per_s': (step - last_step) / max(now - last_time, 1e-9),
                            'epoch': meta['epoch']})
        last_time, last_step = now, step
      val = None
      if step % eval_every == 0 or step == total_steps:
        val = evaluate(state.ema_params, valid_src, desc='val NLL')['nll']
        writer.write(step, {'val_nll': val})
        bar.write(f'step {step}: validation NLL {val:.3f} nats/molecule (EMA)')
        if meta['best_val_nll'] is None or val < meta['best_val_nll']:
          meta['best_val_nll'] = val
        result['val_nll'] = val
      if step % t.checkpoint_every_steps == 0 or val is not None:
        save(val)
      if step >= total_steps:
        break
    else:
      meta['epoch'] += 1
      meta['position'] = 0
  bar.close()
  test = evaluate(state.ema_params, test_src, desc='test NLL')
  writer.write(step, {'test_nll': test['nll']})
  result.update(step=step, test_nll=test['nll'], best_val_nll=meta['best_val_nll'])
  save()
  writer.close()
  ckpt.close()
  return result
