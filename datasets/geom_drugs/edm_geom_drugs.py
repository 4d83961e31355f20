"""TFDS builder for GEOM-Drugs from the files of the original EDM's `build_geom_dataset.py`.

GEOM cannot be downloaded here: users bring what the original writes from GEOM's
`drugs_crude.msgpack` (its `extract_conformers`), in one folder (`--from=DIR`):

  geom_drugs_30.npy         float64 rows [conformer id, Z, x, y, z] (Angstrom), the
                            30 lowest-energy conformers of every molecule, each
                            conformer its own sample, ids ascending;
  geom_drugs_n_30.npy       atoms of each conformer (checked against the rows);
  geom_drugs_smiles.txt     one SMILES per molecule (counted, not needed);
  geom_permutation.npy      the split permutation of the paper's run;
  and the `no_h_` variants (`geom_drugs_no_h_30.npy`, `geom_drugs_n_no_h_30.npy`).

The split is the original's `load_split_data`: cut the rows into conformers where
the id changes; keep conformers of at most `filter_size` atoms when asked; reorder
by the permutation file (it must permute exactly those conformers); then the first
int(0.1 n) are valid, the next int(0.1 n) test, the rest train. Inside a split the
permutation order is kept (the original's dataset re-sorts by size, which its
random batches do not see). Without the permutation file the build stops, unless
`seed` is given: then `np.random.RandomState(seed).permutation(n)` replaces it and
the metadata says that the split is not the paper's.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from datasets import common
from edm_zoo.data import bonds

ATOM_TYPES_WITH_H = ('H', 'B', 'C', 'N', 'O', 'F', 'Al', 'Si', 'P', 'S', 'Cl', 'As',
                     'Br', 'I', 'Hg', 'Bi')
ATOMIC_NUMBERS_WITH_H = (1, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 33, 35, 53, 80, 83)
ATOM_TYPES_WITHOUT_H = ATOM_TYPES_WITH_H[1:]
ATOMIC_NUMBERS_WITHOUT_H = ATOMIC_NUMBERS_WITH_H[1:]
VALID_FRACTION = TEST_FRACTION = 0.1
PERMUTATION_FILE = 'geom_permutation.npy'
SPLIT_RECIPE = ('the original\'s load_split_data: conformers cut where the id changes, '
                'optional size filter, reordered by geom_permutation.npy, then valid 10%, '
                'test 10%, train the rest')
SMILES_FILE = 'geom_drugs_smiles.txt'
_PERCEIVE_BATCH = 20_000  # Molecules perceived (and held as inputs) at once.
_CHUNK_ROWS = 1 << 22  # Rows read at once: ~150 MB of work arrays (GEOM has ~3e8 rows).


def file_names(remove_h: bool, conformations: int = 30) -> tuple[str, str]:
  """(conformer rows file, atom counts file) as the original names them."""
  tag = f"{'no_h_' if remove_h else ''}{conformations}"
  return f'geom_drugs_{tag}.npy', f'geom_drugs_n_{tag}.npy'


def _load(path: str) -> np.ndarray:
  if not os.path.exists(path):
    raise ValueError(f'--from {os.path.dirname(path)}: no {os.path.basename(path)} there '
                     "(the files of the original's build_geom_dataset.py).")
  try:
    return np.load(path, mmap_mode='r')
  except (ValueError, OSError) as e:
    raise ValueError(f'{path} is not a readable .npy file ({e}).') from e


def _row_chunks(n_rows: int, what: str) -> Iterator[tuple[int, int]]:
  """(lo, hi) row ranges of at most _CHUNK_ROWS, with a progress bar."""
  with tqdm.tqdm(total=n_rows, desc=what, unit=' atoms', unit_scale=True,
                 dynamic_ncols=True, mininterval=1.0, leave=False) as bar:
    for lo in range(0, n_rows, _CHUNK_ROWS):
      hi = min(lo + _CHUNK_ROWS, n_rows)
      yield lo, hi
      bar.update(hi - lo)


def conformer_bounds(rows: np.ndarray) -> np.ndarray:
  """int64 [n + 1]: conformer k is rows[b[k]:b[k + 1]] (cut where the id changes)."""
  cuts = []
  for lo, hi in _row_chunks(len(rows), 'reading conformer ids'):
    ids = np.asarray(rows[lo:hi + 1, 0])
    cuts.append(np.flatnonzero(ids[:-1] != ids[1:]) + lo + 1)
  return np.concatenate([[0], *cuts, [len(rows)]]).astype(np.int64)


def elements_and_train_counts(rows: np.ndarray, bounds: np.ndarray, train: np.ndarray,
                              atomic_numbers: Sequence[int]
                              ) -> tuple[list[int], np.ndarray]:
  """(atomic numbers outside `atomic_numbers`, atoms of each of them in the train
  conformers), reading the Z column chunk by chunk (GEOM's is 2.6 GB as float64).

  Args:
    rows: the conformer rows (memory-mapped).
    bounds: `conformer_bounds(rows)`.
    train: conformer numbers of the train split.
    atomic_numbers: the dataset's types' Z.
  """
  lookup = np.full(256, -1, np.int64)
  lookup[np.asarray(atomic_numbers)] = np.arange(len(atomic_numbers))
  in_train = np.zeros(len(bounds) - 1, bool)
  in_train[train] = True
  counts = np.zeros(len(atomic_numbers), np.int64)
  unknown: set[int] = set()
  for lo, hi in _row_chunks(len(rows), 'counting atom types'):
    z = np.asarray(rows[lo:hi, 1]).astype(np.int64)
    bad = (z < 0) | (z > 255)
    types = np.where(bad, -1, lookup[np.clip(z, 0, 255)])
    unknown.update(np.unique(z[types < 0]).tolist())
    conformer = np.searchsorted(bounds, np.arange(lo, hi), side='right') - 1
    keep = in_train[conformer] & (types >= 0)
    counts += np.bincount(types[keep], minlength=len(atomic_numbers))
  return sorted(unknown), counts


def split_conformers(sizes: np.ndarray, permutation: np.ndarray | None,
                     seed: int | None, filter_size: int | None) -> dict[str, np.ndarray]:
  """Conformer numbers of each split (the original's `load_split_data`).

  Args:
    sizes: atoms of each conformer, in file order.
    permutation: the permutation file's contents, or None.
    seed: without a permutation file, a seeded permutation (else it is an error).
    filter_size: keep conformers of at most this many atoms first (None: all).

  Returns:
    {'train'|'valid'|'test': conformer numbers (into `sizes`), permutation order}.
  """
  kept = np.arange(len(sizes))
  if filter_size is not None:
    kept = kept[sizes <= filter_size]
    if not len(kept):
      raise ValueError(f'no conformer has at most --filter_molecule_size={filter_size} atoms.')
  n = len(kept)
  if permutation is None:
    if seed is None:
      raise ValueError(f'--from has no {PERMUTATION_FILE}: the paper\'s split needs it; '
                       'pass --seed=N for a seeded split (not the paper\'s).')
    permutation = np.random.RandomState(seed).permutation(n)
  permutation = np.asarray(permutation).astype(np.int64).ravel()
  if len(permutation) != n or not np.array_equal(np.sort(permutation), np.arange(n)):
    raise ValueError(f'{PERMUTATION_FILE} does not permute the {n} conformers'
                     f'{" left by the size filter" if filter_size else ""} (it has '
                     f'{len(permutation)} entries).')
  order = kept[permutation]
  n_valid, n_test = int(n * VALID_FRACTION), int(n * TEST_FRACTION)
  return {'valid': order[:n_valid], 'test': order[n_valid:n_valid + n_test],
          'train': order[n_valid + n_test:]}


class GeomConfig(tfds.core.BuilderConfig):
  """GEOM-Drugs with or without H; the build options matter only when it is built.

  Args:
    remove_h: the `no_h_` files (15 types) instead of the with-H ones (16).
    source: the folder with the original's files.
    seed: a seeded split when the permutation file is absent.
    filter_size: keep conformers of at most this many atoms.
    conformations: the number in the file names (30 in the paper).
    perceive_bonds: perceive each molecule's bonds (hours at the real size); off,
      every record has none (`not_perceived`): enough for the EDM members.
  """

  def __init__(self, *, remove_h: bool, source: str | None = None, seed: int | None = None,
               filter_size: int | None = None, conformations: int = 30,
               perceive_bonds: bool = True):
    super().__init__(name='without_h' if remove_h else 'with_h',
                     # 1.1.0: bonds and formal charges, perceived per molecule.
                     version=tfds.core.Version('1.1.0'),
                     description='GEOM-Drugs conformers, EDM split')
    self.remove_h = remove_h
    self.source = source
    self.options = {'seed': seed, 'filter_size': filter_size,
                    'conformations': conformations, 'perceive_bonds': perceive_bonds}


def decode(item: dict[str, Any]) -> dict[str, Any]:
  return item


class EdmGeomDrugs(common.MoleculeBuilder):
  """GEOM-Drugs conformers (the original's files), split as in EDM."""

  VERSION = tfds.core.Version('1.1.0')

  def build_key(self) -> str | None:
    """The build options (None without --from)."""
    if not self.builder_config.source:
      return None
    return common.options_key(self.builder_config.options)

  def _info(self) -> tfds.core.DatasetInfo:
    return common.info(self, __doc__, 'https://github.com/learningmatter-mit/geom')

  def _split_examples(self) -> dict[str, common.SplitExamples]:
    config = self.builder_config
    if not config.source:
      raise ValueError('GEOM-Drugs is built from the original\'s files: pass --from=DIR.')
    rows_file, counts_file = file_names(config.remove_h, config.options['conformations'])
    rows = _load(os.path.join(config.source, rows_file))
    if rows.ndim != 2 or rows.shape[1] != 5:
      raise ValueError(f'{rows_file}: expected rows [conformer id, Z, x, y, z], got '
                       f'shape {rows.shape}.')
    bounds = conformer_bounds(rows)
    sizes = np.diff(bounds)
    counts = np.asarray(_load(os.path.join(config.source, counts_file)))
    if not np.array_equal(counts, sizes):
      raise ValueError(f'{counts_file} ({len(counts)} conformers) does not match the '
                       f'{len(sizes)} conformers of {rows_file}.')
    perm_path = os.path.join(config.source, PERMUTATION_FILE)
    permutation = np.load(perm_path) if os.path.exists(perm_path) else None
    splits = split_conformers(sizes, permutation, config.options['seed'],
                              config.options['filter_size'])
    types = ATOM_TYPES_WITHOUT_H if config.remove_h else ATOM_TYPES_WITH_H
    z = ATOMIC_NUMBERS_WITHOUT_H if config.remove_h else ATOMIC_NUMBERS_WITH_H
    unknown, type_counts = elements_and_train_counts(rows, bounds, splits['train'], z)
    if unknown:
      raise ValueError(f'{rows_file} has atomic number(s) {unknown} outside the '
                       f'{len(types)} GEOM-Drugs types {list(types)}.')
    histogram = np.bincount(sizes[splits['train']])
    self.info.metadata.update(common.statistics_metadata(
        type_counts, {n: int(c) for n, c in enumerate(histogram) if c}, types, z))
    smiles = os.path.join(config.source, SMILES_FILE)
    self.info.metadata.update({
        'build_key': common.options_key(config.options),
        'options': config.options,
        'paper_split': permutation is not None,
        'split_recipe': ('geom_permutation.npy' if permutation is not None else
                         f'np.random.RandomState({config.options["seed"]}).permutation(n): '
                         "NOT the paper's split") + ': valid 10%, test 10%, train the rest',
        'num_conformers': int(len(sizes)),
        'num_smiles': (sum(1 for _ in open(smiles)) if os.path.exists(smiles) else None)})
    graphs = molecule_graphs(rows, bounds, smiles, perceive=config.options['perceive_bonds'])
    self.info.metadata['bonds'] = common.bonds_metadata(
        {name: graphs.status[graphs.run_of[order]] for name, order in splits.items()},
        how=BONDS_HOW, molecules=int(len(graphs.status)),
        checked_against_smiles=graphs.checked)
    return {name: common.SplitExamples(len(order), functools.partial(
        _examples, rows, bounds, order, graphs)) for name, order in splits.items()}


@dataclasses.dataclass(frozen=True)
class MoleculeGraphs:
  """The bonds of every molecule, shared by its conformers, packed flat.

  Attributes:
    run_of: [conformers] the molecule (run of conformers) of each conformer.
    status: [molecules] `edm_zoo.data.bonds` status of each molecule's bonds.
    bond_bounds: [molecules + 1] molecule r's bonds are bonds[bond_bounds[r]:...].
    bonds, bond_orders: all molecules' bonds, concatenated.
    atom_bounds: [molecules + 1] and formal_charges: the same for atoms.
    checked: whether each molecule was checked against its SMILES.
  """
  run_of: np.ndarray
  status: np.ndarray
  bond_bounds: np.ndarray
  bonds: np.ndarray
  bond_orders: np.ndarray
  atom_bounds: np.ndarray
  formal_charges: np.ndarray
  checked: bool

  def fields(self, conformer: int) -> dict:
    r = self.run_of[conformer]
    b0, b1 = self.bond_bounds[r], self.bond_bounds[r + 1]
    a0, a1 = self.atom_bounds[r], self.atom_bounds[r + 1]
    return {'bonds': self.bonds[b0:b1].astype(np.int32),
            'bond_orders': self.bond_orders[b0:b1].astype(np.int32),
            'formal_charges': self.formal_charges[a0:a1].astype(np.int32),
            'bonds_status': int(self.status[r])}


def molecule_runs(rows: np.ndarray, bounds: np.ndarray) -> np.ndarray:
  """[conformers] molecule number of each conformer: the original writes a
  molecule's conformers one after another, so a conformer with the same atoms in
  the same order as the one before it is another conformer of that molecule."""
  n = len(bounds) - 1
  new = np.ones(n, bool)
  step = 1 << 16
  previous = None
  for c0 in tqdm.tqdm(range(0, n, step), desc='grouping conformers into molecules',
                      dynamic_ncols=True, mininterval=1.0, leave=False):
    c1 = min(c0 + step, n)
    z = np.asarray(rows[bounds[c0]:bounds[c1], 1]).astype(np.int32)
    offset = bounds[c0]
    for k in range(c0, c1):
      this = z[bounds[k] - offset:bounds[k + 1] - offset]
      new[k] = previous is None or not np.array_equal(this, previous)
      previous = this
  return np.cumsum(new) - 1


def molecule_graphs(rows: np.ndarray, bounds: np.ndarray, smiles_file: str,
                    workers: int | None = None, perceive: bool = True) -> MoleculeGraphs:
  """Bonds perceived once per molecule (its first conformer), checked against the
  SMILES file when it has one line per molecule found; `perceive` off: none."""
  run_of = molecule_runs(rows, bounds)
  n_runs = int(run_of[-1]) + 1 if len(run_of) else 0
  first = np.searchsorted(run_of, np.arange(n_runs))
  smiles = []
  if os.path.exists(smiles_file):
    with open(smiles_file) as f:
      smiles = [line.strip() for line in f]
  checked = len(smiles) == n_runs
  if not perceive:  # No bonds: nothing per molecule but its atom count.
    atoms = np.diff(bounds)[first]
    return MoleculeGraphs(
        run_of=run_of, status=np.full(n_runs, bonds.NOT_PERCEIVED, np.int8),
        bond_bounds=np.zeros(n_runs + 1, np.int64), bonds=np.zeros((0, 2), np.int16),
        bond_orders=np.zeros(0, np.int8),
        atom_bounds=np.concatenate([[0], np.cumsum(atoms)]).astype(np.int64),
        formal_charges=np.zeros(int(atoms.sum()), np.int8), checked=False)
  status = np.zeros(n_runs, np.int8)
  bond_counts, atom_counts = np.zeros(n_runs, np.int64), np.zeros(n_runs, np.int64)
  pairs, orders, charges = [], [], []
  # Batches of molecules, packed as they come: the build's memory stays bounded.
  for lo in range(0, n_runs, _PERCEIVE_BATCH):
    runs = range(lo, min(lo + _PERCEIVE_BATCH, n_runs))
    items = []
    for r in runs:
      block = np.asarray(rows[bounds[first[r]]:bounds[first[r] + 1]])
      items.append((block[:, 2:5].astype(np.float32), block[:, 1].astype(np.int32),
                    (smiles[r], '') if checked else None))
    found = common.perceive_all(
        items, workers=workers,
        desc=f'perceiving bonds, molecules {lo + 1:,}-{runs[-1] + 1:,} of {n_runs:,}')
    for r, f in zip(runs, found):
      status[r] = f['bonds_status']
      bond_counts[r], atom_counts[r] = len(f['bonds']), len(f['formal_charges'])
      pairs.append(f['bonds'].astype(np.int16))
      orders.append(f['bond_orders'].astype(np.int8))
      charges.append(f['formal_charges'].astype(np.int8))
  cat = lambda parts, shape, dtype: (np.concatenate(parts) if parts
                                     else np.zeros(shape, dtype))
  return MoleculeGraphs(
      run_of=run_of, status=status,
      bond_bounds=np.concatenate([[0], np.cumsum(bond_counts)]),
      bonds=cat(pairs, (0, 2), np.int16), bond_orders=cat(orders, (0,), np.int8),
      atom_bounds=np.concatenate([[0], np.cumsum(atom_counts)]),
      formal_charges=cat(charges, (0,), np.int8), checked=checked)


def _examples(rows, bounds, order, graphs: MoleculeGraphs, lo: int, hi: int
              ) -> Iterator[dict]:
  for k in order[lo:hi]:
    block = np.asarray(rows[bounds[k]:bounds[k + 1]])
    yield {'positions': block[:, 2:5].astype(np.float32),
           'charges': block[:, 1].astype(np.int32), 'num_atoms': len(block),
           'index': int(k), **graphs.fields(k)}


BONDS_HOW = ('perceived once per molecule from its first conformer by RDKit '
             '(rdDetermineBonds, extended Hückel connectivity, total charge 0) and shared '
             "by its conformers (a molecule: consecutive conformers with the same atoms in "
             'the same order); checked against geom_drugs_smiles.txt when it has one line '
             'per molecule')
