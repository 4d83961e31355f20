"""Valency tables as functions of (element, formal charge, bond orders).

One atom is judged by `atom_allowed(symbol, charge, orders, table)`, where
`orders` lists the orders of its bonds (1, 2, 3, or `AROMATIC` = 1.5), one 1 per
hydrogen included. The same function judges the bonds RDKit perceived from
coordinates (`edm_zoo.metrics.chemistry`) and the bonds a model writes itself.

Two tables, named apart so that neither figure is mistaken for the other:

  * `REFERENCE` ('reference'): `geom_drugs_h_tuple_valencies` of "GEOM-Drugs
    Revisited" (Nikitin et al. 2025, isayevlab/geom-drugs-3dgen-evaluation,
    geom_utils/geom_drugs_valency_table.py), exactly: an atom is a pair
    (number of aromatic bonds, integer sum of its other bond orders), looked up by
    element and charge. Its figures are comparable with that benchmark and the
    papers that print it. `tests/test_valency_reference.py` checks the verdicts
    against ones written by the reference's own code.
  * `OURS` ('ours'): Kekulé valences of closed-shell molecules
    (docs/metrics.md lists every entry where it differs from the reference and
    why). Aromatic bonds are read through a Kekulé structure of the whole
    molecule (`kekule_orders`), so benzene's carbons have valence 4.

Neither table has a net-charge rule: a perceived molecule is neutral by
construction, and a model's own molecule may be an ion, as GEOM-Drugs' are.
"""

from __future__ import annotations

from typing import Sequence

from rdkit import Chem

AROMATIC = 1.5

# (n aromatic bonds, integer sum of the other bond orders) per element and charge,
# transcribed from the reference's geom_drugs_h_tuple_valencies.
REFERENCE: dict[str, dict[int, tuple[tuple[int, int], ...]]] = {
    'Br': {0: ((0, 1),), 1: ((0, 2),)},
    'C': {0: ((0, 4), (2, 2), (2, 1), (3, 0)), -1: ((0, 3), (2, 1), (3, 0)),
          1: ((0, 3), (2, 1), (3, 0))},
    'N': {0: ((0, 3), (2, 0), (2, 1), (3, 0)), 1: ((0, 4), (2, 0), (2, 1), (2, 2), (3, 0)),
          -1: ((0, 2), (2, 0)), -2: ((0, 1),)},
    'H': {0: ((0, 1),)},
    'S': {0: ((0, 2), (0, 3), (0, 6), (2, 0)), 1: ((0, 3), (2, 0), (2, 1), (3, 0)),
          2: ((0, 4), (2, 1), (2, 2)), 3: ((0, 2), (0, 5)), -1: ((0, 1),)},
    'O': {0: ((0, 2), (2, 0)), -1: ((0, 1),), 1: ((0, 3),)},
    'F': {0: ((0, 1),)},
    'Cl': {0: ((0, 1),), 1: ((0, 2),)},
    'P': {0: ((0, 3), (0, 5)), 1: ((0, 4),)},
    'I': {0: ((0, 1),), 1: ((0, 2),), 2: ((0, 3),)},
    'Si': {0: ((0, 4),), 1: ((0, 5),)},
    'B': {-1: ((0, 4),), 0: ((0, 3),)},
    'Bi': {0: ((0, 3),), 2: ((0, 5),)},
}

# Kekulé valences (sum of bond orders, hydrogens included) of closed-shell atoms,
# per (element, charge). An entry of bond-order tuples instead of integers
# accepts exactly those bond patterns: a carbanion only as the triple-bonded
# terminal carbon of an isocyanide (C[N+]#[C-]) or carbon monoxide ([C-]#[O+]),
# never as the three-bonded C- that xyz2mol writes to pair up two radicals.
OURS: dict[tuple[str, int], tuple[int, ...] | tuple[tuple[int, ...], ...]] = {
    ('H', 0): (1,),
    ('C', 0): (4,), ('C', -1): ((3,),),
    ('N', 0): (3,), ('N', 1): (4,), ('N', -1): (2,),
    ('O', 0): (2,), ('O', 1): (3,), ('O', -1): (1,),
    ('F', 0): (1,),
    ('Cl', 0): (1,), ('Cl', 1): (2,), ('Br', 0): (1,), ('Br', 1): (2,),
    ('I', 0): (1, 3), ('I', 1): (2,),
    ('S', 0): (2, 4, 6), ('S', 1): (3,), ('S', -1): (1,),
    ('P', 0): (3, 5), ('P', 1): (4,),
    ('B', 0): (3,), ('B', -1): (4,),
    ('Si', 0): (4,),
    ('Al', 0): (3,), ('As', 0): (3, 5), ('Hg', 0): (2,), ('Bi', 0): (3, 5),
}

TABLES = ('ours', 'reference')
_NAMES = {'ours': "edm_zoo's Kekulé table (edm_zoo.metrics.valency.OURS)",
          'reference': 'GEOM-Drugs Revisited, geom_drugs_h_tuple_valencies '
                       '(edm_zoo.metrics.valency.REFERENCE)'}


def describe(table: str) -> str:
  """The table's name as reports print it."""
  return _NAMES[_check_table(table)]


def _check_table(table: str) -> str:
  if table not in TABLES:
    raise ValueError(f'unknown valency table {table!r}; allowed: {list(TABLES)}.')
  return table


def atom_allowed(symbol: str, charge: int, orders: Sequence[float], table: str) -> bool:
  """Whether an atom with these bonds is allowed by `table`.

  Args:
    symbol: element symbol ('C', 'Cl').
    charge: formal charge.
    orders: the orders of every bond of the atom (1, 2, 3, or AROMATIC), one 1
      per hydrogen; for 'ours' a Kekulé structure (no AROMATIC).
    table: 'ours' or 'reference'.
  """
  _check_table(table)
  if table == 'reference':
    aromatic = sum(1 for o in orders if o == AROMATIC)
    # int() of the float sum, as the reference does.
    other = int(float(sum(o for o in orders if o != AROMATIC)))
    return (aromatic, other) in REFERENCE.get(symbol, {}).get(int(charge), ())
  if any(o == AROMATIC for o in orders):
    raise ValueError("the 'ours' table reads Kekulé bond orders: kekulize the molecule "
                     '(valency.kekule_orders) before judging it.')
  allowed = OURS.get((symbol, int(charge)), ())
  valence = int(round(sum(orders)))
  pattern = tuple(sorted(int(round(o)) for o in orders))
  return any(pattern == a if isinstance(a, tuple) else valence == a for a in allowed)


def _orders(mol: Chem.Mol) -> list[list[float]]:
  """Per atom, its bond orders as written (aromatic as 1.5) plus a 1 per implicit
  or property hydrogen (none where every hydrogen is an atom)."""
  out = [[1.0] * a.GetTotalNumHs() for a in mol.GetAtoms()]
  for b in mol.GetBonds():
    order = b.GetBondTypeAsDouble()  # AROMATIC for an aromatic bond.
    out[b.GetBeginAtomIdx()].append(order)
    out[b.GetEndAtomIdx()].append(order)
  return out


def kekule_orders(mol: Chem.Mol) -> list[list[float]] | None:
  """Per atom, its Kekulé bond orders (hydrogens as 1s); None where RDKit cannot
  kekulize the molecule."""
  kekule = Chem.Mol(mol)
  try:
    Chem.Kekulize(kekule, clearAromaticFlags=True)
  except (ValueError, RuntimeError):  # KekulizeException is a ValueError.
    return None
  return _orders(kekule)


def molecule_stability(mol: Chem.Mol | None, n_atoms: int, table: str) -> tuple[int, bool]:
  """(atoms `table` allows, whether all `n_atoms` are allowed) of a molecule with
  bonds and formal charges; a missing molecule (not perceived) has none.

  'reference' reads aromatic bonds as written (1.5); 'ours' reads the Kekulé
  structure, and a molecule that cannot be kekulized leaves every atom of an
  aromatic bond unstable.
  """
  _check_table(table)
  if mol is None:
    return 0, False
  orders = _orders(mol)
  if table == 'ours':
    kekule = kekule_orders(mol)
    if kekule is None:  # Aromatic bonds with no Kekulé structure: those atoms fail.
      orders = [None if any(o == AROMATIC for o in per) else per for per in orders]
    else:
      orders = kekule
  ok = [per is not None and atom_allowed(a.GetSymbol(), a.GetFormalCharge(), per, table)
        for a, per in zip(mol.GetAtoms(), orders)]
  return int(sum(ok)), bool(all(ok) and len(ok) == n_atoms)
