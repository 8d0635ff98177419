"""The artifact tree: bases at the roots, each artifact under its main parent, with a filter."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Tree
from textual.widgets.tree import TreeNode

from graft.registry import ArtifactRow
from graft.tui.render import method_label

# Nodes built for the first screen; the rest are built when their parent is opened.
INITIAL_NODES = 300


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
    """Refs whose name, method, kind or relation to its parents (merge, ...) contains
    `query` (any case), plus their ancestors."""
    q = query.strip().lower()
    if not q:
        return {r.ref for r in rows}
    keep: set[str] = set()
    for r in rows:
        fields = (r.name, r.method, r.adapter_type, r.kind, *r.relations)
        if any(q in (field or "").lower() for field in fields):
            ref: str | None = r.ref
            while ref is not None and ref not in keep:
                keep.add(ref)
                ref = parent_of.get(ref)
    return keep


def placed(
    rows: Sequence[ArtifactRow], parent_of: Mapping[str, str | None], query: str
) -> dict[str, str | None]:
    """Where each row the filter keeps is shown: under its tree parent when that is
    kept too, else at the root. A row no root leads to (a cycle, which the registry
    refuses) is shown at the root as well, so every kept row appears exactly once."""
    keep = matching(rows, parent_of, query)
    under = {r.ref: parent_of.get(r.ref) for r in rows if r.ref in keep}
    under = {ref: parent if parent in keep else None for ref, parent in under.items()}
    children: dict[str | None, list[str]] = {}
    for ref, parent in under.items():
        children.setdefault(parent, []).append(ref)
    reached: set[str] = set()
    queue = deque(children.get(None, []))
    while queue:
        ref = queue.popleft()
        if ref not in reached:
            reached.add(ref)
            queue.extend(children.get(ref, []))
    return {ref: parent if ref in reached else None for ref, parent in under.items()}


def opened_within(children: Mapping[str | None, Sequence[ArtifactRow]], budget: int) -> set[str]:
    """Refs to open, breadth first from the roots, while the nodes shown stay within `budget`."""
    shown = len(children.get(None, []))
    opened: set[str] = set()
    queue = deque(r.ref for r in children.get(None, []))
    while queue:
        ref = queue.popleft()
        kids = children.get(ref, [])
        if kids and shown + len(kids) <= budget:
            opened.add(ref)
            shown += len(kids)
            queue.extend(r.ref for r in kids)
    return opened


def label(row: ArtifactRow, main: str | None) -> Text:
    text = Text.assemble((row.name, "bold"), f"@{row.version}  ", (row.kind, "italic"))
    if row.method or row.adapter_type:
        text.append(f"  {method_label(row.method, row.adapter_type)}")
    others = [p for p in row.parents if p != main]
    if others:  # named in the Overview: a narrow tree has no room for them
        text.append(f"  +{len(others)} parent{'s' * (len(others) != 1)}", style="dim")
    return text


class ArtifactTree(Vertical):
    """A filter box over a tree of artifacts; posts `Selected` when the cursor moves."""

    class Selected(Message):
        """The cursor is on an artifact."""

        def __init__(self, row: ArtifactRow) -> None:
            super().__init__()
            self.row = row

    class Filtered(Message):
        """The tree was rebuilt: `shown` of the artifacts are in it, for `query`."""

        def __init__(self, shown: int, query: str) -> None:
            super().__init__()
            self.shown = shown
            self.query = query

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: list[ArtifactRow] = []
        self.parent_of: dict[str, str | None] = {}
        self._children: dict[str | None, list[ArtifactRow]] = {}
        self._placed: dict[str, str | None] = {}  # shown ref → the ref it is shown under
        self._open: set[str] = set()  # refs whose children are shown
        self._user_open: set[str] = set()  # opened by hand: stay open
        self._user_closed: set[str] = set()  # closed by hand: stay closed, but for a filter
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
        query = self.filter_input.value.strip()
        self._placed = placed(self.rows, self.parent_of, query)
        self._children = {}
        for r in self.rows:
            if r.ref in self._placed:
                self._children.setdefault(self._placed[r.ref], []).append(r)
        self._open = opened_within(self._children, INITIAL_NODES) | self._user_open
        if not query:  # a filter opens the way to what it matches
            self._open -= self._user_closed
        tree.clear()
        self._fill(tree.root, None)
        self.post_message(self.Filtered(len(self._placed), query))
        if not self._placed:
            self._announced = None  # the next artifact shown is news again
        # Keep the cursor on the same artifact, else go to the first one shown.
        if current is None or not self.select_ref(current.ref):
            first = tree.get_node_at_line(0)
            if first is not None:
                tree.move_cursor(first)
                self._announce(first)

    def _fill(self, node: TreeNode[ArtifactRow], ref: str | None) -> None:
        """Add the children of `ref` under `node`, and theirs where they are open.

        Children of a closed node are added when it is first expanded, so a catalog
        of any size costs only the nodes on screen.
        """
        for row in self._children.get(ref, []):
            has_children = row.ref in self._children
            child = node.add(
                label(row, self.parent_of.get(row.ref)),
                data=row,
                expand=has_children and row.ref in self._open,
                allow_expand=has_children,
            )
            if child.is_expanded:
                self._fill(child, row.ref)

    @on(Tree.NodeExpanded)
    def _expanded(self, event: Tree.NodeExpanded[ArtifactRow]) -> None:
        event.stop()
        row = event.node.data
        if row is None:
            return
        self._user_open.add(row.ref)
        self._user_closed.discard(row.ref)
        if not event.node.children:
            self._fill(event.node, row.ref)

    @on(Tree.NodeCollapsed)
    def _collapsed(self, event: Tree.NodeCollapsed[ArtifactRow]) -> None:
        event.stop()
        if event.node.data is not None:
            self._user_open.discard(event.node.data.ref)
            self._user_closed.add(event.node.data.ref)

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
        """Move the cursor to `ref`, opening its ancestors; False when it is not shown."""
        if ref not in self._placed:
            return False
        path: list[str] = []
        at: str | None = ref
        while at is not None:
            path.append(at)
            at = self._placed[at]
        node: TreeNode[ArtifactRow] = self.tree_view.root
        for step in reversed(path):
            found = next((c for c in node.children if c.data and c.data.ref == step), None)
            if found is None:
                return False
            if step != ref and not found.is_expanded:  # `_expanded` records it as opened
                if not found.children:
                    self._fill(found, step)
                found.expand()
            node = found
        self.tree_view.get_node_at_line(0)  # lays out the new lines, so that node.line is known
        self.tree_view.move_cursor(node)
        self._announce(node)
        return True

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
