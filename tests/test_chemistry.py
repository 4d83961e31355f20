"""The chemistry checks beside EDM's metrics (edm_zoo/metrics/chemistry.py) on
hand-built molecules with known answers, and on the real test split."""

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from edm_zoo import config as config_lib, reporting
from edm_zoo.metrics import chemistry, intervals


def embedded(smiles, seed=0):
  """(RDKit molecule with hydrogens and an ETKDG conformer, positions, symbols)."""
  mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
  AllChem.EmbedMolecule(mol, randomSeed=seed)
  return mol, mol.GetConformer().GetPositions(), [a.GetSymbol() for a in mol.GetAtoms()]


def _valency(smiles):
  mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
  return chemistry.valency_stability(mol, mol.GetNumAtoms())


@pytest.mark.parametrize('smiles', ['c1ccccc1', 'c1cc[nH]c1', 'c1ccncc1', 'C[N+](=O)[O-]',
                                    'C[NH3+].[O-]C=O', 'CS(=O)(=O)C'])
def test_valency_table_accepts_aromatic_rings_and_charged_nitrogen(smiles):
  n, stable = _valency(smiles)
  assert stable and n == Chem.AddHs(Chem.MolFromSmiles(smiles)).GetNumAtoms()


def test_aromatic_bonds_count_as_their_kekule_orders_not_truncated():
  mol = Chem.AddHs(Chem.MolFromSmiles('c1ccccc1'))
  assert {v for s, _, v in chemistry.atom_valences(mol) if s == 'C'} == {4}
  # Aromatic 1.5 cast to an integer would give a carbon 1 + 1 + 1 = 3.
  assert all(b.GetBondTypeAsDouble() == 1.5 for b in mol.GetBonds() if b.GetIsAromatic())


@pytest.mark.parametrize('smiles', ['[CH3]', '[CH3+]', '[CH3-]', 'C[CH2]'])
def test_valency_table_refuses_three_valent_or_charged_carbon(smiles):
  assert not _valency(smiles)[1]


def test_a_neutral_four_valent_nitrogen_is_not_stable():
  mol = Chem.RWMol()
  n = mol.AddAtom(Chem.Atom('N'))
  for _ in range(4):
    mol.AddBond(n, mol.AddAtom(Chem.Atom('C')), Chem.BondType.SINGLE)
  mol = mol.GetMol()
  mol.UpdatePropertyCache(strict=False)
  stable_atoms, stable = chemistry.valency_stability(Chem.AddHs(mol), 17)
  assert not stable and stable_atoms == 16  # The four carbons (CH3) pass, N does not.


def test_unbalanced_charges_are_not_stable():
  assert not _valency('C[NH3+]')[1]  # An ammonium without its counter-ion.


def test_perception_of_a_clean_drug_like_molecule_and_its_checks():
  _, positions, symbols = embedded('CC(=O)Nc1ccc(O)cc1')  # Paracetamol, ETKDG.
  mol, why = chemistry.perceive(positions, symbols)
  assert why == '' and Chem.MolToSmiles(Chem.RemoveHs(mol)) == 'CC(=O)Nc1ccc(O)cc1'
  assert chemistry.valency_stability(mol, len(symbols))[1]
  busted, note = chemistry.posebusters([Chem.MolToMolBlock(mol)])
  assert note == '' and all(flags[0] for flags in busted.values())
  mmff = chemistry.mmff_strain(mol)
  assert 0 <= mmff['energy_drop'] < 30 and mmff['rmsd'] < 0.5


def test_a_radical_is_not_perceived():
  _, positions, symbols = embedded('CC')
  keep = [i for i in range(len(symbols)) if i != 7]  # Ethane less one hydrogen.
  mol, why = chemistry.perceive(positions[keep], [symbols[i] for i in keep])
  assert mol is None and why


def test_a_strained_ring_has_a_large_relaxation_energy():
  mol, positions, symbols = embedded('C1CCCCC1')
  clean = chemistry.mmff_strain(chemistry.perceive(positions, symbols)[0])
  squashed = positions * np.array([1.0, 1.0, 0.6])
  strained = chemistry.mmff_strain(chemistry.perceive(squashed, symbols)[0])
  assert strained['energy_drop'] > 10 * max(clean['energy_drop'], 1.0)
  assert strained['rmsd'] > clean['rmsd']


def test_posebusters_finds_an_internal_clash():
  mol, positions, _ = embedded('CCCCCC')
  conf = mol.GetConformer()
  clashed = positions.copy()
  clashed[5] = clashed[0] + np.array([1.0, 0.0, 0.0])  # C6 1 Å from C1, not bonded.
  for i, p in enumerate(clashed):
    conf.SetAtomPosition(i, p.tolist())
  busted, _ = chemistry.posebusters([Chem.MolToMolBlock(mol)])
  assert not busted['internal_steric_clash'][0]


def test_xtb_relaxation_of_a_small_molecule():
  _, positions, symbols = embedded('CO')
  out = chemistry.xtb_strain(chemistry.perceive(positions, symbols)[0])
  if 'skipped' in out:
    pytest.skip(out['skipped'])
  assert out['converged'] and 0 <= out['energy_drop'] < 10 and out['rmsd'] < 0.3


def test_intervals_and_counts():
  s = intervals.share(np.array([True] * 9 + [False]))
  assert s['n'] == 10 and s['value'] == 0.9 and s['lo'] < 0.9 < s['hi']
  q = intervals.quartiles([1.0, 2.0, 3.0, 4.0, 100.0])
  assert q['median'] == 3.0 and q['n'] == 5 and q['median_lo'] <= 3.0 <= q['median_hi']


@pytest.mark.slow
def test_reference_split_figures_are_stable_and_edm_row_unchanged():
  e = config_lib.build_eval(xtb_molecules=2, energy_molecules=0, chemistry_workers=2)
  first = reporting.reference_split_metrics('test', 'qm9', n_molecules=30, seed=0,
                                            evaluation_config=e)
  second = reporting.reference_split_metrics('test', 'qm9', n_molecules=30, seed=0,
                                             evaluation_config=e)
  plain = reporting.reference_split_metrics('test', 'qm9', n_molecules=30, seed=0)
  for key in ('atom_stability', 'mol_stability', 'validity', 'uniqueness'):
    assert first[key] == second[key] == plain[key]  # EDM's row, with or without the checks.
  a, b = first['chemistry'], second['chemistry']
  assert a['valency'] == b['valency'] and a['posebusters'] == b['posebusters']
  assert a['mmff'] == b['mmff']
  assert a['valency']['perceived']['n'] == 30 and a['valency']['mol_stability']['value'] > 0.9
  assert a['xtb']['molecules'] <= 2
