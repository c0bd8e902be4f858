"""`make demo` runs end to end: the file sweep, the quarantine and a restore, the exporter,
and the whole stack paging for more than 5 active jobs and resolving after force-clean.

The demo is a command the README gives first; it broke once without a test noticing (it
looked for the paging rule by its old expression). This runs it as `make demo` does, with
every server the integration tier has, and checks it leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.demo import stack_missing

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_the_demo_runs_end_to_end_and_leaves_nothing_behind() -> None:
    missing = stack_missing()
    if missing:
        pytest.fail(f"the demo's whole stack needs {', '.join(missing)}", pytrace=False)
    result = subprocess.run(
        [sys.executable, "-m", "tools.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    assert "not shown:" not in plain, plain[-3000:]
    # The quarantine and the restore of session 4f1c, in the audit log.
    assert '"action": "quarantine"' in plain and '"action": "restore"' in plain, plain[-6000:]
    # One page for the table, then its resolution after the force-clean.
    assert re.search(r"\[pager\] FIRING LimpezaJobsActiveHigh", plain), plain[-3000:]
    assert re.search(r"\[pager\] RESOLVED LimpezaJobsActiveHigh", plain), plain[-3000:]
    (base,) = re.findall(r"everything it made was in (\S+) and is removed now", plain)
    assert not Path(base).exists(), base
    assert _processes_mentioning(base) == []
