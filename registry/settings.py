"""A store's settings: `settings.json` in the store, shown and set by `graft config`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from graft.registry.errors import StoreError
from graft.registry.fsutil import write_atomic
from graft.registry.store import Store

FILE = "settings.json"


@dataclass(frozen=True)
class Settings:
    compress: bool = True  # `graft repack` encodes blobs (deltas against parents, or solo)
    auto_repack: bool = True  # each add starts a repack in the background


KEYS = tuple(f.name for f in dataclasses.fields(Settings))


def load(store: Store) -> Settings:
    path = store.root / FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return Settings()
    except ValueError as e:
        raise StoreError(
            f"{path} is not valid JSON ({e})", "fix it, or delete it for defaults"
        ) from e
    if not isinstance(doc, dict) or not all(
        k in KEYS and isinstance(v, bool) for k, v in doc.items()
    ):
        raise StoreError(
            f"{path}: settings are {', '.join(KEYS)}, each true or false",
            "fix it, or delete it for defaults",
        )
    return Settings(**doc)


def save(store: Store, key: str, value: str) -> Settings:
    """Set one setting from text (`true`/`false`); return the new settings."""
    if key not in KEYS:
        raise StoreError(f"unknown setting {key!r}", f"the settings are {', '.join(KEYS)}")
    if value.lower() not in ("true", "false"):
        raise StoreError(f"{key} must be true or false, not {value!r}", "pass true or false")
    settings = dataclasses.replace(load(store), **{key: value.lower() == "true"})
    data = json.dumps(dataclasses.asdict(settings), indent=2).encode() + b"\n"
    write_atomic(store.root / FILE, data, store.work.mine())
    return settings
