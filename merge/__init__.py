"""Merge engine: merge methods, LoRA fold-in, planner and executor (being built)."""
