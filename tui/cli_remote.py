"""`graft remote`, `push`, `fetch` and `pull`: sharing a registry through object storage."""

from __future__ import annotations

import click

from graft import lineage, registry
from graft.registry import Store
from graft.tui import render
from graft.tui.cli_options import json_option, with_store


@click.group("remote")
def remote_group() -> None:
    """The object stores (S3 buckets, shared folders) this store pushes to and pulls from."""


@remote_group.command("add")
@click.argument("name")
@click.argument("url")
@click.option(
    "--endpoint-url",
    metavar="URL",
    help="An S3-compatible server other than AWS (R2, MinIO, SeaweedFS, ...).",
)
@click.option("--force", is_flag=True, help="Replace a remote of that name.")
@with_store
def remote_add(store: Store, name: str, url: str, endpoint_url: str | None, force: bool) -> None:
    """Add remote NAME at URL: s3://BUCKET/PREFIX or file:///PATH.

    Credentials come from the AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    AWS_PROFILE, ~/.aws) and are never stored.
    """
    remote = registry.add_remote(store, name, url, endpoint_url, force=force)
    render.err.print(f"added remote {remote.name} → {remote.url}")


@remote_group.command("list")
@json_option
@with_store
def remote_list(store: Store, as_json: bool) -> None:
    """List the remotes."""
    remotes = registry.list_remotes(store)
    if as_json:
        render.print_json(remotes)
    elif not remotes:
        render.err.print("no remotes; add one with `graft remote add NAME s3://BUCKET/PREFIX`")
    for r in [] if as_json else remotes:
        endpoint = f"  ({r.endpoint_url})" if r.endpoint_url else ""
        render.out.print(f"{r.name}  {r.url}{endpoint}")


@remote_group.command("remove")
@click.argument("name")
@with_store
def remote_remove(store: Store, name: str) -> None:
    """Forget remote NAME (nothing on it is deleted)."""
    registry.remove_remote(store, name)
    render.err.print(f"removed remote {name}")


@click.command()
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("--to", "remote", metavar="REMOTE", help="The remote [default: the only one].")
@click.option("--no-ancestors", is_flag=True, help="Push only the artifacts named.")
@json_option
@with_store
def push(
    store: Store, refs: tuple[str, ...], remote: str | None, no_ancestors: bool, as_json: bool
) -> None:
    """Upload artifacts, with their ancestors and lineage, to a remote.

    Only what the remote lacks goes up: blobs first, then each artifact's deltas,
    its manifest and its version claim, so an interrupted push leaves the remote
    consistent and running it again finishes it.
    """
    with render.progress("pushing") as on_progress:
        result = lineage.push(
            store, list(refs), remote, ancestors=not no_ancestors, on_progress=on_progress
        )
    if as_json:
        render.print_json(result)
        return
    for a in result.artifacts:
        state = "claimed" if a.new else "already there as"
        render.err.print(f"{a.ref}: {state} {result.remote}:{a.claim}")
    render.err.print(f"sent {result.blobs_sent} blobs, {render.human_size(result.bytes_sent)}")


@click.command()
@click.argument("remote", required=False)
@json_option
@with_store
def fetch(store: Store, remote: str | None, as_json: bool) -> None:
    """Bring a remote's artifacts and lineage into the catalog (no weights).

    Then `graft ls --remote REMOTE`, `log`, `touched`, `sql` and the TUI see them;
    REMOTE:NAME[@N] names one.
    """
    result = registry.fetch(store, remote)
    if as_json:
        render.print_json(result)
        return
    for problem in result.refused:
        render.error(f"graft: refused from {result.remote}: {problem}")
    render.err.print(
        f"{result.remote}: {result.claims} versions, {result.new_manifests} new artifacts",
    )


@click.command()
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("--from", "remote", metavar="REMOTE", help="The remote [default: the only one].")
@click.option("--no-ancestors", is_flag=True, help="Pull only the artifacts named.")
@json_option
@with_store
def pull(
    store: Store, refs: tuple[str, ...], remote: str | None, no_ancestors: bool, as_json: bool
) -> None:
    """Download artifacts (NAME[@N] as the remote names them) and register them here.

    Blobs stored here already are not downloaded; every blob is checked against
    its key before it is kept.
    """
    with render.progress("pulling") as on_progress:
        result = registry.pull(
            store, list(refs), remote, ancestors=not no_ancestors, on_progress=on_progress
        )
    if as_json:
        render.print_json(result)
        return
    for ref in result.artifacts:
        render.err.print(f"pulled {ref}")
    render.err.print(
        f"received {result.blobs_received} blobs, {render.human_size(result.bytes_received)}",
    )


REMOTE_COMMANDS = (remote_group, push, fetch, pull)
