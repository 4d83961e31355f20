"""Process-level settings the launchers apply before anything else runs."""

import os
import sys

_TUNABLE = 'glibc.malloc.hugetlb=1'
_AVX512_FLAG = '--xla_cpu_prefer_vector_width=512'


def _has_avx512() -> bool:
  try:
    with open('/proc/cpuinfo') as f:
      return ' avx512f' in f.read()
  except OSError:
    return False


def configure_process() -> None:
  """Re-executes this process with two settings that speed up XLA:CPU.

  1. glibc's malloc on transparent huge pages: XLA:CPU allocates ~2.6 GB of fresh
     buffers per train step at the published config; on 4 KB pages that is
     ~670,000 page faults, ~0.45 s of a 2 s step. glibc (>= 2.35) reads
     GLIBC_TUNABLES only at process start, hence the re-exec.
  2. On AVX-512 CPUs, 512-bit vectors for XLA's loops (~5-8% per train step).
  Elsewhere both are ignored. EDM_ZOO_NO_REEXEC=1 turns this off.
  """
  if not sys.platform.startswith('linux') or os.environ.get('EDM_ZOO_NO_REEXEC'):
    return
  env = dict(os.environ, EDM_ZOO_NO_REEXEC='1')
  tunables = env.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' not in tunables:
    env['GLIBC_TUNABLES'] = f'{tunables}:{_TUNABLE}' if tunables else _TUNABLE
  xla_flags = env.get('XLA_FLAGS', '')
  if _has_avx512() and 'xla_cpu_prefer_vector_width' not in xla_flags:
    env['XLA_FLAGS'] = f'{xla_flags} {_AVX512_FLAG}'.strip()
  os.execve(sys.executable, [sys.executable, *sys.argv], env)


def start_main(argv) -> None:
  """What every launcher's main does first: refuse stray positional arguments (one
  line) and keep orbax/TFDS INFO lines out of the progress bars unless
  --verbosity is given."""
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
