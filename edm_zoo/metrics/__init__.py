"""Molecule metrics: stability from bond tables, RDKit validity/uniqueness/novelty."""

from edm_zoo.metrics.rdkit_metrics import build_molecule, valid_smiles, validity_uniqueness_novelty
from edm_zoo.metrics.stability import check_stability, stability

__all__ = ['build_molecule', 'check_stability', 'stability', 'valid_smiles',
           'validity_uniqueness_novelty']
