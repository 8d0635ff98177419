"""Lineage: edges between artifacts and what each method touched (being built)."""
