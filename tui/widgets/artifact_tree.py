"""The artifact tree: bases at the roots, each artifact under its main parent, with a filter."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Tree
from textual.widgets.tree import TreeNode

from registry import ArtifactRow


def main_parents(rows: Sequence[ArtifactRow], bases: Mapping[str, str]) -> dict[str, str | None]:
    """Each artifact's parent in the tree (NAME@N), None for roots.

    `bases` names a merge's base parent (edge role "base"); otherwise the first
    parent. A parent that is not in `rows` makes the artifact a root.
    """
    known = {r.ref for r in rows}
    out: dict[str, str | None] = {}
    for r in rows:
        chosen = bases.get(r.ref) or (r.parents[0] if r.parents else None)
        out[r.ref] = chosen if chosen in known else None
    return out


def matching(
    rows: Sequence[ArtifactRow], parent_of: Mapping[str, str | None], query: str
) -> set[str]:
    """Refs whose name, method or kind contains `query` (any case), plus their ancestors."""
    q = query.strip().lower()
    if not q:
        return {r.ref for r in rows}
    keep: set[str] = set()
    for r in rows:
        if any(q in (field or "").lower() for field in (r.name, r.method, r.kind)):
            ref: str | None = r.ref
            while ref is not None and ref not in keep:
                keep.add(ref)
                ref = parent_of.get(ref)
    return keep


def label(row: ArtifactRow, main: str | None) -> Text:
    text = Text.assemble((row.name, "bold"), f"@{row.version}  ", (row.kind, "italic"))
    if row.method:
        text.append(f"  {row.method}")
    others = [p for p in row.parents if p != main]
    if others:
        text.append(f"  also from: {', '.join(others)}", style="dim")
    return text


class ArtifactTree(Vertical):
    """A filter box over a tree of artifacts; posts `Selected` when the cursor moves."""

    class Selected(Message):
        """The cursor is on an artifact."""

        def __init__(self, row: ArtifactRow) -> None:
            super().__init__()
            self.row = row

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: list[ArtifactRow] = []
        self.parent_of: dict[str, str | None] = {}
        self._announced: str | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="/ name, method, kind", id="filter")
        tree: Tree[ArtifactRow] = Tree("artifacts", id="artifact-tree")
        tree.show_root = False
        tree.guide_depth = 2
        yield tree

    @property
    def tree_view(self) -> Tree[ArtifactRow]:
        return self.query_one("#artifact-tree", Tree)

    @property
    def filter_input(self) -> Input:
        return self.query_one("#filter", Input)

    def show_rows(self, rows: Sequence[ArtifactRow], bases: Mapping[str, str]) -> None:
        """Replace the artifacts shown (keeps the filter and the selected artifact)."""
        self.rows = list(rows)
        self.parent_of = main_parents(self.rows, bases)
        self.rebuild()

    def rebuild(self) -> None:
        tree = self.tree_view
        current = self.current
        keep = matching(self.rows, self.parent_of, self.filter_input.value)
        tree.clear()
        nodes: dict[str, TreeNode[ArtifactRow]] = {}
        shown = [r for r in self.rows if r.ref in keep]
        # Each row under its tree parent (None: a root), in row order, placed
        # parents first by walking down from the roots.
        children: dict[str | None, list[ArtifactRow]] = {}
        for r in shown:
            main = self.parent_of.get(r.ref)
            children.setdefault(main if main in keep else None, []).append(r)
        walk: list[tuple[TreeNode[ArtifactRow], str | None]] = [(tree.root, None)]
        while walk:
            under, ref = walk.pop()
            for r in children.get(ref, []):
                nodes[r.ref] = under.add(label(r, self.parent_of.get(r.ref)), data=r, expand=True)
                walk.append((nodes[r.ref], r.ref))
        for r in shown:  # in a cycle, so never reached from a root
            if r.ref not in nodes:
                nodes[r.ref] = tree.root.add(label(r, None), data=r, expand=True)
        for node in nodes.values():
            if not node.children:
                node.allow_expand = False
        # Keep the cursor on the same artifact, else go to the first one shown.
        tree.get_node_at_line(0)  # lays the new lines out, so that node.line is known
        target = nodes.get(current.ref) if current is not None else None
        if target is None and nodes:
            target = next(iter(nodes.values()))
        if target is not None:
            tree.move_cursor(target)
            self._announce(target)

    def structure(self) -> dict[str, list[str]]:
        """Shown refs under each shown node ("" for the roots), for tests and scripts."""
        out: dict[str, list[str]] = {}

        def walk(node: TreeNode[ArtifactRow], key: str) -> None:
            out[key] = [c.data.ref for c in node.children if c.data is not None]
            for c in node.children:
                if c.data is not None:
                    walk(c, c.data.ref)

        walk(self.tree_view.root, "")
        return out

    def select_ref(self, ref: str) -> bool:
        """Move the cursor to `ref`; False when it is not shown."""
        for node in _walk(self.tree_view.root.children):
            if node.data is not None and node.data.ref == ref:
                self.tree_view.move_cursor(node)
                return True
        return False

    @property
    def current(self) -> ArtifactRow | None:
        """The artifact under the cursor."""
        tree = self.tree_view
        node = tree.get_node_at_line(tree.cursor_line)
        return None if node is None else node.data

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self.rebuild()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.tree_view.focus()

    @on(Tree.NodeHighlighted)
    def _highlighted(self, event: Tree.NodeHighlighted[ArtifactRow]) -> None:
        event.stop()
        self._announce(event.node)

    def _announce(self, node: TreeNode[ArtifactRow]) -> None:
        """Post `Selected` when the cursor reaches an artifact other than the last one."""
        if node.data is not None and node.data.ref != self._announced:
            self._announced = node.data.ref
            self.post_message(self.Selected(node.data))


def _walk(nodes: Iterable[TreeNode[ArtifactRow]]) -> Iterable[TreeNode[ArtifactRow]]:
    for node in nodes:
        yield node
        yield from _walk(node.children)
