"""Bonds and formal charges of a molecule: the vocabulary, RDKit in and out, perception.

A molecule record with bonds carries (`edm_zoo.data.features` names them)

  bonds           [m, 2] int32: each bond once, as atom indices i < j, sorted.
  bond_orders     [m] int32: its class, SINGLE, DOUBLE, TRIPLE or AROMATIC (NONE is
                  never stored: it is the class of every pair that is not a bond).
  formal_charges  [n] int32: one per atom.

Aromatic bonds stay aromatic (RDKit's perception after sanitization), as the field's
bond-predicting models write them and as the revisited GEOM-Drugs benchmark counts them
(1.5 each). The same classes label the edges of a batch (`edm_zoo.data.batching`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds

# Bond classes, in the order models predict them: class 0 is "no bond".
BOND_CLASSES = ('none', 'single', 'double', 'triple', 'aromatic')
NONE, SINGLE, DOUBLE, TRIPLE, AROMATIC = range(len(BOND_CLASSES))
# What each class adds to an atom's valence (aromatic as the revisited benchmark: 1.5).
VALENCE = np.array([0.0, 1.0, 2.0, 3.0, 1.5])
_FROM_RDKIT = {Chem.BondType.SINGLE: SINGLE, Chem.BondType.DOUBLE: DOUBLE,
               Chem.BondType.TRIPLE: TRIPLE, Chem.BondType.AROMATIC: AROMATIC}
_TO_RDKIT = {v: k for k, v in _FROM_RDKIT.items()}
# Where a record's bonds come from (its `bonds_status`); the last two are left out of
# the splits that bond-aware methods read (`edm_zoo.data.registry.load(...,
# with_bonds=True)`), and kept, unchanged, in everyone else's.
GIVEN = 0        # The input's own bonds: an SDF bond block, a SMILES.
PERCEIVED = 1    # Perceived from the coordinates (agreeing with the dataset's own
                 # identity of the molecule where it has one: QM9's SMILES / InChI).
DISAGREES = 2    # Perceived, but not the molecule the dataset says it is.
NOT_PERCEIVED = 3  # No bonds: perception failed.
STATUS = ('given', 'perceived', 'disagrees', 'not_perceived')
LEFT_OUT = (DISAGREES, NOT_PERCEIVED)
# Perception beyond this size takes minutes per molecule (Hückel is cubic).
MAX_PERCEIVE_ATOMS = 200


def from_rdkit(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(bonds [m, 2], bond_orders [m], formal_charges [n]) of an RDKit molecule whose
  hydrogens are explicit atoms.

  Raises:
    ValueError: a bond type outside the vocabulary (dative, zero-order, ...).
  """
  pairs, orders = [], []
  for bond in mol.GetBonds():
    kind = _FROM_RDKIT.get(bond.GetBondType())
    if kind is None:
      raise ValueError(f'bond {bond.GetBeginAtomIdx()}-{bond.GetEndAtomIdx()} is '
                       f'{bond.GetBondType()}, outside {BOND_CLASSES[1:]}')
    i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
    pairs.append((i, j))
    orders.append(kind)
  order = sorted(range(len(pairs)), key=lambda k: pairs[k])
  bonds = np.array([pairs[k] for k in order], np.int32).reshape(-1, 2)
  return (bonds, np.array([orders[k] for k in order], np.int32),
          np.array([a.GetFormalCharge() for a in mol.GetAtoms()], np.int32))


def check(n_atoms: int, bonds: np.ndarray, bond_orders: np.ndarray,
          formal_charges: np.ndarray) -> None:
  """One-line ValueError unless these are a valid bond record of `n_atoms` atoms."""
  bonds, bond_orders = np.asarray(bonds), np.asarray(bond_orders)
  if bonds.ndim != 2 or bonds.shape[1:] != (2,) or len(bonds) != len(bond_orders):
    raise ValueError(f'bonds must be [m, 2] with m bond orders, got {bonds.shape} and '
                     f'{bond_orders.shape}.')
  if len(formal_charges) != n_atoms:
    raise ValueError(f'{len(formal_charges)} formal charges for {n_atoms} atoms.')
  if len(bonds) and ((bonds < 0).any() or (bonds >= n_atoms).any()
                     or (bonds[:, 0] >= bonds[:, 1]).any()):
    raise ValueError(f'bonds must join atoms i < j of 0..{n_atoms - 1}.')
  if len({tuple(b) for b in bonds.tolist()}) != len(bonds):
    raise ValueError('a pair of atoms is bonded twice.')
  if len(bond_orders) and ((bond_orders <= NONE).any() or (bond_orders > AROMATIC).any()):
    raise ValueError(f'bond orders must be classes 1-{AROMATIC} {BOND_CLASSES[1:]}.')


def to_rdkit(atomic_numbers: Sequence[int], positions: np.ndarray | None,
             bonds: np.ndarray, bond_orders: np.ndarray,
             formal_charges: Sequence[int]) -> Chem.Mol:
  """The molecule exactly as written, unsanitized: every atom explicit (no implicit
  hydrogens are added), each bond of its class, a conformer when `positions` are
  given. Sanitize a copy to ask RDKit whether it is a valid molecule."""
  mol = Chem.RWMol()
  for z, q in zip(atomic_numbers, formal_charges):
    atom = Chem.Atom(int(z))
    atom.SetFormalCharge(int(q))
    atom.SetNoImplicit(True)
    mol.AddAtom(atom)
  for (i, j), kind in zip(np.asarray(bonds).tolist(), np.asarray(bond_orders).tolist()):
    mol.AddBond(int(i), int(j), _TO_RDKIT[int(kind)])
    if kind == AROMATIC:
      mol.GetBondBetweenAtoms(int(i), int(j)).SetIsAromatic(True)
      mol.GetAtomWithIdx(int(i)).SetIsAromatic(True)
      mol.GetAtomWithIdx(int(j)).SetIsAromatic(True)
  mol = mol.GetMol()
  if positions is not None:
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(np.asarray(positions, np.float64)):
      conf.SetAtomPosition(i, p.tolist())
    mol.AddConformer(conf, assignId=True)
  mol.UpdatePropertyCache(strict=False)
  return mol


def molecule_from_xyz(positions: np.ndarray, atomic_numbers: Sequence[int]) -> Chem.Mol:
  """Atoms at positions, no bonds yet."""
  mol = Chem.RWMol()
  for z in atomic_numbers:
    mol.AddAtom(Chem.Atom(int(z)))
  conf = Chem.Conformer(len(atomic_numbers))
  for i, p in enumerate(np.asarray(positions, np.float64)):
    conf.SetAtomPosition(i, p.tolist())
  mol.AddConformer(conf, assignId=True)
  return mol.GetMol()


def perceive(positions: np.ndarray, atomic_numbers: Sequence[int], *,
             charge: int = 0) -> tuple[Chem.Mol | None, str]:
  """(sanitized molecule with RDKit's bonds and formal charges, '') or (None, why not).

  Connectivity from extended Hückel rather than covalent radii (300 of 300 QM9 test
  molecules perceived, against 282 by radii: docs/metrics.md), then xyz2mol's bond
  orders and charges for a total `charge`.
  """
  if len(atomic_numbers) > MAX_PERCEIVE_ATOMS:
    return None, f'more than {MAX_PERCEIVE_ATOMS} atoms'
  mol = Chem.Mol(molecule_from_xyz(positions, atomic_numbers))
  try:
    rdDetermineBonds.DetermineBonds(mol, charge=charge, useHueckel=True)
    Chem.SanitizeMol(mol)
  except (ValueError, RuntimeError) as e:  # RDKit's perception and sanitization errors.
    return None, (str(e).strip().splitlines() or [type(e).__name__])[0]
  return mol, ''


def canonical_smiles(mol: Chem.Mol) -> str:
  """Canonical SMILES without stereochemistry or hydrogens: a graph's identity."""
  mol = Chem.RemoveHs(Chem.Mol(mol), sanitize=False)
  Chem.RemoveStereochemistry(mol)
  return Chem.MolToSmiles(mol, isomericSmiles=False)


def dense_classes(n_atoms: int, bonds: np.ndarray, bond_orders: np.ndarray) -> np.ndarray:
  """[n, n] int32 bond classes (NONE off the bonds), symmetric."""
  out = np.zeros((n_atoms, n_atoms), np.int32)
  if len(bonds):
    bonds = np.asarray(bonds)
    out[bonds[:, 0], bonds[:, 1]] = bond_orders
    out[bonds[:, 1], bonds[:, 0]] = bond_orders
  return out


def from_dense(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(bonds [m, 2], bond_orders [m]) of the upper triangle of [n, n] classes."""
  i, j = np.nonzero(np.triu(np.asarray(classes), 1))
  return np.stack([i, j], 1).astype(np.int32).reshape(-1, 2), classes[i, j].astype(np.int32)


def record(mol: Chem.Mol | None, n_atoms: int, status: int) -> dict[str, np.ndarray | int]:
  """The bond fields of a dataset record (`features` names): `mol`'s bonds and
  charges with `status`, or no bonds (NOT_PERCEIVED) when `mol` is None."""
  if mol is None:
    return {'bonds': np.zeros((0, 2), np.int32), 'bond_orders': np.zeros(0, np.int32),
            'formal_charges': np.zeros(n_atoms, np.int32), 'bonds_status': NOT_PERCEIVED}
  pairs, orders, charges = from_rdkit(mol)
  return {'bonds': pairs, 'bond_orders': orders, 'formal_charges': charges,
          'bonds_status': int(status)}


def heavy_atoms(fields: dict, atomic_numbers: np.ndarray) -> dict:
  """The bond fields of the same molecule without its hydrogens (re-indexed)."""
  keep = np.asarray(atomic_numbers) != 1
  index = np.cumsum(keep) - 1
  pairs = np.asarray(fields['bonds']).reshape(-1, 2)
  both = keep[pairs[:, 0]] & keep[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
  return {'bonds': index[pairs[both]].astype(np.int32).reshape(-1, 2),
          'bond_orders': np.asarray(fields['bond_orders'])[both].astype(np.int32),
          'formal_charges': np.asarray(fields['formal_charges'])[keep].astype(np.int32),
          'bonds_status': fields['bonds_status']}


def perceive_record(positions: np.ndarray, atomic_numbers: Sequence[int],
                    identity: tuple[str, str] | None = None) -> dict:
  """The bond fields of a molecule perceived from its coordinates (total charge 0);
  with `identity` (SMILES, InChI) of what the dataset says the molecule is, a
  perceived graph matching neither is DISAGREES."""
  mol, _ = perceive(positions, atomic_numbers)
  if mol is None:
    return record(None, len(atomic_numbers), NOT_PERCEIVED)
  status = PERCEIVED
  if identity is not None and not agrees(mol, *identity):
    status = DISAGREES
  return record(mol, len(atomic_numbers), status)


def agrees(mol: Chem.Mol, smiles: str, inchi: str) -> bool:
  """Whether `mol` is the molecule of this SMILES or of this InChI (no stereo)."""
  given = Chem.MolFromSmiles(smiles) if smiles else None
  if given is not None and canonical_smiles(given) == canonical_smiles(mol):
    return True
  if not inchi:
    return False
  try:
    mine = Chem.MolToInchi(mol, options='-SNon')
  except (ValueError, RuntimeError):
    return False
  return bool(mine) and _no_stereo(mine) == _no_stereo(inchi)


def _no_stereo(inchi: str) -> str:
  """An InChI without its stereo layers (/b /t /m /s)."""
  return '/'.join(p for p in inchi.split('/') if p[:1] not in ('b', 't', 'm', 's'))
