"""absl flags generated from the config dataclasses (one flag per field)."""

from __future__ import annotations

import dataclasses
import sys
import typing

from absl import flags

from edm_zoo import config as config_lib

_SKIP = {'norm_biases'}


def define_config_flags() -> None:
  """Defines --<field> for every config field (default None = preset value)."""
  flags.DEFINE_enum('matmul_precision', 'highest', ['default', 'high', 'highest'],
                    'float32 matmul precision: highest keeps parity; default allows '
                    'TF32 on GPUs (faster, numerics change slightly)')
  flags.DEFINE_string('preset', 'published',
                      f'named preset: {sorted(config_lib.PRESETS)}')
  flags.DEFINE_string('dataset', None, "'qm9' (default), 'qm9_noh', or a train half: "
                      "'qm9_second_half' (EDM's conditional models), 'qm9_first_half'")
  flags.DEFINE_bool('remove_h', None, 'alias for --dataset=qm9_noh')
  flags.DEFINE_list('conditioning', None, 'properties to condition on, e.g. alpha or '
                    'alpha,gap (alpha, gap, homo, lumo, mu, Cv); default none')
  flags.DEFINE_enum('context_norm_split', None, ['train', 'valid'],
                    "split whose mean/MAD normalise the properties (default 'valid', "
                    'as the reference)')
  for section, cls in (('model', config_lib.ModelConfig),
                       ('diffusion', config_lib.DiffusionConfig),
                       ('train', config_lib.TrainConfig)):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
      if f.name in _SKIP:
        continue
      name = 'model' if (section, f.name) == ('model', 'name') else f.name
      help_ = f'{section}.{f.name} (default {f.default!r})'
      hint = hints[f.name]
      if hint is bool:
        flags.DEFINE_bool(name, None, help_)
      elif hint is int:
        flags.DEFINE_integer(name, None, help_)
      elif hint is float:
        flags.DEFINE_float(name, None, help_)
      elif hint is str:
        flags.DEFINE_string(name, None, help_)
      else:  # Tuples of numbers.
        flags.DEFINE_list(name, None, help_)


def config_from_flags() -> config_lib.Config:
  """The Config that the flags describe; exits with one line if it is invalid.

  Also applies --matmul_precision to jax.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_default_matmul_precision', flags.FLAGS.matmul_precision)
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
    return config_lib.build(flags.FLAGS.preset, **values)
  except ValueError as e:
    sys.exit(f'error: {e}')


def define_classifier_flags() -> None:
  """Defines --<field> for every ClassifierConfig field, plus --preset."""
  flags.DEFINE_string('preset', 'published',
                      f'named preset: {sorted(config_lib.CLASSIFIER_PRESETS)}')
  hints = typing.get_type_hints(config_lib.ClassifierConfig)
  for f in dataclasses.fields(config_lib.ClassifierConfig):
    help_ = f'{f.name} (default {f.default!r})'
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
              float: flags.DEFINE_float, str: flags.DEFINE_string}[hints[f.name]]
    define(f.name, None, help_)


def classifier_config_from_flags() -> config_lib.ClassifierConfig:
  values = {f.name: flags.FLAGS[f.name].value
            for f in dataclasses.fields(config_lib.ClassifierConfig)}
  try:
    return config_lib.build_classifier(flags.FLAGS.preset, **values)
  except ValueError as e:
    sys.exit(f'error: {e}')
