"""Thin absl entry points: flags -> one library call -> one-line errors."""
