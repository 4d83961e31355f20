"""TFDS builder `edm_moses3d`: drug-like molecules of MOSES with RDKit conformers.

The PyPI package `molsets` (installed without its dependencies) ships the MOSES
benchmark's SMILES (ZINC drug-like molecules; train and test CSVs inside the
wheel). `--molecules` of its train SMILES (default 50,000) are chosen with a seed
and embedded in 3D with RDKit (ETKDGv3, then MMFF94 optimisation, hydrogens
added), in parallel over the cores. Embedding is resumable: each chunk of
molecules is written to `<data_dir>/edm_moses3d_embed/<seed>_<molecules>/` as it
completes, and a re-run embeds only the missing chunks. Failures are counted and
listed in the metadata.

These are force-field conformers, not GEOM's quantum-chemistry (CREST/GFN2-xTB)
ones: the set stands in for GEOM-Drugs in tests and benchmarks (molecule sizes,
elements, the 16-type featurisation of GEOM-Drugs with H), not in the paper's
tables.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import multiprocessing
import os
from typing import Any, Iterator

import numpy as np
from rdkit import Chem
import tensorflow_datasets as tfds
import tqdm

from datasets import common
from datasets.geom_drugs import edm_geom_drugs
from datasets.moses3d import embed
from edm_zoo.data import bonds

DEFAULT_MOLECULES = 50_000
DEFAULT_SEED = 0
CHUNK = 100
SPLIT_RECIPE = ('seeded subset of the MOSES train SMILES, embedded; the embedded '
                'molecules split by np.random.RandomState(seed): valid 10%, test 10%, '
                'train the rest')


def moses_smiles_file(split: str = 'train') -> str:
  """The gzip CSV of MOSES SMILES in the `molsets` wheel (found without importing it:
  its package imports torch)."""
  spec = importlib.util.find_spec('moses')
  if spec is None or not spec.submodule_search_locations:
    raise ValueError('molsets is not installed: run `make venv` (it installs '
                     '`molsets --no-deps`).')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'dataset', 'data',
                      f'{split}.csv.gz')
  if not os.path.exists(path):
    raise ValueError(f'molsets lacks {path}: reinstall molsets==0.3.1.')
  return path


def moses_smiles(split: str = 'train') -> list[str]:
  with gzip.open(moses_smiles_file(split), 'rt') as f:
    header = f.readline().strip().split(',')
    column = header.index('SMILES')
    return [line.rstrip('\n').split(',')[column] for line in f if line.strip()]


class Moses3dConfig(tfds.core.BuilderConfig):
  """The one moses3d config; its options matter only when it is built.

  Args:
    molecules: SMILES to embed (None: DEFAULT_MOLECULES).
    seed: the subset, conformer and split seed (None: DEFAULT_SEED).
    workers: embedding processes (None: every core).
  """

  def __init__(self, *, molecules: int | None = None, seed: int | None = None,
               workers: int | None = None):
    # 1.1.0: bonds and formal charges (from each molecule's SMILES).
    super().__init__(name='default', version=tfds.core.Version('1.1.0'),
                     description='MOSES SMILES with RDKit ETKDG+MMFF conformers')
    self.explicit = molecules is not None or seed is not None
    self.options = {'molecules': DEFAULT_MOLECULES if molecules is None else molecules,
                    'seed': DEFAULT_SEED if seed is None else seed}
    self.workers = workers or os.cpu_count() or 1
    if self.options['molecules'] <= 0:
      raise ValueError(f'--molecules must be positive, got {molecules}.')


def embed_all(cache: str, smiles: list[str], indices: np.ndarray, seed: int,
              workers: int, progress: bool = True) -> list[str]:
  """Embeds the chosen SMILES into chunk files under `cache` (those already there
  are kept: a re-run resumes); returns the chunk paths in order."""
  os.makedirs(cache, exist_ok=True)
  jobs, paths = [], []
  for c, lo in enumerate(range(0, len(indices), CHUNK)):
    path = os.path.join(cache, f'chunk_{c:05d}.npz')
    paths.append(path)
    if not os.path.exists(path):
      jobs.append((path, seed, [(int(i), smiles[i]) for i in indices[lo:lo + CHUNK]]))
  done = len(indices) - sum(len(j[2]) for j in jobs)
  bar = tqdm.tqdm(total=len(indices), initial=done, unit='mol', disable=not progress,
                  desc='Embedding (ETKDG+MMFF)')
  failed = 0
  if jobs:
    with multiprocessing.get_context('spawn').Pool(min(workers, len(jobs))) as pool:
      for ok, bad in pool.imap_unordered(embed.embed_chunk, jobs):
        failed += bad
        bar.update(ok + bad)
        bar.set_postfix(failed=failed)
  bar.close()
  return paths


def read_chunks(paths: list[str]) -> tuple[list[dict], list[str]]:
  """The embedded molecules (in index order) and the failures of chunk files."""
  molecules, failed = [], []
  for path in paths:
    with np.load(path) as d:
      bounds = np.concatenate([[0], np.cumsum(d['sizes'])])
      for k, index in enumerate(d['indices']):
        lo, hi = bounds[k], bounds[k + 1]
        molecules.append({'index': int(index), 'smiles': str(d['smiles'][k]),
                          'charges': d['charges'][lo:hi].astype(np.int32),
                          'positions': d['positions'][lo:hi]})
      failed.extend(str(f) for f in d['failed'])
  return molecules, failed


def decode(item: dict[str, Any]) -> dict[str, Any]:
  item['smiles'] = item['smiles'].decode()
  return item


class EdmMoses3d(common.MoleculeBuilder):
  """MOSES SMILES with RDKit conformers (a stand-in for GEOM-Drugs)."""

  VERSION = tfds.core.Version('1.1.0')

  def build_key(self) -> str | None:
    """The subset size and seed (None when the call named neither)."""
    config = self.builder_config
    return common.options_key(config.options) if config.explicit else None

  def _info(self) -> tfds.core.DatasetInfo:
    return common.info(self, __doc__, 'https://github.com/molecularsets/moses',
                       smiles=tfds.features.Text())

  def _split_examples(self) -> dict[str, common.SplitExamples]:
    config = self.builder_config
    n, seed = config.options['molecules'], config.options['seed']
    smiles = moses_smiles('train')
    if n > len(smiles):
      raise ValueError(f'--molecules={n} exceeds the {len(smiles)} MOSES train SMILES.')
    chosen = np.sort(np.random.RandomState(seed).permutation(len(smiles))[:n])
    # Beside the TFDS folders, so that an interrupted or replaced build reuses it.
    cache = os.path.join(self.data_dir_root, 'edm_moses3d_embed', f'{seed}_{n}')
    paths = embed_all(cache, smiles, chosen, seed, config.workers)
    molecules, failed = read_chunks(paths)
    types, z = edm_geom_drugs.ATOM_TYPES_WITH_H, edm_geom_drugs.ATOMIC_NUMBERS_WITH_H
    outside = [m for m in molecules if not set(m['charges'].tolist()) <= set(z)]
    failed += [f"{m['index']} {m['smiles']}: element outside the GEOM-Drugs types"
               for m in outside]
    molecules = [m for m in molecules if set(m['charges'].tolist()) <= set(z)]
    for m in tqdm.tqdm(molecules, desc='bonds from SMILES', unit=' molecules',
                       dynamic_ncols=True, mininterval=1.0, leave=False):
      m.update(smiles_bonds(m['smiles'], m['charges']))
    splits = common.seeded_split(len(molecules), 0.1, 0.1, seed)
    self.info.metadata.update(common.train_statistics(
        (molecules[i]['charges'] for i in splits['train']), types, z))
    self.info.metadata.update({
        'build_key': common.options_key(config.options), 'options': config.options,
        'embedded': len(molecules), 'failed': len(failed), 'failures': failed,
        'split_recipe': SPLIT_RECIPE,
        'bonds': common.bonds_metadata(
            {name: [molecules[i]['bonds_status'] for i in rows]
             for name, rows in splits.items()},
            how="each molecule's SMILES with explicit hydrogens (RDKit, aromatic bonds "
                'as perceived): the atom order of its conformer')})
    return {name: common.SplitExamples(len(rows), functools.partial(_examples, molecules, rows))
            for name, rows in splits.items()}


def smiles_bonds(smiles: str, atomic_numbers: np.ndarray) -> dict:
  """The bond fields of an embedded molecule from its SMILES: `embed.embed` adds
  the hydrogens in RDKit's order, which is the conformer's atom order."""
  mol = Chem.MolFromSmiles(smiles)
  mol = Chem.AddHs(mol) if mol is not None else None
  if mol is None or [a.GetAtomicNum() for a in mol.GetAtoms()] != list(atomic_numbers):
    return bonds.record(None, len(atomic_numbers), bonds.NOT_PERCEIVED)
  return bonds.record(mol, len(atomic_numbers), bonds.GIVEN)


def _examples(molecules, rows, lo: int, hi: int) -> Iterator[dict]:
  for row in rows[lo:hi]:
    m = molecules[row]
    yield {'positions': m['positions'], 'charges': m['charges'],
           'num_atoms': len(m['charges']), 'index': m['index'], 'smiles': m['smiles'],
           **{k: m[k] for k in ('bonds', 'bond_orders', 'formal_charges', 'bonds_status')}}
