"""Benchmark `graft tui` on a large catalog: the first screen, and moving through the tree.

Usage::

    python benchmarks/bench_tui.py [--artifacts 10000] [--tensors 300] [--repeats 5]
                                   [--presses 200] [--pilot-presses 20] [--table-rows 50000]
                                   [--workdir DIR] [--keep]

Builds the synthetic catalog of bench_catalog.py (--artifacts artifacts of
--tensors Llama-7B-shaped tensors, its lineage and tensor deltas, straight into
DuckDB). Then it runs `GraftApp`
headless in this process (`App.run_test(size=(100, 30))`, no refresh timer) and times,
round-robin (one untimed warm-up round, then --repeats rounds), quoting medians:

* first screen: from constructing `GraftApp(store)` until the artifact tree
  shows the catalog with the cursor on its first artifact (polled every 5 ms);
  the tree builds the nodes of its first screen (at most
  tui.widgets.artifact_tree.INITIAL_NODES) and the rest when their parent is
  opened. The synthetic catalog has no manifests, so the detail tabs stay
  empty (their loads fail in a worker); baseline: the same on an empty store (until the app has
  its empty listing), which is Textual's own start-up plus opening a store;
* `registry.list_artifacts` alone, the catalog read behind the tree;
* cursor: --presses `down` key events from the first node of the populated
  tree, each posted once the previous one has moved the cursor, per keypress;
  then the same until the detail workers the moves started have finished;
* then --pilot-presses `pilot.press("down")` calls. Pilot waits after every key
  until the process is idle, which includes that key's detail load in a worker
  thread, so this row is slower than a user sees the cursor move;
* the Tensors tab with --table-rows rows (a synthetic artifact, every other
  tensor changed): `TensorTable.show` until the table is drawn, then
  --presses `down` keys in it as above.

Interpreter start and imports are not included (see `graft --help` in
bench_catalog.py). The table goes to stdout; progress goes to stderr. The
script exits with 1 when the first screen misses its goal.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import textual
from bench_catalog import (
    Lineage,
    TensorName,
    build_catalog,
    make_lineage,
    row_counts,
    tensor_names,
)
from common import log, machine_line, print_table
from textual import events
from textual.widgets import TabbedContent

from graft import registry
from graft.lineage import Touch
from graft.registry import Store
from graft.registry.manifest import FileRecord, Manifest, TensorRecord
from graft.tui.app import GraftApp
from graft.tui.widgets import ArtifactTree, TensorTable

GOAL_S = 1.0  # first screen
SIZE = (100, 30)
POLL_S = 0.005
TIMEOUT_S = 60.0


def build(store: Store, lin: Lineage, names: list[TensorName]) -> int:
    """bench_catalog's catalog; returns how many merges it holds."""
    build_catalog(store, lin, names)
    return sum(kind == "merge" for kind in lin.kinds)


@dataclass
class Round:
    first_screen_s: float
    keys_s: float  # `presses` keys posted one at a time, each until the cursor moved
    idle_s: float  # the same until the detail workers they started have finished
    pilot_s: float  # `pilot_presses` × pilot.press, then idle and workers done


async def until(check: Callable[[], bool], what: str, interval: float = POLL_S) -> None:
    deadline = time.perf_counter() + TIMEOUT_S
    while not check():
        if time.perf_counter() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        await asyncio.sleep(interval)


async def keys_down(app: GraftApp, presses: int, position: Callable[[], int], what: str) -> float:
    """Seconds for `presses` down keys as a terminal delivers them: each key event
    posted once the previous one has moved `position` (from 0) one step on."""
    t0 = time.perf_counter()
    for step in range(1, presses + 1):

        def moved(step: int = step) -> bool:
            return position() == step

        app.post_message(events.Key("down", None))
        await until(moved, what, interval=0)
    return time.perf_counter() - t0


def first_screen_shown(app: GraftApp) -> bool:
    """The tree lists the catalog, the cursor on its first artifact."""
    return app.rows is not None and app.query_one(ArtifactTree).current is not None


async def tui_round(store_path: Path, n_artifacts: int, presses: int, pilot_presses: int) -> Round:
    """First screen, then the cursor moves down, in one headless app."""
    t0 = time.perf_counter()
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        if n_artifacts:
            await until(lambda: first_screen_shown(app), "the first screen")
        else:
            await until(lambda: app.rows is not None, "the empty listing")
        first = time.perf_counter() - t0
        if not presses:
            return Round(first, 0.0, 0.0, 0.0)

        async def settle() -> None:
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()

        await settle()  # the first artifact's detail load
        tree = app.query_one(ArtifactTree).tree_view
        if tree.cursor_line != 0:
            raise SystemExit(f"bench: cursor starts on line {tree.cursor_line}, not 0")
        t1 = time.perf_counter()
        keys = await keys_down(app, presses, lambda: tree.cursor_line, "the tree cursor")
        await settle()
        idle = time.perf_counter() - t1
        # Pilot waits after each key until the process is idle, detail loads included.
        t2 = time.perf_counter()
        for _ in range(pilot_presses):
            await pilot.press("down")
        await settle()
        pilot_s = time.perf_counter() - t2
        if tree.cursor_line != presses + pilot_presses:
            raise SystemExit(f"bench: cursor on line {tree.cursor_line} after the presses")
        return Round(first, keys, idle, pilot_s)


def big_manifest(n: int) -> tuple[Manifest, list[Touch]]:
    """An artifact of `n` tensors in one file, every other one changed."""
    records = tuple(
        TensorRecord(
            f"model.layers.{i // 8}.mlp.experts.{i % 8}.w{i % 3}.weight",
            "BF16",
            (4096, 1024),
            0,
            4096 * 1024 * 2,
            f"{i:032x}",
        )
        for i in range(n)
    )
    file = FileRecord("model.safetensors", 0, "0" * 32, records)
    manifest = Manifest("0" * 32, "big", 1, "model", "2026-01-01T00:00:00Z", None, (file,))
    touches = [
        Touch(
            t.name,
            i // 8,
            "mlp",
            "experts",
            "modified",
            0.01 * (i % 100),
            None,
            None,
            None,
            None,
            None,
            None,
            "base@1",
        )
        for i, t in enumerate(records)
        if i % 2 == 0
    ]
    return manifest, touches


async def tensors_round(store_path: Path, n_tensors: int, presses: int) -> tuple[float, float]:
    """The Tensors tab filled with `n_tensors` rows, then `presses` cursor moves in it."""
    manifest, touches = big_manifest(n_tensors)
    app = GraftApp(store_path, poll=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.rows is not None, "the empty listing")
        app.query_one(TabbedContent).active = "tensors-tab"
        table = app.query_one(TensorTable)
        table.focus()
        await pilot.pause()
        t0 = time.perf_counter()
        table.show(manifest, touches)
        await pilot.pause()  # laid out and drawn
        fill = time.perf_counter() - t0
        if table.row_count != n_tensors:
            raise SystemExit(f"bench: the table holds {table.row_count} rows, not {n_tensors}")
        return fill, await keys_down(app, presses, lambda: table.cursor_row, "the table cursor")


@dataclass
class Series:
    label: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def range_ms(self, per: int = 1) -> str:
        return f"{1000 * min(self.seconds) / per:.1f}-{1000 * max(self.seconds) / per:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=int, default=10_000, help="artifacts in the catalog")
    ap.add_argument("--tensors", type=int, default=300, help="tensors per artifact")
    ap.add_argument("--repeats", type=int, default=5, help="runs per measurement (median quoted)")
    ap.add_argument("--presses", type=int, default=200, help="`down` keys timed per round")
    ap.add_argument(
        "--pilot-presses", type=int, default=20, help="pilot.press('down') calls timed per round"
    )
    ap.add_argument(
        "--table-rows", type=int, default=50_000, help="tensors of the Tensors tab's artifact"
    )
    ap.add_argument("--workdir", type=Path, help="folder for the stores (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="leave the stores in place")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.artifacts < 20:
        ap.error("--artifacts must be at least 20")
    if args.presses < 1 or args.pilot_presses < 0:
        ap.error("--presses must be at least 1 and --pilot-presses at least 0")
    if args.presses + args.pilot_presses >= args.artifacts:
        ap.error("--presses plus --pilot-presses must be fewer than --artifacts")
    if args.table_rows <= args.presses:
        ap.error("--table-rows must be more than --presses")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="graft-bench-tui-", dir=args.workdir))
    try:
        return bench(
            work,
            args.artifacts,
            args.tensors,
            args.repeats,
            args.presses,
            args.pilot_presses,
            args.table_rows,
        )
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(
    work: Path,
    n_artifacts: int,
    n_tensors: int,
    repeats: int,
    presses: int,
    pilot_presses: int,
    table_rows: int,
) -> int:
    names = tensor_names(n_tensors)
    n_layers = 1 + max(t.layer for t in names if t.layer is not None)
    lin = make_lineage(n_artifacts, n_layers)
    store_dir, empty_dir = work / "store", work / "empty"
    store = Store.open(store_dir)
    Store.open(empty_dir)
    log(f"building a catalog of {len(lin)} artifacts × {len(names)} tensors in {store_dir}")
    t0 = time.perf_counter()
    n_merges = build(store, lin, names)
    build_s = time.perf_counter() - t0
    counts = row_counts(store)
    log(f"built in {build_s:.1f} s, {n_merges} merges; {counts}")

    empty = Series("first screen, empty store")
    first = Series(f"first screen, {n_artifacts} artifacts")
    listing = Series(f"API: list_artifacts ({n_artifacts} rows)")
    keys = Series(f"cursor down ×{presses}, per key")
    idle = Series(f"cursor down ×{presses}, per key, to idle")
    piloted = Series(f"pilot.press('down') ×{pilot_presses}, per key")
    table_fill = Series(f"Tensors tab: {table_rows} rows shown")
    table_keys = Series(f"Tensors tab: cursor down ×{presses}, per key")
    for i in range(-1, repeats):
        tag = "warm-up" if i < 0 else f"#{i + 1}"
        r0 = asyncio.run(tui_round(empty_dir, 0, 0, 0))
        t = time.perf_counter()
        rows = registry.list_artifacts(Store.open(store_dir))
        list_s = time.perf_counter() - t
        if len(rows) != n_artifacts:
            raise SystemExit(f"bench: list_artifacts gave {len(rows)} rows, not {n_artifacts}")
        r1 = asyncio.run(tui_round(store_dir, n_artifacts, presses, pilot_presses))
        fill_s, table_keys_s = asyncio.run(tensors_round(empty_dir, table_rows, presses))
        log(
            f"{tag}: empty {1000 * r0.first_screen_s:.0f} ms, list {1000 * list_s:.0f} ms, "
            f"first screen {1000 * r1.first_screen_s:.0f} ms, {presses} keys "
            f"{1000 * r1.keys_s:.0f} ms, to idle {1000 * r1.idle_s:.0f} ms, {pilot_presses} "
            f"pilot presses {1000 * r1.pilot_s:.0f} ms; {table_rows} table rows "
            f"{1000 * fill_s:.0f} ms, {presses} keys {1000 * table_keys_s:.0f} ms"
        )
        if i < 0:
            continue
        empty.seconds.append(r0.first_screen_s)
        listing.seconds.append(list_s)
        first.seconds.append(r1.first_screen_s)
        keys.seconds.append(r1.keys_s)
        idle.seconds.append(r1.idle_s)
        piloted.seconds.append(r1.pilot_s)
        table_fill.seconds.append(fill_s)
        table_keys.seconds.append(table_keys_s)

    ok = first.median < GOAL_S
    rows_out = [
        [empty.label, f"{1000 * empty.median:.1f}", empty.range_ms(), "baseline", "", ""],
        [
            listing.label,
            f"{1000 * listing.median:.1f}",
            listing.range_ms(),
            f"{listing.median / empty.median:.2f}x",
            "",
            "",
        ],
        [
            first.label,
            f"{1000 * first.median:.1f}",
            first.range_ms(),
            f"{first.median / empty.median:.2f}x",
            f"< {GOAL_S:g} s",
            "PASS" if ok else "FAIL",
        ],
        [keys.label, f"{1000 * keys.median / presses:.2f}", keys.range_ms(presses), "", "", ""],
        [idle.label, f"{1000 * idle.median / presses:.2f}", idle.range_ms(presses), "", "", ""],
    ]
    if pilot_presses:
        rows_out.append(
            [
                piloted.label,
                f"{1000 * piloted.median / pilot_presses:.2f}",
                piloted.range_ms(pilot_presses),
                "",
                "",
                "",
            ]
        )
    rows_out += [
        [table_fill.label, f"{1000 * table_fill.median:.1f}", table_fill.range_ms(), "", "", ""],
        [
            table_keys.label,
            f"{1000 * table_keys.median / presses:.2f}",
            table_keys.range_ms(presses),
            "",
            "",
            "",
        ],
    ]
    print(
        f"graft tui benchmark: {n_artifacts} artifacts × {len(names)} tensors, "
        f"{counts['edges']} edges, {n_merges} merges; headless "
        f"App.run_test(size={SIZE[0]}x{SIZE[1]}) in-process, no refresh timer; median of "
        f"{repeats} interleaved rounds after 1 warm-up round; warm page cache"
    )
    print(f"catalog built in {build_s:.1f} s")
    print_table(
        ["operation", "median ms", "range ms", "vs empty", "goal", "result"],
        rows_out,
        numeric={1, 2, 3},
    )
    print(
        "first screen = GraftApp(store) constructed until the tree shows the catalog, the "
        "cursor on its first artifact "
        f"(polled every {1000 * POLL_S:g} ms); vs empty = median / the empty store's median; "
        "cursor rows are per keypress: a key event posted, until the cursor moved; 'to idle' "
        "adds waiting for the detail loads the moves started; pilot.press waits after every "
        "key until the process is idle, so it includes each key's detail load. Tensors tab: "
        "TensorTable.show of a synthetic artifact until drawn, then key events as above. "
        "Interpreter start and imports are not included."
    )
    print(machine_line(work, extra=f", Textual {textual.__version__}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
