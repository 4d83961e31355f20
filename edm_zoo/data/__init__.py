"""Data: the prepared QM9 dataset and padded jraph batches."""

from edm_zoo.data import qm9
from edm_zoo.data.batching import PaddingBudget, batches, build_graph, default_budgets

__all__ = ['qm9', 'PaddingBudget', 'batches', 'build_graph', 'default_budgets']
