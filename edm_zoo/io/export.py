"""SDF and XYZ files of molecules, written atomically (tmp file, then rename)."""

from __future__ import annotations

from typing import Sequence

from rdkit import Chem

from edm_zoo.data import bonds as bonds_lib
from edm_zoo.data import elements as elements_lib
from edm_zoo.io.files import atomic_path
from edm_zoo.metrics import rdkit_metrics


def _requested(m: dict, property_names: Sequence[str]) -> list[tuple[str, float]]:
  """(name, value) of the properties a conditional model was asked for."""
  if 'properties' not in m:
    return []
  return [(f'requested_{p}', float(v)) for p, v in zip(property_names, m['properties'])]


def has_bonds(m: dict) -> bool:
  """Whether a molecule dict carries its own bonds and formal charges."""
  return 'bonds' in m and 'bond_orders' in m and 'formal_charges' in m


def to_mol(m: dict, elements: tuple[str, ...]) -> tuple[Chem.Mol, bool]:
  """(RDKit molecule with a conformer, whether it sanitizes) of a molecule dict:
  its own bonds and charges when it carries them (as written, unsanitized when
  RDKit refuses them), else bonds inferred from distances with EDM's tables."""
  if has_bonds(m):
    z = elements_lib.atomic_numbers(elements)[[int(t) for t in m['types']]]
    mol = bonds_lib.to_rdkit(z, m['positions'], m['bonds'], m['bond_orders'],
                             m['formal_charges'])
    checked = Chem.Mol(mol)
    try:
      Chem.SanitizeMol(checked)
    except (ValueError, RuntimeError):
      return mol, False
    return checked, True
  mol = rdkit_metrics.build_molecule(m['positions'], m['types'], elements, conformer=True)
  valid = rdkit_metrics.mol_to_smiles(mol) is not None
  if not valid:
    mol.UpdatePropertyCache(strict=False)
  return mol, valid


def write_sdf(molecules: Sequence[dict], elements: tuple[str, ...], path: str,
              property_names: Sequence[str] = (), name: str = 'sample') -> None:
  """RDKit molecules with 3D coordinates and their bonds: a molecule's own bonds
  and formal charges when it carries them (a bond-predicting model's, a dataset's
  true ones), else bonds inferred from distances; the property `bonds` says which.

  Molecules that do not sanitize are written as built, with the property
  `valid` = 0, so nothing is dropped. Molecules of a conditional model carry
  `requested_<property>` (dataset units).
  """
  with atomic_path(path) as tmp:
    writer = Chem.SDWriter(tmp)
    writer.SetKekulize(False)
    for i, m in enumerate(molecules):
      mol, valid = to_mol(m, elements)
      mol.SetProp('bonds', 'own' if has_bonds(m) else 'inferred from distances')
      mol.SetProp('_Name', f'{name}_{i}')
      mol.SetIntProp('valid', int(valid))
      for name, value in _requested(m, property_names):
        mol.SetDoubleProp(name, value)
      writer.write(mol)
    writer.close()


def write_xyz(molecules: Sequence[dict], elements: tuple[str, ...], path: str,
              property_names: Sequence[str] = ()) -> None:
  """Multi-molecule XYZ; the comment line names the sample (and its request)."""
  with atomic_path(path) as tmp, open(tmp, 'w') as f:
    for i, m in enumerate(molecules):
      extra = ''.join(f' {n}={v:.6g}' for n, v in _requested(m, property_names))
      f.write(f"{len(m['types'])}\nsample_{i}{extra}\n")
      for t, (x, y, z) in zip(m['types'], m['positions']):
        f.write(f'{elements[int(t)]} {x:.6f} {y:.6f} {z:.6f}\n')
