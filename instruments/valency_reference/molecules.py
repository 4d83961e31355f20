"""Molecules for the valency verdicts of the reference's own code (generate.py).

Writes one SDF (gzipped) of molecules with bonds and formal charges, each named
by where it comes from:

  * `sample:i`: molecules a model generated (`--samples`, the samples.xyz of
    `launch/sample.py`), perceived by `edm_zoo.metrics.chemistry.perceive`
    (those it cannot perceive are left out);
  * `qm9:i` / `moses3d:i`: real test molecules (`--qm9`, `--moses3d` seeded
    picks), perceived the same way;
  * `smiles:i`: hand-built molecules whose charge states probe every entry where
    the two tables differ (isocyanides, CO, sulfoxides, halonium, carbocation
    pairs, ...), from SMILES with hydrogens and an ETKDG conformer.

Aromatic bonds are written as aromatic (kekulize=False), as the chemistry checks
hold them, so the reference counts them as 1.5:

  python instruments/valency_reference/molecules.py --samples=S/samples.xyz \
      --n_samples=200 --qm9=60 --moses3d=40 \
      --out=tests/data/valency_reference/molecules.sdf.gz
"""

import gzip
import os
import sys

from absl import app
from absl import flags
import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from edm_zoo.data import registry  # noqa: E402
from edm_zoo.io import files  # noqa: E402
from edm_zoo.metrics import chemistry, rdkit_metrics  # noqa: E402

_SAMPLES = flags.DEFINE_string('samples', None, 'samples.xyz of launch/sample.py')
_N_SAMPLES = flags.DEFINE_integer('n_samples', 200, 'perceived samples to keep')
_QM9 = flags.DEFINE_integer('qm9', 60, 'QM9 test molecules (seeded pick)')
_MOSES = flags.DEFINE_integer('moses3d', 40, 'moses3d test molecules (0: none)')
_OUT = flags.DEFINE_string('out', None, 'output .sdf.gz')

# Charge states where the reference table and ours disagree, and the common ones.
SMILES = (
    'C[N+]#[C-]', '[C-]#[O+]', 'C[N+](=O)[O-]', 'CS(C)=O', 'C[S+](C)[O-]', 'CS(=O)(=O)C',
    'c1ccsc1', 'C[Cl+]C', 'C[Br+]C', 'c1ccc(cc1)[I+]c1ccccc1', 'CC(=O)OI(OC(C)=O)c1ccccc1',
    '[CH2+]C[CH2-]', '[CH2-]C=C[NH3+]', 'C[S+](C)C', 'C[S-]', 'CS(C)(=O)=N', 'O=P(O)(O)O',
    'C[P+](C)(C)C', '[B-](F)(F)(F)F', 'CB(C)C', 'C[Si](C)(C)C', 'C[Al](C)C', 'C[As](C)C',
    'C[Hg]C', 'C[Bi](C)C', 'CN=[N+]=[N-]', 'C=[N+]=[N-]', '[O-][n+]1ccccc1', 'c1c[nH]c[nH+]1',
    '[cH-]1cccc1', 'C[NH3+]', '[O-]C(=O)C', 'c1ccc2[nH]ccc2c1', 'O=c1cccc[nH]1', 'C[N-]C',
    'CS(=O)(=O)[O-]', 'C#N', 'C[SH2+]', '[NH4+]', 'C1=CC=CC=C1')


def _perceived(molecules, symbols_of, prefix, limit):
  out = []
  for i, (positions, types) in enumerate(molecules):
    mol, _ = chemistry.perceive(positions, symbols_of(types))
    if mol is not None:
      mol.SetProp('_Name', f'{prefix}:{i}')
      out.append(mol)
    if len(out) == limit:
      break
  return out


def _read_xyz(path):
  """(positions, symbols) of each molecule of an XYZ file."""
  lines = open(path).read().splitlines()
  out, i = [], 0
  while i < len(lines) and lines[i].strip():
    n = int(lines[i])
    rows = [l.split() for l in lines[i + 2:i + 2 + n]]
    out.append((np.array([[float(v) for v in r[1:4]] for r in rows]), [r[0] for r in rows]))
    i += 2 + n
  return out


def _split(dataset, n):
  source = registry.load(dataset, 'test')
  index = np.sort(np.random.default_rng(0).choice(len(source), n, replace=False)).tolist()
  types = registry.atom_types(dataset)
  return rdkit_metrics.source_molecules(source, index), lambda t: [types[int(k)] for k in t]


def main(argv):
  del argv
  mols = []
  if _SAMPLES.value:
    mols += _perceived(_read_xyz(_SAMPLES.value), list, 'sample', _N_SAMPLES.value)
  for dataset, n in (('qm9', _QM9.value), ('moses3d', _MOSES.value)):
    if n:
      molecules, symbols_of = _split(dataset, n)
      mols += _perceived(molecules, symbols_of, dataset, n)
  for i, smiles in enumerate(SMILES):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if AllChem.EmbedMolecule(mol, randomSeed=0) != 0:
      raise RuntimeError(f'ETKDG could not embed {smiles}')
    mol.SetProp('_Name', f'smiles:{i}')
    mol.SetProp('smiles', smiles)
    mols.append(mol)
  with files.atomic_path(_OUT.value) as tmp, gzip.open(tmp, 'wt') as f:
    for mol in mols:
      extra = f"> <smiles>\n{mol.GetProp('smiles')}\n\n" if mol.HasProp('smiles') else ''
      f.write(Chem.MolToMolBlock(mol, kekulize=False) + extra + '$$$$\n')
  print(f'{len(mols)} molecules -> {_OUT.value}')


if __name__ == '__main__':
  flags.mark_flag_as_required('out')
  app.run(main)
