"""Bonds and formal charges: records, batches, export and the own-bond metrics."""

import os
import re

import jax
import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from edm_zoo import reporting
from edm_zoo.data import batching
from edm_zoo.data import bonds
from edm_zoo.data import features
from edm_zoo.data import registry
from edm_zoo.io import export, readers
from edm_zoo.metrics import own_bonds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ELEMENTS = ('H', 'C', 'N', 'O', 'F')
Z = np.array([1, 6, 7, 8, 9])


def molecule(smiles, seed=0):
  """A molecule dict with its true bonds, charges and an ETKDG conformer."""
  mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
  assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
  pairs, orders, charges = bonds.from_rdkit(mol)
  z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
  return {'positions': mol.GetConformer().GetPositions().astype(np.float32),
          'charges': z.astype(np.int32), 'types': np.searchsorted(Z, z),
          'bonds': pairs, 'bond_orders': orders, 'formal_charges': charges,
          'index': 0}


@pytest.mark.parametrize('smiles', ['c1ccccc1O', 'C[N+](=O)[O-]', 'C[N+]#[C-]',
                                    'OC(=O)c1ccncc1', 'FC#N'])
def test_rdkit_round_trip_keeps_the_molecule(smiles):
  m = molecule(smiles)
  bonds.check(len(m['charges']), m['bonds'], m['bond_orders'], m['formal_charges'])
  back = bonds.to_rdkit(m['charges'], m['positions'], m['bonds'], m['bond_orders'],
                        m['formal_charges'])
  Chem.SanitizeMol(back)
  assert Chem.MolToSmiles(Chem.RemoveHs(back)) == Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
  assert bonds.AROMATIC in m['bond_orders'] or 'c' not in smiles


def test_check_refuses_bad_records():
  with pytest.raises(ValueError, match='i < j'):
    bonds.check(3, np.array([[1, 0]]), np.array([1]), np.zeros(3))
  with pytest.raises(ValueError, match='classes'):
    bonds.check(3, np.array([[0, 1]]), np.array([0]), np.zeros(3))
  with pytest.raises(ValueError, match='twice'):
    bonds.check(3, np.array([[0, 1], [0, 1]]), np.array([1, 2]), np.zeros(3))


@pytest.mark.parametrize('smiles,stable', [
    ('c1ccccc1', True),              # aromatic ring, counted as the reference does
    ('c1ccncc1', True),              # aromatic N
    ('C[N+](=O)[O-]', True),         # charged N and O
    ('C[NH3+]', True),               # ammonium
    ('C[N+]#[C-]', True),            # an isocyanide
])
def test_own_bond_stability_of_hand_built_molecules(smiles, stable):
  m = molecule(smiles)
  out = own_bonds.judge(m['charges'], m['bonds'], m['bond_orders'], m['formal_charges'])
  assert out['stable'] is stable and out['valid'] and out['connected']
  assert out['stable_atoms'] == out['atoms'] == len(m['charges'])


def test_a_neutral_sulfoxide_fails_the_reference_table_alone():
  # The reference table has S(0) with valences 2, 3 and 6 and S(+1) with 3: a sulfoxide
  # passes only as [S+]-[O-]; edm_zoo's Kekulé table takes both forms.
  for smiles, reference in (('CS(C)=O', False), ('C[S+](C)[O-]', True)):
    m = molecule(smiles)
    out = own_bonds.judge(m['charges'], m['bonds'], m['bond_orders'], m['formal_charges'])
    assert out['stable'] is reference and out['stable_ours'] and out['valid']


def test_a_radical_a_missing_bond_and_a_wrong_charge_are_unstable():
  m = molecule('CC')
  h = [i for i, z in enumerate(m['charges']) if z == 1]
  keep = [k for k, (i, j) in enumerate(m['bonds']) if h[0] not in (i, j)]
  # A hydrogen whose bond is gone: the carbon is a radical, the H a second fragment.
  out = own_bonds.judge(m['charges'], m['bonds'][keep], m['bond_orders'][keep],
                        m['formal_charges'])
  assert not out['stable'] and out['stable_atoms'] == out['atoms'] - 2
  assert not out['connected']
  charged = m['formal_charges'].copy()
  charged[0] = 1  # C+ with four bonds: not a closed-shell carbocation.
  out = own_bonds.judge(m['charges'], m['bonds'], m['bond_orders'], charged)
  assert not out['stable'] and out['stable_atoms'] == out['atoms'] - 1
  # Five bonds on a carbon: RDKit refuses it as written.
  extra = np.concatenate([m['bonds'], [[0, h[3]]]])
  out = own_bonds.judge(m['charges'], np.sort(extra, 1), np.append(m['bond_orders'], 1),
                        m['formal_charges'])
  assert not out['valid'] and not out['stable']


def test_own_bond_figures_count_and_bound():
  good = [molecule(s) for s in ('c1ccccc1', 'CCO', 'C[N+](=O)[O-]')]
  bad = dict(good[1], formal_charges=good[1]['formal_charges'] + 1)
  report = own_bonds.evaluate(good + [bad], Z)
  assert report['molecules'] == 4
  assert report['mol_stability']['value'] == 0.75 and report['mol_stability']['n'] == 4
  assert report['mol_stability']['lo'] < 0.75 < report['mol_stability']['hi']
  assert report['connectivity']['value'] == 1.0
  with pytest.raises(ValueError, match='no bonds'):
    own_bonds.evaluate([{'types': good[0]['types']}], Z)


def _permute(m, perm):
  """The same molecule with its atoms renumbered: new atom k is old atom perm[k]."""
  inverse = np.argsort(perm)
  pairs = np.sort(inverse[m['bonds']], 1)
  order = np.lexsort((pairs[:, 1], pairs[:, 0]))
  return dict(m, positions=m['positions'][perm], charges=m['charges'][perm],
              formal_charges=m['formal_charges'][perm], bonds=pairs[order].astype(np.int32),
              bond_orders=m['bond_orders'][order])


def _per_molecule_classes(graph):
  """Each real molecule's [n, n] bond classes and charges, read off a batch."""
  out, node, edge = [], 0, 0
  senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
  classes = np.asarray(graph.edges[features.BOND_ORDERS])
  for n, m, real in zip(graph.n_node, graph.n_edge, graph.globals[features.MASK]):
    if real:
      dense = np.zeros((n, n), np.int32)
      dense[receivers[edge:edge + m] - node, senders[edge:edge + m] - node] = \
          classes[edge:edge + m]
      out.append((dense, np.asarray(graph.nodes[features.FORMAL_CHARGES][node:node + n])))
    node, edge = node + n, edge + m
  return out


def test_batches_with_bonds_are_permutation_and_padding_invariant():
  mols = [molecule(s) for s in ('C[N+](=O)[O-]', 'c1ccccc1O', 'CC#N')]
  small = batching.exact_budget([len(m['charges']) for m in mols])
  padded = batching.PaddingBudget(small.n_node + 40, small.n_edge + 500, small.n_graph + 3)
  a = batching.build_graph(mols, Z, small, with_bonds=True)
  b = batching.build_graph(mols[::-1], Z, padded, with_bonds=True)
  for (da, qa), (db, qb) in zip(_per_molecule_classes(a), _per_molecule_classes(b)[::-1]):
    np.testing.assert_array_equal(da, db)
    np.testing.assert_array_equal(qa, qb)
  # Padding edges and nodes carry class 0 and charge 0.
  real_edges = int(small.n_edge)
  assert not np.asarray(b.edges[features.BOND_ORDERS])[real_edges:].any()
  for (dense, q), m in zip(_per_molecule_classes(a), mols):
    np.testing.assert_array_equal(dense, bonds.dense_classes(len(m['charges']), m['bonds'],
                                                              m['bond_orders']))
    assert dense.sum() == 2 * m['bond_orders'].sum()
  perm = np.random.default_rng(0).permutation(len(mols[1]['charges']))
  shuffled = batching.build_graph([_permute(mols[1], perm)], Z, with_bonds=True)
  (dense_p, q_p), = _per_molecule_classes(shuffled)
  (dense, q), = _per_molecule_classes(batching.build_graph([mols[1]], Z, with_bonds=True))
  np.testing.assert_array_equal(dense_p, dense[np.ix_(perm, perm)])
  np.testing.assert_array_equal(q_p, q[perm])


def test_egnn_batches_are_bit_identical_with_the_switch_off():
  mols = [molecule(s) for s in ('CCO', 'c1ccccc1')]
  bare = [{k: m[k] for k in ('positions', 'charges', 'index')} for m in mols]
  budget = batching.PaddingBudget(64, 1024, 4)
  with_fields = batching.build_graph(mols, Z, budget)
  without = batching.build_graph(bare, Z, budget)
  assert set(with_fields.nodes) == set(without.nodes) and set(with_fields.edges) == {'mask'}
  for x, y in zip(jax_leaves(with_fields), jax_leaves(without)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match='no bonds.*rebuild'):
    batching.build_graph(bare, Z, budget, with_bonds=True)


def jax_leaves(graph):
  return [np.asarray(x) for x in jax.tree.leaves(graph)]


def test_sdf_bonds_and_charges_survive_export_and_import(tmp_path):
  mols = [molecule(s, seed=i) for i, s in enumerate(('C[N+](=O)[O-]', 'c1ccncc1', 'C[N+]#[C-]'))]
  path = str(tmp_path / 'own.sdf')
  export.write_sdf(mols, ELEMENTS, path)
  read = readers.read_molecules(path)
  assert len(read.molecules) == 3
  for m, r in zip(mols, read.molecules):
    np.testing.assert_array_equal(r['bonds'], m['bonds'])
    np.testing.assert_array_equal(r['bond_orders'], m['bond_orders'])
    np.testing.assert_array_equal(r['formal_charges'], m['formal_charges'])
    assert r['bonds_status'] == bonds.GIVEN
  assert Chem.SDMolSupplier(path, removeHs=False)[0].GetProp('bonds') == 'own'


def test_perceived_record_flags_a_molecule_that_is_not_what_the_data_says():
  m = molecule('CCO')
  ok = bonds.perceive_record(m['positions'], m['charges'], ('CCO', ''))
  assert ok['bonds_status'] == bonds.PERCEIVED
  np.testing.assert_array_equal(ok['bond_orders'], m['bond_orders'])
  wrong = bonds.perceive_record(m['positions'], m['charges'], ('COC', ''))
  assert wrong['bonds_status'] == bonds.DISAGREES
  by_inchi = bonds.perceive_record(m['positions'], m['charges'],
                                   ('', 'InChI=1S/C2H6O/c1-2-3/h3H,2H2,1H3'))
  assert by_inchi['bonds_status'] == bonds.PERCEIVED
  heavy = bonds.heavy_atoms(ok, m['charges'])
  assert len(heavy['formal_charges']) == 3 and len(heavy['bonds']) == 2


def test_qm9_bonds_agree_with_qm9pack_as_build_md_states(qm9_sources):
  meta = registry.metadata('qm9')['bonds']
  agree = sum(c['perceived'] for c in meta['counts'].values())
  total = sum(sum(c.values()) for c in meta['counts'].values())
  assert total == 130_831 and meta['agree'] == agree
  with open(os.path.join(REPO, 'BUILD.md')) as f:
    stated = re.search(r'QM9: the perceived graph is\s+qm9pack\'s\s+molecule\s+for\s+'
                       r'([\d,]+)\s+of\s+([\d,]+)', f.read())
  assert stated, 'BUILD.md states the QM9 agreement count'
  assert (int(stated.group(1).replace(',', '')), int(stated.group(2).replace(',', ''))) == \
      (agree, total)
  # The bond-aware splits leave out exactly the listed molecules; EDM's are whole.
  for split, source in qm9_sources.items():
    bonded = registry.load('qm9', split, with_bonds=True)
    assert len(bonded) == len(source) - len(meta['left_out'][split])
    statuses = [m['bonds_status'] for m in bonded.__getitems__(range(0, len(bonded), 97))]
    assert set(statuses) <= {bonds.PERCEIVED}


def test_qm9_records_round_trip_with_their_bonds(qm9_sources):
  source = qm9_sources['test']
  for m in source.__getitems__(range(0, 2000, 50)):
    if m['bonds_status'] != bonds.PERCEIVED:
      continue
    bonds.check(len(m['charges']), m['bonds'], m['bond_orders'], m['formal_charges'])
    mol = bonds.to_rdkit(m['charges'], m['positions'], m['bonds'], m['bond_orders'],
                         m['formal_charges'])
    Chem.SanitizeMol(mol)
    again = bonds.from_rdkit(mol)
    for a, b in zip(again, (m['bonds'], m['bond_orders'], m['formal_charges'])):
      np.testing.assert_array_equal(a, b)


def test_qm9_reference_split_passes_on_its_true_bonds():
  out = reporting.reference_split_metrics('test', 'qm9', n_molecules=500, seed=0)
  own = out['own_bonds']
  assert own['molecules'] + own['left_out'] == 500
  assert own['mol_stability']['value'] == 1.0 and own['validity']['value'] == 1.0
  assert own['connectivity']['value'] == 1.0
