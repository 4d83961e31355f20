"""95% intervals for the zoo's sample metrics: Wilson intervals for per-molecule
proportions, bootstrap intervals over whole molecules for per-atom shares and for
medians (the atoms of one molecule are not independent)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edm_zoo.metrics import rdkit_metrics, stability


def stability_outcomes(molecules, elements) -> dict[str, np.ndarray]:
  """Per molecule (EDM's stability): stable atoms, atoms, whether it is stable."""
  per = [stability.check_stability(p, t, elements) for p, t in molecules]
  return {'stable_atoms': np.array([s for _, s, _ in per], np.int64),
          'atoms': np.array([n for _, _, n in per], np.int64),
          'mol_stable': np.array([m for m, _, _ in per], bool)}


def molecule_outcomes(molecules, elements, single_bonds: bool = False
                      ) -> dict[str, np.ndarray]:
  """Per molecule (EDM's metrics): stable atoms, atoms, molecule stable, valid, and
  its SMILES (`single_bonds` as the dataset scores validity)."""
  smiles = rdkit_metrics.valid_smiles(molecules, elements, single_bonds=single_bonds)
  return {**stability_outcomes(molecules, elements),
          'valid': np.array([s is not None for s in smiles], bool),
          'smiles': np.array([s or '' for s in smiles], object)}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """The Wilson score interval of a proportion k / n (95% for z = 1.96)."""
  if n == 0:
    return 0.0, 1.0
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def metrics_with_intervals(outcomes: dict[str, np.ndarray], *, resamples: int = 1000,
                           seed: int = 0) -> dict[str, float]:
  """The four metrics with 95% intervals: Wilson intervals for the per-molecule
  proportions (molecule stability, validity), a bootstrap over whole molecules
  for atom stability (the atoms of one molecule are not independent).

  Uniqueness (distinct SMILES among the valid ones) gets no interval: it is not
  a share of independent trials, and a bootstrap over molecules would invent
  duplicates (a resample with replacement repeats about a third of its
  molecules), so its `uniqueness_lo` / `uniqueness_hi` are None.
  """
  o = outcomes
  n = len(o['valid'])
  valid = int(o['valid'].sum())
  counts = {'mol_stability': (int(o['mol_stable'].sum()), n), 'validity': (valid, n)}
  out: dict[str, Any] = {'molecules': n}
  for key, (k, m) in counts.items():
    out[key] = k / max(m, 1)
    out[f'{key}_lo'], out[f'{key}_hi'] = wilson_interval(k, m)
  out['uniqueness'] = len(set(o['smiles'][o['valid']])) / max(valid, 1)
  out['uniqueness_lo'] = out['uniqueness_hi'] = None
  ratio = lambda index: o['stable_atoms'][index].sum() / max(o['atoms'][index].sum(), 1)
  out['atom_stability'] = float(ratio(np.arange(n)))
  rng = np.random.default_rng(seed)
  boot = [ratio(rng.integers(0, n, n)) for _ in range(resamples)]
  out['atom_stability_lo'], out['atom_stability_hi'] = (
      float(v) for v in np.percentile(boot, [2.5, 97.5]))
  return out


def share(flags: np.ndarray) -> dict[str, float]:
  """A proportion with its count and 95% Wilson interval."""
  k, n = int(np.sum(flags)), int(len(flags))
  lo, hi = wilson_interval(k, n)
  return {'value': k / max(n, 1), 'lo': lo, 'hi': hi, 'n': n}


def share_run(outcomes: np.ndarray, why_not_run: str = '') -> dict[str, Any]:
  """A pass rate over the checks that ran: `outcomes` 1 pass, 0 fail, NaN did not
  run. Those that did not run are counted apart (`not_run`, with the first
  reason), never inside the rate."""
  outcomes = np.asarray(outcomes, np.float64)
  ran = ~np.isnan(outcomes)
  out: dict[str, Any] = {**share(outcomes[ran] == 1), 'not_run': int((~ran).sum())}
  if out['not_run']:
    out['not_run_why'] = why_not_run or 'no reason given'
  return out


def atom_share(stable: np.ndarray, atoms: np.ndarray, seed: int = 0,
               resamples: int = 1000) -> dict[str, float]:
  """The share of stable atoms over molecules, with a bootstrap over whole molecules."""
  stable, atoms = np.asarray(stable), np.asarray(atoms)
  value = float(stable.sum() / max(atoms.sum(), 1))
  if not len(atoms):
    return {'value': value, 'lo': 0.0, 'hi': 1.0, 'n_atoms': 0}
  idx = np.random.default_rng(seed).integers(0, len(atoms), (resamples, len(atoms)))
  lo, hi = np.percentile(stable[idx].sum(1) / np.maximum(atoms[idx].sum(1), 1), [2.5, 97.5])
  return {'value': value, 'lo': float(lo), 'hi': float(hi), 'n_atoms': int(atoms.sum())}


def quartiles(values: Sequence[float], seed: int = 0, resamples: int = 1000
              ) -> dict[str, float]:
  """Median, quartiles and mean, with a bootstrap 95% interval of the median."""
  v = np.asarray(values, np.float64)
  if not len(v):
    return {'n': 0}
  rng = np.random.default_rng(seed)
  boot = np.median(v[rng.integers(0, len(v), (resamples, len(v)))], axis=1)
  q1, med, q3 = np.percentile(v, [25, 50, 75])
  lo, hi = np.percentile(boot, [2.5, 97.5])
  return {'median': float(med), 'q1': float(q1), 'q3': float(q3), 'median_lo': float(lo),
          'median_hi': float(hi), 'mean': float(v.mean()), 'n': int(len(v))}
