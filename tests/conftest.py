"""Shared fixtures: the real, prepared QM9 (built by `make data`); one XLA
compilation cache for the session."""

import atexit
import os
import shutil
import tempfile

# Many tests, and the launchers they start as subprocesses (which inherit the
# environment), compile the same tiny-preset programs: one persistent cache for the
# whole session, set before jax is imported. pytest-xdist's workers inherit it from
# the process that made it, which alone removes it at exit.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _XLA_CACHE = tempfile.mkdtemp(prefix='edm_zoo_tests_xla_cache_')
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _XLA_CACHE
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
# The suite's programs are tiny and run a few steps, so compiling them costs more
# than running them: without LLVM's backend optimizations the suite takes ~25% less
# time. The arithmetic is the same (the parity tests hold at their tolerances);
# benchmarks and the launchers users start keep XLA's defaults.
SUITE_XLA_FLAGS = '--xla_backend_optimization_level=0'
_flags = os.environ.get('XLA_FLAGS', '')
if SUITE_XLA_FLAGS not in _flags:
  os.environ['XLA_FLAGS'] = f'{_flags} {SUITE_XLA_FLAGS}'.strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import edm_zoo  # noqa: F401  (jraph shim first)
from edm_zoo import models
from edm_zoo.data import batching, registry

# The networks around EDM's objective (a latent entry, geoldm, has its own tests in
# test_geoldm.py: it is EDM's EGNN as the dynamics of GeoLDM's latent diffusion).
# The diffusion networks ((z_t, t) -> eps_hat); geobfn has its own tests (test_geobfn.py).
NETWORKS = [n for n in models.diffusion_names() if not models.get(n).latent]

# QM9's atom types with H (EDM's one-hot order H, C, N, O, F).
ATOMIC_NUMBERS = (1, 6, 7, 8, 9)

# The reference's published train statistics (../shared/reference/REFERENCE.md).
REFERENCE_TYPE_COUNTS = (923_537, 635_559, 101_476, 140_202, 2_323)
REFERENCE_HISTOGRAM = {
    3: 1, 4: 4, 5: 5, 6: 9, 7: 16, 8: 49, 9: 124, 10: 362, 11: 807, 12: 1689,
    13: 3060, 14: 5136, 15: 7796, 16: 10644, 17: 13025, 18: 13364, 19: 13832,
    20: 9482, 21: 9970, 22: 3393, 23: 4848, 24: 539, 25: 1506, 26: 48, 27: 266,
    29: 25}

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared')


@pytest.fixture(scope='session')
def qm9_sources():
  """{split: SplitView} of QM9 with H (prepared on demand)."""
  registry.prepare('qm9')
  return {s: registry.load('qm9', s) for s in registry.SPLITS}


@pytest.fixture(scope='session')
def qm9_noh_sources():
  registry.prepare('qm9_noh')
  return {s: registry.load('qm9_noh', s) for s in registry.SPLITS}


@pytest.fixture(scope='session')
def qm9_index(qm9_sources):
  """{split: (gdb_index [n], num_atoms [n])} of every molecule, read once."""
  out = {}
  for split, source in qm9_sources.items():
    items = source.__getitems__(range(len(source)))
    out[split] = (np.array([m['gdb_index'] for m in items]),
                  np.array([m['num_atoms'] for m in items]))
  return out


def exportable(source, count, stride):
  """`count` real molecules of a split, every `stride`-th, as the exporters take them
  (`types` index QM9's types with H)."""
  out = []
  for i in range(count):
    m = source[i * stride]
    out.append({'positions': np.asarray(m['positions']),
                'types': np.array([ATOMIC_NUMBERS.index(c) for c in m['charges']]),
                'charges': np.asarray(m['charges'])})
  return out


def padded_graph(molecules, extra_nodes=1, extra_graphs=1, extra_edges=0,
                 atomic_numbers=ATOMIC_NUMBERS):
  """A batch of exactly these molecules plus the given padding."""
  sizes = np.array([len(m['charges']) for m in molecules])
  budget = batching.PaddingBudget(int(sizes.sum()) + extra_nodes,
                                  int((sizes * (sizes - 1)).sum()) + extra_edges,
                                  len(sizes) + extra_graphs)
  return batching.build_graph(molecules, atomic_numbers, budget)


def shared_path(*parts):
  path = os.path.join(SHARED, *parts)
  if not os.path.exists(path):
    pytest.skip(f'{path} not present')
  return path


@pytest.fixture(scope='session')
def exported_edm(tmp_path_factory):
  """(folder, vectors): parity_small's parameters as an EDM state dict (.npz) and its
  args (.json), as a user would export them from the original code."""
  vectors = np.load(shared_path('parity', 'parity_small.npz'))
  folder = tmp_path_factory.mktemp('edm_export')
  np.savez(folder / 'generative_model_ema.npz',
           **{k[len('param/'):]: vectors[k] for k in vectors.files
              if k.startswith('param/')})
  (folder / 'args.json').write_text(str(vectors['config_json']))
  return folder, vectors
