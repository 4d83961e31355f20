"""RDKit validity, uniqueness and novelty as EDM's `BasicMolecularMetrics`."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tqdm
from rdkit import Chem
from rdkit import RDLogger

from edm_zoo.data import registry
from edm_zoo.io.files import atomic_path
from edm_zoo.metrics import bond_tables
from edm_zoo.metrics import stability

RDLogger.DisableLog('rdApp.*')  # Sanitization failures are counted, not printed.

_BOND_TYPES = (None, Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE)


def cdist_distances(positions: np.ndarray) -> np.ndarray:
  """float32 distances as `torch.cdist` computes them (EDM's build_xae_molecule).

  torch switches to |a|^2 + |b|^2 - 2 a.b (a matrix product) when either side has
  more than 25 rows; the rounding differs from the direct form, and bonds at a
  threshold can flip, so we follow it.
  """
  p = np.asarray(positions, np.float32)
  if len(p) <= 25:
    return stability.pair_distances(p)
  norms = np.sum(p * p, axis=1)
  sq = norms[:, None] + norms[None, :] - np.float32(2) * (p @ p.T)
  return np.sqrt(np.maximum(sq, np.float32(0)))


def build_molecule(positions: np.ndarray, types: np.ndarray,
                   elements: tuple[str, ...], conformer: bool = False,
                   single_bonds: bool = False) -> Chem.RWMol:
  """An RDKit molecule with bonds inferred from distances (EDM's build_molecule);
  with `single_bonds` every bond found is single (EDM's GEOM-Drugs convention,
  `limit_bonds_to_one`)."""
  types = np.asarray(types)
  mol = Chem.RWMol()
  for t in types:
    mol.AddAtom(Chem.Atom(elements[int(t)]))
  dist_pm = cdist_distances(positions) * np.float32(100)
  # EDM looks pairs up with sorted type indices here.
  orders = bond_tables.bond_orders(dist_pm, np.minimum.outer(types, types),
                                   np.maximum.outer(types, types), elements)
  if single_bonds:
    orders = np.minimum(orders, 1)
  for i, j in zip(*np.nonzero(np.tril(orders, -1))):
    mol.AddBond(int(i), int(j), _BOND_TYPES[int(orders[i, j])])
  if conformer:
    conf = Chem.Conformer(len(types))
    for i, p in enumerate(np.asarray(positions, np.float64)):
      conf.SetAtomPosition(i, p.tolist())
    mol.AddConformer(conf, assignId=True)
  return mol


def mol_to_smiles(mol: Chem.Mol) -> str | None:
  try:
    Chem.SanitizeMol(mol)
  except ValueError:
    return None
  return Chem.MolToSmiles(mol)


def readable_smiles(mol: Chem.Mol) -> tuple[str | None, str]:
  """(canonical SMILES with implicit hydrogens, fragments joined by '.', or None;
  why RDKit cannot sanitize the molecule, or ''), for people to read."""
  mol = Chem.Mol(mol)
  try:
    Chem.SanitizeMol(mol)
  except ValueError as e:  # RDKit's sanitization errors are ValueErrors.
    return None, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  return Chem.MolToSmiles(Chem.RemoveHs(mol)), ''


def describe(positions: np.ndarray, types: np.ndarray, elements: tuple[str, ...],
             single_bonds: bool = False) -> dict[str, object]:
  """What a caption says of one molecule: `smiles` (readable_smiles, None if RDKit
  cannot sanitize it), `why` not, and whether it counts as `valid` (EDM's
  validity, `single_bonds` as the dataset scores it) and `stable` (EDM's molecule
  stability)."""
  mol = build_molecule(positions, types, elements)
  smiles, why = readable_smiles(mol)
  valid = (smiles is not None if not single_bonds else mol_to_smiles(
      build_molecule(positions, types, elements, single_bonds=True)) is not None)
  stable, _, _ = stability.check_stability(positions, types, elements)
  return {'smiles': smiles, 'why': why, 'valid': bool(valid), 'stable': bool(stable)}


def valid_smiles(molecules: Sequence[tuple[np.ndarray, np.ndarray]],
                 elements: tuple[str, ...], progress: bool = False,
                 single_bonds: bool = False) -> list[str | None]:
  """Per molecule: SMILES of its largest fragment if it sanitizes, else None."""
  out = []
  for positions, types in tqdm.tqdm(molecules, disable=not progress, desc='RDKit',
                                    unit='mol', leave=False):
    mol = build_molecule(positions, types, elements, single_bonds=single_bonds)
    smiles = mol_to_smiles(mol)
    if smiles is not None:
      frags = Chem.rdmolops.GetMolFrags(mol, asMols=True)
      largest = max(frags, default=mol, key=lambda m: m.GetNumAtoms())
      smiles = mol_to_smiles(largest)
    out.append(smiles)
  return out


def validity_uniqueness_novelty(smiles: Sequence[str | None],
                                reference_smiles: set[str] | None = None
                                ) -> dict[str, float]:
  valid = [s for s in smiles if s is not None]
  unique = set(valid)
  out = {'validity': len(valid) / max(len(smiles), 1),
         'uniqueness': len(unique) / max(len(valid), 1)}
  out['valid_x_unique'] = out['validity'] * out['uniqueness']
  if reference_smiles is not None:
    out['novelty'] = sum(s not in reference_smiles for s in unique) / max(len(unique), 1)
  return out


def source_molecules(source, indices: Sequence[int] | None = None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
  """(positions, type indices) of every molecule of a source (a dataset split), or
  of those at `indices`."""
  lookup = {int(z): i for i, z in enumerate(source.atomic_numbers)}
  items = source.__getitems__(range(len(source)) if indices is None else list(indices))
  return [(m['positions'], np.array([lookup[int(z)] for z in m['charges']]))
          for m in items]


def training_smiles(dataset: str = 'qm9', data_dir: str | None = None,
                    progress: bool = True) -> set[str]:
  """SMILES of the whole train split through this same pipeline, cached with it.

  Computed once (QM9: ~30 s) into `<dataset folder>/train_smiles.txt`; novelty
  compares generated molecules against it. A QM9 half uses all of QM9's train split.
  """
  entry = registry.get(dataset, data_dir)
  source = registry.load(entry.base or dataset, 'train', data_dir)
  single = entry.metrics.rdkit_single_bonds
  path = os.path.join(source.path, 'train_smiles_single.txt' if single else 'train_smiles.txt')
  if not os.path.exists(path):
    if progress:
      print('computing the train-split SMILES for novelty (once, ~40 s) ...')
    types = tuple(registry.statistics(entry.base or dataset, data_dir).atom_types)
    smiles = valid_smiles(source_molecules(source), types, progress, single_bonds=single)
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
      f.writelines(f'{s}\n' for s in smiles if s is not None)
  with open(path) as f:
    return {line.strip() for line in f if line.strip()}
