"""The lock's hashes against the package index, and the deploy's fetch refusing any other wheel.

Both download from the package index the deploy uses (pip's configuration), as the roles'
``wheelhouse.py`` does on the controller.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools.lock import LOCK, REPO, WHEELHOUSE, parse, render

pytestmark = pytest.mark.integration

#: One of the targets the roles support: Debian 13's CPython on x86_64.
TARGET = ("3.13", "x86_64", "2.41")


def _fetch(lock: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WHEELHOUSE), "dependencies", str(lock), str(dest), *TARGET],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_lock_holds_the_hashes_the_index_serves_for_every_target() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.lock", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_deploys_fetch_checks_every_wheel_against_the_lock(tmp_path: Path) -> None:
    good = _fetch(LOCK, tmp_path / "good")
    assert good.returncode == 0, good.stderr
    wheels = sorted(p.name for p in (tmp_path / "good").glob("*.whl"))
    assert len(wheels) == len(parse(LOCK.read_text(encoding="utf-8")))


def test_a_wheel_that_is_not_the_locked_one_is_refused(tmp_path: Path) -> None:
    pins = parse(LOCK.read_text(encoding="utf-8"))
    name, version, hashes = pins["bcrypt"]
    # Every hash of bcrypt's pin, one digit off: whatever wheel the index serves is refused.
    pins["bcrypt"] = (name, version, [("1" if h[0] == "0" else "0") + h[1:] for h in hashes])
    lock = tmp_path / "requirements.lock"
    lock.write_text(render(pins), encoding="utf-8")
    refused = _fetch(lock, tmp_path / "refused")
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr, refused.stderr
    assert not (tmp_path / "refused").exists()


def test_a_pin_without_hash_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("idna==3.20\n", encoding="utf-8")
    refused = _fetch(lock, tmp_path / "refused")
    assert refused.returncode != 0
    assert "Hashes are required in --require-hashes mode" in refused.stderr, refused.stderr
    assert not (tmp_path / "refused").exists()
