"""Element symbols and atomic numbers: the one table, RDKit's periodic table."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from rdkit import Chem

_TABLE = Chem.GetPeriodicTable()


def atomic_number(symbol: str) -> int:
  """Z of an element symbol ('Cl' or 'CL'); 0 for what is not an element."""
  symbol = symbol.strip()
  if not symbol.isalpha():
    return 0
  try:
    return _TABLE.GetAtomicNumber(symbol.capitalize())
  except RuntimeError:
    return 0


def atomic_numbers(symbols: Sequence[str]) -> np.ndarray:
  """int64 [K] Z of each symbol; ValueError (one line) for an unknown one."""
  z = [atomic_number(s) for s in symbols]
  if 0 in z:
    raise ValueError(f'unknown element {symbols[z.index(0)]!r} among the atom types '
                     f'{list(symbols)}.')
  return np.array(z, np.int64)


def symbol(z: int) -> str:
  return _TABLE.GetElementSymbol(int(z))
