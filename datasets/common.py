"""What every builder of `datasets/` shares: how splits are written, the stored
features, the train statistics recorded in the metadata at build time, seeded
splits and build options.

Writing: every builder is a `MoleculeBuilder`. Its splits are ordered sequences
of molecules (the order the reference reads them in), which TFDS writes shard by
shard as they stream in (`tfds.core.ShardBasedBuilder`). TFDS's default writer
collects a split in a shuffle buffer first: 1 GB in memory, then spilled to
bucket files through `tf.io.gfile`, which needs TensorFlow; and with shuffling
disabled every spilled example lands in one bucket that is read back whole. So
a split's memory is bounded by one shard, whatever the dataset's size.

Statistics are computed once, when a dataset is built, from its train split: the
node-count histogram (EDM samples molecule sizes from it) and the atom-type counts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from rdkit import RDLogger
import tensorflow_datasets as tfds
import tqdm

from edm_zoo.data import bonds

# Molecules per shard file. TFDS keeps a shard's examples until the shard is
# written (it counts them after writing), so this bounds the build's memory:
# ~100 MB of drug-sized conformers.
SHARD_MOLECULES = 50_000


@dataclasses.dataclass(frozen=True)
class SplitExamples:
  """A split as its builder gives it: `size` molecules, and `examples(lo, hi)`,
  an iterator of the molecules at places lo..hi-1 of the split (feature dicts)."""
  size: int
  examples: Callable[[int, int], Iterator[dict[str, Any]]]


class MoleculeBuilder(tfds.core.ShardBasedBuilder):
  """A builder of ordered molecule splits, written shard by shard (module doc).

  Subclasses implement `_split_examples()` (and record their metadata there);
  the key of each example is its place in the split.
  """

  shard_molecules = SHARD_MOLECULES

  def _split_examples(self) -> dict[str, SplitExamples]:
    raise NotImplementedError

  def _shard_iterators_per_split(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    out = {}
    for name, split in self._split_examples().items():
      if split.size <= 0:
        raise ValueError(f'the {name} split would be empty.')
      bar = tqdm.tqdm(total=split.size, desc=f'writing {name}', unit=' molecules',
                      dynamic_ncols=True, mininterval=1.0, leave=False)
      out[name] = [functools.partial(_keyed, split, lo, min(lo + self.shard_molecules,
                                                             split.size), bar)
                   for lo in range(0, split.size, self.shard_molecules)]
    return out


def _keyed(split: SplitExamples, lo: int, hi: int, bar: tqdm.tqdm
           ) -> Iterator[tuple[int, dict[str, Any]]]:
  given = 0
  for given, example in enumerate(split.examples(lo, hi), 1):
    yield lo + given - 1, example
    bar.update(1)
  if given != hi - lo:
    raise ValueError(f'the builder gave {given} molecules for places {lo}..{hi - 1}.')
  if hi == split.size:
    bar.close()


def bond_features() -> dict[str, tfds.features.FeatureConnector]:
  """bonds [m, 2] int32 (i < j), bond_orders [m] int32 (`edm_zoo.data.bonds`
  classes), formal_charges [n] int32 and bonds_status (where they come from)."""
  return {'bonds': tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
          'bond_orders': tfds.features.Tensor(shape=(None,), dtype=np.int32),
          'formal_charges': tfds.features.Tensor(shape=(None,), dtype=np.int32),
          'bonds_status': tfds.features.Scalar(dtype=np.int32)}


def molecule_features(**extra) -> tfds.features.FeaturesDict:
  """positions [n, 3] float32 (Angstrom), charges [n] int32 (Z), num_atoms, index
  (the molecule's place in the inputs), the bond fields, plus `extra` features."""
  return tfds.features.FeaturesDict({
      'positions': tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
      'charges': tfds.features.Tensor(shape=(None,), dtype=np.int32),
      'num_atoms': tfds.features.Scalar(dtype=np.int32),
      'index': tfds.features.Scalar(dtype=np.int64),
      **bond_features(), **extra})


def bonds_metadata(statuses: dict[str, Sequence[int]], **extra) -> dict[str, object]:
  """The metadata of a dataset's bonds: per split, how many records have each
  status, and the places of those left out of the bond-aware splits."""
  out = {'status_names': list(bonds.STATUS), 'counts': {}, 'left_out': {}, **extra}
  for split, values in statuses.items():
    values = np.asarray(values, np.int64)
    out['counts'][split] = {name: int((values == k).sum())
                            for k, name in enumerate(bonds.STATUS)}
    out['left_out'][split] = np.flatnonzero(np.isin(values, bonds.LEFT_OUT)).tolist()
  return out


def _perceive_chunk(items):
  RDLogger.DisableLog('rdApp.*')
  return [bonds.perceive_record(p, z, identity) for p, z, identity in items]


def perceive_all(items: Sequence[tuple[np.ndarray, np.ndarray, tuple[str, str] | None]],
                 workers: int | None = None, desc: str = 'perceiving bonds',
                 chunk: int = 500) -> list[dict]:
  """`bonds.perceive_record` of every (positions, Z, identity), in order, over
  `workers` processes (default: every core), with a progress bar."""
  workers = workers or os.cpu_count() or 1
  jobs = [items[lo:lo + chunk] for lo in range(0, len(items), chunk)]
  bar = tqdm.tqdm(total=len(items), desc=desc, unit=' molecules', dynamic_ncols=True,
                  mininterval=1.0)
  out = []
  if workers <= 1 or len(jobs) <= 1:
    for job in jobs:
      out.extend(_perceive_chunk(job))
      bar.update(len(job))
  else:
    with multiprocessing.get_context('spawn').Pool(min(workers, len(jobs))) as pool:
      for part in pool.imap(_perceive_chunk, jobs):
        out.extend(part)
        bar.update(len(part))
  bar.close()
  return out


def info(builder: tfds.core.GeneratorBasedBuilder, description: str,
         homepage: str | None = None, **extra) -> tfds.core.DatasetInfo:
  """The DatasetInfo of a molecule builder: `molecule_features(**extra)`, metadata
  filled at build time, and examples stored in key order (TFDS sorts by key even
  without shuffling: builders key examples by their place in the split)."""
  return builder.dataset_info_from_configs(
      features=molecule_features(**extra), metadata=tfds.core.MetadataDict(),
      description=description, homepage=homepage, disable_shuffling=True)


def train_statistics(charges: Iterable[np.ndarray], atom_types: Sequence[str],
                     atomic_numbers: Sequence[int]) -> dict[str, object]:
  """Node-count histogram and atom-type counts of the train molecules.

  Args:
    charges: Z of each train molecule's atoms.
    atom_types: the dataset's type symbols, in one-hot order.
    atomic_numbers: Z of each type.

  Returns:
    `statistics_metadata` of them.
  """
  lookup = np.full(max(atomic_numbers) + 1, -1, np.int64)
  lookup[np.asarray(atomic_numbers)] = np.arange(len(atomic_numbers))
  type_counts = np.zeros(len(atom_types), np.int64)
  histogram: dict[int, int] = {}
  for z in charges:
    type_counts += np.bincount(lookup[np.asarray(z)], minlength=len(atom_types))
    histogram[len(z)] = histogram.get(len(z), 0) + 1
  return statistics_metadata(type_counts, histogram, atom_types, atomic_numbers)


def statistics_metadata(type_counts: Sequence[int], histogram: dict[int, int],
                        atom_types: Sequence[str], atomic_numbers: Sequence[int]
                        ) -> dict[str, object]:
  """JSON-able metadata: `atom_types`, `atomic_numbers`, `type_counts` (atoms of
  each type) and `n_nodes_histogram` ({str(size): molecules})."""
  return {'atom_types': list(atom_types),
          'atomic_numbers': [int(z) for z in atomic_numbers],
          'type_counts': [int(c) for c in type_counts],
          'n_nodes_histogram': {str(k): int(v) for k, v in sorted(histogram.items())}}


def seeded_split(n: int, valid_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, np.ndarray]:
  """Row indices of a seeded random split, each split in ascending input order.

  `perm = np.random.RandomState(seed).permutation(n)`; valid = the first
  int(n * valid_fraction) of perm, test the next int(n * test_fraction), train
  the rest.

  Raises:
    ValueError: fractions outside [0, 1) that leave no train molecule, or a split
      that would be empty.
  """
  if not (0 < valid_fraction < 1 and 0 < test_fraction < 1 and
          valid_fraction + test_fraction < 1):
    raise ValueError(f'split fractions valid={valid_fraction}, test={test_fraction} '
                     'must be in (0, 1) and leave a train split.')
  perm = np.random.RandomState(seed).permutation(n)
  n_valid, n_test = int(n * valid_fraction), int(n * test_fraction)
  out = {'valid': perm[:n_valid], 'test': perm[n_valid:n_valid + n_test],
         'train': perm[n_valid + n_test:]}
  empty = [k for k, v in out.items() if not len(v)]
  if empty:
    raise ValueError(f'{n} molecules are too few for a {empty[0]} split with '
                     f'valid={valid_fraction}, test={test_fraction}.')
  return {k: np.sort(v) for k, v in out.items()}


def options_key(options: dict) -> str:
  """A canonical text of build options, stored in the metadata: a dataset rebuilt
  with other options (or other inputs) under the same name is refused."""
  return json.dumps(options, sort_keys=True, default=str)


def pack_bonds(found: Sequence[dict]) -> dict[str, np.ndarray]:
  """Many molecules' bond fields as flat arrays (for a cache file)."""
  counts = lambda key: np.array([len(f[key]) for f in found], np.int64)
  cat = lambda key, shape: (np.concatenate([f[key] for f in found]) if found
                            else np.zeros(shape, np.int32))
  return {'bond_counts': counts('bonds'), 'atom_counts': counts('formal_charges'),
          'bonds': cat('bonds', (0, 2)).astype(np.int32),
          'bond_orders': cat('bond_orders', (0,)).astype(np.int8),
          'formal_charges': cat('formal_charges', (0,)).astype(np.int8),
          'status': np.array([f['bonds_status'] for f in found], np.int8)}


def unpack_bonds(packed: dict[str, np.ndarray]) -> list[dict]:
  """`pack_bonds`, undone."""
  b = np.concatenate([[0], np.cumsum(packed['bond_counts'])])
  a = np.concatenate([[0], np.cumsum(packed['atom_counts'])])
  return [{'bonds': packed['bonds'][b[k]:b[k + 1]].astype(np.int32).reshape(-1, 2),
           'bond_orders': packed['bond_orders'][b[k]:b[k + 1]].astype(np.int32),
           'formal_charges': packed['formal_charges'][a[k]:a[k + 1]].astype(np.int32),
           'bonds_status': int(packed['status'][k])} for k in range(len(packed['status']))]
