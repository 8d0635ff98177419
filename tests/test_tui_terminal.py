"""`graft tui --demo` in a real terminal: tmux runs it, the test reads the screen and quits.

The Pilot tests drive the app in-process; this one checks what they cannot: that
the console script starts, draws the tree in a real pseudo-terminal and exits
with status 0 on `q`. tmux runs on a private socket, so no user server is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
GRAFT = Path(sys.executable).parent / "graft"
WIDTH, HEIGHT = 100, 30
EXPECTED = ("tiny-llama@1", "lora-copy@1", "demo-soup@1")
START_S = 60.0  # filling the demo store takes a few seconds before the UI draws
QUIT_S = 15.0

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


def test_demo_draws_the_tree_and_quits_cleanly(
    tmux: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
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
        str(WIDTH),
        "-y",
        str(HEIGHT),
        *[a for kv in env for a in ("-e", kv)],
        str(GRAFT),
        "tui",
        "--demo",
    )
    tmux("kill-session", "-t", "hold")

    screen = ""

    def capture() -> str:
        return tmux("capture-pane", "-p", "-t", "graft", check=False).stdout

    def pane() -> tuple[bool, str]:
        out = tmux("display", "-p", "-t", "graft", "#{pane_dead} #{pane_dead_status}", check=False)
        if out.returncode != 0:
            return True, ""  # the session is gone
        dead, _, status = out.stdout.strip().partition(" ")
        return dead == "1", status

    def drawn() -> bool:
        nonlocal screen
        screen = capture()
        return all(ref in screen for ref in EXPECTED) or pane()[0]

    assert wait_for(drawn, START_S), f"the tree never showed {EXPECTED}:\n{screen}"
    assert not pane()[0], f"graft tui --demo exited early:\n{screen}"
    assert all(ref in screen for ref in EXPECTED), screen

    tmux("send-keys", "-t", "graft", "q")
    assert wait_for(lambda: pane()[0], QUIT_S), f"still running {QUIT_S:g} s after q:\n{capture()}"
    # With remain-on-exit the dead pane stays and keeps graft's exit status; if the
    # session went anyway there is no status left to read, only that it ended.
    _, status = pane()
    assert status in ("", "0"), f"graft tui --demo exited with {status}:\n{capture()}"
