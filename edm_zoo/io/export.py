"""SDF and XYZ files of molecules, written atomically (tmp file, then rename)."""

from __future__ import annotations

from typing import Sequence

from rdkit import Chem

from edm_zoo.io.files import atomic_path
from edm_zoo.metrics import rdkit_metrics


def _requested(m: dict, property_names: Sequence[str]) -> list[tuple[str, float]]:
  """(name, value) of the properties a conditional model was asked for."""
  if 'properties' not in m:
    return []
  return [(f'requested_{p}', float(v)) for p, v in zip(property_names, m['properties'])]


def write_sdf(molecules: Sequence[dict], elements: tuple[str, ...], path: str,
              property_names: Sequence[str] = ()) -> None:
  """RDKit molecules with 3D coordinates and distance-inferred bonds.

  Molecules that do not sanitize are written as built (their bonds as inferred),
  with the property `valid` = 0, so nothing is dropped. Molecules of a conditional
  model carry `requested_<property>` (dataset units).
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
