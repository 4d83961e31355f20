"""Data: prepared datasets, molecule sources and padded jraph batches."""
