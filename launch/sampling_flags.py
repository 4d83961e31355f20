"""Flags and helpers shared by launch/eval.py and launch/sample.py."""

from __future__ import annotations

import os
import sys

from absl import flags

CKPT = flags.DEFINE_string('ckpt', None, 'checkpoint folder (train workdir, or import_edm --out)')
OUT_DIR = flags.DEFINE_string('out_dir', None, 'output folder (default <ckpt>/eval)')
N_SAMPLES = flags.DEFINE_integer('n_samples', 10_000, 'molecules to generate')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 100, 'molecules per sampling batch')
JIT_STEPS = flags.DEFINE_integer('jit_steps', None,
                                 'reverse steps per compiled call (default T: whole chain)')
UNROLL = flags.DEFINE_integer('unroll', 1, 'lax.scan unroll factor')
FIX_NOISE = flags.DEFINE_bool('fix_noise', False, 'one noise draw for all molecules')
CHAIN = flags.DEFINE_bool('chain', False, 'also draw one molecule denoising (PNG + GIF)')
SEED = flags.DEFINE_integer('seed', 0, 'sampling seed')
DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default data/tfds)')
PROGRESS = flags.DEFINE_bool('progress', True, 'show progress bars')


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


def check_sampling_flags() -> None:
  if N_SAMPLES.value <= 0:
    sys.exit(f'error: --n_samples must be positive, got {N_SAMPLES.value}.')
  if BATCH_SIZE.value <= 0:
    sys.exit(f'error: --batch_size must be positive, got {BATCH_SIZE.value}.')
  if JIT_STEPS.value is not None and JIT_STEPS.value <= 0:
    sys.exit(f'error: --jit_steps must be positive, got {JIT_STEPS.value}.')
  if UNROLL.value <= 0:
    sys.exit(f'error: --unroll must be positive, got {UNROLL.value}.')


def check_checkpoint() -> None:
  """Fails with one line before anything is written when --ckpt is not a checkpoint."""
  from edm_zoo.training import checkpoint  # pylint: disable=g-import-not-at-top
  try:
    checkpoint.find(CKPT.value)
  except ValueError as e:
    sys.exit(f'error: {e}')
