"""What runs after an add, detached from it: the lineage statistics, then a repack.

`register` returns once the artifact is durably stored; the deltas against
its parent (`record`) and the compact encoding of its blobs (`registry.repack`)
are derived from what is stored, so they are worked out here, after, by
`python -m graft.lineage.background STORE`: one at a time per store, going
round again while adds keep asking. Whatever needs a delta before then
(`touched`, `diff`, `sql`, the TUI) computes it on the spot.
"""

from __future__ import annotations

import sys
from pathlib import Path

from graft.lineage.record import catch_up
from graft.registry import GraftError, Store
from graft.registry.repack import run_requested

if __name__ == "__main__":
    try:
        store = Store.open(Path(sys.argv[1]))
        run_requested(store, before_pass=lambda: catch_up(store))
    except GraftError:
        sys.exit(1)  # nobody is listening; the next add or `graft repack` tries again
