"""The one error family of graft.

Every error a user can cause is a `GraftError`: a message naming the file,
artifact or tensor at fault, and a hint saying what to do next. Front ends print
`str(error)` as one line; anything that is not a `GraftError` is a bug.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of the `graft` command."""

    OK = 0
    ERROR = 1  # the user's input or the store is at fault
    USAGE = 2  # bad command line (click's own code)
    INTEGRITY = 3  # `graft verify` found missing or corrupt data
    INTERRUPTED = 130


class GraftError(Exception):
    """Base class: a message plus a hint on what to do next."""

    exit_code = ExitCode.ERROR

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class InvalidArtifact(GraftError, ValueError):
    """A file or folder offered to the store is malformed or unsupported."""


class PickleRefused(InvalidArtifact):
    """A weights file would need unpickling, which graft never does unasked."""


class ArtifactNotFound(GraftError, LookupError):
    """A REF names no artifact in the store."""


class AmbiguousRef(GraftError, LookupError):
    """A REF matches more than one artifact."""


class StoreError(GraftError, OSError):
    """The store itself is missing, foreign, busy or damaged."""


class StoreBusy(StoreError, TimeoutError):
    """Another process held the store's lock for too long."""


class CorruptBlob(GraftError, ValueError):
    """Stored bytes no longer match their content address."""


class CycleRefused(GraftError, ValueError):
    """A parent link that would make an artifact its own ancestor."""


class SourceChanged(GraftError, RuntimeError):
    """A file changed while it was being added."""
