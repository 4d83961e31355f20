"""Writes a GEOM-Drugs input at its real size in the original's format, from moses3d.

  python instruments/geom_full_size.py --edm_repo=$EDM_REPO --out=DIR
  python launch/prepare_data.py --dataset=geom_drugs --from=DIR

GEOM itself cannot be downloaded here. This writes what the original's
`build_geom_dataset.py` writes from it, with GEOM-Drugs' real conformer count and
size histogram (`geom_with_h['n_nodes']` of the original's
`configs/datasets_config.py`, read from `--edm_repo`: 6,922,516 conformers,
322,877,623 atoms, 3 to 181 atoms each), so that the build, the data pipeline and
training can be measured at the real scale:

  geom_drugs_30.npy       float64 rows [conformer id, Z, x, y, z], conformers in
                          molecule order, ids ascending from 0;
  geom_drugs_n_30.npy     atoms of each conformer (int64);
  geom_drugs_smiles.txt   one SMILES per molecule;
  geom_permutation.npy    np.random.permutation(n).astype('int32'), as the
                          original's `load_split_data` wrote it on its first run.

Molecules are grouped as GEOM's are: up to 30 conformers per molecule, all of one
size. Each molecule is a moses3d train molecule of that size (`prepare_data.py
--dataset=moses3d` first), taken in turn; its conformers are the molecule's
coordinates plus Gaussian noise (`--noise` Angstrom), so sizes and elements are
realistic. Sizes that moses3d lacks are made of moses3d molecules on the corners of
a cube, 3 A apart (larger ones), or cut to their first atoms (the few below
moses3d's smallest). The
molecules' order is shuffled with `--seed`. Written as a stream: memory stays small
whatever `--scale` is.
"""

from __future__ import annotations

import ast
import json
import os
import time

from absl import app
from absl import flags
import numpy as np
import tqdm

from edm_zoo.data import registry

_EDM_REPO = flags.DEFINE_string('edm_repo', os.environ.get('EDM_REPO'),
                                "the original EDM's checkout (its configs/datasets_config.py)")
_HISTOGRAM = flags.DEFINE_string('histogram', None,
                                 'a JSON {size: conformers} instead of the original config')
_OUT = flags.DEFINE_string('out', None, 'output folder')
_SCALE = flags.DEFINE_float('scale', 1.0, 'fraction of every size count (tests: 0.001)')
_NOISE = flags.DEFINE_float('noise', 0.05, 'conformer noise (Angstrom)')
_SEED = flags.DEFINE_integer('seed', 0, 'molecule order, noise and permutation')
_SOURCE = flags.DEFINE_string('source', 'moses3d', 'the prepared dataset molecules come from')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir')

CONFORMERS_PER_MOLECULE = 30
_GAP = 3.0  # Angstrom between the parts of a composed molecule.


def original_histogram(edm_repo: str) -> dict[int, int]:
  """`geom_with_h['n_nodes']` of the original's config, read as data (ast)."""
  path = os.path.join(edm_repo, 'configs', 'datasets_config.py')
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1 and
        getattr(node.targets[0], 'id', None) == 'geom_with_h'):
      config = ast.literal_eval(node.value)
      return {int(k): int(v) for k, v in config['n_nodes'].items()}
  raise ValueError(f'{path} has no geom_with_h.')


def molecule_plan(histogram: dict[int, int], scale: float, seed: int
                  ) -> list[tuple[int, int]]:
  """(size, conformers) of each molecule, in a seeded order: each size's
  conformers (scaled, at least 1) in molecules of up to 30."""
  plan = []
  for size, count in sorted(histogram.items()):
    count = max(1, round(count * scale))
    full, rest = divmod(count, CONFORMERS_PER_MOLECULE)
    plan += [(size, CONFORMERS_PER_MOLECULE)] * full + ([(size, rest)] if rest else [])
  order = np.random.RandomState(seed).permutation(len(plan))
  return [plan[i] for i in order]


class Bases:
  """Base molecules of any size from a source's molecules, each taken in turn."""

  def __init__(self, molecules: list[dict]):
    self._by_size: dict[int, list[dict]] = {}
    for m in molecules:
      self._by_size.setdefault(len(m['charges']), []).append(m)
    self._sizes = np.array(sorted(self._by_size))
    self._next = {n: 0 for n in self._by_size}

  def _take(self, size: int) -> dict:
    k = self._next[size]
    self._next[size] = k + 1
    pool = self._by_size[size]
    return pool[k % len(pool)]

  def _part(self, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """A molecule of exactly `size` atoms when the source has one, else its
    smallest molecule cut to its first `size` atoms."""
    m = self._take(size if size in self._by_size else int(self._sizes[0]))
    return m['charges'][:size], m['positions'][:size], m['smiles']

  def get(self, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(Z [size], positions [size, 3], SMILES) of a base molecule of `size` atoms."""
    if size in self._by_size or size < self._sizes[0]:
      return self._part(size)
    parts, left = [], size
    while left:
      if left in self._by_size or left < self._sizes[0]:
        pick = left
      else:  # Leave a remainder the source has, else take the largest that fits.
        fits = self._sizes[self._sizes <= left][::-1]
        pick = next((int(n) for n in fits if left - n in self._by_size), int(fits[0]))
      parts.append(self._part(pick))
      left -= pick
    # Centred parts on the corners of a cube whose edge clears the largest part by
    # _GAP: about as compact as GEOM's largest molecules (a line of parts would
    # give distances no molecule has).
    centred = [p[1] - p[1].mean(0) for p in parts]
    edge = max(float(np.ptp(x, 0).max()) for x in centred) + _GAP
    corners = [np.array([k & 1, (k >> 1) & 1, k >> 2]) * edge for k in range(len(parts))]
    z = np.concatenate([p[0] for p in parts])
    x = np.concatenate([c + corner for c, corner in zip(centred, corners)])
    return z, x, '.'.join(p[2] for p in parts)


def write(out: str, histogram: dict[int, int], molecules: list[dict], *, scale: float,
          noise: float, seed: int) -> dict[str, object]:
  """Writes the four files to `out`; returns what was written."""
  os.makedirs(out, exist_ok=True)
  plan = molecule_plan(histogram, scale, seed)
  n_conformers = sum(c for _, c in plan)
  n_atoms = sum(n * c for n, c in plan)
  bases = Bases(molecules)
  rng = np.random.default_rng(seed)
  start = time.time()
  sizes = np.empty(n_conformers, np.int64)
  rows_path = os.path.join(out, 'geom_drugs_30.npy')
  with open(rows_path, 'wb') as f, open(os.path.join(out, 'geom_drugs_smiles.txt'),
                                        'w') as smiles_file, \
      tqdm.tqdm(total=n_atoms, unit=' atoms', unit_scale=True, desc='writing rows',
                dynamic_ncols=True, mininterval=1.0) as bar:
    np.lib.format.write_array_header_1_0(
        f, {'descr': '<f8', 'fortran_order': False, 'shape': (n_atoms, 5)})
    conformer = 0
    for size, count in plan:
      z, x, smiles = bases.get(size)
      block = np.empty((count, size, 5))
      block[:, :, 0] = np.arange(conformer, conformer + count)[:, None]
      block[:, :, 1] = z
      block[:, :, 2:] = x + rng.normal(0.0, noise, (count, size, 3))
      f.write(block.tobytes())
      sizes[conformer:conformer + count] = size
      conformer += count
      smiles_file.write(smiles + '\n')
      bar.update(size * count)
  np.save(os.path.join(out, 'geom_drugs_n_30.npy'), sizes)
  np.save(os.path.join(out, 'geom_permutation.npy'),
          np.random.RandomState(seed).permutation(n_conformers).astype('int32'))
  seconds = time.time() - start
  files = sorted(os.listdir(out))
  return {'conformers': n_conformers, 'atoms': n_atoms, 'molecules': len(plan),
          'seconds': round(seconds, 1),
          'bytes': {name: os.path.getsize(os.path.join(out, name)) for name in files}}


def main(argv):
  del argv
  if not _OUT.value:
    raise app.UsageError('give --out=DIR')
  if _HISTOGRAM.value:
    with open(_HISTOGRAM.value) as f:
      histogram = {int(k): int(v) for k, v in json.load(f).items()}
  elif _EDM_REPO.value:
    histogram = original_histogram(_EDM_REPO.value)
  else:
    raise app.UsageError('give --edm_repo (or EDM_REPO) or --histogram')
  source = registry.load(_SOURCE.value, 'train', _DATA_DIR.value)
  molecules = source.__getitems__(range(len(source)))
  summary = write(_OUT.value, histogram, molecules, scale=_SCALE.value,
                  noise=_NOISE.value, seed=_SEED.value)
  summary['total_bytes'] = sum(summary['bytes'].values())
  print(json.dumps(summary, indent=1))


if __name__ == '__main__':
  app.run(main)
