"""Verdicts of the reference valency check of "GEOM-Drugs Revisited", by its own code.

Reads molecules written by `molecules.py` (an SDF, gzipped or not) exactly as the
reference's `scripts/compute_molecule_stability.py` reads an SDF (no
sanitization, hydrogens kept), and writes, per molecule, what the reference's
`compute_molecules_stability` says with its default table
(`geom_drugs_h_tuple_valencies`, aromatic bonds as 1.5): stable or not, stable
atoms, atoms, valid. Run in the reference's environment (setup.sh):

  REFERENCE_REPO=... VENV/bin/python instruments/valency_reference/generate.py \
      --sdf tests/data/valency_reference/molecules.sdf.gz \
      --out tests/data/valency_reference/verdicts.json

Nothing of the reference is copied: it is imported from REFERENCE_REPO.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys

from rdkit import Chem


def read(path):
  """The molecules as the reference's script reads them (sanitize=False, removeHs=False)."""
  if path.endswith('.gz'):
    with gzip.open(path, 'rb') as f:
      return list(Chem.ForwardSDMolSupplier(f, sanitize=False, removeHs=False))
  return list(Chem.SDMolSupplier(path, sanitize=False, removeHs=False))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sdf', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  repo = os.environ.get('REFERENCE_REPO')
  if not repo or not os.path.isdir(os.path.join(repo, 'geom_utils')):
    sys.exit('error: set REFERENCE_REPO to a checkout of isayevlab/geom-drugs-3dgen-evaluation.')
  sys.path.insert(0, repo)
  from geom_utils import molecule_stability  # pylint: disable=g-import-not-at-top
  mols = read(args.sdf)
  if any(m is None for m in mols):
    sys.exit(f'error: {sum(m is None for m in mols)} molecules of {args.sdf} did not parse.')
  rows = []
  for m in mols:
    name = m.GetProp('_Name')
    # One molecule at a time (the reference's own loop does the same), so each
    # verdict belongs to its molecule.
    validity, stable, stable_atoms, atoms = molecule_stability.compute_molecules_stability(
        [Chem.Mol(m)], aromatic=True)
    rows.append({'name': name, 'stable': bool(stable[0].item()),
                 'stable_atoms': int(stable_atoms[0].item()), 'atoms': int(atoms[0].item()),
                 'valid': bool(validity[0].item())})
  try:
    commit = subprocess.run(['git', '-C', repo, 'rev-parse', 'HEAD'], capture_output=True,
                            text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = os.environ.get('REFERENCE_COMMIT', 'unknown')
  out = {'reference': 'isayevlab/geom-drugs-3dgen-evaluation', 'commit': commit,
         'function': 'geom_utils.molecule_stability.compute_molecules_stability(aromatic=True)',
         'table': 'geom_drugs_h_tuple_valencies', 'sdf': os.path.basename(args.sdf),
         'molecules': rows}
  with open(args.out, 'w') as f:
    json.dump(out, f, indent=0)
  print(f'{len(rows)} verdicts ({sum(r["stable"] for r in rows)} stable) -> {args.out}')


if __name__ == '__main__':
  main()
