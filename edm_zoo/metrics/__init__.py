"""Molecule metrics: stability from bond tables, RDKit validity/uniqueness/novelty.

Modules: `bond_tables` (the tables), `stability`, `rdkit_metrics`.
"""
