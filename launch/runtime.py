"""Process-level settings the launchers apply before anything else runs."""

import ctypes
import faulthandler
import os
import signal
import subprocess
import sys
import tempfile
import time

_TUNABLE = 'glibc.malloc.hugetlb=1'
_MULTI_PROCESS_FLAGS = ('--coordinator_address', '--num_processes', '--process_id',
                        '--distributed')
_NATIVE_LOG = 'EDM_ZOO_NATIVE_LOG'
# What XLA's coordination client writes (to fd 2) before it aborts the process.
_LOST_MARKERS = ('Terminating process because the JAX distributed service',
                 'heartbeat', 'Socket closed', 'Connection reset')
_AVX512_FLAG = '--xla_cpu_prefer_vector_width=512'
# EDM_ZOO_MALLOC=retain: one glibc arena that never maps or trims, so that the
# buffer XLA:CPU mallocs for each execution (2.5 GB for the published train step)
# stays in the heap for the next step instead of being mmapped, faulted in and
# unmapped every step (see `reexec_env`).
_MALLOC = 'EDM_ZOO_MALLOC'
_RETAIN = ('glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:'
           'glibc.malloc.trim_threshold=17179869184')


def _has_avx512() -> bool:
  try:
    with open('/proc/cpuinfo') as f:
      return ' avx512f' in f.read()
  except OSError:
    return False


_STARTED = 'EDM_ZOO_STARTED'


def started() -> float:
  """When this command began (`time.time()`), kept across the re-exec below; a
  caller may set EDM_ZOO_STARTED to start the clock earlier (two runs launched
  together share one origin)."""
  return float(os.environ[_STARTED])


def configure_process() -> None:
  """Re-executes this process with two settings that speed up XLA:CPU.

  1. glibc's malloc on transparent huge pages: XLA:CPU allocates ~2.6 GB of fresh
     buffers per train step at the published config; on 4 KB pages that is
     ~670,000 page faults, ~0.45 s of a 2 s step. glibc (>= 2.35) reads
     GLIBC_TUNABLES only at process start, hence the re-exec.
  2. On AVX-512 CPUs, 512-bit vectors for XLA's loops (~5-8% per train step).
  Elsewhere both are ignored. EDM_ZOO_MALLOC=retain adds a third (`reexec_env`).
  EDM_ZOO_NO_REEXEC=1 turns this off.

  A process of a multi-process run (`--coordinator_address`, `--num_processes`,
  `--process_id` or `--distributed` given) runs as a supervised child instead
  (`_supervise`), so that losing another process ends in one line.
  """
  os.environ.setdefault(_STARTED, repr(time.time()))
  if os.environ.get(_NATIVE_LOG):
    _native_stderr_to(os.environ[_NATIVE_LOG])
  if not sys.platform.startswith('linux') or os.environ.get('EDM_ZOO_NO_REEXEC'):
    return
  try:
    env = reexec_env(os.environ, avx512=_has_avx512())
  except ValueError as e:
    fail(str(e))
  if _is_multi_process(sys.argv[1:]):
    _supervise([sys.executable, *sys.argv], env)
  os.execve(sys.executable, [sys.executable, *sys.argv], env)


def reexec_env(environ, *, avx512: bool) -> dict[str, str]:
  """The environment `configure_process` re-executes with.

  EDM_ZOO_MALLOC=retain adds `_RETAIN` to the malloc settings. Without it, every
  published-config train step maps a fresh 2.5 GB block, faults in ~1,250 huge
  pages, and unmaps it, and every other step spends 0.5-3 s in the kernel. With
  it, no step faults (docs/performance_notes.md: train step 1.62 -> 1.51 s median, spread
  0.7-1.0 -> 0.04-0.46 s). The cost is that the heap never shrinks: with the
  batch in one part, peak RSS 3.2 GB, or 5.5 GB when a freed block is too small
  for the next step's; with the CPU default of 4 parts (`--microbatch_size`) the
  buffer is 0.72 GB and peak RSS 1.6 GB, at no measured speed gain. Hence opt-in.

  Raises:
    ValueError: EDM_ZOO_MALLOC is neither unset, empty nor 'retain' (one line).
  """
  env = dict(environ, EDM_ZOO_NO_REEXEC='1')
  malloc = env.get(_MALLOC, '')
  if malloc not in ('', 'retain'):
    raise ValueError(f'{_MALLOC}={malloc!r}: leave it unset or set it to retain.')
  tunables = [t for t in env.get('GLIBC_TUNABLES', '').split(':') if t]
  if not any(t.startswith('glibc.malloc.hugetlb') for t in tunables):
    tunables.append(_TUNABLE)
  if malloc == 'retain' and not any(t.startswith('glibc.malloc.mmap_max') for t in tunables):
    tunables.append(_RETAIN)
  env['GLIBC_TUNABLES'] = ':'.join(tunables)
  xla_flags = env.get('XLA_FLAGS', '')
  if avx512 and 'xla_cpu_prefer_vector_width' not in xla_flags:
    env['XLA_FLAGS'] = f'{xla_flags} {_AVX512_FLAG}'.strip()
  return env


def _is_multi_process(args) -> bool:
  for arg in args:
    name, _, value = arg.partition('=')
    if name in _MULTI_PROCESS_FLAGS and value.lower() not in ('false', '0'):
      return True
  return False


def _die_with_parent() -> None:
  """In the child: SIGKILL when the supervisor dies (a kill -9 reaches both)."""
  ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _supervise(argv, env) -> None:
  """Runs the launcher as a child and turns its death into one line.

  When another process of the run dies, XLA's coordination client aborts this
  one from a native thread (a fatal log line and a C++ stack trace, no Python
  exception to catch). The child writes native logs to a file instead of the
  console (`_native_stderr_to`); this parent waits, and if the child was
  aborted says so in one line and names that file. Python output (progress,
  errors) still goes to the console directly.
  """
  fd, log = tempfile.mkstemp(prefix='edm_zoo_native_', suffix='.log')
  os.close(fd)
  child = subprocess.Popen(argv, env=dict(env, **{_NATIVE_LOG: log}),
                           preexec_fn=_die_with_parent)
  for sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, lambda s, _: child.send_signal(s))
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child itself.
  while True:
    try:
      rc = child.wait()
      break
    except InterruptedError:
      continue
  if rc != 0:
    with open(log, errors='replace') as f:
      native = f.read()
    if rc < 0 or 'Terminating process' in native:
      address = next((a.partition('=')[2] for a in argv
                      if a.startswith('--coordinator_address=')), 'the coordinator')
      if 'RegisterTask' in native:
        what = (f'could not join the run at {address}: no coordinator answered in '
                "time; check that --coordinator_address is process 0's host:port and "
                'that process 0 is running')
      elif any(m in native for m in _LOST_MARKERS):
        what = ('lost contact with another process of the run; restart every process '
                'with the same flags to resume from the last checkpoint')
      else:
        what = f'stopped by signal {-rc}' if rc < 0 else 'aborted'
      sys.stderr.write(f'error: {what} (native log: {log}).\n')
  else:  # Kept only to explain a failure.
    os.remove(log)
  os._exit(rc if rc >= 0 else 128 - rc)


def _native_stderr_to(path: str) -> None:
  """fd 2 (where XLA and gRPC log) -> `path`; Python's sys.stderr keeps the
  console through a duplicate of the old fd 2."""
  console = os.dup(2)
  native = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(native, 2)
  os.close(native)
  sys.stderr = os.fdopen(console, 'w', buffering=1)
  try:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.get_absl_handler().python_handler.stream = sys.stderr
  except ImportError:
    pass


def fail(message: str, code: int = 1, prefix: str = 'error: ') -> None:
  """Prints `error: message` and exits at once.

  Without Python's exit-time handlers: in a multi-process run JAX's shutdown
  barrier would wait for processes that are gone or did not fail, and after a
  failed orbax read tensorstore's callbacks into closed event loops print
  `RuntimeError: Event loop is closed` tracebacks under the one line.
  """
  sys.stdout.flush()
  sys.stderr.write(f'{prefix}{message}\n')
  sys.stderr.flush()
  os._exit(code)


def start_main(argv) -> None:
  """What every launcher's main does first: refuse stray positional arguments (one
  line) and keep orbax/TFDS INFO lines out of the progress bars unless
  --verbosity is given."""
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if os.environ.get(_NATIVE_LOG):
    # absl enabled faulthandler on the console; its dump of a native abort
    # belongs with the native log the supervisor names.
    faulthandler.enable(file=sys.__stderr__)
