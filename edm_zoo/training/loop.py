"""Training the diffusion model: setup (data, model, mesh, jitted step) on the
shared skeleton (`training/skeleton.py`: resume, bookkeeping, evaluation,
checkpoints, logs)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from edm_zoo import conditioning
from edm_zoo import config as config_lib
from edm_zoo import evaluation
from edm_zoo.data import batching, registry, sources
from edm_zoo import methods, models
from edm_zoo.methods import diffusion
from edm_zoo.methods.flow import interpolant
from edm_zoo.methods.diffusion.objective import Diffusion
from edm_zoo.training import checkpoint, distributed, optimizer, skeleton
from edm_zoo.training import state as train_state
from edm_zoo.training.skeleton import TrainingError

__all__ = ['Setup', 'TrainingError', 'setup', 'train']

# GeoBFN's recover_count_limit.
RECOVER_LIMIT = 20


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything a run is made of before its first step.

  Attributes:
    config: the run's config (its atom-type count set from the dataset).
    model: the diffusion model.
    tx: the optimizer.
    mesh: the devices of every process, batch axis 'data'.
    shards_per_device: the parts each device's share of a batch is split into
      (`train_state.parts_per_device`), differentiated one after the other.
    local_shards: the shards of each global batch this process builds.
    splits: {'train', 'valid', 'test'} sources (conditioned when the model is).
    statistics: the train split's statistics.
    normalizer: the property normaliser of a conditional model, else None.
  """
  config: config_lib.Config
  model: Diffusion
  tx: Any
  mesh: Mesh
  shards_per_device: int
  local_shards: list[int]
  splits: dict[str, Any]
  statistics: registry.Statistics
  normalizer: conditioning.Normalizer | None


def setup(config: config_lib.Config, data_dir: str | None = None) -> Setup:
  """Loads the data and builds the model, optimizer and device mesh of a run."""
  config = registry.configure(config, data_dir)
  t = config.train
  parts = train_state.parts_per_device(t.batch_size // len(jax.devices()),
                                       t.microbatch_size, jax.default_backend())
  mesh, local = distributed.data_mesh(t.batch_size, parts)
  stats = registry.statistics(config.dataset, data_dir)
  model = methods.make(config, stats.n_nodes_histogram)
  splits = {s: registry.load(config.dataset, s, data_dir, with_bonds=model.with_bonds)
            for s in registry.SPLITS}
  if t.train_molecules:
    splits['train'] = sources.Subset(splits['train'], t.train_molecules)
  normalizer = None
  if config.conditioning:
    normalizer = conditioning.fit_normalizer(config, data_dir)
    splits = {k: conditioning.conditioned(v, normalizer) for k, v in splits.items()}
  if (models.get(config.model.name).method == 'bfn'
      and max(stats.atomic_numbers) > config.bfn.bins):
    raise ValueError(f'--model={config.model.name} bins charges 1..{config.bfn.bins}; '
                     f'{config.dataset} has Z up to {max(stats.atomic_numbers)} '
                     f'(--bins={max(stats.atomic_numbers)} or more).')
  tx = optimizer.torch_adamw_amsgrad(t.lr, weight_decay=t.weight_decay,
                                     warmup_steps=t.warmup_steps,
                                     warmup_start_factor=t.warmup_start_factor)
  if t.spike_loss:
    tx = optimizer.guarded(tx)
  return Setup(config=config, model=model, tx=tx,
               mesh=mesh, shards_per_device=parts, local_shards=local, splits=splits,
               statistics=stats, normalizer=normalizer)


def check_recipe(config: config_lib.Config) -> None:
  """One-line ValueErrors for a latent-model recipe that cannot train."""
  t = config.train
  if t.stage == 'diffusion' and not t.trainable_ae and not t.ae_ckpt:
    raise ValueError('--notrainable_ae freezes the decoder: give --ae_ckpt=DIR (a '
                     '--stage=autoencoder run), or train it with --trainable_ae.')


def load_autoencoder(config: config_lib.Config) -> Any:
  """The EMA autoencoder parameters of `config.train.ae_ckpt`, a stage-1 run of the
  same model, data and feature settings (else a one-line ValueError)."""
  ae_dir = config.train.ae_ckpt
  try:
    ae_config, params, _ = checkpoint.load_for_inference(ae_dir)
  except ValueError as e:
    raise ValueError(f'--ae_ckpt: {e}') from None
  if ae_config.train.stage != 'autoencoder':
    raise ValueError(f'--ae_ckpt {ae_dir} is a {ae_config.train.stage} run; it takes a '
                     '--stage=autoencoder run.')
  for what, ours, theirs in (('model', config.model, ae_config.model),
                             ('dataset', config.dataset, ae_config.dataset),
                             ('include_charges', config.diffusion.include_charges,
                              ae_config.diffusion.include_charges)):
    if ours != theirs:
      differ = ours if what != 'model' else {
          k: v for k, v in dataclasses.asdict(ours).items()
          if getattr(theirs, k) != v}
      raise ValueError(f'--ae_ckpt {ae_dir} was trained with another {what} '
                       f'(this run: {differ}); use the same flags as its stage 1.')
  return diffusion.LatentDiffusion.autoencoder(params)


def _meta(s: Setup) -> dict[str, Any]:
  stats = s.statistics
  meta = {'config': config_lib.to_dict(s.config), 'statistics': {
      'atom_types': list(stats.atom_types), 'type_counts': list(stats.type_counts),
      'n_nodes_histogram': {str(k): v for k, v in stats.n_nodes_histogram.items()}}}
  if s.normalizer is not None:
    meta['property_norms'] = s.normalizer.to_dict()
  return meta


def train(config: config_lib.Config, workdir: str, *, data_dir: str | None = None,
          progress: bool = True, started: float | None = None) -> dict[str, Any]:
  """Trains (or resumes) a run in `workdir`; returns the final figures.

  `started` (a `time.time()`) is when the process began, so that the logged
  `elapsed_s` counts its setup (default: when training starts).

  Batches are split over every device (`jax.devices()`, all processes): the
  batch axis is sharded, parameters replicated; each process reads only its
  devices' shards. Step k's t and noise come from `fold_in(fold_in(key(seed), 1),
  k)` and the molecule's place in the global batch (its rotation under
  `data_augmentation` from `fold_in(fold_in(key(seed), 2), k)`), so 1 process x
  2 devices, 2 processes x 1 device and 1 device take the same steps.
  Evaluations are split over processes by batch.
  """
  check_recipe(config)
  s = setup(config, data_dir)
  t, model, mesh = s.config.train, s.model, s.mesh
  hist = s.statistics.n_nodes_histogram
  n_shards = mesh.size * s.shards_per_device
  logging.info('batches of %d: %d device(s) x %d part(s) of %d molecules, each '
               "device's parts differentiated one after the other", t.batch_size,
               mesh.size, s.shards_per_device, t.batch_size // n_shards)
  batches = functools.partial(
      batching.sharded_batches, s.splits['train'], t.batch_size, n_shards, t.seed,
      budgets=batching.default_budgets(t.batch_size // n_shards, hist),
      shards=s.local_shards, agree=distributed.max_over_processes,
      with_bonds=model.with_bonds)
  if hasattr(model, 'prepare'):
    # A host-side part of the step (SemlaFlow's optimal transport), a batch ahead;
    # batch i of an epoch draws from (seed, epoch, its first molecule).
    read = batches

    def batches(epoch, start=0):
      def prepare(item, counter=iter(range(start, 1 << 62, t.batch_size))):
        rng = np.random.default_rng([t.seed, 3, epoch, next(counter)])
        return model.prepare(item[0], rng), item[1]
      return interpolant.prepare_ahead(read(epoch=epoch, start=start), prepare)
  steps_per_epoch = math.ceil(len(s.splits['train']) / t.batch_size)

  first, _ = next(batches(epoch=0))
  key = jax.random.PRNGKey(t.seed)
  state = train_state.init_state(
      model, s.tx, jax.random.fold_in(key, 0), jax.tree.map(lambda a: a[0], first),
      optimizer.init_clip_queue((t.clip_queue_start,), t.clip_queue_len))
  rules = optimizer.StepRules(skip_grad_norm=t.skip_grad_norm, spike_loss=t.spike_loss,
                              spike_limit=t.spike_limit, steps_per_epoch=steps_per_epoch)
  draw_fn, step_fn = train_state.make_step_fns(
      model, s.tx, ema_decay=t.ema_decay, clip_grad=t.clip_grad, clip_norm=t.clip_norm,
      mesh=mesh, rules=rules)
  recoveries = []
  noise_key = jax.random.fold_in(key, 1)
  # A model with a host-side step rotates its molecules there, before its transport.
  augment_fn = (train_state.make_augment_fn(mesh)
                if t.data_augmentation and not hasattr(model, 'prepare') else None)
  augment_key = jax.random.fold_in(key, 2)
  evaluate = functools.partial(
      evaluation.nll, model, batch_size=t.batch_size, seed=t.seed,
      passes=t.nll_passes, limit=t.eval_molecules, n_nodes_histogram=hist,
      nll_fn=evaluation.make_nll_fn(model), progress=progress and distributed.is_writer(),
      part=(jax.process_index(), jax.process_count()),
      combine=distributed.sum_over_processes)

  def step(state, graphs):
    graphs = distributed.global_batch(graphs, mesh)
    if augment_fn is not None:
      graphs = augment_fn(graphs, augment_key, state.step)
    t_int, eps = draw_fn(graphs, noise_key, state.step)
    state, metrics = step_fn(state, graphs, t_int, eps)
    metrics = jax.device_get(metrics)
    n_bad = int(metrics['nonfinite'])
    if not metrics['finite']:
      step = int(jax.device_get(state.step))
      logging.warning('step %d: non-finite loss or gradient (%d in a row); skipped.',
                      step, n_bad)
      if n_bad >= t.max_nonfinite:
        raise TrainingError(
            f'{n_bad} non-finite steps in a row at step {step}; stopped. The last good '
            f'checkpoint is in {workdir}/checkpoints (lower --lr?).')
    guard = {}
    if 'skipped' in metrics:  # GeoBFN's rules: what they did at this step.
      guard = {'skipped': float(metrics['skipped']), 'spikes_in_epoch': float(metrics['spikes'])}
    if metrics.get('recover', False):
      state = recover(state)
    return state, {**guard, 'loss': float(metrics['loss']),
                   'grad_norm': float(metrics['grad_norm']),
                   'max_grad_norm': float(metrics.get('max_grad_norm', np.nan)),
                   'clipped': float(metrics.get('clipped', False)),
                   'nonfinite_in_a_row': float(n_bad)}

  def recover(state):
    # GeoBFN's RecoverCallback: too many loss spikes in an epoch reload the
    # newest checkpoint's parameters (the optimizer state and EMA stay), or a
    # fresh initialisation when there is none; more than 20 reloads stop the run.
    step = int(jax.device_get(state.step))
    recoveries.append(step)
    if len(recoveries) > RECOVER_LIMIT:
      raise TrainingError(f'{len(recoveries)} recoveries from loss spikes by step {step}; '
                          f'stopped (lower --lr?).')
    try:
      params = checkpoint.load_state(os.path.join(workdir, 'checkpoints'))[0]['params']
      source = 'the newest checkpoint'
    except ValueError:
      params = jax.jit(model.init)(jax.random.fold_in(key, 3 + step),
                                   jax.tree.map(lambda a: a[0], first))
      source = 'a fresh initialisation (no checkpoint yet)'
    logging.warning('step %d: more than %d loss spikes (> %g) this epoch; parameters '
                    'reloaded from %s.', step, t.spike_limit, t.spike_loss, source)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    return state._replace(params=params)

  # Stage 1 of a latent model evaluates its own loss, not an NLL.
  figure = model.objective_name
  label, unit = model.objective_label

  def validate(state):
    out = evaluate(distributed.local_copy(state.ema_params), s.splits['valid'],
                   desc=f'val {label}')
    val, n = out['nll'], out['molecules']
    return ({f'val_{figure}': val, f'val_{figure}_molecules': n},
            f'validation {label} {val:.3f} {unit} (EMA; {n:,} of the '
            f"{len(s.splits['valid']):,} validation molecules)")

  def test(state):
    out = evaluate(distributed.local_copy(state.ema_params), s.splits['test'],
                   desc=f'test {label}')
    return {f'test_{figure}': out['nll'], f'test_{figure}_molecules': out['molecules']}

  def fresh_start(state):
    if not t.ae_ckpt:
      return state
    # Stage 2 starts from stage 1's autoencoder; a resume has it in its own state.
    return train_state.new_state(
        model.with_autoencoder(state.params, load_autoencoder(s.config)), s.tx)

  trainer = skeleton.Trainer(
      batches=lambda epoch, start: batches(epoch=epoch, start=start),
      step=step, evaluate=validate, best_metric=f'val_{figure}', meta=_meta(s),
      canonical_config=lambda d: config_lib.to_dict(config_lib.from_dict(d)),
      fresh_start=fresh_start, schedule_fields=config_lib.SCHEDULE_FIELDS,
      finish=test)
  schedule = skeleton.Schedule(
      total_steps=t.total_steps or t.epochs * steps_per_epoch,
      epoch_size=len(s.splits['train']),
      eval_every=t.eval_every_steps or t.eval_every_epochs * steps_per_epoch,
      checkpoint_every=t.checkpoint_every_steps, log_every=t.log_every_steps,
      keep_last=t.keep_last)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  _, result = skeleton.run(workdir, state, trainer, schedule, progress=progress,
                           started=started)
  return result
