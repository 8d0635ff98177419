"""Errors of the merge engine: all `GraftError`s, so front ends print one line."""

from __future__ import annotations

from graft.registry.errors import GraftError


class MergeConfigError(GraftError, ValueError):
    """A merge config (YAML, method, parameter, input) is wrong; names the key."""


class MergeInputError(GraftError, ValueError):
    """The inputs cannot be merged as asked: missing tensors, shape or dtype clashes."""


class AdapterError(GraftError, ValueError):
    """A LoRA adapter that cannot be folded: bad config, missing factors or base tensors."""


class MergeOutputError(GraftError, OSError):
    """The output folder cannot be made or written: its place, permissions, free space."""


class MergeCancelled(GraftError):
    """The caller asked to stop; nothing that looks finished was left behind."""
