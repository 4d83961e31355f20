"""Property classifiers and EDM's MAE protocol for conditional generation."""
