"""Amendments: lineage and labels fixed after the fact, the content untouched.

A manifest never changes (its checksum covers every field, its id the files),
so `graft amend` writes a small record beside it instead:
``amendments/<artifact id>/<time ns>-<pid>.json``, atomically, never rewritten.
Loading a manifest applies its amendments in the order they were made
(`Store.load_manifest`), so the catalog, `show`, `reindex` and the deltas all
see the amended artifact; its id stays the same.

An amended parent replaces the artifact's parent edges with one edge whose
params say when it was amended (`graft log` shows it).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from graft.registry.manifest import KEY, Manifest, Parent, Relation

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Amendment:
    at: str  # ISO 8601, UTC
    parent: str | None = None  # the new parent's id
    relation: Relation | None = None
    method: str | None = None
    meta: dict[str, str] = field(default_factory=dict)  # merged into the artifact's meta
    name: str | None = None  # a new name, with its version
    version: int | None = None

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT_VERSION, **dataclasses.asdict(self)}).encode()

    def describe(self) -> str:
        """What it changed, for `show`: "parent 1a2b3c4d5e6f, method sft"."""
        parts = [f"parent {self.parent[:12]}"] if self.parent else []
        parts += [f"method {self.method}"] if self.method else []
        parts += [f"meta {k}={v}" for k, v in self.meta.items()]
        parts += [f"name {self.name}@{self.version}"] if self.name else []
        return ", ".join(parts)


def parse_amendment(data: bytes) -> Amendment:
    """An amendment from its JSON; ValueError when it is not one."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.pop("format", None) != FORMAT_VERSION:
        raise ValueError("not an amendment")
    amendment = Amendment(**doc)
    if amendment.parent is not None and not KEY.fullmatch(str(amendment.parent)):
        raise ValueError(f"{amendment.parent!r} is not a key")
    if (amendment.name is None) != (amendment.version is None):
        raise ValueError("a name needs its version")
    if not isinstance(amendment.meta, dict) or not all(
        isinstance(v, str) for v in (amendment.at, *amendment.meta, *amendment.meta.values())
    ):
        raise ValueError("its time and meta must be strings")
    return amendment


def apply(manifest: Manifest, amendments: list[Amendment]) -> Manifest:
    """The manifest as amended, oldest amendment first."""
    for a in amendments:
        changes: dict = {}
        if a.parent and a.relation:
            changes["parents"] = (Parent(a.parent, a.relation, {"amended": a.at}),)
        if a.method:
            changes["method"] = a.method
        if a.meta:
            changes["meta"] = {**manifest.meta, **a.meta}
        if a.name:
            changes["name"], changes["version"] = a.name, a.version
        manifest = dataclasses.replace(manifest, **changes)
    return manifest


def amendment_files(folder: Path) -> list[Path]:
    """An artifact's amendment files, oldest first (their names start with the time in ns)."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []
