"""Metrics of a molecule as written: its own bonds and formal charges, not perceived ones.

For a method that outputs bonds and charges (and for a dataset's true bonds, the
'Data' row) each molecule is judged as it stands:

  stability     every atom allowed by the reference valency table (GEOM-Drugs
                Revisited, `valency.REFERENCE`: element, formal charge and bond
                orders, aromatic bonds counted apart as 1.5); atom stability is the
                share of allowed atoms. Beside it (`ours`) the same by edm_zoo's
                Kekulé table (`valency.OURS`), which also accepts what the reference
                lacks (a neutral sulfoxide S=O, an isocyanide; docs/metrics.md).
  validity      RDKit sanitizes the molecule as written (no implicit hydrogens are
                added: a missing bond stays missing).
  connectivity  it is one fragment.

EDM's row, computed on the coordinates with distance-inferred bonds, is unchanged
beside these (`edm_zoo.metrics.stability`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from rdkit import Chem

from edm_zoo.data import bonds as bonds_lib
from edm_zoo.metrics import intervals, valency

TABLE = 'reference'
OTHER_TABLE = 'ours'


def judge(atomic_numbers: Sequence[int], bonds: np.ndarray, bond_orders: np.ndarray,
          formal_charges: Sequence[int]) -> dict[str, Any]:
  """One molecule as written: {'atoms', 'stable_atoms', 'stable' (the reference
  table), 'stable_atoms_ours', 'stable_ours', 'valid', 'connected', 'smiles' (None
  unless valid)}."""
  mol = bonds_lib.to_rdkit(atomic_numbers, None, bonds, bond_orders, formal_charges)
  Chem.FastFindRings(mol)  # Ring information, which kekulizing (ours) reads.
  stable_atoms, stable = valency.molecule_stability(mol, len(atomic_numbers), TABLE)
  ours_atoms, ours = valency.molecule_stability(mol, len(atomic_numbers), OTHER_TABLE)
  checked = Chem.Mol(mol)
  try:
    Chem.SanitizeMol(checked)
    smiles = Chem.MolToSmiles(checked)
  except (ValueError, RuntimeError):  # Sanitization errors: not a valid molecule.
    smiles = None
  return {'atoms': len(atomic_numbers), 'stable_atoms': stable_atoms, 'stable': stable,
          'stable_atoms_ours': ours_atoms, 'stable_ours': ours, 'valid': smiles is not None,
          'connected': len(Chem.GetMolFrags(mol)) == 1 if len(atomic_numbers) else False,
          'smiles': smiles}


def evaluate(molecules: Sequence[dict], atomic_numbers: Sequence[int]) -> dict[str, Any]:
  """The own-bond figures of molecule dicts (`types` indices into `atomic_numbers`,
  `bonds`, `bond_orders`, `formal_charges`), each with its count and 95% interval.

  Returns:
    {'molecules', 'mol_stability', 'validity', 'connectivity',
    'valid_and_connected' (shares: value, lo, hi, n), 'atom_stability' (value, a
    bootstrap interval over molecules, n_atoms), 'table', and 'ours': the two
    stabilities by edm_zoo's table, with its name}.

  Raises:
    ValueError: a molecule without bonds.
  """
  z_of = np.asarray(atomic_numbers)
  judged = []
  for i, m in enumerate(molecules):
    if 'bonds' not in m:
      raise ValueError(f'molecule {i} has no bonds of its own to judge.')
    judged.append(judge(z_of[np.asarray(m['types'], np.int64)], m['bonds'],
                        m['bond_orders'], m['formal_charges']))
  column = lambda key: np.array([j[key] for j in judged])
  valid, connected = column('valid').astype(bool), column('connected').astype(bool)
  return {
      'molecules': len(judged),
      'mol_stability': intervals.share(column('stable').astype(bool)),
      'atom_stability': intervals.atom_share(column('stable_atoms'), column('atoms')),
      'validity': intervals.share(valid),
      'connectivity': intervals.share(connected),
      'valid_and_connected': intervals.share(valid & connected),
      'table': valency.describe(TABLE),
      'ours': {'mol_stability': intervals.share(column('stable_ours').astype(bool)),
               'atom_stability': intervals.atom_share(column('stable_atoms_ours'),
                                                      column('atoms')),
               'table': valency.describe(OTHER_TABLE)},
  }


def format_table(report: dict[str, Any]) -> str:
  """The own-bond figures as a Markdown table."""
  pct = lambda s: f"{100 * s['value']:.1f}% [{100 * s['lo']:.1f}, {100 * s['hi']:.1f}]"
  rows = [('molecule stability (own bonds and charges)', pct(report['mol_stability']),
           f"{report['mol_stability']['n']:,}"),
          ('atom stability (own bonds and charges)', pct(report['atom_stability']),
           f"{report['atom_stability']['n_atoms']:,} atoms"),
          ("molecule stability, edm_zoo's Kekulé table", pct(report['ours']['mol_stability']),
           f"{report['ours']['mol_stability']['n']:,}"),
          ("atom stability, edm_zoo's Kekulé table", pct(report['ours']['atom_stability']),
           f"{report['ours']['atom_stability']['n_atoms']:,} atoms"),
          ('validity (RDKit sanitizes the molecule as written)', pct(report['validity']),
           f"{report['validity']['n']:,}"),
          ('connectivity (one fragment)', pct(report['connectivity']),
           f"{report['connectivity']['n']:,}"),
          ('valid and connected', pct(report['valid_and_connected']),
           f"{report['valid_and_connected']['n']:,}")]
  lines = ['| own bonds | value [95% interval] | n |', '|---|---|---|']
  lines += [f'| {a} | {b} | {c} |' for a, b, c in rows]
  lines.append(f"note: valency table: {report['table']}; beside it "
               f"{report['ours']['table']}")
  return '\n'.join(lines)
