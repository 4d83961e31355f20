"""Chemistry checks beside EDM's paper-comparable row (docs/metrics.md).

EDM's metrics assign bonds from distance tables and count valences against a
table of one valence per element; they stay as they are
(`edm_zoo.metrics.stability`, `rdkit_metrics`). The checks here ask whether a
molecule is chemically sound, with the field's own tools:

  * `perceive`: RDKit's bond perception (`rdDetermineBonds.DetermineBonds`, the
    xyz2mol algorithm: connectivity from extended Hückel, then a Kekulé bond-order
    assignment with formal charges for a neutral molecule).
  * valency (`edm_zoo.metrics.valency`): the perceived molecule judged by two
    tables, the reference's ("GEOM-Drugs Revisited") and ours. xyz2mol chose the
    bonds so that valences work out at total charge 0, so on perceived bonds a
    table cannot catch a wrong valence; it only accepts or refuses the charges
    perception needed ("perceived with allowed charges").
  * `posebusters`: PoseBusters' molecule checks (its 'mol' configuration). A
    check that did not run is counted apart (`not_run`), never as a pass.
  * `mmff_strain` / `xtb_strain`: relaxation by MMFF94 (RDKit) and by GFN2-xTB
    (tblite, minimised with scipy's L-BFGS): the energy drop and the RMSD (heavy
    atoms, all atoms) between the generated and the relaxed geometry, with
    whether the relaxation converged.

`evaluate` runs them on a list of molecules (positions, element symbols), per
molecule in parallel processes, and summarises each figure with its sample
count and a 95% interval.
"""

from __future__ import annotations

import ast
import concurrent.futures
import logging
import multiprocessing
import os
import sys
import time
from typing import Any, Sequence

import numpy as np
import tqdm
from rdkit import Chem
from rdkit import RDLogger
from rdkit.Chem import AllChem, rdMolAlign
from scipy import optimize

from edm_zoo.data import bonds
from edm_zoo.metrics import intervals, valency

RDLogger.DisableLog('rdApp.*')
_PERIODIC = Chem.GetPeriodicTable()

HARTREE_KCAL = 627.509474
BOHR = 0.529177210903
# The reference's MMFF limit (geom-drugs-3dgen-evaluation, compute_mmff_energy_drop).
MMFF_MAX_ITERS = 1000
# GFN2-xTB: L-BFGS until the largest gradient component is below XTB_GTOL, at
# most XTB_MAX_STEPS steps; converged when the gradient norm ends below xtb's
# 'normal' threshold (1e-3 Eh/bohr), the criterion of the reference's `xtb --opt`.
XTB_MAX_STEPS = 500
XTB_GTOL = 1e-4
XTB_CONVERGED_GNORM = 1e-3
POSEBUSTERS_CHUNK = 25
GEOMETRY_CHECKS = ('sanitization', 'inchi_convertible', 'all_atoms_connected', 'no_radicals',
                   'bond_lengths', 'bond_angles', 'internal_steric_clash',
                   'aromatic_ring_flatness', 'non-aromatic_ring_non-flatness',
                   'double_bond_flatness')
ENERGY_CHECKS = ('internal_energy',)
# The PoseBusters paper's energy-ratio threshold (the package's 'mol' configuration
# uses 100): both shares are reported, with the ratio's distribution.
PAPER_ENERGY_RATIO = 7.0


def perceive(positions: np.ndarray, symbols: Sequence[str]) -> tuple[Chem.Mol | None, str]:
  """(molecule with RDKit's bonds and formal charges, '') or (None, why not): the
  data layer's perception (`edm_zoo.data.bonds.perceive`, total charge 0)."""
  return bonds.perceive(positions, [_PERIODIC.GetAtomicNumber(str(s)) for s in symbols])


def _rmsd(mol: Chem.Mol, before: np.ndarray, after: np.ndarray, heavy: bool) -> float:
  """RMSD between two geometries of `mol` after RDKit's best rigid superposition,
  over its heavy atoms or over all atoms."""
  index = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1 or not heavy]
  if len(index) < 2:
    return 0.0
  pair = Chem.Mol(mol)
  pair.RemoveAllConformers()
  for positions in (before, after):
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(np.asarray(positions, np.float64)):
      conf.SetAtomPosition(i, p.tolist())
    pair.AddConformer(conf, assignId=True)
  return float(rdMolAlign.AlignMol(pair, pair, prbCid=1, refCid=0,
                                   atomMap=[(i, i) for i in index]))


def _strain(mol: Chem.Mol, before: np.ndarray, after: np.ndarray, drop: float,
            converged: bool) -> dict[str, Any]:
  return {'energy_drop': float(drop), 'rmsd_heavy': _rmsd(mol, before, after, True),
          'rmsd_all': _rmsd(mol, before, after, False), 'converged': bool(converged)}


def mmff_strain(mol: Chem.Mol) -> dict[str, Any]:
  """MMFF94 relaxation of a perceived molecule (at most MMFF_MAX_ITERS
  iterations): {'energy_drop' (kcal/mol), 'rmsd_heavy', 'rmsd_all' (Å),
  'converged'} or {'skipped': why}."""
  m = Chem.Mol(mol)
  if not AllChem.MMFFHasAllMoleculeParams(m):
    return {'skipped': 'no MMFF94 parameters'}
  props = AllChem.MMFFGetMoleculeProperties(m)
  ff = AllChem.MMFFGetMoleculeForceField(m, props)
  before = m.GetConformer().GetPositions()
  e0 = ff.CalcEnergy()
  code = ff.Minimize(maxIts=MMFF_MAX_ITERS)  # 0: converged, 1: out of iterations.
  return _strain(m, before, m.GetConformer().GetPositions(), e0 - ff.CalcEnergy(), code == 0)


def xtb_strain(mol: Chem.Mol) -> dict[str, Any]:
  """GFN2-xTB relaxation of a perceived molecule at its total formal charge
  (tblite energies and gradients, scipy L-BFGS to XTB_GTOL, at most XTB_MAX_STEPS
  steps; converged below XTB_CONVERGED_GNORM): {'energy_drop' (kcal/mol),
  'rmsd_heavy', 'rmsd_all' (Å), 'converged'}
  or {'skipped': why}."""
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
                            options={'maxiter': XTB_MAX_STEPS, 'gtol': XTB_GTOL})
  except RuntimeError as e:  # SCF failures.
    return {'skipped': f'xTB failed ({str(e).splitlines()[0] if str(e) else "RuntimeError"})'}
  # By the gradient reached, not scipy's message: L-BFGS-B can end on a line search
  # at a converged point, or run out of steps just short of its own tighter gtol.
  converged = float(np.linalg.norm(out.jac)) <= XTB_CONVERGED_GNORM
  return _strain(mol, x0 * BOHR, out.x.reshape(-1, 3) * BOHR,
                 (e0 - out.fun) * HARTREE_KCAL, converged)


def check_one(positions: np.ndarray, symbols: Sequence[str], xtb: bool) -> dict[str, Any]:
  """Every per-molecule check of one molecule (run in a worker process)."""
  start = time.perf_counter()
  mol, why = perceive(positions, symbols)
  seconds = {'perceive': time.perf_counter() - start}
  out = {'perceived': mol is not None, 'why': why, 'atoms': len(symbols),
         'net_charge': Chem.GetFormalCharge(mol) if mol is not None else 0,
         'molblock': Chem.MolToMolBlock(mol) if mol is not None else None}
  for table in valency.TABLES:
    out[f'{table}_stable_atoms'], out[f'{table}_stable'] = valency.molecule_stability(
        mol, len(symbols), table)
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


def posebusters_config(energy: bool) -> dict[str, Any]:
  """PoseBusters' 'mol' configuration with only its energy-ratio module
  (`energy`) or without it. The package lists that module twice (once with no
  chosen output); it runs once here."""
  import posebusters as pb_package  # pylint: disable=g-import-not-at-top
  import yaml  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(pb_package.__file__), 'config', 'mol.yml')
  with open(path) as f:
    config = yaml.safe_load(f)
  keep = [m for m in config['modules']
          if m['function'] == 'loading' or (m['function'] == 'energy_ratio') == energy]
  # A module that repeats a later one's function and parameters adds only its cost.
  same = lambda a, b: (a['function'], a.get('parameters')) == (b['function'], b.get('parameters'))
  keep = [m for i, m in enumerate(keep) if not any(same(m, later) for later in keep[i + 1:])]
  return {**config, 'modules': keep}


def energy_ratio_threshold() -> float:
  """The energy-ratio threshold of PoseBusters' 'mol' configuration."""
  module = next(m for m in posebusters_config(True)['modules']
                if m['function'] == 'energy_ratio')
  return float(module['parameters']['threshold_energy_ratio'])


class _Reasons(logging.Handler):
  """The warnings PoseBusters logs when a module fails on a molecule."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages: list[str] = []

  def emit(self, record):
    self.messages.append(record.getMessage().splitlines()[0] if record.getMessage() else '')


def _outcomes(column: Any, n: int) -> np.ndarray:
  """A PoseBusters column as float pass (1) / fail (0) / did not run (NaN): the
  package writes NaN where a module failed, which a cast to bool would make True."""
  out = np.full(n, np.nan)
  for i, v in enumerate(column):
    if v is not None and not (isinstance(v, float) and np.isnan(v)):
      out[i] = float(bool(v))
  return out


def posebusters(molblocks: Sequence[str | None], energy: bool = False
                ) -> tuple[dict[str, Any], str]:
  """PoseBusters on perceived molecules: ({'checks': {check: [n] float, 1 pass,
  0 fail (also where RDKit perceived no molecule), NaN did not run},
  'energy_ratio': [n] float (NaN where not computed; with `energy`),
  'reasons': {check: why it did not run, first case}}, '') or ({}, why nothing
  can run).

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
  n = len(molblocks)
  checks = {c: np.zeros(n) for c in names}
  ratio = np.full(n, np.nan)
  reasons: dict[str, str] = {}
  index = [i for i, b in enumerate(molblocks) if b is not None]
  if index:
    # As PoseBusters loads a file: unsanitized, so that its own sanitization check judges.
    mols = [Chem.MolFromMolBlock(molblocks[i], sanitize=False, removeHs=False) for i in index]
    handler = _Reasons()
    logger = logging.getLogger('posebusters')
    logger.addHandler(handler)
    try:
      frame = PoseBusters(config=posebusters_config(energy)).bust(mols, full_report=energy)
    except Exception as e:  # pylint: disable=broad-except  # PoseBusters' own failure.
      frame, handler.messages = None, [f'PoseBusters failed ({type(e).__name__}: {e})']
    finally:
      logger.removeHandler(handler)
    why = next((m for m in handler.messages if m),
                'PoseBusters wrote NaN (its module did not run on the molecule)')
    for c in names:
      column = frame[c].tolist() if frame is not None and c in frame.columns else [None] * len(index)
      checks[c][index] = _outcomes(column, len(index))
      if np.isnan(checks[c][index]).any():
        reasons[c] = why
    if energy and frame is not None and 'energy_ratio' in frame.columns:
      ratio[index] = frame['energy_ratio'].to_numpy(np.float64)
  out = {'checks': checks, 'reasons': reasons}
  if energy:
    out['energy_ratio'] = ratio
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


def unguarded_script() -> str:
  """The path of the running script when worker processes would re-run it: a file
  `__main__` with no module-level `if __name__ == '__main__':` (a worker started
  by forkserver imports the main module again); '' otherwise (an interactive
  session, `python -c`, a guarded script)."""
  path = getattr(sys.modules.get('__main__'), '__file__', None)
  if not path or not os.path.isfile(path):
    return ''
  try:
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read())
  except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
    return ''
  def guard(node):
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and any(isinstance(x, ast.Name) and x.id == '__name__'
                    for x in [node.test.left, *node.test.comparators])
            and any(isinstance(x, ast.Constant) and x.value == '__main__'
                    for x in [node.test.left, *node.test.comparators]))
  return '' if any(guard(node) for node in tree.body) else path


class _InProcess(concurrent.futures.Executor):
  """`map` in this process: the checks for a script that worker processes would re-run."""

  def map(self, fn, *iterables, timeout=None, chunksize=1):  # pylint: disable=unused-argument
    return map(fn, *iterables)


def relaxation_figures(results: list[dict[str, Any]], name: str) -> tuple[dict[str, Any], list[str]]:
  """One relaxation's figures ('mmff' or 'xtb' of `check_one` results) over the
  converged relaxations only, with the counts, and its notes."""
  ran = [r[name] for r in results if name in r and 'skipped' not in r[name]]
  skipped = [r[name]['skipped'] for r in results if name in r and 'skipped' in r[name]]
  done = [d for d in ran if d['converged']]
  out = {'energy_drop_kcal_mol': intervals.quartiles([d['energy_drop'] for d in done]),
         'rmsd_heavy_angstrom': intervals.quartiles([d['rmsd_heavy'] for d in done]),
         'rmsd_all_angstrom': intervals.quartiles([d['rmsd_all'] for d in done]),
         'relaxed': len(ran), 'converged': len(done), 'not_converged': len(ran) - len(done),
         'skipped': len(skipped)}
  notes = [f'{name}: {len(skipped)} skipped ({skipped[0]})'] if skipped else []
  if len(ran) > len(done):
    notes.append(f'{name}: {len(ran) - len(done)} of {len(ran)} relaxations did not converge; '
                 'the figures are of the converged ones')
  return out, notes


def merge_posebusters(parts: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
  """One `posebusters` output for checks `names` from those of consecutive chunks
  (first reasons kept; empty arrays for no chunk)."""
  out: dict[str, Any] = {'checks': {}, 'reasons': {}}
  for key in names:
    out['checks'][key] = np.concatenate([p['checks'][key] for p in parts] + [np.zeros(0)])
  for p in parts:
    for c, why in p['reasons'].items():
      out['reasons'].setdefault(c, why)
  if parts and 'energy_ratio' in parts[0]:
    out['energy_ratio'] = np.concatenate([p['energy_ratio'] for p in parts])
  return out


def posebusters_figures(geometry: dict[str, Any], energy: dict[str, Any] | None,
                        energy_molecules: int) -> dict[str, Any]:
  """PoseBusters' pass rates from `posebusters` outputs: each over the molecules
  its check ran on, those it did not run on counted apart (`not_run`, with the
  first reason); the energy ratio at the package's threshold and at the paper's,
  and its distribution.

  Args:
    geometry: `posebusters(..., energy=False)` of every molecule.
    energy: `posebusters(..., energy=True)` of the first molecules, or None.
    energy_molecules: how many molecules `energy` covers (for the report).
  """
  reasons = {**geometry['reasons'], **(energy or {}).get('reasons', {})}
  report: dict[str, Any] = {}
  for c in GEOMETRY_CHECKS:
    report[c] = intervals.share_run(geometry['checks'][c], reasons.get(c, ''))
  stacked = np.stack([geometry['checks'][c] for c in GEOMETRY_CHECKS])
  # All but energy: fails if any check failed, did not run if none failed and one did not run.
  failed = (stacked == 0).any(0)
  missing = np.isnan(stacked).any(0) & ~failed
  report['all_but_energy'] = intervals.share_run(
      np.where(failed, 0.0, np.where(missing, np.nan, 1.0)),
      next((reasons[c] for c in GEOMETRY_CHECKS if c in reasons), ''))
  if energy is not None and len(energy['checks']['internal_energy']):
    passes, ratio = energy['checks']['internal_energy'], energy['energy_ratio']
    why = reasons.get('internal_energy', '')
    report['internal_energy'] = {**intervals.share_run(passes, why),
                                 'threshold': energy_ratio_threshold()}
    # The same molecules judged at the paper's threshold (a molecule with no
    # finite ratio that the check failed, e.g. one not perceived, fails here too).
    at_paper = np.where(np.isnan(passes), np.nan,
                        np.where(np.isfinite(ratio), (ratio <= PAPER_ENERGY_RATIO) * 1.0, 0.0))
    report['internal_energy_paper_threshold'] = {**intervals.share_run(at_paper, why),
                                                 'threshold': PAPER_ENERGY_RATIO}
    report['energy_ratio'] = intervals.quartiles(ratio[np.isfinite(ratio)])
  report['energy_subset'] = (f'the first {energy_molecules} molecules' if energy_molecules
                             else 'none (--energy_molecules=0)')
  report['not_perceived'] = 'fail every check'
  return report


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
      most 8). Called from a script without an `if __name__ == '__main__':` guard,
      which worker processes would re-run, the checks run in this process.
    progress: a progress bar.

  Returns:
    {'perception', 'valency', 'posebusters', 'mmff', 'xtb', 'seconds_per_molecule',
    'notes'}: each share with its count and 95% interval, each strain figure's
    median, quartiles, mean and the median's interval over the converged
    relaxations.
  """
  workers = workers or default_workers()
  jobs = [(np.asarray(p, np.float64), list(s), i < xtb_molecules)
          for i, (p, s) in enumerate(molecules)]
  notes = []
  script = unguarded_script()
  if script:
    notes.append(f"ran in one process: {script} has no `if __name__ == '__main__':` guard, "
                 'which worker processes need (they import the main module again)')
    pool = _InProcess()
  else:
    # Not fork: the caller (eval.py) runs JAX, whose threads a forked child would inherit.
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('forkserver'), initializer=_quiet)
  start = time.perf_counter()
  with pool:
    # xTB relaxes the perceived ones among the first xtb_molecules: a subset fixed
    # by the molecules' order, not by the number of workers.
    results = list(tqdm.tqdm(pool.map(check_one, *zip(*jobs), chunksize=8), total=len(jobs),
                             disable=not progress, desc='chemistry', unit='mol',
                             leave=False)) if jobs else []
    checks_seconds = time.perf_counter() - start
    start = time.perf_counter()
    blocks = [r['molblock'] for r in results]
    # PoseBusters in chunks over the same processes; its energy ratio (an ensemble
    # of conformers per molecule) on the first energy_molecules.
    chunk = lambda seq: [seq[i:i + POSEBUSTERS_CHUNK]
                         for i in range(0, len(seq), POSEBUSTERS_CHUNK)]
    tasks = ([(c, False) for c in chunk(blocks)] +
             [(c, True) for c in chunk(blocks[:energy_molecules])])
    parts = list(tqdm.tqdm(pool.map(_bust, tasks), total=len(tasks), disable=not progress,
                           desc='PoseBusters', unit='chunk', leave=False))
  pb_seconds = time.perf_counter() - start
  n = len(results)
  perceived = np.array([r['perceived'] for r in results], bool)
  atoms = np.array([r['atoms'] for r in results])
  report: dict[str, Any] = {'molecules': n, 'notes': notes}
  report['perception'] = {'perceived': intervals.share(perceived),
                          'net_charge_nonzero': int(sum(r['net_charge'] != 0 for r in results)),
                          'first_failure': next((r['why'] for r in results if r['why']), '')}
  report['valency'] = {
      table: {'mol_stability': intervals.share(np.array([r[f'{table}_stable'] for r in results],
                                                        bool)),
              'atom_stability': intervals.atom_share(
                  np.array([r[f'{table}_stable_atoms'] for r in results]), atoms),
              'table': valency.describe(table)}
      for table in valency.TABLES}
  report['valency']['bonds'] = (
      "perceived by RDKit (xyz2mol at total charge 0): the tables accept or refuse the "
      'charges perception needed; they cannot catch a wrong valence, which perception '
      'never writes. A molecule RDKit cannot perceive counts as unstable.')
  pb_note = next((note for _, note in parts if note), '')
  if pb_note:
    report['notes'].append(f'PoseBusters skipped: {pb_note}')
  else:
    energetic = [p for (p, _), (_, e) in zip(parts, tasks) if e]
    report['posebusters'] = posebusters_figures(
        merge_posebusters([p for (p, _), (_, e) in zip(parts, tasks) if not e], GEOMETRY_CHECKS),
        merge_posebusters(energetic, ENERGY_CHECKS) if energetic else None,
        min(energy_molecules, n))
  for name in ('mmff', 'xtb'):
    report[name], more = relaxation_figures(results, name)
    report['notes'] += more
  report['xtb']['subset'] = (f'the perceived ones among the first {xtb_molecules} molecules'
                             if xtb_molecules else 'none (--xtb_molecules=0)')
  per = lambda key: float(np.mean([r['seconds'].get(key, 0.0) for r in results])) if n else 0.0
  report['seconds_per_molecule'] = {
      'perceive': per('perceive'), 'mmff': per('mmff'), 'xtb_per_relaxed': (
          float(np.mean([r['seconds']['xtb'] for r in results if 'xtb' in r['seconds']]))
          if any('xtb' in r['seconds'] for r in results) else 0.0),
      'posebusters': pb_seconds / max(n, 1), 'wall_checks': checks_seconds / max(n, 1),
      'workers': 1 if script else workers}
  return report


def skipped_report(n_molecules: int, why: str) -> dict[str, Any]:
  """The report of checks that did not run at all, with the one-line reason."""
  return {'molecules': n_molecules, 'skipped': why, 'notes': [f'chemistry checks skipped: {why}']}


def format_table(report: dict[str, Any]) -> str:
  """The chemistry checks as a Markdown table: each figure, its 95% interval and n."""
  if 'skipped' in report:
    return f"chemistry checks skipped: {report['skipped']}"
  pct = lambda s: f"{100 * s['value']:.1f}% [{100 * s['lo']:.1f}, {100 * s['hi']:.1f}]"
  rows = [('perceived by RDKit (xyz2mol)', pct(report['perception']['perceived']),
           f"{report['perception']['perceived']['n']:,}")]
  for table, label in (('reference', 'reference table (GEOM-Drugs Revisited)'),
                       ('ours', "edm_zoo's Kekulé table")):
    v = report['valency'][table]
    rows.append((f'perceived with allowed charges, {label}: molecules',
                 pct(v['mol_stability']), f"{v['mol_stability']['n']:,}"))
    rows.append((f'perceived with allowed charges, {label}: atoms',
                 pct(v['atom_stability']), f"{v['atom_stability']['n_atoms']:,} atoms"))
  for check, s in report.get('posebusters', {}).items():
    if not isinstance(s, dict) or 'value' not in s:
      continue
    label = f'PoseBusters: {check}'
    if 'threshold' in s:
      label += f" (energy ratio <= {s['threshold']:g})"
    count = f"{s['n']:,}" + (f" ({s['not_run']} did not run)" if s.get('not_run') else '')
    rows.append((label, pct(s), count))
  ratio = report.get('posebusters', {}).get('energy_ratio', {'n': 0})
  if ratio['n']:
    rows.append(('PoseBusters: energy ratio, median [95%] (quartiles)', _stat(ratio),
                 f"{ratio['n']:,}"))
  for name, label in (('mmff', 'MMFF94'), ('xtb', 'GFN2-xTB')):
    r = report.get(name, {})
    for key, unit in (('energy_drop_kcal_mol', 'energy drop (kcal/mol)'),
                      ('rmsd_heavy_angstrom', 'RMSD heavy atoms (Å)'),
                      ('rmsd_all_angstrom', 'RMSD all atoms (Å)')):
      q = r.get(key, {'n': 0})
      if q['n']:
        rows.append((f'{label} relaxation: {unit}, median [95%] (quartiles); mean',
                     f"{_stat(q)}; {q['mean']:.3g}",
                     f"{q['n']:,} converged of {r['relaxed']:,}"))
  lines = ['| check | value [95% interval] | n |', '|---|---|---|']
  lines += [f'| {a} | {b} | {c} |' for a, b, c in rows]
  for check, s in report.get('posebusters', {}).items():
    # The paper-threshold share did not run on the same molecules as internal_energy.
    if isinstance(s, dict) and s.get('not_run') and check != 'internal_energy_paper_threshold':
      lines.append(f"note: PoseBusters {check} did not run on {s['not_run']} molecules "
                   f"(first: {s['not_run_why']})")
  lines.append(f"note: valency {report['valency']['bonds']}")
  lines += [f'note: {n}' for n in report.get('notes', [])]
  return '\n'.join(lines)


def _stat(q: dict[str, float]) -> str:
  return (f"{q['median']:.3g} [{q['median_lo']:.3g}, {q['median_hi']:.3g}] "
          f"({q['q1']:.3g}-{q['q3']:.3g})")
