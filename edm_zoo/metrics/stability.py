"""Atom and molecule stability from distance-inferred bonds (EDM's check_stability)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edm_zoo.metrics import bond_tables


def pair_distances(positions: np.ndarray) -> np.ndarray:
  """[n, n] float32 Angstrom distances, summed as EDM's loop does ((dx2 + dy2) + dz2)."""
  p = np.asarray(positions, np.float32)
  d = p[:, None, :] - p[None, :, :]
  sq = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]
  return np.sqrt(sq)


def bond_matrix(positions: np.ndarray, types: np.ndarray,
                elements: tuple[str, ...]) -> np.ndarray:
  """[n, n] symmetric bond orders (0 on the diagonal)."""
  dist_pm = pair_distances(positions) * np.float32(100)
  types = np.asarray(types)
  orders = bond_tables.bond_orders(dist_pm, types[:, None], types[None, :], elements)
  np.fill_diagonal(orders, 0)
  return orders


def check_stability(positions: np.ndarray, types: np.ndarray,
                    elements: tuple[str, ...]) -> tuple[bool, int, int]:
  """(molecule stable, stable atoms, atoms) for one molecule."""
  valence = bond_matrix(positions, types, elements).sum(1)
  allowed = bond_tables.allowed_valences(elements)
  stable = sum(int(v in allowed[t]) for v, t in zip(valence, types))
  return stable == len(types), stable, len(types)


def stability(molecules: Sequence[tuple[np.ndarray, np.ndarray]],
              elements: tuple[str, ...]) -> dict[str, float]:
  """Atom and molecule stability (fractions) of (positions, types) pairs."""
  mol_stable = atoms_stable = atoms = 0
  for positions, types in molecules:
    m, s, n = check_stability(positions, types, elements)
    mol_stable += int(m)
    atoms_stable += s
    atoms += n
  return {'atom_stability': atoms_stable / max(atoms, 1),
          'mol_stability': mol_stable / max(len(molecules), 1),
          'molecules': len(molecules)}
