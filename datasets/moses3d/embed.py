"""3D conformers for SMILES with RDKit: ETKDG then MMFF, with hydrogens.

Pure functions over (index, SMILES) so that worker processes need nothing else;
each molecule's random seed comes from its index, so the result does not depend
on how the work is split among processes.
"""

from __future__ import annotations

import os

import numpy as np
from rdkit import Chem
from rdkit import RDLogger
from rdkit.Chem import AllChem


def embed(smiles: str, seed: int) -> tuple[np.ndarray, np.ndarray] | str:
  """(Z [n] int32, positions [n, 3] float32 Angstrom) with H, or why it failed."""
  mol = Chem.MolFromSmiles(smiles)
  if mol is None:
    return 'unparsable SMILES'
  mol = Chem.AddHs(mol)
  params = AllChem.ETKDGv3()
  params.randomSeed = int(seed) % (2 ** 31 - 1)
  if AllChem.EmbedMolecule(mol, params) != 0:
    return 'ETKDG embedding failed'
  if not AllChem.MMFFHasAllMoleculeParams(mol):
    return 'no MMFF parameters'
  # Not converging in 500 iterations still leaves a sensible geometry; kept.
  AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
  z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int32)
  return z, mol.GetConformer().GetPositions().astype(np.float32)


def embed_chunk(job: tuple[str, int, list[tuple[int, str]]]) -> tuple[int, int]:
  """Embeds a chunk and writes `<path>` (npz, atomically); returns (done, failed).

  Args:
    job: (path, seed, [(index, SMILES)]) of one chunk.
  """
  RDLogger.DisableLog('rdApp.*')
  path, seed, items = job
  sizes, z_all, pos_all, indices, smiles_ok, failed = [], [], [], [], [], []
  for index, smiles in items:
    out = embed(smiles, seed * 1_000_003 + index)
    if isinstance(out, str):
      failed.append(f'{index} {smiles}: {out}')
      continue
    z, pos = out
    sizes.append(len(z))
    z_all.append(z)
    pos_all.append(pos)
    indices.append(index)
    smiles_ok.append(smiles)
  tmp = path + '.tmp.npz'
  np.savez(tmp, sizes=np.array(sizes, np.int64), indices=np.array(indices, np.int64),
           charges=np.concatenate(z_all) if z_all else np.zeros(0, np.int32),
           positions=np.concatenate(pos_all) if pos_all else np.zeros((0, 3), np.float32),
           smiles=np.array(smiles_ok, dtype=object).astype(str),
           failed=np.array(failed, dtype=object).astype(str))
  os.replace(tmp, path)
  return len(indices), len(failed)
