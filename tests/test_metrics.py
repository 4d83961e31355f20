"""Molecule metrics against the reference's own figures on the real test split."""

import numpy as np
import pytest

from edm_zoo import reporting
from edm_zoo.metrics import bond_tables, rdkit_metrics, stability

ELEMENTS = ('H', 'C', 'N', 'O', 'F')


@pytest.mark.parametrize('distance,order', [(1.10, 3), (1.22, 3), (1.24, 2), (1.38, 2),
                                            (1.40, 1), (1.63, 1), (1.64, 0), (2.5, 0)])
def test_carbon_carbon_bond_orders(distance, order):
  # C-C: single 154 + 10, double 134 + 5, triple 120 + 3 picometres.
  positions = np.array([[0, 0, 0], [distance, 0, 0]], np.float32)
  assert stability.bond_matrix(positions, np.array([1, 1]), ELEMENTS)[0, 1] == order


def test_tables_are_the_references():
  t = bond_tables.tables()
  assert t['bonds1_single']['C']['H'] == 109 and t['bonds3_triple']['N']['N'] == 110
  assert bond_tables.allowed_valences(ELEMENTS) == ((1,), (4,), (3,), (2,), (1,))


def test_methane_is_stable_and_valid():
  d = 1.09 / np.sqrt(3)
  positions = np.array([[0, 0, 0], [d, d, d], [-d, -d, d], [-d, d, -d], [d, -d, -d]],
                       np.float32)
  types = np.array([1, 0, 0, 0, 0])
  assert stability.check_stability(positions, types, ELEMENTS) == (True, 5, 5)
  # Explicit hydrogens stay in the SMILES, as in EDM.
  assert rdkit_metrics.valid_smiles([(positions, types)], ELEMENTS) == ['[H]C([H])([H])[H]']
  stretched = positions.copy()
  stretched[1] *= 2
  assert stability.check_stability(stretched, types, ELEMENTS)[:2] == (False, 3)


def test_real_test_split_matches_the_reference_figures():
  m = reporting.reference_split_metrics('test')
  assert m['molecules'] == 13_083
  assert 100 * m['atom_stability'] == pytest.approx(99.344, abs=0.01)
  assert 100 * m['mol_stability'] == pytest.approx(95.215, abs=0.01)
  assert 100 * m['validity'] == pytest.approx(97.738, abs=0.01)
  assert 100 * m['uniqueness'] == pytest.approx(100.0, abs=0.01)


def test_uniqueness_and_novelty_by_hand():
  out = rdkit_metrics.validity_uniqueness_novelty(['C', 'C', 'O', None], {'O'})
  assert out['validity'] == 0.75
  assert out['uniqueness'] == pytest.approx(2 / 3)
  assert out['novelty'] == 0.5
