"""`graft tui --demo` in a real terminal: tmux runs it, the tests type keys and read
the screen with capture-pane.

The Pilot tests drive the app in-process; these check what they cannot: that the
console script starts, draws in a real pseudo-terminal, answers keys as a user
types them at 80×24 and exits with status 0 on `q`. tmux runs on a private socket,
so no user server is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
GRAFT = Path(sys.executable).parent / "graft"
EXPECTED = ("tiny-llama@1", "lora-copy@1", "demo-soup@1")
START_S = 60.0  # filling the demo store takes a few seconds before the UI draws
QUIT_S = 15.0
KEY_S = 0.3  # between keys: a burst can reach the app before the focus moves

# Skipped on a developer machine without tmux; under CI (which installs it) a
# missing tmux fails the test instead.
pytestmark = pytest.mark.skipif(
    TMUX is None and not os.environ.get("CI"), reason="tmux is not installed"
)


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """`tmux -L <private socket> ARGS`; the server is killed after the test."""
    assert TMUX is not None
    socket = f"graft-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TMUX, "-L", socket, *args], capture_output=True, text=True, check=check, timeout=10
        )

    try:
        yield run
    finally:
        path = run("display", "-p", "#{socket_path}", check=False).stdout.strip()
        run("kill-server", check=False)
        if path:  # tmux leaves its socket file behind
            Path(path).unlink(missing_ok=True)


Tmux = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Pane:
    """`graft tui --demo` running in a tmux session of its own."""

    tmux: Tmux
    session: str = "graft"

    def capture(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session, check=False).stdout

    def dead(self) -> tuple[bool, str]:
        """Whether graft exited, and its exit status ("" when the session went)."""
        out = self.tmux(
            "display", "-p", "-t", self.session, "#{pane_dead} #{pane_dead_status}", check=False
        )
        if out.returncode != 0:
            return True, ""  # the session is gone
        dead, _, status = out.stdout.strip().partition(" ")
        return dead == "1", status

    def keys(self, *keys: str, literal: bool = False) -> None:
        """Type `keys` one at a time at a brisk human pace (`literal`: as text)."""
        for key in keys:
            self.tmux("send-keys", "-t", self.session, *(["-l"] if literal else []), key)
            time.sleep(KEY_S)

    def shows(self, *texts: str, timeout: float = 10.0) -> str:
        """The screen once it shows every one of `texts` (fails after `timeout`)."""
        screen = ""

        def seen() -> bool:
            nonlocal screen
            screen = self.capture()
            return all(t in screen for t in texts)

        assert wait_for(seen, timeout), f"never showed {texts}:\n{screen}"
        return screen

    def quit(self) -> None:
        self.keys("q")
        assert wait_for(lambda: self.dead()[0], QUIT_S), (
            f"still running {QUIT_S:g} s after q:\n{self.capture()}"
        )
        # With remain-on-exit the dead pane stays and keeps graft's exit status; if the
        # session went anyway there is no status left to read, only that it ended.
        _, status = self.dead()
        assert status in ("", "0"), f"graft tui --demo exited with {status}:\n{self.capture()}"


def start_demo(tmux: Tmux, tmp_path: Path, width: int, height: int) -> Pane:
    """Start `graft tui --demo` at width × height and wait for its tree."""
    assert GRAFT.is_file(), f"{GRAFT} is missing: install the project (pip install -e .)"
    env = [
        "HF_HUB_OFFLINE=1",
        "TRANSFORMERS_OFFLINE=1",
        "TERM=xterm-256color",
        f"GRAFT_STORE={tmp_path / 'unused-store'}",  # --demo uses its own; never the user's
    ]
    # The pane starts with the command itself (no shell), so its exit status is graft's.
    # `remain-on-exit` must be on before graft starts, so that its pane outlives it and
    # keeps the exit status: a placeholder session starts the server, the option is set
    # globally, then graft's session starts and the placeholder goes.
    tmux("-f", os.devnull, "new-session", "-d", "-s", "hold", "-x", "10", "-y", "5", "sleep 120")
    tmux("set-option", "-g", "remain-on-exit", "on")
    tmux(
        "new-session",
        "-d",
        "-s",
        "graft",
        "-x",
        str(width),
        "-y",
        str(height),
        *[a for kv in env for a in ("-e", kv)],
        str(GRAFT),
        "tui",
        "--demo",
    )
    tmux("kill-session", "-t", "hold")
    pane = Pane(tmux)
    screen = ""

    def drawn() -> bool:
        nonlocal screen
        screen = pane.capture()
        return all(ref in screen for ref in EXPECTED) or pane.dead()[0]

    assert wait_for(drawn, START_S), f"the tree never showed {EXPECTED}:\n{screen}"
    assert not pane.dead()[0], f"graft tui --demo exited early:\n{screen}"
    return pane


def test_demo_draws_the_tree_and_quits_cleanly(tmux: Tmux, tmp_path: Path) -> None:
    pane = start_demo(tmux, tmp_path, 100, 30)
    assert all(ref in pane.capture() for ref in EXPECTED)
    pane.quit()


def test_a_newcomer_at_80x24_tabs_filters_and_fails_a_merge(tmux: Tmux, tmp_path: Path) -> None:
    """Tabs by their keys, a filter that matches nothing, a merge into a folder that
    cannot be written: each screen says what it shows, in one line when it fails."""
    pane = start_demo(tmux, tmp_path, 80, 24)
    assert "1-5 Tabs" in pane.capture().splitlines()[-1]  # the footer names the tab keys
    pane.keys("Down")  # lora-copy@1
    pane.shows("artifact  lora-copy@1")
    pane.keys("2")
    pane.shows("lora-copy@1 vs tiny-llama@1", "LAYER")
    pane.keys("3")
    screen = pane.shows("change  tensor", "q_proj.lora_A.weight")
    assert "→ shape dtype size" in screen  # the columns past the edge are named
    pane.keys("4")
    pane.shows("lora  3 artifacts", "more columns")
    pane.keys("1")
    pane.shows("artifact  lora-copy@1")

    pane.keys("/")
    pane.keys("zzz", literal=True)
    pane.keys("Enter")
    screen = pane.shows("0 of 6 artifacts shown", "No artifact matches 'zzz'")
    assert "lora-copy@1" not in screen  # the tree and the panes hide what it hid
    pane.keys("Escape")
    pane.shows("graft — 6 artifacts", "lora-copy@1")

    pane.keys("Down")  # the filter's end put the cursor on the first artifact
    pane.shows("artifact  lora-copy@1")
    pane.keys("b")  # lora-copy@1 as the first input over its base
    pane.shows("merge builder", "Run merge", timeout=60)  # the first b imports torch
    # From the method: base, inputs, the input's weight and density, the four TIES
    # switches and lambda, seed, dtype, rank, then the name.
    pane.keys(*["Tab"] * 12)
    pane.keys("soup", literal=True)
    pane.shows("# graft merge soup.yaml")
    pane.keys("Tab")
    pane.keys("/proc/graft-out", literal=True)
    pane.shows("Folder  /proc/graft-out")
    pane.keys("C-r")
    screen = pane.shows("merge failed:", timeout=60)
    side = " ".join(line.rpartition("▏")[2].strip() for line in screen.splitlines())
    assert "merge failed: cannot write the merge into /proc/graft-out: " in side
    assert "; choose a folder you can write to" in side
    assert "✗ the run failed: see below" in screen and "✓ ready" not in screen
    assert "Error" not in screen and "Traceback" not in screen
    pane.keys("Escape")
    pane.shows("esc again discards this draft")
    pane.keys("Escape")
    pane.shows("graft — 6 artifacts")
    pane.quit()
