"""EDM's bond tables (qm9/bond_analyze.py, commit fce07d7): the one home of them.

Typical bond lengths (pm) for single, double and triple bonds, the margins added
to them, and the allowed valences. `bond_tables.json` beside this file is the data.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bond_tables.json')


@functools.lru_cache(maxsize=None)
def tables() -> dict:
  with open(_PATH) as f:
    return json.load(f)


@functools.lru_cache(maxsize=None)
def thresholds(elements: tuple[str, ...]) -> np.ndarray:
  """float32 [3, K, K]: single/double/triple thresholds in pm (length + margin).

  -inf where a pair has no such bond (a single-bond entry missing means the pair
  never bonds, as EDM's `check_exists`).
  """
  t = tables()
  margins = t['margins_pm']
  out = np.full((3, len(elements), len(elements)), -np.inf, np.float64)
  for k, (table, margin) in enumerate(((t['bonds1_single'], margins['single']),
                                       (t['bonds2_double'], margins['double']),
                                       (t['bonds3_triple'], margins['triple']))):
    for i, a in enumerate(elements):
      for j, b in enumerate(elements):
        if a in table and b in table[a]:
          out[k, i, j] = table[a][b] + margin
  return out.astype(np.float32)


@functools.lru_cache(maxsize=None)
def allowed_valences(elements: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
  """For each element, the bond-order sums that make it stable."""
  valence = tables()['allowed_valence']
  return tuple(tuple(v) if isinstance(v, list) else (v,)
               for v in (valence[e] for e in elements))


def bond_orders(distances_pm: np.ndarray, type_a: np.ndarray, type_b: np.ndarray,
                elements: tuple[str, ...]) -> np.ndarray:
  """EDM's `get_bond_order` elementwise: 0 none, 1 single, 2 double, 3 triple.

  Args:
    distances_pm: float32 distances in picometres.
    type_a, type_b: indices into `elements` of the two atoms (broadcastable).
    elements: the element symbols of the type indices.
  """
  thr = thresholds(elements)
  pair = (type_a, type_b)
  single = distances_pm < thr[0][pair]
  double = single & (distances_pm < thr[1][pair])
  triple = double & (distances_pm < thr[2][pair])
  return single.astype(np.int32) + double + triple
