"""Imbalance-aware data preparation and reading."""
