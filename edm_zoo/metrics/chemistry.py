"""Chemistry checks beside EDM's paper-comparable row (docs/metrics.md).

EDM's metrics assign bonds from distance tables and count valences against a
table of one valence per element; they stay as they are
(`edm_zoo.metrics.stability`, `rdkit_metrics`). The checks here ask whether a
molecule is chemically sound, with the field's own tools:

  * `perceive`: RDKit's bond perception (`rdDetermineBonds.DetermineBonds`, the
    xyz2mol algorithm: connectivity from extended Hückel, then a Kekulé bond-order
    assignment with formal charges for a neutral molecule).
  * `valency_stability`: every atom's valence in that Kekulé structure (aromatic
    bonds as the 1 or 2 they stand for, never as 1.5 cast to an integer) against
    `VALENCES`, keyed by element *and* formal charge: a neutral carbon needs 4,
    a nitrogen 3 (4 only as N+), and charged carbon is never accepted. A
    molecule passes when every atom does and its formal charges sum to 0.
  * `posebusters`: PoseBusters' molecule checks (its 'mol' configuration).
  * `mmff_strain` / `xtb_strain`: relaxation by MMFF94 (RDKit) and by GFN2-xTB
    (tblite, minimised with scipy's L-BFGS): the energy drop and the heavy-atom
    RMSD between the generated and the relaxed geometry.

`evaluate` runs them on a list of molecules (positions, element symbols), per
molecule in parallel processes, and summarises each figure with its sample
count and a 95% interval.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from typing import Any, Sequence

import numpy as np
import tqdm
from rdkit import Chem
from rdkit import RDLogger
from rdkit.Chem import AllChem, rdDetermineBonds, rdMolAlign
from scipy import optimize

from edm_zoo.metrics import intervals

RDLogger.DisableLog('rdApp.*')

# Allowed valences (sum of Kekulé bond orders plus hydrogens) per (element,
# formal charge). Neutral states are the usual ones; the charged states are those
# of stable closed-shell molecules (ammonium / nitro N+, alkoxide / nitro O-,
# oxonium O+, sulfonium S+, phosphonium P+, borate B-). No charged or
# three-valent carbon: a carbocation, carbanion or radical is not a molecule a
# generator should count as stable.
VALENCES: dict[tuple[str, int], tuple[int, ...]] = {
    ('H', 0): (1,), ('C', 0): (4,),
    ('N', 0): (3,), ('N', 1): (4,), ('N', -1): (2,),
    ('O', 0): (2,), ('O', 1): (3,), ('O', -1): (1,),
    ('F', 0): (1,), ('Cl', 0): (1,), ('Br', 0): (1,), ('I', 0): (1,),
    ('S', 0): (2, 4, 6), ('S', 1): (3,), ('S', -1): (1,),
    ('P', 0): (3, 5), ('P', 1): (4,),
    ('B', 0): (3,), ('B', -1): (4,), ('Si', 0): (4,),
}
HARTREE_KCAL = 627.509474
BOHR = 0.529177210903
# xyz2mol's bond-order search grows fast with size; larger molecules are skipped
# with their reason (QM9 <= 29 atoms, GEOM-Drugs < 100 heavy atoms).
MAX_PERCEIVE_ATOMS = 200
XTB_MAX_STEPS = 200
POSEBUSTERS_CHUNK = 25
GEOMETRY_CHECKS = ('sanitization', 'all_atoms_connected', 'no_radicals', 'bond_lengths',
                   'bond_angles', 'internal_steric_clash', 'aromatic_ring_flatness',
                   'non-aromatic_ring_non-flatness', 'double_bond_flatness')
ENERGY_CHECKS = ('internal_energy',)


def molecule_from_xyz(positions: np.ndarray, symbols: Sequence[str]) -> Chem.Mol:
  """An RDKit molecule of atoms and a conformer, no bonds."""
  mol = Chem.RWMol()
  for s in symbols:
    mol.AddAtom(Chem.Atom(str(s)))
  conf = Chem.Conformer(len(symbols))
  for i, p in enumerate(np.asarray(positions, np.float64)):
    conf.SetAtomPosition(i, p.tolist())
  mol.AddConformer(conf, assignId=True)
  return mol.GetMol()


def perceive(positions: np.ndarray, symbols: Sequence[str]) -> tuple[Chem.Mol | None, str]:
  """(molecule with RDKit's bonds and formal charges, '') or (None, why not)."""
  if len(symbols) > MAX_PERCEIVE_ATOMS:
    return None, f'more than {MAX_PERCEIVE_ATOMS} atoms'
  mol = Chem.Mol(molecule_from_xyz(positions, symbols))
  try:
    # Connectivity from extended Hückel rather than covalent radii: 300 of 300 QM9
    # test molecules perceived, against 282 by radii (docs/metrics.md).
    rdDetermineBonds.DetermineBonds(mol, charge=0, useHueckel=True)
    Chem.SanitizeMol(mol)
  except (ValueError, RuntimeError) as e:  # RDKit's perception and sanitization errors.
    return None, (str(e).strip().splitlines() or [type(e).__name__])[0]
  return mol, ''


def atom_valences(mol: Chem.Mol) -> list[tuple[str, int, int]]:
  """(element, formal charge, valence) per atom of the molecule's Kekulé form."""
  kekule = Chem.Mol(mol)
  Chem.Kekulize(kekule, clearAromaticFlags=True)
  out = []
  for atom in kekule.GetAtoms():
    order = sum(b.GetBondTypeAsDouble() for b in atom.GetBonds())
    out.append((atom.GetSymbol(), atom.GetFormalCharge(),
                int(round(order)) + atom.GetTotalNumHs()))
  return out


def valency_stability(mol: Chem.Mol | None, n_atoms: int) -> tuple[int, bool]:
  """(atoms with an allowed valence, whether the molecule is stable); a molecule
  RDKit could not perceive has none."""
  if mol is None:
    return 0, False
  valences = atom_valences(mol)
  ok = [v in VALENCES.get((s, c), ()) for s, c, v in valences]
  neutral = sum(c for _, c, _ in valences) == 0
  return int(sum(ok)), bool(all(ok) and neutral and len(ok) == n_atoms)


def _heavy_rmsd(mol: Chem.Mol, before: np.ndarray, after: np.ndarray) -> float:
  """RMSD of the heavy atoms between two geometries of `mol` after RDKit's best
  rigid superposition."""
  heavy = [(a.GetIdx(), a.GetIdx()) for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
  if len(heavy) < 2:
    return 0.0
  pair = Chem.Mol(mol)
  pair.RemoveAllConformers()
  for positions in (before, after):
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(np.asarray(positions, np.float64)):
      conf.SetAtomPosition(i, p.tolist())
    pair.AddConformer(conf, assignId=True)
  return float(rdMolAlign.AlignMol(pair, pair, prbCid=1, refCid=0, atomMap=heavy))


def mmff_strain(mol: Chem.Mol) -> dict[str, Any]:
  """MMFF94 relaxation of a perceived molecule: {'energy_drop' (kcal/mol),
  'rmsd' (Å)} or {'skipped': why}."""
  m = Chem.Mol(mol)
  if not AllChem.MMFFHasAllMoleculeParams(m):
    return {'skipped': 'no MMFF94 parameters'}
  props = AllChem.MMFFGetMoleculeProperties(m)
  ff = AllChem.MMFFGetMoleculeForceField(m, props)
  before = m.GetConformer().GetPositions()
  e0 = ff.CalcEnergy()
  ff.Minimize(maxIts=2000)
  e1 = ff.CalcEnergy()
  return {'energy_drop': float(e0 - e1),
          'rmsd': _heavy_rmsd(m, before, m.GetConformer().GetPositions())}


def xtb_strain(mol: Chem.Mol) -> dict[str, Any]:
  """GFN2-xTB relaxation of a perceived molecule at its total formal charge
  (tblite energies and gradients, scipy L-BFGS, at most XTB_MAX_STEPS steps):
  {'energy_drop' (kcal/mol), 'rmsd' (Å), 'converged'} or {'skipped': why}."""
  try:
    from tblite.interface import Calculator  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {'skipped': f'tblite is not installed ({e})'}
  numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int64)
  x0 = mol.GetConformer().GetPositions() / BOHR
  calc = Calculator('GFN2-xTB', numbers, x0, charge=float(Chem.GetFormalCharge(mol)))
  calc.set('verbosity', 0)

  def energy(flat):
    calc.update(flat.reshape(-1, 3))
    res = calc.singlepoint()
    return res.get('energy'), res.get('gradient').ravel()
  try:
    e0, _ = energy(x0.ravel())
    out = optimize.minimize(energy, x0.ravel(), jac=True, method='L-BFGS-B',
                            options={'maxiter': XTB_MAX_STEPS, 'gtol': 1e-4})
  except RuntimeError as e:  # SCF failures.
    return {'skipped': f'xTB failed ({str(e).splitlines()[0] if str(e) else "RuntimeError"})'}
  return {'energy_drop': float((e0 - out.fun) * HARTREE_KCAL),
          'rmsd': _heavy_rmsd(mol, x0 * BOHR, out.x.reshape(-1, 3) * BOHR),
          'converged': bool(out.success)}


def check_one(positions: np.ndarray, symbols: Sequence[str], xtb: bool) -> dict[str, Any]:
  """Every per-molecule check of one molecule (run in a worker process)."""
  start = time.perf_counter()
  mol, why = perceive(positions, symbols)
  seconds = {'perceive': time.perf_counter() - start}
  stable_atoms, stable = valency_stability(mol, len(symbols))
  out = {'perceived': mol is not None, 'why': why, 'atoms': len(symbols),
         'valency_stable_atoms': stable_atoms, 'valency_stable': stable,
         'molblock': Chem.MolToMolBlock(mol) if mol is not None else None}
  if mol is not None:
    start = time.perf_counter()
    out['mmff'] = mmff_strain(mol)
    seconds['mmff'] = time.perf_counter() - start
    if xtb:
      start = time.perf_counter()
      out['xtb'] = xtb_strain(mol)
      seconds['xtb'] = time.perf_counter() - start
  out['seconds'] = seconds
  return out


def _posebusters_config(energy: bool) -> dict[str, Any]:
  """PoseBusters' 'mol' configuration, with only its energy-ratio modules
  (`energy`) or without them."""
  import posebusters as pb_package  # pylint: disable=g-import-not-at-top
  import yaml  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(pb_package.__file__), 'config', 'mol.yml')
  with open(path) as f:
    config = yaml.safe_load(f)
  keep = lambda m: (m['function'] == 'energy_ratio') == energy or m['function'] == 'loading'
  return {**config, 'modules': [m for m in config['modules'] if keep(m)]}


def posebusters(molblocks: Sequence[str | None], energy: bool = False
                ) -> tuple[dict[str, np.ndarray], str]:
  """({check: [n] bool (False where no molecule)}, '') or ({}, why it cannot run).

  Args:
    molblocks: perceived molecules (None where RDKit could not perceive one).
    energy: run only PoseBusters' energy-ratio check (it embeds an ensemble of
      RDKit conformers per molecule, ~1 s each) instead of the others.
  """
  try:
    from posebusters import PoseBusters  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {}, f'posebusters is not installed ({e})'
  names = ENERGY_CHECKS if energy else GEOMETRY_CHECKS
  index = [i for i, b in enumerate(molblocks) if b is not None]
  out = {c: np.zeros(len(molblocks), bool) for c in names}
  if not index:
    return out, ''
  mols = [Chem.MolFromMolBlock(molblocks[i], removeHs=False) for i in index]
  frame = PoseBusters(config=_posebusters_config(energy)).bust(mols, full_report=False)
  for c in names:
    if c in frame.columns:
      out[c][index] = frame[c].to_numpy(bool)
  return out, ''


def _bust(args):
  return posebusters(*args)


def _quiet() -> None:
  """A worker's C-level stdout and stderr to /dev/null: YAeHMOP (RDKit's Hückel)
  prints a warning per short contact, PoseBusters one per molecule whose conformer
  ensemble fails (the parent still receives a worker's exceptions)."""
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)
  os.dup2(devnull, 2)


def default_workers() -> int:
  return max(1, min(len(os.sched_getaffinity(0)), 8))


def evaluate(molecules: Sequence[tuple[np.ndarray, Sequence[str]]], *, xtb_molecules: int = 20,
             energy_molecules: int = 100, workers: int = 0, progress: bool = False
             ) -> dict[str, Any]:
  """The chemistry checks of a list of (positions [n, 3] Å, element symbols).

  Args:
    molecules: the molecules, generated or from a split.
    xtb_molecules: GFN2-xTB relaxes the perceived ones among the first this many
      molecules (0: none).
    energy_molecules: PoseBusters' energy-ratio check runs on the first this many.
    workers: processes for the per-molecule checks (0: the CPUs this process may use, at
      most 8).
    progress: a progress bar.

  Returns:
    {'valency', 'posebusters', 'mmff', 'xtb', 'seconds_per_molecule', 'notes'}: each
    share with its count and 95% interval, each strain figure's median, quartiles and
    the median's interval.
  """
  workers = workers or default_workers()
  jobs = [(np.asarray(p, np.float64), list(s), i < xtb_molecules)
          for i, (p, s) in enumerate(molecules)]
  # xTB relaxes the perceived ones among the first xtb_molecules: a subset fixed by
  # the molecules' order, not by the number of workers.
  start = time.perf_counter()
  # Not fork: the caller (eval.py) runs JAX, whose threads a forked child would inherit.
  context = multiprocessing.get_context('forkserver')
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                              initializer=_quiet) as pool:
    results = list(tqdm.tqdm(pool.map(check_one, *zip(*jobs), chunksize=8), total=len(jobs),
                             disable=not progress, desc='chemistry', unit='mol',
                             leave=False)) if jobs else []
    checks_seconds = time.perf_counter() - start
    start = time.perf_counter()
    blocks = [r['molblock'] for r in results]
    # PoseBusters in chunks over the same processes; its energy ratio (an ensemble
    # of conformers per molecule) on the perceived ones among the first
    # energy_molecules.
    chunk = lambda seq: [seq[i:i + POSEBUSTERS_CHUNK]
                         for i in range(0, len(seq), POSEBUSTERS_CHUNK)]
    energy_blocks = blocks[:energy_molecules]
    tasks = ([(c, False) for c in chunk(blocks)] + [(c, True) for c in chunk(energy_blocks)])
    parts = list(tqdm.tqdm(pool.map(_bust, tasks), total=len(tasks), disable=not progress,
                           desc='PoseBusters', unit='chunk', leave=False))
  pb_seconds = time.perf_counter() - start
  pb_note = next((note for _, note in parts if note), '')
  geometry = [p for (p, _), (_, energy) in zip(parts, tasks) if not energy]
  energetic = [p for (p, _), (_, energy) in zip(parts, tasks) if energy]
  join = lambda ps, names: {c: np.concatenate([p[c] for p in ps]) if ps else np.zeros(0, bool)
                            for c in names}
  n = len(results)
  perceived = np.array([r['perceived'] for r in results], bool)
  atoms = np.array([r['atoms'] for r in results])
  stable_atoms = np.array([r['valency_stable_atoms'] for r in results])
  report: dict[str, Any] = {'molecules': n, 'notes': []}
  report['valency'] = {
      'perceived': intervals.share(perceived),
      'mol_stability': intervals.share(np.array([r['valency_stable'] for r in results], bool)),
      'atom_stability': intervals.atom_share(stable_atoms, atoms),
      'table': 'edm_zoo.metrics.chemistry.VALENCES (Kekulé valence by element and charge)'}
  if pb_note:
    report['notes'].append(f'PoseBusters skipped: {pb_note}')
  else:
    all_pass = perceived.copy()
    pb = {}
    for c, flags in join(geometry, GEOMETRY_CHECKS).items():
      pb[c] = intervals.share(flags)
      all_pass &= flags
    pb['all_but_energy'] = intervals.share(all_pass)
    for c, flags in join(energetic, ENERGY_CHECKS).items():
      pb[c] = intervals.share(flags)
    report['posebusters'] = pb
    report['posebusters_energy_subset'] = (
        f'the first {min(energy_molecules, n)} molecules (not perceived: fail)')
  for name in ('mmff', 'xtb'):
    done = [r[name] for r in results if name in r and 'skipped' not in r[name]]
    skipped = [r[name]['skipped'] for r in results if name in r and 'skipped' in r[name]]
    report[name] = {'energy_drop_kcal_mol': intervals.quartiles([d['energy_drop'] for d in done]),
                    'heavy_atom_rmsd_angstrom': intervals.quartiles([d['rmsd'] for d in done]),
                    'molecules': len(done), 'skipped': len(skipped)}
    if skipped:
      report['notes'].append(f'{name}: {len(skipped)} skipped ({skipped[0]})')
  report['xtb']['subset'] = (f'the perceived ones among the first {xtb_molecules} molecules'
                             if xtb_molecules else 'none (--xtb_molecules=0)')
  per = lambda key: float(np.mean([r['seconds'].get(key, 0.0) for r in results])) if n else 0.0
  report['seconds_per_molecule'] = {
      'perceive': per('perceive'), 'mmff': per('mmff'), 'xtb_per_relaxed': (
          float(np.mean([r['seconds']['xtb'] for r in results if 'xtb' in r['seconds']]))
          if any('xtb' in r['seconds'] for r in results) else 0.0),
      'posebusters': pb_seconds / max(n, 1), 'wall_checks': checks_seconds / max(n, 1),
      'workers': workers}
  return report


def format_table(report: dict[str, Any]) -> str:
  """The chemistry checks as a Markdown table: each figure, its 95% interval and n."""
  pct = lambda s: (f"{100 * s['value']:.1f}% [{100 * s['lo']:.1f}, {100 * s['hi']:.1f}]",
                   s['n'])
  rows = [('perceived by RDKit (xyz2mol)', *pct(report['valency']['perceived'])),
          ('valency-table molecule stability', *pct(report['valency']['mol_stability']))]
  a = report['valency']['atom_stability']
  rows.append(('valency-table atom stability',
               f"{100 * a['value']:.1f}% [{100 * a['lo']:.1f}, {100 * a['hi']:.1f}]",
               a['n_atoms']))
  for check, s in report.get('posebusters', {}).items():
    rows.append((f'PoseBusters: {check}', *pct(s)))
  for name, label in (('mmff', 'MMFF94'), ('xtb', 'GFN2-xTB')):
    for key, unit in (('energy_drop_kcal_mol', 'energy drop (kcal/mol)'),
                      ('heavy_atom_rmsd_angstrom', 'heavy-atom RMSD (Å)')):
      q = report.get(name, {}).get(key, {'n': 0})
      if q['n']:
        rows.append((f'{label} relaxation: {unit}, median [95%] (quartiles)',
                     f"{q['median']:.3g} [{q['median_lo']:.3g}, {q['median_hi']:.3g}] "
                     f"({q['q1']:.3g}-{q['q3']:.3g})", q['n']))
  lines = ['| check | value [95% interval] | n |', '|---|---|---|']
  lines += [f'| {a} | {b} | {c:,} |' for a, b, c in rows]
  lines += [f'note: {n}' for n in report.get('notes', [])]
  return '\n'.join(lines)
