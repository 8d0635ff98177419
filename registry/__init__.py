"""graft's registry: content-addressed tensor store, manifests and DuckDB catalog."""

from registry.add import AddResult, add
from registry.errors import (
    AmbiguousRef,
    ArtifactNotFound,
    CorruptBlob,
    ExitCode,
    GraftError,
    InvalidArtifact,
    PickleRefused,
    SourceChanged,
    StoreBusy,
    StoreError,
)
from registry.manifest import FileRecord, Manifest, Parent, TensorRecord
from registry.ops import (
    ArtifactDetail,
    ArtifactRow,
    GcResult,
    Problem,
    VerifyReport,
    export,
    gc,
    list_artifacts,
    reindex,
    remove,
    show,
    verify,
)
from registry.store import Store, default_store_path

__all__ = [
    "AddResult",
    "AmbiguousRef",
    "ArtifactDetail",
    "ArtifactNotFound",
    "ArtifactRow",
    "CorruptBlob",
    "ExitCode",
    "FileRecord",
    "GcResult",
    "GraftError",
    "InvalidArtifact",
    "Manifest",
    "Parent",
    "PickleRefused",
    "Problem",
    "SourceChanged",
    "Store",
    "StoreBusy",
    "StoreError",
    "TensorRecord",
    "VerifyReport",
    "add",
    "default_store_path",
    "export",
    "gc",
    "list_artifacts",
    "reindex",
    "remove",
    "show",
    "verify",
]
