"""TFDS builder for QM9 as the original EDM prepares it, read offline from `qm9pack`.

The name is `edm_qm9` so that it never clashes with TFDS's built-in `qm9` (which
downloads). Nothing here touches the network: the molecules come from the CSV files
that the PyPI package `qm9pack` installs (130,831 molecules: GDB-9 minus the 3,054
"uncharacterized" ones, exactly the set EDM keeps).

Splits are the reference's: sort by gdb id, `np.random.seed(0)`, permute, then
train = perm[:100000], valid = perm[100000:117748], test = perm[117748:]; inside a
split molecules are kept in ascending gdb id (the builder disables TFDS's write-time
shuffling to keep that order).

Units of the stored features:
  positions  Angstrom (float32), raw qm9pack coordinates for `with_h`; re-centred
             on the remaining atoms for `without_h`.
  charges    atomic number Z (int32).
  properties float64 vector in PROPERTY_NAMES order (edm_zoo.data.qm9 exposes
             each as its own key):
  mu         Debye.            alpha     bohr^3.
  homo, lumo, gap, zpve, U0, U, H, G   eV (Hartree * 27.2114, the reference's factor;
             note that the reference later expresses zpve in meV for conditioning).
  r2         bohr^2.           Cv        cal/(mol K).
  A, B, C    rotational constants, GHz.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from datasets import common
from edm_zoo.data import bonds

# Hartree -> eV as in the reference's QM9 preparation.
HARTREE_TO_EV = 27.2114

# Atom types in EDM's one-hot order and their atomic numbers.
ATOM_TYPES_WITH_H = ('H', 'C', 'N', 'O', 'F')
ATOM_TYPES_WITHOUT_H = ('C', 'N', 'O', 'F')
ATOMIC_NUMBER = {'H': 1, 'C': 6, 'N': 7, 'O': 8, 'F': 9}

NUM_MOLECULES = 130_831
NUM_TRAIN = 100_000
NUM_TEST = int(0.1 * NUM_MOLECULES)  # 13,083 as the reference computes it.
NUM_VALID = NUM_MOLECULES - NUM_TRAIN - NUM_TEST  # 17,748.
SPLIT_SEED = 0

_CSV_PARTS = ('qm9_part1.csv', 'qm9_part2.csv', 'qm9_part3.csv')

# (feature name, qm9pack column, multiplier to the documented unit).
PROPERTIES = (
    ('mu', 'Dipole_debye', 1.0),
    ('alpha', 'Polarizability_bohr3', 1.0),
    ('homo', 'HOMO_au', HARTREE_TO_EV),
    ('lumo', 'LUMO_au', HARTREE_TO_EV),
    ('gap', 'HOMO_LUMO_gap_au', HARTREE_TO_EV),
    ('r2', 'R2_bohr2', 1.0),
    ('zpve', 'ZPVE_au', HARTREE_TO_EV),
    ('U0', 'InternalEnergy_0K_au', HARTREE_TO_EV),
    ('U', 'InternalEnergy_298K_au', HARTREE_TO_EV),
    ('H', 'Enthalphy_298K_au', HARTREE_TO_EV),
    ('G', 'GibbsFreeEnergy_298K_au', HARTREE_TO_EV),
    ('Cv', 'Heatcapacity_Cv_cal_mol_K', 1.0),
    ('A', 'RotA_GHz', 1.0),
    ('B', 'RotB_GHz', 1.0),
    ('C', 'RotC_GHz', 1.0),
)
PROPERTY_NAMES = tuple(name for name, _, _ in PROPERTIES)


def qm9pack_data_dir() -> str:
  """Folder of qm9pack's CSV files, found without importing qm9pack.

  `import qm9pack` needs `pkg_resources` (setuptools < 82); locating the package
  through its import spec runs none of its code.

  Returns:
    The absolute path of qm9pack's `data/` folder.

  Raises:
    ValueError: if qm9pack is not installed or its files are missing.
  """
  spec = importlib.util.find_spec('qm9pack')
  if spec is None or not spec.submodule_search_locations:
    raise ValueError('qm9pack is not installed: run `make venv` (or '
                     '`pip install -r requirements.txt`).')
  folder = os.path.join(list(spec.submodule_search_locations)[0], 'data')
  missing = [p for p in _CSV_PARTS if not os.path.exists(os.path.join(folder, p))]
  if missing:
    raise ValueError(f'qm9pack at {folder} lacks {missing}: reinstall qm9pack.')
  return folder


def split_indices() -> dict[str, np.ndarray]:
  """Row indices (into molecules sorted by gdb id) of each split, ascending."""
  perm = np.random.RandomState(SPLIT_SEED).permutation(NUM_MOLECULES)
  # np.random.seed(0); np.random.permutation(n) draws from the same legacy stream.
  bounds = {'train': (0, NUM_TRAIN), 'valid': (NUM_TRAIN, NUM_TRAIN + NUM_VALID),
            'test': (NUM_TRAIN + NUM_VALID, NUM_MOLECULES)}
  return {name: np.sort(perm[lo:hi]) for name, (lo, hi) in bounds.items()}


HALF_SEED = 42
HALVES = ('first', 'second')


def half_positions(half: str, n_train: int = NUM_TRAIN) -> np.ndarray:
  """Positions inside the train split of one of the reference's halves.

  `np.random.seed(42); perm = np.random.permutation(n_train)`; the first half is
  perm[:n // 2] (property classifiers), the second perm[n // 2:] (conditional
  generators), in permutation order.
  """
  perm = np.random.RandomState(HALF_SEED).permutation(n_train)
  if half == 'first':
    return perm[:n_train // 2]
  if half == 'second':
    return perm[n_train // 2:]
  raise ValueError(f'unknown half {half!r}; allowed: {list(HALVES)}.')


def _parse_elements(text: str, gdb_index: int) -> list[str]:
  elements = [e.strip().strip('\'"') for e in text.strip('[]').split(',')]
  unknown = sorted(set(elements) - set(ATOMIC_NUMBER))
  if unknown:
    raise ValueError(f'molecule gdb {gdb_index} has element(s) {unknown} outside '
                     f'{ATOM_TYPES_WITH_H}; EDM on QM9 supports only those types.')
  return elements


def read_qm9pack(folder: str | None = None) -> dict[str, object]:
  """Reads every molecule from qm9pack's CSVs, sorted by gdb id.

  Args:
    folder: qm9pack's data folder; found automatically when None.

  Returns:
    A dict of per-molecule lists/arrays: `gdb_index`, `smiles`, `inchi`, `elements`,
    `positions` (list of [n, 3] float32) and one float64 array per property.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top

  folder = folder or qm9pack_data_dir()
  columns = ['Index', 'SMILES', 'InChi', 'N_atoms', 'Elements', 'XYZ_Ang'] + [
      col for _, col, _ in PROPERTIES]
  frame = pd.concat(
      [pd.read_csv(os.path.join(folder, p), usecols=columns) for p in _CSV_PARTS],
      ignore_index=True).sort_values('Index', kind='stable')
  if len(frame) != NUM_MOLECULES:
    raise ValueError(f'qm9pack has {len(frame)} molecules, expected '
                     f'{NUM_MOLECULES}: reinstall qm9pack==1.0.3.')
  gdb = frame['Index'].to_numpy(np.int64)
  elements = [_parse_elements(t, g) for t, g in zip(frame['Elements'], gdb)]
  # The coordinates are written like `[[0.5,0.,1.],...]`: not JSON (`0.`), so
  # strip the brackets and let numpy parse the flat comma-separated list.
  positions = [np.fromstring(t.replace('[', '').replace(']', ''), sep=',')
               .astype(np.float32).reshape(-1, 3) for t in frame['XYZ_Ang']]
  for g, el, pos, n in zip(gdb, elements, positions, frame['N_atoms']):
    if not len(el) == len(pos) == n:
      raise ValueError(f'molecule gdb {g}: {len(el)} elements, {len(pos)} '
                       f'coordinates, N_atoms={n}; the qm9pack files are corrupt.')
  out = {'gdb_index': gdb, 'smiles': frame['SMILES'].tolist(),
         'inchi': frame['InChi'].fillna('').tolist(),
         'elements': elements, 'positions': positions}
  for name, col, scale in PROPERTIES:
    out[name] = frame[col].to_numpy(np.float64) * scale
  return out


def train_statistics(data, rows, remove_h: bool) -> dict[str, object]:
  """Node-count histogram and atom-type counts of the given (train) rows."""
  types = ATOM_TYPES_WITHOUT_H if remove_h else ATOM_TYPES_WITH_H
  charges = (np.array([ATOMIC_NUMBER[e] for e in data['elements'][row]
                       if not (remove_h and e == 'H')]) for row in rows)
  return common.train_statistics(charges, types, [ATOMIC_NUMBER[t] for t in types])


# The perception (RDKit's) behind the cached bonds; a new one writes a new cache.
BONDS_VERSION = 1
BONDS_HOW = ('perceived from the coordinates by RDKit (rdDetermineBonds, extended Hückel '
             'connectivity, total charge 0); a molecule is "perceived" when its graph is '
             "qm9pack's SMILES or InChI of the same row (no stereo), \"disagrees\" otherwise")


def perceive(data: dict[str, Any], cache_dir: str | None = None) -> list[dict]:
  """The bond fields of every molecule (all atoms), checked against its row's
  SMILES and InChI; also fills `data['charges_z']`. With `cache_dir` the result is
  kept there (`bonds_<version>.npz`), so that the with-H and without-H builds (and a
  rebuild) perceive once."""
  data['charges_z'] = [np.array([ATOMIC_NUMBER[e] for e in el], np.int32)
                       for el in data['elements']]
  path = os.path.join(cache_dir, f'bonds_{BONDS_VERSION}.npz') if cache_dir else None
  if path and os.path.exists(path):
    with np.load(path) as f:
      return common.unpack_bonds({k: f[k] for k in f.files})
  found = common.perceive_all(list(zip(data['positions'], data['charges_z'],
                                       zip(data['smiles'], data['inchi']))))
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + '.tmp.npz'
    np.savez(tmp, **common.pack_bonds(found))
    os.replace(tmp, path)
  return found


def decode(item: dict[str, Any]) -> dict[str, Any]:
  """A stored record -> a molecule dict with each property under its own name."""
  item['smiles'] = item['smiles'].decode()
  item.update(zip(PROPERTY_NAMES, item.pop('properties')))
  return item


class EdmQm9Config(tfds.core.BuilderConfig):
  """QM9 with or without hydrogen atoms."""

  def __init__(self, *, remove_h: bool, **kwargs):
    # 1.1.0: statistics of the train halves in the metadata. 1.2.0: bonds and
    # formal charges (perceived, checked against qm9pack's SMILES and InChI).
    super().__init__(version=tfds.core.Version('1.2.0'), **kwargs)
    self.remove_h = remove_h


class EdmQm9(common.MoleculeBuilder):
  """QM9 (130,831 molecules) from qm9pack, split as in EDM."""

  BUILDER_CONFIGS = [
      EdmQm9Config(name='with_h', remove_h=False,
                   description='All atoms; types H, C, N, O, F.'),
      EdmQm9Config(name='without_h', remove_h=True,
                   description='Hydrogens dropped, re-centred; types C, N, O, F.'),
  ]
  DEFAULT_CONFIG_NAME = 'with_h'

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        'positions': tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
        'charges': tfds.features.Tensor(shape=(None,), dtype=np.int32),
        'num_atoms': tfds.features.Scalar(dtype=np.int32),
        'gdb_index': tfds.features.Scalar(dtype=np.int32),
        'smiles': tfds.features.Text(),
        **common.bond_features(),
    }
    # One vector in PROPERTY_NAMES order: a feature per property would cost a
    # proto field each to decode (3x slower reads). Raw bytes keep float64 exact;
    # a proto float_list is float32, which rounds U0 (~ -1e4 eV) to the meV.
    features['properties'] = tfds.features.Tensor(
        shape=(len(PROPERTIES),), dtype=np.float64,
        encoding=tfds.features.Encoding.BYTES)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        homepage='https://pypi.org/project/qm9pack/',
        # Train statistics the model needs, computed once at build time.
        metadata=tfds.core.MetadataDict(),
        description=__doc__,
        # Keep ascending gdb id inside a split, as the reference does.
        disable_shuffling=True,
    )

  def _split_examples(self) -> dict[str, common.SplitExamples]:
    data = read_qm9pack()
    splits = split_indices()
    remove_h = self.builder_config.remove_h
    # Beside the TFDS folders, so that both configs and a rebuild reuse it.
    data['bonds'] = perceive(data, os.path.join(self.data_dir_root, 'edm_qm9_bonds'))
    self.info.metadata['bonds'] = common.bonds_metadata(
        {name: [data['bonds'][row]['bonds_status'] for row in rows]
         for name, rows in splits.items()},
        how=BONDS_HOW, agree=sum(b['bonds_status'] == bonds.PERCEIVED for b in data['bonds']),
        molecules=len(data['bonds']))
    self.info.metadata.update(train_statistics(data, splits['train'], remove_h))
    self.info.metadata['halves'] = {
        h: train_statistics(data, splits['train'][half_positions(h)], remove_h)
        for h in HALVES}
    # Ascending gdb id inside a split, as the reference reads them.
    return {name: common.SplitExamples(len(rows), functools.partial(self._examples, data, rows))
            for name, rows in splits.items()}

  def _examples(self, data, rows, lo: int, hi: int) -> Iterator[dict]:
    remove_h = self.builder_config.remove_h
    for row in rows[lo:hi]:
      charges = np.array([ATOMIC_NUMBER[e] for e in data['elements'][row]],
                         np.int32)
      positions = data['positions'][row]
      if remove_h:
        keep = charges != 1
        charges, positions = charges[keep], positions[keep]
        positions = positions - positions.mean(axis=0, keepdims=True)
      example = {
          'positions': positions.astype(np.float32),
          'charges': charges,
          'num_atoms': len(charges),
          'gdb_index': int(data['gdb_index'][row]),
          'smiles': data['smiles'][row],
      }
      example['properties'] = np.array([data[name][row] for name in PROPERTY_NAMES])
      fields = data['bonds'][row]
      example.update(bonds.heavy_atoms(fields, data['charges_z'][row]) if remove_h else fields)
      yield example
