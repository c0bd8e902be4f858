"""A state file the daemon cannot use, valid JSON or not, is moved aside: counting starts fresh.

The daemon used to die at start on valid JSON of the wrong types (``"sweeps": [1]``,
``1e999``), and ``Restart=`` made that a crash loop that never swept again.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from cleaner.state import State, read_state
from tests.fixtures.cleaner_daemon import StartDaemon
from tests.fixtures.trees import DAY, Tree, make_file


def _good() -> dict[str, object]:
    return State(sweeps=7, files_removed={"sessions": 3}).to_dict()


def _with(**changes: object) -> str:
    return json.dumps({**_good(), **changes})


#: Valid JSON, each wrong in one field; the text as it sits on disk.
BAD_FILES = {
    "list count": _with(sweeps=[1]),
    "infinite count": _with(sweeps=7).replace('"sweeps": 7', '"sweeps": 1e999'),
    "infinite time": _with(last_success=1).replace('"last_success": 1', '"last_success": 1e999'),
    "list usage": _with(directories={"/srv/uploads": {"files": [1], "bytes": 0}}),
    "null count": _with(force_cleans=None),
    "null count by rule": _with(files_removed={"sessions": None}),
    "negative count": _with(sweeps=-5),
    "string count": _with(bytes_removed={"sessions": "12"}),
    "boolean version": _with(version=True),
    "negative duration": _with(last_sweep_duration=-1.5),
    "not an object": json.dumps([_good()]),
}


@pytest.mark.parametrize("text", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_the_daemon_moves_a_wrong_typed_state_file_aside_and_sweeps(
    tree: Tree, cleaner_daemon: StartDaemon, text: str
) -> None:
    state_file = tree.var / "state.json"
    state_file.write_text(text, encoding="utf-8")
    make_file(tree.uploads / "session_old.json", age=2 * DAY, now=time.time())
    daemon = cleaner_daemon(tree.write_config(interval="1h"))
    daemon.wait_until(
        lambda: "cleanup done" in daemon.log() and state_file.exists(), "no sweep", 30, 0.05
    )
    assert "moved to" in daemon.log() and "counting starts fresh" in daemon.log()
    aside = list(tree.var.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text(encoding="utf-8") == text
    state = read_state(state_file)
    assert state.sweeps == 1  # fresh: the 7 of the unusable file are gone
    assert state.files_removed["sessions"] == 1
    assert not (tree.uploads / "session_old.json").exists()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=20) == 0, daemon.log_tail()
