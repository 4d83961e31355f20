"""absl flags generated from the config dataclasses (one flag per field), and the
flags every launcher shares."""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
import typing

import jax
from absl import flags

from edm_zoo import conditioning
from edm_zoo import config as config_lib
from edm_zoo import models
from edm_zoo.data import registry
from edm_zoo.methods.diffusion import samplers
from edm_zoo.training import checkpoint
from edm_zoo.training import distributed
from edm_zoo.training import skeleton
from launch import runtime

_SKIP = {'norm_biases'}


def define_dataclass_flags(cls, *, skip=(), rename=None, section: str = '') -> None:
  """--<field> for every field of `cls` (default None: the preset's value)."""
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    if f.name in skip:
      continue
    name = (rename or {}).get(f.name, f.name)
    help_ = f'{section + "." if section else ""}{f.name} (default {f.default!r})'
    hint = hints[f.name]
    if hint is bool:
      flags.DEFINE_bool(name, None, help_)
    elif hint is int:
      flags.DEFINE_integer(name, None, help_)
    elif hint is float:
      flags.DEFINE_float(name, None, help_)
    elif hint is str:
      flags.DEFINE_string(name, None, help_)
    else:  # Tuples.
      flags.DEFINE_list(name, None, help_)


def dataclass_values(cls, *, rename=None) -> dict:
  """{field: flag value} for the fields of `cls` that have a flag."""
  out = {}
  for f in dataclasses.fields(cls):
    name = (rename or {}).get(f.name, f.name)
    if name in flags.FLAGS:
      value = flags.FLAGS[name].value
      out[f.name] = tuple(value) if isinstance(value, list) else value
  return out


def define_data_dir_flag() -> flags.FlagHolder:
  return flags.DEFINE_string('data_dir', None, f'TFDS data dir (default '
                             f'${registry.DATA_DIR_ENV} or data/tfds)')


def ensure_dataset(dataset: str, data_dir: str | None) -> None:
  """Builds a missing dataset once (offline) before a launcher needs it (process 0
  of a multi-process run builds, the others wait)."""
  entry = registry.get(dataset, data_dir)
  if distributed.is_writer() and not registry.is_prepared(dataset, data_dir):
    if not entry.builds_itself:
      raise ValueError(f'dataset {dataset!r} is not prepared in '
                       f'{data_dir or registry.default_data_dir()}: run `{entry.prepare}`.')
    print(f'{dataset} is not prepared: building it once ...')
    registry.prepare(dataset, data_dir)
  distributed.barrier('dataset_ready')


def define_distributed_flags() -> flags.FlagHolder:
  """--coordinator_address/--num_processes/--process_id (explicit), --distributed
  (let JAX detect SLURM, Open MPI, ...) and the two timeouts; returns --distributed."""
  flags.DEFINE_string('coordinator_address', None,
                      "multi-process: process 0's host:port (every process passes the same)")
  flags.DEFINE_integer('num_processes', None, 'multi-process: how many processes')
  flags.DEFINE_integer('process_id', None, 'multi-process: this process (0 writes)')
  flags.DEFINE_integer('join_timeout', 120,
                       'multi-process: seconds to wait for every process to join')
  flags.DEFINE_integer('heartbeat_timeout', 30,
                       'multi-process: seconds of silence after which a process is lost')
  return flags.DEFINE_bool('distributed', False,
                           'multi-process on a cluster JAX detects (SLURM, Open MPI, '
                           'Kubernetes): jax.distributed.initialize() without flags')


def join_run(distributed_flag: flags.FlagHolder) -> None:
  """Joins the multi-process run the flags describe (nothing for a single process).

  Raises:
    ValueError: one line, for malformed flags or a run that cannot be joined.
  """
  f = flags.FLAGS
  explicit = (f.coordinator_address, f.num_processes, f.process_id)
  if all(v is None for v in explicit) and not distributed_flag.value:
    return
  distributed.initialize(*explicit, timeout_s=f.join_timeout,
                         heartbeat_s=f.heartbeat_timeout)


def run_trainer(train: typing.Callable[[], dict], workdir: str) -> None:
  """Runs `train()` and prints its figures (process 0); a requested stop, a
  condition that stops training or a lost peer ends the launcher in one line."""
  try:
    result = train()
  except skeleton.TrainingStopped as e:
    runtime.fail(str(e), code=143, prefix='')  # 128 + SIGTERM, as if killed by it.
  except Exception as e:  # pylint: disable=broad-except
    runtime.fail(training_error(e, workdir))
  if distributed.is_writer():
    print(f'done: {result}')


def training_error(error: BaseException, workdir: str) -> str:
  """The one line a launcher prints for an error that stopped training (with the
  traceback first when it is a bug rather than a condition)."""
  if distributed.is_peer_lost(error):
    return (f'lost contact with another process of the run '
            f'({distributed.first_line(error)}); restart every process with the same '
            f'flags to resume from the last checkpoint in {workdir}.')
  if isinstance(error, (ValueError, skeleton.TrainingError)):
    return str(error)
  traceback.print_exception(error)
  return f'{type(error).__name__}: {distributed.first_line(error)} (traceback above)'


# --matmul_precision: jax's default matmul precision, or the dot algorithm preset
# (https://docs.jax.dev/en/latest/jax.lax.html#jax.lax.DotAlgorithmPreset) that
# rounds float32 inputs on the way into the matmul units.
MATMUL_PRECISIONS = {'default': 'default', 'high': 'high', 'highest': 'highest',
                     'tf32': 'TF32_TF32_F32', 'bf16': 'BF16_BF16_F32'}
_GPU_ONLY_PRECISIONS = ('tf32', 'bf16')


def check_matmul_precision(name: str | None = None) -> None:
  """Refuses a GPU-only --matmul_precision (or `name`) elsewhere (call after
  join_run: it starts the backend).

  XLA:CPU rejects TF32 at the first matmul and computes a bf16 algorithm in
  float32 (same error and speed as `highest`, measured on Zen 4): neither would do
  what the flag says.

  Raises:
    ValueError: one line.
  """
  name = name or flags.FLAGS.matmul_precision
  if name in _GPU_ONLY_PRECISIONS and jax.default_backend() != 'gpu':
    raise ValueError(f'--matmul_precision={name} needs a GPU (this run is on '
                     f'{jax.default_backend()}); XLA there computes float32 matmuls in '
                     'float32 whatever the flag. Leave the flag out.')


def define_config_flags() -> None:
  """Defines --<field> for every Config field, plus --preset and friends."""
  flags.DEFINE_enum('matmul_precision', 'highest', sorted(MATMUL_PRECISIONS),
                    'float32 matmul precision: highest keeps parity; default lets XLA '
                    'pick (TF32 on recent NVIDIA GPUs); tf32 and bf16 (GPU only) round '
                    'the matmul inputs to TF32 / bfloat16 and accumulate in float32')
  flags.DEFINE_string('preset', 'published',
                      f'named preset: {sorted(config_lib.PRESETS)} (default: the '
                      "dataset's published run if it has one, e.g. geom_drugs, else "
                      "'published', EDM's QM9 run)")
  flags.DEFINE_string('dataset', None, f'one of {registry.names()} (default qm9) or '
                      'your own (launch/prepare_data.py --from); '
                      "'qm9_second_half' is where EDM trains its conditional models")
  flags.DEFINE_bool('remove_h', None, 'alias for --dataset=qm9_noh')
  flags.DEFINE_list('conditioning', None, 'properties to condition on, e.g. alpha or '
                    f'alpha,gap ({", ".join(conditioning.PROPERTIES)}); default none')
  flags.DEFINE_enum('context_norm_split', None, ['train', 'valid'],
                    "split whose mean/MAD normalise the properties (default 'valid', "
                    'as the reference)')
  for section, cls in (('model', config_lib.ModelConfig),
                       ('diffusion', config_lib.DiffusionConfig),
                       ('train', config_lib.TrainConfig),
                       ('semla', config_lib.SemlaConfig)):
    define_dataclass_flags(cls, skip=_SKIP, section=section,
                           rename={'name': 'model'} if section == 'model' else None)


def config_from_flags() -> config_lib.Config:
  """The Config that the flags describe, its names checked by their owners (model
  registry, dataset registry, conditioning); exits with one line if invalid.

  Also applies --matmul_precision to jax.
  """
  jax.config.update('jax_default_matmul_precision',
                    MATMUL_PRECISIONS[flags.FLAGS.matmul_precision])
  values = {}
  for name in config_lib.field_names():
    if name in flags.FLAGS and name not in _SKIP:
      value = flags.FLAGS[name].value
      if name == 'conditioning':
        value = None if value is None else tuple(value)
      elif isinstance(value, list):
        try:
          value = tuple(float(v) for v in value)
        except ValueError:
          sys.exit(f'error: --{name} takes numbers, got {value}.')
      values[name] = value
  if flags.FLAGS.remove_h:
    if values.get('dataset') not in (None, 'qm9_noh'):
      sys.exit('error: --remove_h contradicts --dataset; use --dataset=qm9_noh.')
    values['dataset'] = 'qm9_noh'
  try:
    if values.get('conditioning') is not None:
      values['conditioning'] = conditioning.parse_properties(values['conditioning'])
    if not flags.FLAGS['preset'].present and values.get('dataset'):
      # A dataset with its own published run (GEOM-Drugs) starts from it.
      flags.FLAGS.preset = registry.get(values['dataset'], flags.FLAGS.data_dir).preset or \
          flags.FLAGS.preset
    if values.get('ae_ckpt') and not flags.FLAGS['trainable_ae'].present:
      # GeoLDM's stage 2: the autoencoder from --ae_ckpt stays frozen.
      values['trainable_ae'] = False
    config = config_lib.build(flags.FLAGS.preset, **values)
    models.get(config.model.name)
    return registry.configure(config, flags.FLAGS.data_dir)
  except ValueError as e:
    sys.exit(f'error: {e}')


def define_classifier_flags() -> None:
  """Defines --<field> for every ClassifierConfig field, plus --preset."""
  flags.DEFINE_string('preset', 'published',
                      f'named preset: {sorted(config_lib.CLASSIFIER_PRESETS)}')
  define_dataclass_flags(config_lib.ClassifierConfig)


def classifier_config_from_flags(check) -> config_lib.ClassifierConfig:
  """The ClassifierConfig of the flags, passed through `check` (the trainer's name
  checks); exits with one line if invalid."""
  try:
    return check(config_lib.build_classifier(
        flags.FLAGS.preset, **dataclass_values(config_lib.ClassifierConfig)))
  except ValueError as e:
    sys.exit(f'error: {e}')


def define_sampling_flags() -> None:
  """--ckpt, --out_dir, --data_dir, --progress and one flag per SamplingConfig field."""
  flags.DEFINE_string('ckpt', None, 'checkpoint folder (train workdir, or import_edm --out)')
  flags.DEFINE_string('out_dir', None, 'output folder (default <ckpt>/eval or /samples)')
  define_data_dir_flag()
  flags.DEFINE_bool('progress', True, 'show progress bars')
  define_dataclass_flags(config_lib.SamplingConfig, section='sampling')


def sampling_from_flags() -> config_lib.SamplingConfig:
  """The sampling flags, checked (the sampler name too) before any work starts."""
  try:
    sampling = config_lib.build_sampling(**dataclass_values(config_lib.SamplingConfig))
  except ValueError as e:
    sys.exit(f'error: --{e}')
  try:
    samplers.get(sampling.sampler, eta=sampling.eta)
  except ValueError as e:
    sys.exit(f'error: {e}')
  return sampling


def checked_ckpt() -> str:
  """--ckpt, after a one-line exit when it is missing or holds no checkpoint (before
  anything is written)."""
  return checked_ckpt_path(flags.FLAGS.ckpt)


def checked_ckpt_path(ckpt: str | None) -> str:
  """`ckpt`, after a one-line exit when it is missing or holds no checkpoint."""
  if not ckpt:
    sys.exit('error: give --ckpt=DIR.')
  try:
    checkpoint.find(ckpt)
  except ValueError as e:
    sys.exit(f'error: {e}')
  return ckpt


def writable_out_dir(path: str) -> str:
  """Creates `path` and checks that we can write there; exits with one line if not."""
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, '.write_probe')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    sys.exit(f'error: cannot write to --out_dir {path}: {e.strerror}.')
  return path
