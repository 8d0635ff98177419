"""The `graft` command: parses arguments, calls the registry, renders the result."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import graft
from graft import lineage, registry
from graft.lineage.hub import is_hub_ref
from graft.registry import ExitCode, GraftError, Manifest, Store
from graft.tui import render
from graft.tui.cli_options import json_option, plot_option, with_store
from graft.tui.cli_remote import REMOTE_COMMANDS

if TYPE_CHECKING:  # views and pictures load rich's tables: each command imports its own
    from graft.tui import pictures


class GraftGroup(click.Group):
    """Turns errors into one line on stderr and a small set of exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except GraftError as e:
            if debug:
                raise
            render.error(f"graft: error: {e}")
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            render.err.print("graft: interrupted")
            ctx.exit(ExitCode.INTERRUPTED)
        except BrokenPipeError:
            # The reader left (`| head`): say nothing, as rich does, and point
            # stdout at devnull so that the interpreter's last flush fails no more.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(ExitCode.ERROR)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            if debug:
                raise
            render.error(
                f"graft: internal error: {type(e).__name__}: {e} (re-run with --debug for details)"
            )
            ctx.exit(ExitCode.ERROR)


@click.group(cls=GraftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    type=click.Path(path_type=Path),
    envvar="GRAFT_STORE",
    help="Store folder [env GRAFT_STORE; default ~/.local/share/graft].",
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name=graft.DISTRIBUTION)
@click.pass_context
def cli(ctx: click.Context, store: Path | None, debug: bool) -> None:
    """graft: a content-addressed registry and merge engine for safetensors lineage."""
    ctx.obj = {"store": store}


@cli.command()
@click.argument(
    "paths", nargs=-1, required=True, metavar="PATH...", type=click.Path(path_type=Path)
)
@click.option("--name", help="Artifact name [default: the folder or file name].")
@click.option("--parent", metavar="REF", help="The artifact this one was trained from.")
@click.option("--method", help="How it was made: sft, dpo, lora, ... (free text).")
@click.option(
    "--meta", "meta", multiple=True, metavar="KEY=VALUE", help="User metadata (repeatable)."
)
@click.option(
    "--kind",
    type=click.Choice(["model", "adapter", "merge", "checkpoint"]),
    help="Override the detected kind.",
)
@click.option(
    "--infer-parent",
    is_flag=True,
    help="Without --parent, record the most likely parent among registered artifacts.",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Convert .bin/.pt weights with torch.load(weights_only=True) instead of refusing.",
)
@click.option(
    "--no-repack", is_flag=True, help="Start no background job (deltas, repack) afterwards."
)
@click.option("--no-compress", is_flag=True, help="Keep this artifact's blobs raw for good.")
@json_option
@with_store
def add(
    store: Store,
    paths: tuple[Path, ...],
    name: str | None,
    parent: str | None,
    method: str | None,
    meta: tuple[str, ...],
    kind: Any,
    infer_parent: bool,
    allow_pickle: bool,
    no_repack: bool,
    no_compress: bool,
    as_json: bool,
) -> None:
    """Register safetensors files, model, adapter or checkpoint folders, or hf:ORG/NAME.

    A trainer's output folder (holding checkpoint-N/ folders) registers each
    checkpoint in step order as RUN/checkpoint-N, each the parent of the next
    (the first under --parent), then the final model at its root as RUN.
    Checkpoints already registered are kept, so it can run after every save.

    It returns once the artifacts are durably stored. Then a background job
    records which tensors changed against the parent (`graft touched`) and
    repacks, to store what changed compactly.
    """
    if name and len(paths) > 1:
        raise click.UsageError("--name names one artifact: give one PATH with it")
    for path in paths:  # all there before any is added
        if not path.exists() and not is_hub_ref(str(path)):
            raise registry.InvalidArtifact(f"{path}: no such file or folder", "check the path")
    pairs = dict(_key_value(m) for m in meta)
    options = {
        "method": method,
        "meta": pairs,
        "kind": kind,
        "allow_pickle": allow_pickle,
        "repack": not no_repack,
        "compress": not no_compress,
    }
    docs = []
    runs = [path for path in paths if lineage.checkpoints_in(path)]
    for path in paths:
        with render.progress(f"adding {path.name}") as on_progress:
            if path in runs:
                results = lineage.register_run(
                    path, store=store, parent=parent, name=name, on_progress=on_progress, **options
                )
                docs += [_added(store, r, None, parent, None, as_json) for r in results]
                continue
            guesser = lineage.ParentGuesser(store) if infer_parent else None
            result = lineage.register(
                path,
                store=store,
                name=name,
                parent=parent,
                choose_parent=guesser,
                on_progress=on_progress,
                **options,
            )
        given = bool(name or parent or method or pairs)
        docs.append(_added(store, result, guesser, parent, given, as_json))
    if as_json:
        render.print_json(docs[0] if len(paths) == 1 and not runs else docs)


def _added(
    store: Store,
    result: registry.AddResult,
    guesser: lineage.ParentGuesser | None,
    parent: str | None,
    given: bool | None,
    as_json: bool,
) -> dict[str, Any]:
    """Say what `graft add` did with one artifact (notes on stderr, a line on
    stdout unless `as_json`); its JSON document. `given`: whether options were
    given that identical content already registered would not take (None: in a
    run, where checkpoints already registered are expected)."""
    m = result.manifest
    suggestion = None
    if guesser and guesser.asked:  # no declared base: the guess decided
        suggestion = guesser.suggestion
        render.err.print(_suggestion_note(suggestion, recorded=bool(m.parents)))
    elif parent is None and not result.existed and not m.parents:
        suggestion = lineage.guess_parent(store, m.files, exclude=m.id)
        declared = m.meta.get(lineage.DECLARED_BASE)
        if declared:
            render.err.print(
                f"graft: its files declare base {declared!r}, which is not registered: "
                f"no parent recorded; adding {declared!r} links it"
            )
        if suggestion is not None or not declared:
            render.err.print(_suggestion_note(suggestion, recorded=False))
    for ref in result.linked:
        render.err.print(f"graft: linked {ref} to {m.ref}, the base its files declare")
    for note in result.skipped:
        if not note.endswith("(sub-folder)") or given is not None:
            render.err.print(f"graft: skipped {note}")
    if parent is None and m.parents and not result.existed and not (guesser and guesser.asked):
        first = store.load_manifest(m.parents[0].id)
        run = lineage.run_of(first.name)
        same_run = run is not None and run in (m.name, lineage.run_of(m.name))
        origin = "the run's checkpoint before it" if same_run else "the base its files declare"
        render.err.print(f"graft: parent {first.ref} ({origin})")
    if result.existed and given:
        render.err.print(
            f"graft: identical content is already registered as {m.ref}; "
            f"--name, --parent, --method and --meta were not applied; `graft amend {m.ref}` sets "
            "them",
        )
    if not as_json:
        verb = "already registered as" if result.existed else "added"
        render.out.print(
            f"{verb} {m.ref} ({m.id[:12]}): {m.kind}, {len(m.tensors)} tensors, "
            f"{render.human_size(m.size)}, {render.human_size(result.bytes_new)} new",
        )
    return {
        "id": m.id,
        "name": m.name,
        "version": m.version,
        "kind": m.kind,
        "tensors": len(m.tensors),
        "files": len(m.files),
        "bytes": m.size,
        "bytes_new": result.bytes_new,
        "existed": result.existed,
        "skipped": list(result.skipped),
        "linked": list(result.linked),
        "parents": [p.id for p in m.parents],
        "suggested_parent": render.to_plain(suggestion),
    }


def _suggestion_note(s: lineage.Suggestion | None, *, recorded: bool) -> str:
    if s is None:
        return "graft: no registered artifact looks like its parent"
    how = f"confidence {s.confidence:.2f}: {s.evidence}"
    if recorded:
        return f"graft: parent {s.parent} (inferred, {how})"
    return f"graft: likely parent {s.parent} ({how}); record it with --infer-parent"


@cli.command()
@click.argument("ref")
@click.option("--parent", metavar="REF", help="The artifact it was really trained from.")
@click.option("--method", help="How it was made: sft, dpo, ... (free text).")
@click.option(
    "--meta", "meta", multiple=True, metavar="KEY=VALUE", help="User metadata to set (repeatable)."
)
@click.option("--name", help="A new name (it gets that name's next version).")
@json_option
@with_store
def amend(
    store: Store,
    ref: str,
    parent: str | None,
    method: str | None,
    meta: tuple[str, ...],
    name: str | None,
    as_json: bool,
) -> None:
    """Fix REF's parent, method, meta or name after the fact; its content and id stay.

    Amendments are kept in the store beside the artifact, applied by the
    catalog and by `graft reindex`; `graft log` marks an amended edge.
    """
    pairs = dict(_key_value(m) for m in meta)
    m = registry.amend(store, ref, parent=parent, method=method, meta=pairs, name=name)
    if as_json:
        render.print_json(
            {
                "id": m.id,
                "name": m.name,
                "version": m.version,
                "method": m.method,
                "parents": [p.id for p in m.parents],
                "meta": m.meta,
            }
        )
        return
    parents = ", ".join(p.id[:12] for p in m.parents) or "none"
    render.out.print(
        f"amended {m.ref} ({m.id[:12]}): method {m.method or '-'}, parents {parents}",
    )


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--meta")
    return key, value


@cli.command("ls")
@click.option("--name", help="Only versions of this name.")
@click.option(
    "--kind", type=click.Choice(["model", "adapter", "merge", "checkpoint"]), help="Only this kind."
)
@click.option(
    "--remote", metavar="REMOTE", help="The versions claimed on REMOTE (as of `graft fetch`)."
)
@json_option
@with_store
def ls(store: Store, name: str | None, kind: str | None, remote: str | None, as_json: bool) -> None:
    """List the artifacts in the store, and those fetched from remotes (WHERE)."""
    if remote is not None:
        registry.get_remote(store, remote)  # an unknown one is an error, not an empty list
    rows = registry.list_artifacts(store, name=name, kind=kind, remote=remote)
    if as_json:
        render.print_json(rows)
    elif rows and not render.stdout_is_terminal():
        render.print_plain_table(*render.artifact_cells(rows), right=render.ARTIFACT_RIGHT)
    elif rows:
        from graft.tui import artifact_views

        render.out.print(artifact_views.artifact_table(rows))
    elif remote is not None:
        render.err.print(f"nothing fetched from {remote}; run `graft fetch {remote}`")
    else:
        render.err.print("the store is empty; add something with `graft add PATH`")


@cli.command()
@click.argument("ref")
@click.option("--tensors", is_flag=True, help="Also list every tensor.")
@json_option
@with_store
def show(store: Store, ref: str, tensors: bool, as_json: bool) -> None:
    """Show one artifact (REF = NAME, NAME@N or an id prefix) with its lineage."""
    from graft.tui import artifact_views

    detail = registry.show(store, ref)
    if as_json:
        doc = render.to_plain(detail.manifest)
        if not tensors:
            for f in doc["files"]:
                f["tensors"] = len(f["tensors"])
        doc["ancestors"] = render.to_plain(detail.ancestors)
        doc["children"] = detail.children
        doc["shared"] = render.to_plain(detail.shared)
        doc["adapter_type"] = detail.adapter_type
        doc["amendments"] = render.to_plain(detail.amendments)
        render.print_json(doc)
        return
    for part in artifact_views.detail_view(detail, tensors=tensors):
        render.out.print(part)


@cli.command()
@click.argument("ref", required=False)
@click.option("--method", help="Aggregate over every artifact made by this method instead.")
@click.option(
    "--series",
    "run",
    metavar="RUN",
    help="How each layer's change grew over the checkpoints RUN/checkpoint-N.",
)
@click.option("--grid/--no-grid", default=True, help="Also draw the layers × modules grid.")
@plot_option
@json_option
@with_store
def touched(
    store: Store,
    ref: str | None,
    method: str | None,
    run: str | None,
    grid: bool,
    plot: Path | None,
    as_json: bool,
) -> None:
    """Which layers and modules REF changed against its parent(s), and by how much."""
    from graft.tui import lineage_views, pictures

    if sum(x is not None for x in (ref, method, run)) != 1:
        raise click.UsageError("give one of REF, --method M or --series RUN")
    if run:
        growth = lineage.series(store, run)
        if as_json:
            render.print_json(growth)
        else:
            render.out.print(lineage_views.series_table(growth))
        if plot:
            _drew(pictures.series_plot(growth, plot))
        return
    if method:
        by_method = lineage.touched_by_method(store, method)
        if as_json:
            render.print_json(by_method)
        else:
            render.out.print(lineage_views.method_grid(by_method))
            render.out.print("artifacts: " + ", ".join(by_method.artifacts))
        if plot:
            _drew(pictures.method_heatmap(by_method, plot))
        return
    assert ref is not None
    touches = lineage.touched(store, ref)
    if plot:
        m = store.resolve_ref(ref)
        _drew(pictures.touched_heatmap(m, touches, lineage.layers_of(store, ref), plot))
    if as_json:
        render.print_json(touches)
        return
    if not touches:
        render.err.print(f"{ref} changed nothing against its parents (or has none recorded)")
        return
    render.out.print(lineage_views.delta_table(touches))
    if grid:
        render.out.print()
        title = f"largest relative change in {ref} (· untouched)"
        layers = lineage.layers_of(store, ref)
        render.out.print(lineage_views.touched_grid(touches, title, layers))


def _drew(picture: pictures.Picture) -> None:
    render.err.print(f"wrote {picture.path}")


@cli.group("lineage")
def lineage_group() -> None:
    """Maintain the recorded lineage."""


@lineage_group.command("recompute")
@click.argument("ref", required=False)
@with_store
def lineage_recompute(store: Store, ref: str | None) -> None:
    """Recompute what REF (default: every artifact) changed against its parents."""
    pairs = lineage.recompute(store, ref)
    render.out.print(f"recomputed the deltas of {pairs} (artifact, parent) pairs")


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--all", "show_all", is_flag=True, help="Also list identical tensors.")
@plot_option
@json_option
@with_store
def diff(store: Store, a: str, b: str, show_all: bool, plot: Path | None, as_json: bool) -> None:
    """Per layer and module, how B differs from A (any two artifacts)."""
    from graft.tui import lineage_views, pictures

    a_ref, b_ref, rows = lineage.diff(store, a, b)
    if plot:
        _drew(pictures.diff_heatmap(a_ref, b_ref, rows, plot))
    shown = rows if show_all else [r for r in rows if r.status != "identical"]
    if as_json:
        render.print_json({"a": a_ref, "b": b_ref, "tensors": shown})
        return
    same = len(rows) - sum(r.status != "identical" for r in rows)
    render.err.print(f"{b_ref} against {a_ref}: {len(rows) - same} differ, {same} identical")
    if shown:
        render.out.print(lineage_views.delta_table(shown))


@cli.command("log")
@click.argument("ref")
@click.option("--children", is_flag=True, help="Show descendants instead of ancestors.")
@plot_option
@json_option
@with_store
def log_(store: Store, ref: str, children: bool, plot: Path | None, as_json: bool) -> None:
    """The ancestry tree of REF: each parent with its relation and method."""
    from graft.tui import lineage_views, pictures

    me, entries = lineage.log(store, ref, children=children)
    if plot:
        _drew(pictures.lineage_graph(me, entries, plot, children=children))
    if as_json:
        render.print_json(entries)
    else:
        render.out.print(lineage_views.log_tree(me, entries, children=children))


@cli.command()
@click.argument("ref")
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write [default: NAME-N.html here].",
)
@with_store
def report(store: Store, ref: str, out: Path | None) -> None:
    """One self-contained HTML page about REF: overview, lineage graph, heatmap,
    most changed tensors, a merge's recipe, a checkpoint's run (opens offline)."""
    from graft.tui.report import write_report

    if out is None:
        m = store.resolve_ref(ref)
        out = Path(f"{m.name.replace('/', '_')}-{m.version}.html")
    render.err.print(f"wrote {write_report(store, ref, out)}")


def merge_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by `merge` and `fold`."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--out",
            "out_dir",
            required=True,
            type=click.Path(path_type=Path),
            help="Folder to write (must not exist, or be empty).",
        ),
        click.option(
            "--name", help="Name of the registered result [default: the --out folder's name]."
        ),
        click.option(
            "--device",
            default="cpu",
            show_default=True,
            help="Where to compute: cpu, cuda, cuda:N.",
        ),
        click.option(
            "--out-shard-size",
            default="5GB",
            show_default=True,
            metavar="SIZE",
            help="Largest output shard, e.g. 2GB or 500MB.",
        ),
        click.option(
            "--no-register", is_flag=True, help="Only write the folder; leave the store alone."
        ),
        json_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of DARE/DELLA's random masks.")
@click.option(
    "--rank",
    type=int,
    help="Rank of a merged adapter (inputs all adapters; default: the sum of theirs).",
)
@merge_options
@click.pass_context
def merge(
    ctx: click.Context,
    config: Path,
    seed: int,
    rank: int | None,
    out_dir: Path,
    name: str | None,
    device: str,
    out_shard_size: str,
    no_register: bool,
    as_json: bool,
) -> None:
    """Merge models as a mergekit-style YAML CONFIG says; register the result.

    Inputs are registered artifacts, local folders, or BASE+ADAPTER (a LoRA
    folded into its base). When every input is a LoRA adapter, the result is
    one adapter: exact for linear/task_arithmetic, else cut to --rank by SVD.
    Methods: linear, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs,
    breadcrumbs_ties, della, della_linear, slerp, model_stock, passthrough.
    """
    from graft.merge.api import merge_models
    from graft.merge.config import load_config

    parsed = load_config(config)
    store = None if no_register and not _needs_store(parsed) else Store.open(ctx.obj["store"])
    with render.tensor_progress(f"merging ({parsed.method.name})") as bar:
        outcome = merge_models(
            parsed,
            out_dir,
            store=store,
            register=not no_register,
            name=name,
            seed=seed,
            rank=rank,
            device=device,
            shard_size=_size(out_shard_size),
            on_progress=bar,
        )
    _report_merge(outcome, as_json)


@cli.command()
@click.argument("adapter")
@click.option("--base", metavar="REF", help="Base model [default: the adapter's recorded parent].")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    help="Output dtype [default: the base's].",
)
@merge_options
@click.pass_context
def fold(
    ctx: click.Context,
    adapter: str,
    base: str | None,
    dtype: str | None,
    out_dir: Path,
    name: str | None,
    device: str,
    out_shard_size: str,
    no_register: bool,
    as_json: bool,
) -> None:
    """Fold a LoRA ADAPTER into its base (PEFT merge_and_unload), tensor by tensor."""
    from graft.merge.api import fold_adapter

    store = Store.open(ctx.obj["store"])
    with render.tensor_progress("folding") as bar:
        outcome = fold_adapter(
            adapter,
            out_dir,
            store=store,
            register=not no_register,
            base=base,
            dtype=dtype,
            name=name,
            device=device,
            shard_size=_size(out_shard_size),
            on_progress=bar,
        )
    _report_merge(outcome, as_json)


@cli.command()
@click.argument("tuned", metavar="REF")
@click.option("--base", metavar="REF", required=True, help="The model REF was fine-tuned from.")
@click.option("--rank", type=int, required=True, help="Rank of the LoRA adapter.")
@click.option(
    "--modules",
    metavar="NAMES",
    default="",
    help="Comma-separated module names to extract (q_proj,v_proj) [default: every changed one].",
)
@click.option("--embeddings", is_flag=True, help="Also the embeddings and the LM head.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write (must not exist, or be empty).",
)
@click.option("--name", help="Name of the registered adapter [default: the --out folder's name].")
@click.option("--no-register", is_flag=True, help="Only write the folder; leave the store alone.")
@json_option
@click.pass_context
def extract(
    ctx: click.Context,
    tuned: str,
    base: str,
    rank: int,
    modules: str,
    embeddings: bool,
    out_dir: Path,
    name: str | None,
    no_register: bool,
    as_json: bool,
) -> None:
    """Turn the fine-tune REF back into a LoRA adapter of --base: the best rank-R
    approximation (truncated SVD) of each changed matrix, with its relative error."""
    from graft.merge.api import extract_adapter

    store = Store.open(ctx.obj["store"])
    with render.progress("extracting") as bar:
        outcome = extract_adapter(
            tuned,
            base,
            out_dir,
            rank=rank,
            store=store,
            register=not no_register,
            modules=tuple(m.strip() for m in modules.split(",") if m.strip()),
            embeddings=embeddings,
            name=name,
            on_progress=bar,
        )
    e, m = outcome.extracted, outcome.manifest
    worst = max(e.errors.values())
    if as_json:
        render.print_json(
            {
                "out_dir": str(e.out_dir),
                "rank": e.rank,
                "errors": e.errors,
                "artifact": {"id": m.id, "ref": m.ref} if m else None,
                "existed": outcome.existed,
            }
        )
        return
    render.out.print(
        f"wrote {e.out_dir}: a rank-{e.rank} LoRA of {len(e.errors)} modules, "
        f"largest relative error {worst:.3g}"
    )
    _say_registered(m, outcome.existed)


def _say_registered(m: Manifest | None, existed: bool) -> None:
    """The line after writing an output folder: what the store recorded of it."""
    if m and existed:
        render.out.print(
            f"identical to {m.ref} ({m.id[:12]}), already registered: nothing new recorded"
        )
    elif m:
        render.out.print(f"registered {m.ref} ({m.id[:12]}); see `graft log {m.ref}`")


def _report_merge(outcome: Any, as_json: bool) -> None:
    r, m = outcome.result, outcome.manifest
    if as_json:
        render.print_json(
            {
                "out_dir": str(r.out_dir),
                "files": r.files,
                "tensors": r.tensors,
                "bytes": r.bytes_written,
                "touched": r.touched,
                "seconds": round(r.seconds, 3),
                "rank": r.rank,
                "truncation_error": r.truncation_error,
                "artifact": {"id": m.id, "ref": m.ref} if m else None,
                "existed": outcome.existed,
            }
        )
        return
    render.out.print(
        f"wrote {r.out_dir} ({r.tensors} tensors in {len(r.files)} file(s), "
        f"{render.human_size(r.bytes_written)}, {len(r.touched)} changed) in {r.seconds:.1f} s",
    )
    _say_registered(m, outcome.existed)


def _needs_store(config: Any) -> bool:
    """Whether any model reference might name a registered artifact."""
    refs = [m.model for m in config.models] + [
        s.model for sl in config.slices or () for s in sl.sources
    ]
    parts = [p for ref in refs for p in ref.split("+")]
    return not all(Path(p).exists() for p in parts)


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def _size(text: str) -> int:
    number = text.strip().upper()
    digits = number.rstrip("KMGIB")
    unit = number[len(digits) :]
    try:
        value = float(digits)
        scale = _UNITS[unit]
    except (ValueError, KeyError):
        raise click.BadParameter(f"{text!r} is not a size like 500MB or 2GB") from None
    if value <= 0:
        raise click.BadParameter(f"{text!r}: must be positive")
    return int(value * scale)


@cli.command()
@click.argument("ref")
@click.argument("out_dir", type=click.Path(path_type=Path))
@with_store
def export(store: Store, ref: str, out_dir: Path) -> None:
    """Write an artifact's files, byte-identical to those added, into OUT_DIR."""
    with render.progress(f"exporting {ref}") as on_progress:
        m = registry.export(store, ref, out_dir, on_progress)
    render.err.print(f"exported {m.ref} ({len(m.files)} files) to {out_dir}")


@cli.command()
@click.argument("ref", required=False)
@json_option
@with_store
def verify(store: Store, ref: str | None, as_json: bool) -> None:
    """Re-hash manifests and blobs (all, or REF's); exit 3 when anything is wrong."""
    report = registry.verify(store, ref)
    if as_json:
        render.print_json({"ok": report.ok, **render.to_plain(report)})
    else:
        for problem in report.problems:
            render.out.print(str(problem))
        status = "ok" if report.ok else f"{len(report.problems)} problems"
        render.err.print(f"verified {report.artifacts} artifacts, {report.blobs} blobs: {status}")
    if not report.ok:
        sys.exit(ExitCode.INTEGRITY)


@cli.command()
@click.argument("query")
@json_option
@with_store
def sql(store: Store, query: str, as_json: bool) -> None:
    """Run a read-only SQL query on the catalog (tables and views in the README)."""
    result = lineage.run_sql(store, query)
    if as_json:
        render.print_json([dict(zip(result.columns, row, strict=True)) for row in result.rows])
    elif not render.stdout_is_terminal():
        render.print_plain_table(result.columns, render.sql_cells(result.rows))
    else:
        from graft.tui import artifact_views

        render.out.print(artifact_views.rows_table(result.columns, result.rows))


@cli.command("export-catalog")
@click.option(
    "--parquet",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder to write one <table>.parquet per catalog table into.",
)
@with_store
def export_catalog(store: Store, out_dir: Path) -> None:
    """Write every catalog table as Parquet, for pandas, Polars, Spark, ..."""
    for path in lineage.export_catalog(store, out_dir):
        render.out.print(str(path))


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@json_option
@with_store
def gc(store: Store, dry_run: bool, as_json: bool) -> None:
    """Delete blobs that no artifact references."""
    result = registry.gc(store, dry_run=dry_run)
    if as_json:
        render.print_json({"dry_run": dry_run, **render.to_plain(result)})
        return
    verb = "would remove" if dry_run else "removed"
    render.out.print(
        f"{verb} {result.blobs_removed} blobs ({render.human_size(result.bytes_freed)}) "
        f"and {result.temp_files_removed} temp files",
    )


@cli.command()
@click.argument("ref", required=False)
@click.option(
    "--workers", type=click.IntRange(min=1), help="Blobs encoded at once (default: CPUs)."
)
@json_option
@with_store
def repack(store: Store, ref: str | None, workers: int | None, as_json: bool) -> None:
    """Encode raw blobs (all, or REF's): deltas against the parent's tensors, else solo."""
    from graft.registry.repack import repack as run_repack

    with render.progress("repacking") as on_progress:
        result = run_repack(store, ref, workers=workers, on_progress=on_progress)
    if as_json:
        render.print_json(render.to_plain(result))
        return
    render.out.print(
        f"encoded {result.encoded} blobs, kept {result.kept_raw} raw: "
        f"{render.human_size(result.bytes_before)} → {render.human_size(result.bytes_after)}",
    )


@cli.command()
@click.argument("key", required=False)
@click.argument("value", required=False)
@json_option
@with_store
def config(store: Store, key: str | None, value: str | None, as_json: bool) -> None:
    """Show the store's settings, or set KEY to VALUE (compress, auto_repack: true/false)."""
    from dataclasses import asdict

    from graft.registry import settings

    if key is None:
        current = settings.load(store)
    elif value is None:
        raise click.UsageError(f"give a value for {key}: true or false")
    else:
        current = settings.save(store, key, value)
    if as_json:
        render.print_json(asdict(current))
    else:
        for k, v in asdict(current).items():
            render.out.print(f"{k} = {str(v).lower()}")


@cli.command()
@click.argument("ref", required=False)
@json_option
@with_store
def du(store: Store, ref: str | None, as_json: bool) -> None:
    """Raw bytes against bytes on disk, for the store and each artifact (or REF)."""
    from graft.registry.usage import usage
    from graft.tui import artifact_views

    total, rows = usage(store, ref)
    if as_json:
        render.print_json(
            {
                "raw_bytes": total.raw_bytes,
                "stored_bytes": total.stored_bytes,
                "artifacts": [
                    {"ref": r.name, "raw_bytes": r.raw_bytes, "stored_bytes": r.stored_bytes}
                    for r in rows
                ],
            }
        )
        return
    render.out.print(
        artifact_views.rows_table(
            ["ARTIFACT", "RAW", "STORED", "RATIO"],
            [
                (
                    u.name,
                    render.human_size(u.raw_bytes),
                    render.human_size(u.stored_bytes),
                    f"{u.ratio:.2f}",
                )
                for u in [*rows, total]
            ],
        )
    )


@cli.command()
@click.argument("ref")
@click.option("--force", is_flag=True, help="Remove even if other artifacts name it as parent.")
@with_store
def rm(store: Store, ref: str, force: bool) -> None:
    """Unregister an artifact (its blobs are freed by `graft gc`)."""
    m = registry.remove(store, ref, force=force)
    render.out.print(f"removed {m.ref} ({m.id[:12]}); run `graft gc` to free its blobs")


@cli.command()
@json_option
@with_store
def reindex(store: Store, as_json: bool) -> None:
    """Rebuild the DuckDB catalog from the manifests."""
    indexed, damaged = registry.reindex(store)
    if as_json:
        render.print_json({"indexed": indexed, "damaged": damaged})
    else:
        render.out.print(f"indexed {indexed} artifacts")
    for path in damaged:
        render.err.print(f"graft: skipped damaged manifest {path}")


@cli.command()
@click.option(
    "--samples",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder of sample artifacts [default: the bundled sample_artifacts/].",
)
@with_store
def demo(store: Store, samples: Path | None) -> None:
    """Register the bundled samples, list them, show a fine-tune's lineage and what it touched."""
    from graft.tui.demo import run_demo  # yaml and the merge engine: only the demo needs them

    run_demo(store, samples)


@cli.command("tui")
@click.option(
    "--demo",
    is_flag=True,
    help="Browse a temporary store filled with the bundled samples (deleted on exit).",
)
@click.pass_context
def tui_(ctx: click.Context, demo: bool) -> None:
    """Browse artifacts, their lineage and the layers each one touched, in a terminal UI."""
    from graft.tui.app import GraftApp  # only this command needs textual
    from graft.tui.demo import populate

    if not demo:
        GraftApp(ctx.obj["store"]).run()
        return
    with tempfile.TemporaryDirectory(prefix="graft-demo-") as scratch:
        store = Store.open(Path(scratch) / "store")
        render.err.print("graft: filling a demo store with the bundled samples…")
        populate(store)
        GraftApp(store.root).run()


for command in REMOTE_COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli(prog_name="graft")
