"""SDF and XYZ files of molecules, written atomically (tmp file, then rename)."""

from __future__ import annotations

from typing import Sequence

from rdkit import Chem

from edm_zoo.io.files import atomic_path
from edm_zoo.metrics import rdkit_metrics


def write_sdf(molecules: Sequence[dict], elements: tuple[str, ...], path: str) -> None:
  """RDKit molecules with 3D coordinates and distance-inferred bonds.

  Molecules that do not sanitize are written as built (their bonds as inferred),
  with the property `valid` = 0, so nothing is dropped.
  """
  with atomic_path(path) as tmp:
    writer = Chem.SDWriter(tmp)
    writer.SetKekulize(False)
    for i, m in enumerate(molecules):
      mol = rdkit_metrics.build_molecule(m['positions'], m['types'], elements,
                                         conformer=True)
      valid = rdkit_metrics.mol_to_smiles(mol) is not None
      if not valid:
        mol.UpdatePropertyCache(strict=False)
      mol.SetProp('_Name', f'sample_{i}')
      mol.SetIntProp('valid', int(valid))
      writer.write(mol)
    writer.close()


def write_xyz(molecules: Sequence[dict], elements: tuple[str, ...], path: str) -> None:
  with atomic_path(path) as tmp, open(tmp, 'w') as f:
    for i, m in enumerate(molecules):
      f.write(f"{len(m['types'])}\nsample_{i}\n")
      for t, (x, y, z) in zip(m['types'], m['positions']):
        f.write(f'{elements[int(t)]} {x:.6f} {y:.6f} {z:.6f}\n')
