"""graft's registry: content-addressed tensor store, manifests and DuckDB catalog."""

from typing import TYPE_CHECKING

from graft.exports import lazy_exports

if TYPE_CHECKING:
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
    from graft.registry.listing import (
        ArtifactDetail,
        ArtifactRow,
        SharedTensors,
        list_artifacts,
        show,
    )
    from graft.registry.manifest import FileRecord, Manifest, Parent, TensorRecord
    from graft.registry.objects import RemoteError
    from graft.registry.ops import (
        GcResult,
        Problem,
        VerifyReport,
        export,
        gc,
        reindex,
        remove,
        verify,
    )
    from graft.registry.pull import FetchResult, PullResult, fetch, pull
    from graft.registry.remotes import Remote, add_remote, get_remote, list_remotes, remove_remote
    from graft.registry.store import Store, default_store_path

__all__ = lazy_exports(
    __name__,
    {
        "graft.registry.add": ("AddResult", "add"),
        "graft.registry.amend": ("amend",),
        "graft.registry.errors": (
            "AmbiguousRef",
            "ArtifactNotFound",
            "CorruptBlob",
            "CycleRefused",
            "ExitCode",
            "GraftError",
            "InvalidArtifact",
            "PickleRefused",
            "SourceChanged",
            "StoreBusy",
            "StoreError",
        ),
        "graft.registry.manifest": ("FileRecord", "Manifest", "Parent", "TensorRecord"),
        "graft.registry.objects": ("RemoteError",),
        "graft.registry.listing": (
            "ArtifactDetail",
            "ArtifactRow",
            "SharedTensors",
            "list_artifacts",
            "show",
        ),
        "graft.registry.ops": (
            "GcResult",
            "Problem",
            "VerifyReport",
            "export",
            "gc",
            "reindex",
            "remove",
            "verify",
        ),
        "graft.registry.pull": ("FetchResult", "PullResult", "fetch", "pull"),
        "graft.registry.remotes": (
            "Remote",
            "add_remote",
            "get_remote",
            "list_remotes",
            "remove_remote",
        ),
        "graft.registry.store": ("Store", "default_store_path"),
    },
)
