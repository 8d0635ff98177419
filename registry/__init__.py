"""graft's registry: content-addressed tensor store, manifests and DuckDB catalog."""

from graft.registry.add import AddResult, add
from graft.registry.amend import amend
from graft.registry.errors import (
    AmbiguousRef,
    ArtifactNotFound,
    CorruptBlob,
    CycleRefused,
    ExitCode,
    GraftError,
    InvalidArtifact,
    PickleRefused,
    SourceChanged,
    StoreBusy,
    StoreError,
)
from graft.registry.manifest import FileRecord, Manifest, Parent, TensorRecord
from graft.registry.objects import RemoteError
from graft.registry.ops import (
    ArtifactDetail,
    ArtifactRow,
    GcResult,
    Problem,
    SharedTensors,
    VerifyReport,
    export,
    gc,
    list_artifacts,
    reindex,
    remove,
    show,
    verify,
)
from graft.registry.pull import FetchResult, PullResult, fetch, pull
from graft.registry.remotes import Remote, add_remote, get_remote, list_remotes, remove_remote
from graft.registry.store import Store, default_store_path

__all__ = [
    "AddResult",
    "AmbiguousRef",
    "ArtifactDetail",
    "ArtifactNotFound",
    "ArtifactRow",
    "CorruptBlob",
    "CycleRefused",
    "ExitCode",
    "FetchResult",
    "FileRecord",
    "GcResult",
    "GraftError",
    "InvalidArtifact",
    "Manifest",
    "Parent",
    "PickleRefused",
    "Problem",
    "PullResult",
    "Remote",
    "RemoteError",
    "SharedTensors",
    "SourceChanged",
    "Store",
    "StoreBusy",
    "StoreError",
    "TensorRecord",
    "VerifyReport",
    "add",
    "add_remote",
    "amend",
    "default_store_path",
    "export",
    "fetch",
    "gc",
    "get_remote",
    "list_artifacts",
    "list_remotes",
    "pull",
    "reindex",
    "remove",
    "remove_remote",
    "show",
    "verify",
]
