"""kill -9 in the middle of a long sweep: the counters lose at most about a second of work,
the audit log at most the file being removed.

The daemon (``run``) or a one-shot ``once`` is a real process sweeping a real tree; it is
killed with SIGKILL once it has removed files for more than a second, well before the end
of its sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cleaner.state import read_state
from tests.fixtures.trees import DAY, Tree

FILES = 60_000
#: The checkpoint's period (1 s) and what saving the state may add on a loaded machine.
LOSS_WINDOW = 2.0


def _expired_files(directory: Path, count: int) -> None:
    old = time.time() - 9 * DAY
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            name = f"session_{i:06d}.json"
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            os.utime(name, (old, old), dir_fd=fd)
    finally:
        os.close(fd)


@pytest.fixture(params=["run", "once"])
def daemon(tree: Tree, request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    _expired_files(tree.uploads, FILES)
    config = tree.write_config(interval="1h")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMPEZA_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cleaner", "--config", str(config), request.param],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()


def _saved_count(state_file: Path) -> int:
    try:
        return sum(read_state(state_file).files_removed.values())
    except (OSError, ValueError):
        return 0


def test_kill_9_mid_sweep_loses_at_most_a_second_of_counts(
    tree: Tree, daemon: subprocess.Popen[bytes]
) -> None:
    state_file = tree.var / "state.json"
    deadline = time.monotonic() + 60
    while _saved_count(state_file) == 0:  # the first checkpoint
        assert daemon.poll() is None, "the daemon exited"
        assert time.monotonic() < deadline, "no counts saved during the sweep"
        time.sleep(0.05)
    first = _saved_count(state_file)
    while _saved_count(state_file) == first:  # the second one
        assert daemon.poll() is None, "the daemon exited"
        assert time.monotonic() < deadline, "no second checkpoint"
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere between two checkpoints
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=30)

    left = len(os.listdir(tree.uploads))
    assert left > 0, f"the sweep of {FILES} files ended before the kill: make it longer"
    gone = FILES - left
    audit = [json.loads(line) for line in (tree.var / "audit.jsonl").read_text().splitlines()]
    # Every line is whole JSON, and only the file being removed may be missing from it.
    assert gone - 1 <= len(audit) <= gone
    assert all(not os.path.exists(a["path"]) for a in audit)
    saved = _saved_count(state_file)
    assert 0 < saved <= gone
    # What the counters lost was removed in the last moments before the kill.
    last = max(a["time"] for a in audit)
    recent = sum(1 for a in audit if a["time"] >= last - LOSS_WINDOW)
    assert gone - saved <= recent + 1, (gone, saved, recent)
