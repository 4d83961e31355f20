"""SemlaFlow's prior and equivariant optimal transport, on the host (NumPy, SciPy):
`GeometricNoiseSampler` and `GeometricInterpolant._match_mols` of
semlaflow/data/interpolate.py.

The assignment is scipy's Hungarian `linear_sum_assignment`, which has no JAX
counterpart; it runs in the input pipeline, a batch ahead of the step
(`prepare_ahead`), like the molecules' read-ahead.

Conventions (SemlaFlow's, each replayed by `edm_zoo.compat.semlaflow`):
  * A batch's prior molecules all have the batch's largest size n_max: n_max x 3
    standard normal coordinates moved to their own zero CoM, then truncated to
    the data molecule's first n atoms (so the kept atoms are not exactly centred).
  * The OT permutation minimises the summed squared distances between data atom
    i and prior atom perm[i]; the rotation R (`Rotation.align_vectors`, Kabsch,
    no centring) then maps the permuted prior onto the data: prior_i <- R prior_i.
  * Prior atom types and bond classes are uniform draws per atom and per ordered
    atom pair (the diagonal included); SemlaFlow relabels the pairs of a
    permuted prior by the permutation itself rather than its inverse (its
    `GeometricMol.permute`) and then reads its batch adjacency transposed. Both
    leave an i.i.d. uniform matrix i.i.d. uniform; `prior_bonds` follows them so
    that recorded draws replay.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.transform import Rotation

from edm_zoo.data import batching

# SemlaFlow's coordinate scale (scriptutil.py): the std of the centred coordinates.
COORD_STD = {'qm9': 1.723299503326416, 'geom_drugs': 2.407038688659668}


def coord_std(dataset: str, given: float) -> float:
  """`given`, or SemlaFlow's scale for QM9 (and its variants) and GEOM-Drugs."""
  if given:
    return float(given)
  for name, value in COORD_STD.items():
    if dataset == name or dataset.startswith(name + '_'):
      return value
  raise ValueError(f'--coord_std is needed for --dataset={dataset} (SemlaFlow gives '
                   f'it for {sorted(COORD_STD)}): the std of its centred coordinates.')


def prior_coords(normal: np.ndarray, n: int) -> np.ndarray:
  """[n, 3]: n_max x 3 standard normal `normal` to zero CoM, first n atoms kept."""
  return (normal - normal.mean(0, keepdims=True))[:n]


def ot_match(data: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(perm [n], rotation [3, 3]): prior[perm] @ rotation.T best matches `data`.

  Args:
    data: [n, 3] the data molecule (centred).
    prior: [n, 3] its prior coordinates.
  """
  cost = np.sum((data[:, None, :] - prior[None, :, :])**2, -1)
  _, perm = linear_sum_assignment(cost)
  rotation, _ = Rotation.align_vectors(data, prior[perm])
  return perm, rotation.as_matrix()


def match(data: np.ndarray, prior: np.ndarray, equivariant: bool = True) -> np.ndarray:
  """The prior coordinates SemlaFlow interpolates from: permuted and rotated onto
  the data (`equivariant`), else as drawn."""
  if not equivariant:
    return prior
  perm, rotation = ot_match(data, prior)
  return prior[perm] @ rotation.T


def prior_bonds(classes: np.ndarray, n: int, perm: np.ndarray | None = None) -> np.ndarray:
  """[n, n] prior bond classes of a molecule from the n_max x n_max uniform draws
  `classes` (row-major), after SemlaFlow's truncation, permutation and batch
  transpose (see the module docstring)."""
  direct = classes[:n, :n]
  if perm is not None:
    relabelled = np.empty_like(direct)
    relabelled[perm[:, None], perm[None, :]] = direct
    direct = relabelled
  return direct.T


def prepare_ahead(batches: Iterator, prepare: Callable, depth: int = 2) -> Iterator:
  """`prepare(item)` of each item of `batches`, computed by a background thread up
  to `depth` items ahead (so the host's assignment overlaps the device's step)."""
  return batching.ahead(batches, prepare, depth)
