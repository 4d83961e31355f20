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
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm

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


def molecule_features(**extra) -> tfds.features.FeaturesDict:
  """positions [n, 3] float32 (Angstrom), charges [n] int32 (Z), num_atoms, index
  (the molecule's place in the inputs), plus `extra` features."""
  return tfds.features.FeaturesDict({
      'positions': tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
      'charges': tfds.features.Tensor(shape=(None,), dtype=np.int32),
      'num_atoms': tfds.features.Scalar(dtype=np.int32),
      'index': tfds.features.Scalar(dtype=np.int64),
      **extra})


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
