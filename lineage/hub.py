"""`hf:ORG/NAME[@REVISION]`: a Hugging Face Hub repo, through huggingface_hub's cache."""

from __future__ import annotations

import os
from pathlib import Path

from graft.registry import InvalidArtifact

PREFIX = "hf:"
# What graft stores of a repo: weights in safetensors and the files that load them.
PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.md", "*.model", "*.jinja", "*.py", "*.tiktoken"]


def is_hub_ref(spec: str) -> bool:
    return spec.startswith(PREFIX)


def resolve_hub(spec: str) -> tuple[Path, str]:
    """(the snapshot folder, the repo id) of `hf:ORG/NAME[@REVISION]`.

    With HF_HUB_OFFLINE set it only looks in the local cache ($HF_HUB_CACHE).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, _, revision = spec.removeprefix(PREFIX).partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InvalidArtifact(
            f"{spec}: not a Hub reference", "write hf:ORG/NAME or hf:ORG/NAME@REVISION"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        folder = snapshot_download(
            repo,
            revision=revision or None,
            cache_dir=os.environ.get("HF_HUB_CACHE"),
            local_files_only=offline,
            allow_patterns=PATTERNS,
        )
    except LocalEntryNotFoundError as e:
        raise InvalidArtifact(
            f"{spec}: not in the local Hugging Face cache"
            + (" and HF_HUB_OFFLINE is set" if offline else " and the Hub cannot be reached"),
            f"download it first (`hf download {repo}`), or check HF_HUB_CACHE",
        ) from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidArtifact(f"{spec}: {first_line}", "check the repo id and revision") from e
    return Path(folder), repo
