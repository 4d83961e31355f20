"""Typed configuration: dataclass trees that flags fill, plus named presets.

A leaf module: it imports nothing of edm_zoo. It checks what it can see (types,
ranges, the names of its own choices); each owner checks its own names where
they are used: the model registry (`edm_zoo.models.get`) when a network is
built, the dataset registry (`edm_zoo.data.registry.configure`) when data loads, and
`edm_zoo.conditioning.parse_properties` when properties are parsed.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The denoising network (EDM's `EGNN_dynamics_QM9` arguments).

  Attributes:
    name: registry name (`edm_zoo.models.names()`).
    nf: hidden width.
    n_layers: EquivariantBlocks (egnn) or GCLs (gnn).
    inv_sublayers: GCLs per EquivariantBlock.
    attention: sigmoid attention on messages.
    tanh: bound the coordinate update with tanh(.) * coords_range.
    coords_range: scale of the tanh-bounded coordinate update.
    norm_constant: added to |x_i - x_j| when normalising coordinate differences.
    normalization_factor: messages are summed then divided by this.
    aggregation: only 'sum' (EDM's published setting).
    sin_embedding: sinusoidal embedding of the squared distances.
    condition_time: append t/T to the node features.
    latent_nf: GeoLDM's latent feature width L per atom (the diffusion runs on
      [x, z_h], z_h of width L; unused by EDM's networks).
  """
  name: str = 'egnn'
  nf: int = 256
  n_layers: int = 9
  inv_sublayers: int = 1
  attention: bool = True
  tanh: bool = True
  coords_range: float = 15.0
  norm_constant: float = 1.0
  normalization_factor: float = 1.0
  aggregation: str = 'sum'
  sin_embedding: bool = False
  condition_time: bool = True
  latent_nf: int = 1


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """The diffusion objective (EDM's `EnVariationalDiffusion` arguments).

  Attributes:
    T: number of diffusion steps.
    noise_schedule: 'polynomial_<power>' (e.g. 'polynomial_2'), 'cosine' or 'learned'.
    noise_precision: the schedule's precision s.
    loss_type: 'l2' (EDM's training loss) or 'vlb'.
    norm_values: (x, categorical, integer) scales; EDM's published QM9 run uses
      (1, 4, 10) (the CLI default (1, 4, 1) is not what was published).
    norm_biases: (x, categorical, integer) biases; the x bias must be None/0.
    include_charges: the integer feature Z is part of h.
  """
  T: int = 1000
  noise_schedule: str = 'polynomial_2'
  noise_precision: float = 1e-5
  loss_type: str = 'l2'
  norm_values: tuple[float, float, float] = (1.0, 4.0, 10.0)
  norm_biases: tuple[Any, float, float] = (None, 0.0, 0.0)
  include_charges: bool = True


@dataclasses.dataclass(frozen=True)
class BFNConfig:
  """A Bayesian flow network of molecules (GeoBFN's QM9 arguments, bfn4molgen.yaml).

  Coordinates are a continuous variable and the charge a discretised one (`bins`
  bins on [-1, 1]); both are flowed with x's Gaussian update, gamma(t) =
  1 - sigma1^(2t).

  Attributes:
    sigma1_coord: the coordinates' sigma_1 (their flow's precision at t = 1).
    sigma1_charges: the charges' sigma_1.
    bins: K of the discretised charge; Z maps to bin centre (2Z - 1) / K - 1.
    beta1: the discrete-variable flow's beta_1 (GeoBFN's argument; its QM9 model
      flows no discrete variable, so it is unused).
    t_min: t is clamped to at least this; below it the flow's input is zero.
    sample_steps: the sampler's default number of Bayesian updates.
    position_scale: coordinates are divided by this (GeoBFN's normalizer, 2.0).
    basis_nf: centres of the Gaussian basis of the charge mean on [-2, 2] (the
      network's node input).
  """
  sigma1_coord: float = 0.001
  sigma1_charges: float = 0.15
  bins: int = 9
  beta1: float = 2.0
  t_min: float = 1e-4
  sample_steps: int = 1000
  position_scale: float = 2.0
  basis_nf: int = 16


@dataclasses.dataclass(frozen=True)
class SemlaConfig:
  """SemlaFlow: its network and flow matching (semlaflow/train.py defaults, the
  published GEOM-Drugs model; `model.n_layers` sets its depth).

  Attributes:
    d_model: atom feature width.
    d_message: width of the projected atom features in each edge message.
    d_edge: edge feature width.
    n_coord_sets: learnable coordinate sets S (latent attention over them).
    n_attn_heads: attention heads of the atom update (divides d_model).
    d_message_hidden: hidden width of the inner layers' message MLPs.
    size_emb: width of the molecule-size embedding.
    size_emb_max: rows of the size embedding (largest molecule + 1 it can take).
    coord_norm: 'length' (SemlaFlow's) or 'none'.
    self_condition: feed the previous prediction back (half the training steps).
    coord_std: coordinates are divided by this (0: SemlaFlow's value for QM9,
      1.7233, or GEOM-Drugs, 2.4070; other datasets must give it).
    coord_noise_std: std of the Gaussian added to interpolated coordinates.
    type_loss_weight, bond_loss_weight, charge_loss_weight: the loss weights of
      the categorical terms (the coordinate term has weight 1).
    time_alpha, time_beta: training times t ~ Beta(alpha, beta).
    cat_noise_level: the categorical sampler's noise level (uniform-sample).
    optimal_transport: 'equivariant' (per molecule, an atom permutation then a
      rotation of the prior onto the data) or 'none'.
    flow_steps: the sampler's default number of Euler steps.
  """
  d_model: int = 384
  d_message: int = 128
  d_edge: int = 128
  n_coord_sets: int = 64
  n_attn_heads: int = 32
  d_message_hidden: int = 128
  size_emb: int = 64
  size_emb_max: int = 256
  coord_norm: str = 'length'
  self_condition: bool = True
  coord_std: float = 0.0
  coord_noise_std: float = 0.2
  type_loss_weight: float = 0.2
  bond_loss_weight: float = 1.0
  charge_loss_weight: float = 1.0
  time_alpha: float = 2.0
  time_beta: float = 1.0
  cat_noise_level: float = 1.0
  optimal_transport: str = 'equivariant'
  flow_steps: int = 100


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation, evaluation and bookkeeping (EDM's published QM9 run).

  Attributes:
    batch_size: molecules per global batch (split over devices).
    microbatch_size: the most molecules a device differentiates at once: its share
      of a batch is split into the fewest equal parts of at most this many, whose
      gradients are summed one part after the other, so only one part's
      activations are alive (the step is the same up to float summation order).
      0 picks by platform: 16 on CPU (peak memory ~1/2, no slower), the whole
      share on accelerators.
    lr: AdamW learning rate.
    weight_decay: AdamW (decoupled) weight decay.
    ema_decay: EMA of the parameters, updated every step.
    clip_grad: EDM's adaptive gradient clipping.
    epochs: passes over the train split.
    total_steps: stop after this many steps (0: epochs * steps per epoch).
    eval_every_epochs: validation NLL interval in epochs.
    eval_every_steps: validation NLL interval in steps (overrides epochs if > 0).
    eval_molecules: molecules of the valid/test split to evaluate (0: all).
    nll_passes: passes of the stochastic NLL estimator over the split.
    checkpoint_every_steps: checkpoint interval.
    keep_last: checkpoints kept besides the best-validation one.
    log_every_steps: JSONL / TensorBoard interval.
    seed: init and data-order seed; noise comes from fold_in(key(seed), step).
    max_nonfinite: consecutive non-finite steps that stop the run.
    train_molecules: use only the first n train molecules (0: all).
    data_augmentation: rotate every training molecule randomly each step (EDM's
      flag; `edm_zoo/augmentation.py`).
    stage: 'diffusion' (the generative model) or 'autoencoder': a latent model's
      stage 1, its autoencoder alone on the stage-1 VAE loss (GeoLDM without
      --train_diffusion).
    trainable_ae: a latent model's decoder is trained alongside the diffusion by
      the reconstruction term (GeoLDM's --trainable_ae); the encoder never is.
      The launchers turn it off when --ae_ckpt is given without it.
    ae_ckpt: a stage-1 run whose (EMA) autoencoder a latent diffusion starts
      from (GeoLDM's --ae_path); '' starts from the initialisation.
    clip_queue_start: the first item of the clipping queue (EDM 3000, GeoBFN 1).
    clip_queue_len: the queue's length (EDM 50, GeoBFN 3000).
    skip_grad_norm: skip the update of a step whose gradient norm exceeds this
      (GeoBFN's maximum_allowed_norm, 10,000; 0: never).
    spike_loss: a batch loss above this (or non-finite) skips the *next* step's
      update and counts as a spike (GeoBFN's recover_trigger_loss, 500; 0: off).
    spike_limit: more spikes than this in one epoch reload the parameters of the
      newest checkpoint (GeoBFN's skip_count_limit, 3).
    warmup_steps: a linear learning-rate warm-up over this many steps, from
      lr / warmup_steps up to lr (0: none, EDM's schedule). An opt-in against the
      loss spikes of GEOM-Drugs' first steps, which the original has too (BUILD.md).
    warmup_start_factor: > 0: the warm-up is torch's LinearLR instead, from
      lr * warmup_start_factor at step 0 to lr at step warmup_steps (SemlaFlow's,
      0.01).
    clip_norm: > 0: clip the gradient's global norm to this every step (torch's
      clip_grad_norm_, SemlaFlow's 1.0), instead of EDM's adaptive queue.
  """
  batch_size: int = 64
  microbatch_size: int = 0
  lr: float = 1e-4
  weight_decay: float = 1e-12
  ema_decay: float = 0.9999
  clip_grad: bool = True
  epochs: int = 3000
  total_steps: int = 0
  eval_every_epochs: int = 20
  eval_every_steps: int = 0
  eval_molecules: int = 0
  nll_passes: int = 1
  checkpoint_every_steps: int = 1000
  keep_last: int = 3
  log_every_steps: int = 50
  seed: int = 0
  max_nonfinite: int = 10
  train_molecules: int = 0
  data_augmentation: bool = False
  stage: str = 'diffusion'
  trainable_ae: bool = True
  ae_ckpt: str = ''
  clip_queue_start: float = 3000.0
  clip_queue_len: int = 50
  skip_grad_norm: float = 0.0
  spike_loss: float = 0.0
  spike_limit: int = 3
  warmup_steps: int = 0
  warmup_start_factor: float = 0.0
  clip_norm: float = 0.0


STAGES = ('diffusion', 'autoencoder')

# What a resume may change (`training.skeleton`): how long and how often, never
# which steps are taken (the learning rate is constant, the data order and the
# noise depend on the step alone), so a run extended from 4 to 8 steps equals an
# 8-step run.
SCHEDULE_FIELDS = tuple(f'train.{name}' for name in (
    'epochs', 'total_steps', 'eval_every_epochs', 'eval_every_steps', 'eval_molecules',
    'nll_passes', 'checkpoint_every_steps', 'keep_last', 'log_every_steps'))


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run needs; launchers fill it from flags.

  Attributes:
    model, diffusion, train, bfn, semla: the sections above (`bfn` for a
      Bayesian flow model, `semla` for SemlaFlow, `diffusion` for the others).
    dataset: a `--dataset` of the registry (`edm_zoo.data.registry`): 'qm9',
      'qm9_noh', a train half ('qm9_second_half' is where the reference trains its
      conditional models), 'geom_drugs', 'moses3d', or one of your own.
    conditioning: molecular properties the model is conditioned on
      (`edm_zoo.conditioning.PROPERTIES`); empty for an unconditional model.
    context_norm_split: split whose mean and mean absolute deviation normalise
      the conditioning properties; the reference uses 'valid' for its half
      datasets (`compute_mean_mad`), 'train' is the alternative.
    num_atom_types: set from the dataset by `edm_zoo.data.registry.configure`.
  """
  model: ModelConfig = ModelConfig()
  diffusion: DiffusionConfig = DiffusionConfig()
  train: TrainConfig = TrainConfig()
  bfn: BFNConfig = BFNConfig()
  semla: SemlaConfig = SemlaConfig()
  dataset: str = 'qm9'
  conditioning: tuple[str, ...] = ()
  context_norm_split: str = 'valid'
  num_atom_types: int = 5

  @property
  def in_node_nf(self) -> int:
    """Node features h: one-hot types plus the charge column."""
    return self.num_atom_types + int(self.diffusion.include_charges)

  @property
  def context_nf(self) -> int:
    """Conditioning columns appended to every node's features."""
    return len(self.conditioning)


# Named presets: overrides of the published defaults, by section.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    'published': {},
    # A model that learns visibly in minutes on a 2-core CPU.
    'cpu_small': {
        'model': {'nf': 64, 'n_layers': 3},
        'train': {'batch_size': 32, 'lr': 1e-3, 'ema_decay': 0.999,
                  'total_steps': 2000, 'eval_every_steps': 250,
                  'eval_molecules': 512, 'checkpoint_every_steps': 250,
                  'log_every_steps': 10},
        # SemlaFlow's narrowest sensible model (BENCHMARKS.md: its hour on this CPU).
        'semla': {'d_model': 64, 'd_message': 32, 'd_edge': 32, 'n_coord_sets': 8,
                  'n_attn_heads': 8, 'd_message_hidden': 32, 'size_emb': 16},
    },
    # EDM's published GEOM-Drugs run (its README): nf 256, 4 layers, batch 64, lr
    # 1e-4, T 1000, polynomial_2, normalize_factors [1, 4, 10], EMA 0.9999,
    # normalization_factor 1, no charge feature, random batches, tested every epoch.
    # Its valid and test splits hold ~692,000 conformers each: 10,800 NLL batches,
    # hours on a CPU and minutes on a GPU per evaluation, so evaluations during
    # training read the first 20,000 (the splits are in random order; standard
    # error ~0.2 nats); `eval.py` reads the whole test split (`--nll_molecules`).
    'geom_drugs': {
        'model': {'n_layers': 4},
        'diffusion': {'include_charges': False},
        'train': {'eval_every_epochs': 1, 'eval_molecules': 20_000},
    },
    # Seconds per step: for tests of the machinery (resume, logging, sharding).
    'tiny': {
        'model': {'nf': 16, 'n_layers': 2},
        'train': {'batch_size': 8, 'lr': 1e-3, 'ema_decay': 0.99,
                  'total_steps': 20, 'eval_every_steps': 10, 'eval_molecules': 32,
                  'checkpoint_every_steps': 5, 'log_every_steps': 1,
                  'train_molecules': 2000},
        'semla': {'d_model': 32, 'd_message': 16, 'd_edge': 16, 'n_coord_sets': 4,
                  'n_attn_heads': 4, 'd_message_hidden': 16, 'size_emb': 8},
    },
}

# Defaults of a model that differ from EDM's, beneath any preset and flag: its
# authors' published settings.
MODEL_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # GeoBFN (configs/bfn4molgen.yaml, geobfn_train.py): its EGNN without attention
    # or tanh, EDM's clipping with a queue seeded by 1 and 3000 long, a gradient
    # norm cap and its loss-spike rules; AdamW lr 1e-4, wd 1e-12, EMA 0.9999, batch
    # 64 as EDM's.
    'geobfn': {
        'model': {'attention': False, 'tanh': False},
        'train': {'clip_queue_start': 1.0, 'clip_queue_len': 3000,
                  'skip_grad_norm': 10_000.0, 'spike_loss': 500.0, 'spike_limit': 3},
    },
    # SemlaFlow (semlaflow/train.py): 12 layers; Adam (amsgrad, no weight decay) at
    # lr 3e-4 warmed up by LinearLR from 1% over 10,000 steps, the gradient norm
    # clipped to 1 (Lightning's gradient_clip_val), EMA 0.999.
    'semlaflow': {
        'model': {'n_layers': 12},
        'train': {'lr': 3e-4, 'weight_decay': 0.0, 'ema_decay': 0.999, 'clip_grad': False,
                  'clip_norm': 1.0, 'warmup_steps': 10_000, 'warmup_start_factor': 0.01},
    },
}

_SECTIONS = {'model': ModelConfig, 'diffusion': DiffusionConfig, 'train': TrainConfig,
             'bfn': BFNConfig, 'semla': SemlaConfig}


def field_names() -> dict[str, str]:
  """{flag name: section} for every configurable field (names are unique)."""
  out = {'dataset': '', 'conditioning': '', 'context_norm_split': ''}
  for section, cls in _SECTIONS.items():
    for f in dataclasses.fields(cls):
      out['model' if (section, f.name) == ('model', 'name') else f.name] = section
  return out


def flag_name(path: str) -> str:
  """The flag of a dotted config path: 'model.nf' -> 'nf', 'model.name' -> 'model',
  'dataset' -> 'dataset' (a classifier's flat fields are their own flags)."""
  if path == 'model.name':
    return 'model'
  section, _, name = path.partition('.')
  return name if section in _SECTIONS and name else path


def build(preset: str = 'published', **overrides) -> Config:
  """The preset's Config with flag-style overrides (`nf=64`, `model='gnn'`).

  Raises:
    ValueError: an unknown preset or field, or an invalid value (one line that
      lists what is allowed).
  """
  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; allowed: {sorted(PRESETS)}.')
  model = overrides.get('model') or 'egnn'
  sections = {k: dict(v) for k, v in MODEL_DEFAULTS.get(model, {}).items()}
  for k, v in PRESETS[preset].items():
    sections.setdefault(k, {}).update(v)
  top = {}
  fields = field_names()
  for key, value in overrides.items():
    if value is None:
      continue
    if key not in fields:
      raise ValueError(f'unknown config field {key!r}; allowed: {sorted(fields)}.')
    if fields[key] == '':
      top[key] = value
    else:
      sections.setdefault(fields[key], {})['name' if key == 'model' else key] = value
  config = Config(**top, **{s: cls(**sections.get(s, {})) for s, cls in _SECTIONS.items()})
  return validate(config)


def validate(config: Config) -> Config:
  """Checks choices and ranges (one-line ValueErrors); returns the config."""
  d, t, m = config.diffusion, config.train, config.model
  sched = d.noise_schedule
  if not (sched in ('cosine', 'learned') or sched.startswith('polynomial_')):
    raise ValueError(f"unknown noise_schedule {sched!r}; allowed: 'polynomial_<power>'"
                     " (e.g. polynomial_2), 'cosine', 'learned'.")
  if d.loss_type not in ('l2', 'vlb'):
    raise ValueError(f"unknown loss_type {d.loss_type!r}; allowed: ['l2', 'vlb'].")
  if m.aggregation != 'sum':
    raise ValueError(f"unknown aggregation {m.aggregation!r}; allowed: ['sum'].")
  if len(d.norm_values) != 3:
    raise ValueError(f'norm_values needs 3 numbers (x, categorical, integer), '
                     f'got {d.norm_values}.')
  for name, value in (('nf', m.nf), ('n_layers', m.n_layers), ('T', d.T),
                      ('batch_size', t.batch_size), ('inv_sublayers', m.inv_sublayers),
                      ('keep_last', t.keep_last), ('nll_passes', t.nll_passes),
                      ('checkpoint_every_steps', t.checkpoint_every_steps),
                      ('log_every_steps', t.log_every_steps),
                      ('max_nonfinite', t.max_nonfinite)):
    if int(value) <= 0:
      raise ValueError(f'{name} must be a positive integer, got {value}.')
  if t.microbatch_size < 0:
    raise ValueError(f'microbatch_size must be >= 0 (0: by platform), got '
                     f'{t.microbatch_size}.')
  if not 0 < t.lr < 1:
    raise ValueError(f'lr must be in (0, 1), got {t.lr}.')
  if not 0 <= t.ema_decay < 1:
    raise ValueError(f'ema_decay must be in [0, 1), got {t.ema_decay}.')
  if config.context_norm_split not in ('train', 'valid'):
    raise ValueError(f'unknown context_norm_split {config.context_norm_split!r}; '
                     "allowed: ['train', 'valid'].")
  if t.stage not in STAGES:
    raise ValueError(f'unknown stage {t.stage!r}; allowed: {list(STAGES)}.')
  if t.stage == 'autoencoder' and t.ae_ckpt:
    raise ValueError('--ae_ckpt starts a latent diffusion from a trained autoencoder; '
                     'it does not apply to --stage=autoencoder.')
  b = config.bfn
  for name, value in (('sigma1_coord', b.sigma1_coord), ('sigma1_charges', b.sigma1_charges)):
    if not 0 < value < 1:
      raise ValueError(f'{name} must be in (0, 1), got {value}.')
  for name, value in (('bins', b.bins), ('sample_steps', b.sample_steps),
                      ('basis_nf', b.basis_nf), ('clip_queue_len', t.clip_queue_len),
                      ('spike_limit', t.spike_limit)):
    if int(value) <= 0:
      raise ValueError(f'{name} must be a positive integer, got {value}.')
  if not 0 <= b.t_min < 1:
    raise ValueError(f't_min must be in [0, 1), got {b.t_min}.')
  if t.warmup_steps < 0:
    raise ValueError(f'warmup_steps must be >= 0, got {t.warmup_steps}.')
  if b.position_scale <= 0:
    raise ValueError(f'position_scale must be positive, got {b.position_scale}.')
  if config.num_atom_types <= 0:
    raise ValueError(f'num_atom_types must be positive, got {config.num_atom_types}.')
  if not 0 <= t.warmup_start_factor <= 1:
    raise ValueError(f'warmup_start_factor must be in [0, 1], got {t.warmup_start_factor}.')
  if t.clip_norm < 0:
    raise ValueError(f'clip_norm must be >= 0 (0: off), got {t.clip_norm}.')
  _validate_semla(config)
  return dataclasses.replace(config, conditioning=tuple(config.conditioning))


def _validate_semla(config: Config) -> None:
  sm = config.semla
  for name, value in (('d_model', sm.d_model), ('d_message', sm.d_message),
                      ('d_edge', sm.d_edge), ('n_coord_sets', sm.n_coord_sets),
                      ('n_attn_heads', sm.n_attn_heads),
                      ('d_message_hidden', sm.d_message_hidden),
                      ('size_emb', sm.size_emb), ('size_emb_max', sm.size_emb_max),
                      ('flow_steps', sm.flow_steps)):
    if int(value) <= 0:
      raise ValueError(f'{name} must be a positive integer, got {value}.')
  if sm.d_model % sm.n_attn_heads:
    raise ValueError(f'n_attn_heads ({sm.n_attn_heads}) must divide d_model '
                     f'({sm.d_model}).')
  if sm.coord_norm not in ('length', 'none'):
    raise ValueError(f"unknown coord_norm {sm.coord_norm!r}; allowed: ['length', 'none'].")
  if sm.optimal_transport not in ('equivariant', 'none'):
    raise ValueError(f'unknown optimal_transport {sm.optimal_transport!r}; allowed: '
                     "['equivariant', 'none'].")
  if sm.coord_std < 0 or sm.coord_noise_std < 0 or sm.cat_noise_level < 0:
    raise ValueError('coord_std, coord_noise_std and cat_noise_level must be >= 0.')
  if sm.time_alpha <= 0 or sm.time_beta <= 0:
    raise ValueError(f'time_alpha and time_beta must be positive, got '
                     f'{sm.time_alpha}, {sm.time_beta}.')
  if config.model.name == 'semlaflow' and config.model.n_layers < 2:
    raise ValueError('semlaflow needs n_layers >= 2 (its first and last layers carry '
                     f'the bond features), got {config.model.n_layers}.')


def to_dict(config: Config) -> dict[str, Any]:
  return dataclasses.asdict(config)


def from_dict(d: dict[str, Any]) -> Config:
  d = dict(d)
  model = ModelConfig(**d.pop('model', {}))
  diff = dict(d.pop('diffusion', {}))
  for key in ('norm_values', 'norm_biases'):
    if key in diff:
      diff[key] = tuple(diff[key])
  train = TrainConfig(**d.pop('train', {}))
  bfn = BFNConfig(**d.pop('bfn', {}))
  semla = SemlaConfig(**d.pop('semla', {}))
  if 'conditioning' in d:
    d['conditioning'] = tuple(d['conditioning'])
  return Config(model=model, diffusion=DiffusionConfig(**diff), train=train, bfn=bfn,
                semla=semla, **d)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """A property classifier (EDM's `qm9/property_prediction`, published defaults).

  Attributes:
    property: the QM9 property it predicts (`edm_zoo.conditioning.PROPERTIES`).
    model: 'egnn' (the reference's invariant EGNN regressor) or 'numnodes'
      (the '#Atoms' baseline: a two-layer MLP on the number of atoms).
    nf: hidden width.
    n_layers: invariant graph convolutions.
    attention: sigmoid attention on messages.
    dataset: train split ('qm9_first_half': the half EDM's generators never see).
    norm_split: split whose mean / MAD normalise the target (the reference: 'valid').
    batch_size: molecules per batch.
    lr: Adam learning rate, cosine-annealed to 0 over `epochs` (stepped per epoch).
    weight_decay: L2 added to the gradient (torch Adam's weight_decay).
    epochs: passes over the train split (also the cosine period).
    total_steps: stop after this many steps (0: epochs * steps per epoch).
    eval_every_epochs: validation / test MAE interval in epochs.
    eval_every_steps: the same in steps (overrides epochs if > 0).
    eval_molecules: molecules of valid / test to evaluate (0: all).
    train_molecules: use only the first n train molecules (0: all).
    checkpoint_every_steps: checkpoint interval.
    keep_last: checkpoints kept besides the best-validation one.
    log_every_steps: JSONL / TensorBoard interval.
    seed: init and data-order seed.
  """
  property: str = 'alpha'
  model: str = 'egnn'
  nf: int = 128
  n_layers: int = 7
  attention: bool = True
  dataset: str = 'qm9_first_half'
  norm_split: str = 'valid'
  batch_size: int = 96
  lr: float = 1e-3
  weight_decay: float = 1e-16
  epochs: int = 1000
  total_steps: int = 0
  eval_every_epochs: int = 1
  eval_every_steps: int = 0
  eval_molecules: int = 0
  train_molecules: int = 0
  checkpoint_every_steps: int = 1000
  keep_last: int = 3
  log_every_steps: int = 50
  seed: int = 1


# The classifier's `epochs` is also its cosine period, so it cannot change on resume.
CLASSIFIER_SCHEDULE_FIELDS = ('total_steps', 'eval_every_epochs', 'eval_every_steps',
                              'eval_molecules', 'checkpoint_every_steps', 'keep_last',
                              'log_every_steps')


CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    'published': {},
    # Minutes on a 2-core CPU: a classifier that clearly beats the mean.
    'cpu_small': {'nf': 64, 'n_layers': 3, 'batch_size': 64, 'epochs': 3,
                  'eval_molecules': 2000, 'log_every_steps': 20},
    # Seconds: for tests of the machinery.
    'tiny': {'nf': 16, 'n_layers': 2, 'batch_size': 16, 'epochs': 2,
             'total_steps': 20, 'eval_every_steps': 10, 'eval_molecules': 64,
             'train_molecules': 400, 'checkpoint_every_steps': 10, 'log_every_steps': 5},
}


def build_classifier(preset: str = 'published', **overrides) -> ClassifierConfig:
  """The classifier preset with flag-style overrides; one-line ValueErrors (the
  property and dataset names are checked by `property_prediction.training.check`)."""
  if preset not in CLASSIFIER_PRESETS:
    raise ValueError(f'unknown preset {preset!r}; allowed: {sorted(CLASSIFIER_PRESETS)}.')
  fields = {f.name for f in dataclasses.fields(ClassifierConfig)}
  values = dict(CLASSIFIER_PRESETS[preset])
  for key, value in overrides.items():
    if key not in fields:
      raise ValueError(f'unknown classifier field {key!r}; allowed: {sorted(fields)}.')
    if value is not None:
      values[key] = value
  config = ClassifierConfig(**values)
  if config.model not in ('egnn', 'numnodes'):
    raise ValueError(f"unknown classifier model {config.model!r}; allowed: "
                     "['egnn', 'numnodes'].")
  if config.norm_split not in ('train', 'valid'):
    raise ValueError(f"unknown norm_split {config.norm_split!r}; allowed: "
                     "['train', 'valid'].")
  for name in ('nf', 'n_layers', 'batch_size', 'epochs', 'eval_every_epochs',
               'checkpoint_every_steps', 'keep_last', 'log_every_steps'):
    if int(getattr(config, name)) <= 0:
      raise ValueError(f'{name} must be a positive integer, got {getattr(config, name)}.')
  if not 0 < config.lr < 1:
    raise ValueError(f'lr must be in (0, 1), got {config.lr}.')
  return config


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How `launch/sample.py` and `launch/eval.py` draw molecules.

  Attributes:
    n_samples: molecules to generate.
    batch_size: molecules per sampling batch.
    seed: batch b draws sizes from (seed, b) and noise from fold_in(key(seed), b).
    sampler: 'ancestral' (EDM's), 'ddim' or 'dpm_solver'
      (`edm_zoo.methods.diffusion.samplers`).
    steps: reverse steps on an evenly spaced time grid (0: T, EDM's chain); the
      network is evaluated steps + 1 times per molecule. For a Bayesian flow
      (geobfn): its Bayesian updates, any number >= 1 (0: `bfn.sample_steps`).
    eta: DDIM's share of the ancestral noise (0: deterministic).
    spacing: how the steps spread over [0, T]: 'uniform', 'power_<p>' (t = T (1 -
      i/steps)^p, finer near the data for p > 1; 'quadratic' = 'power_2') or
      'log_snr' (uniform in log-SNR). Any spacing with steps = T is EDM's grid.
    jit_steps: reverse steps per compiled call (0: the whole chain in one call).
    unroll: `lax.scan` unroll factor inside a call.
    fix_noise: one noise draw shared by all molecules (EDM's fix_noise).
    chain: also draw one molecule denoising (PNG strip + GIF).
  """
  n_samples: int = 10_000
  batch_size: int = 100
  seed: int = 0
  sampler: str = 'ancestral'
  steps: int = 0
  eta: float = 0.0
  spacing: str = 'uniform'
  jit_steps: int = 0
  unroll: int = 1
  fix_noise: bool = False
  chain: bool = False


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What `launch/eval.py` measures besides the samples.

  Attributes:
    nll_passes: passes of the NLL estimator over the split (0 skips the NLL).
    nll_split: 'train', 'valid' or 'test'.
    nll_batch_size: molecules per NLL batch.
    nll_molecules: the first n molecules of the split only (0: all).
    mae_molecules: n evenly spread molecules of the second half for the MAE
      protocol's real-molecule rows (0: all 50,000).
    chemistry: the chemistry checks beside EDM's metrics (`edm_zoo.metrics.chemistry`:
      RDKit's bond perception judged by two valency tables, PoseBusters, MMFF94
      and GFN2-xTB relaxation); skipped for a dataset without hydrogens.
    xtb_molecules: GFN2-xTB relaxes the perceived ones among the first n molecules
      (0: none; a few seconds each on a CPU core).
    energy_molecules: PoseBusters' energy-ratio check (an ensemble of RDKit
      conformers per molecule, ~1 s each) runs on the first n molecules (0: none).
    chemistry_workers: processes for the chemistry checks (0: the usable CPUs, at
      most 8).
  """
  nll_passes: int = 5
  nll_split: str = 'test'
  nll_batch_size: int = 64
  nll_molecules: int = 0
  mae_molecules: int = 0
  chemistry: bool = True
  xtb_molecules: int = 20
  energy_molecules: int = 100
  chemistry_workers: int = 0


def build_eval(**overrides) -> EvalConfig:
  """An EvalConfig from flag-style overrides (None keeps the default); one-line
  ValueErrors."""
  config = _fill(EvalConfig, 'evaluation', overrides)
  for name in ('nll_passes', 'nll_molecules', 'mae_molecules', 'xtb_molecules',
               'energy_molecules', 'chemistry_workers'):
    if getattr(config, name) < 0:
      raise ValueError(f'{name} must be >= 0, got {getattr(config, name)}.')
  if config.nll_batch_size <= 0:
    raise ValueError(f'nll_batch_size must be positive, got {config.nll_batch_size}.')
  if config.nll_split not in ('train', 'valid', 'test'):
    raise ValueError(f"unknown nll_split {config.nll_split!r}; allowed: "
                     "['train', 'valid', 'test'].")
  return config


def _fill(cls, what: str, overrides: dict[str, Any]):
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'unknown {what} field {unknown[0]!r}; allowed: {sorted(fields)}.')
  return cls(**{k: v for k, v in overrides.items() if v is not None})


def build_sampling(**overrides) -> SamplingConfig:
  """A SamplingConfig from flag-style overrides (None keeps the default); one-line
  ValueErrors for unknown fields and bad values."""
  config = _fill(SamplingConfig, 'sampling', overrides)
  for name in ('n_samples', 'batch_size', 'unroll'):
    if getattr(config, name) <= 0:
      raise ValueError(f'{name} must be positive, got {getattr(config, name)}.')
  if config.jit_steps < 0:
    raise ValueError(f'jit_steps must be >= 0 (0: the whole chain), got {config.jit_steps}.')
  if config.steps < 0:
    raise ValueError(f'steps must be >= 0 (0: every one of the T steps), got {config.steps}.')
  if not 0.0 <= config.eta <= 1.0:
    raise ValueError(f'eta must be in [0, 1], got {config.eta}.')
  return config


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """What `launch/bench.py` measures (`edm_zoo.benchmarks`).

  Attributes:
    what: any of 'train', 'nll', 'sample', 'data', 'jit_study', 'size_study'
      (train-step time and memory against molecule size).
    repeats: timed repetitions after warm-up.
    sample_molecules: molecules per sampling batch.
    sample_steps: reverse steps timed (scaled to T for molecules/hour).
    bench_split: split whose molecules make the train/data batches.
    data_batches: batches timed by 'data'.
    jit_study_ks: reverse steps per compiled call of the jit study.
    jit_study_unrolls: scan unrolls of the jit study.
    size_study_sizes: when given, the size study times batches of the dataset's
      molecules that all have exactly this many atoms, one size after another
      (what `instruments/side_by_side.sh` times the original on); otherwise the
      dataset's own batches, QM9's and three molecules joined.
  """
  what: tuple[str, ...] = ('train', 'nll', 'sample', 'data')
  repeats: int = 10
  sample_molecules: int = 10
  sample_steps: int = 50
  bench_split: str = 'train'
  data_batches: int = 300
  jit_study_ks: tuple[int, ...] = (1, 10, 100, 1000)
  jit_study_unrolls: tuple[int, ...] = (1, 4)
  size_study_sizes: tuple[int, ...] = ()


BENCH_PARTS = ('train', 'nll', 'sample', 'data', 'jit_study', 'size_study')


def build_bench(**overrides) -> BenchConfig:
  """A BenchConfig from flag-style overrides ('all' in `what` = the first four)."""
  config = _fill(BenchConfig, 'bench', overrides)
  what = set(config.what)
  if 'all' in what:
    what = (what - {'all'}) | {'train', 'nll', 'sample', 'data'}
  unknown = sorted(what - set(BENCH_PARTS))
  if unknown:
    raise ValueError(f'unknown --what {unknown}; allowed: {list(BENCH_PARTS)} or all.')
  for name in ('repeats', 'sample_molecules', 'sample_steps', 'data_batches'):
    if getattr(config, name) <= 0:
      raise ValueError(f'{name} must be positive, got {getattr(config, name)}.')
  sizes = tuple(int(n) for n in config.size_study_sizes)
  if any(n < 2 for n in sizes):
    raise ValueError(f'size_study_sizes must be atom counts >= 2, got {list(sizes)}.')
  return dataclasses.replace(config, what=tuple(p for p in BENCH_PARTS if p in what),
                             jit_study_ks=tuple(int(k) for k in config.jit_study_ks),
                             jit_study_unrolls=tuple(int(u) for u in
                                                     config.jit_study_unrolls),
                             size_study_sizes=tuple(sorted(set(sizes))))
