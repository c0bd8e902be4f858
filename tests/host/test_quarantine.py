"""A quarantine rule on the deployed hosts: the directory the role made, the unit's sandbox
that lets the daemon write it, a file the running daemon quarantined, and the operator's
restore through the root-only wrapper."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from tests.fixtures.nspawn import Target
from tests.host.conftest import QUARANTINE, UPLOADS, Deployment, wait_for

pytestmark = pytest.mark.host

CLI = "/usr/local/sbin/limpeza-cleaner"


def test_the_quarantine_is_the_cleaner_s_alone_and_writable_in_its_sandbox(host: Any) -> None:
    directory = host.file(QUARANTINE)
    assert directory.is_directory
    assert (directory.user, directory.group, directory.mode) == ("limpeza", "limpeza", 0o700)
    # One writable path holds the quarantine and the swept directory: the sandbox makes
    # each writable path a mount of its own, and a rename never crosses a mount point.
    writable = host.service("limpeza-cleaner.service").systemd_properties["ReadWritePaths"]
    assert "/srv/app" in writable.split(), writable


def _listed(target: Target) -> list[dict[str, Any]]:
    result = target.ssh(f"{CLI} quarantine list --json", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return list(json.loads(result.stdout)["entries"])


def test_the_daemon_quarantines_and_the_operator_restores(
    host: Any, target: Target, deployed: Deployment
) -> None:
    path = f"{UPLOADS}/undo_{target.name}.dat"
    data = f"the user's work on {target.name}\n"
    target.ssh(
        f"printf %s {shlex.quote(data)} > {path} && chown www-data:www-data {path} "
        f"&& chmod 0640 {path} && touch -d '3 days ago' {path}"
    )
    mtime = host.file(path).mtime
    taken = wait_for(lambda: not host.file(path).exists, 60)
    assert taken, f"{path} is still there\n{target.journal('limpeza-cleaner.service')}"
    [entry] = [e for e in _listed(target) if e["path"] == path]
    assert (entry["rule"], entry["size"], entry["mode"]) == ("undo", len(data), "0640")
    held = host.file(f"{QUARANTINE}/files/{entry['id']}")
    assert held.exists and held.content_string == data
    audit = host.file("/var/log/limpeza/audit.jsonl").content_string
    assert any(
        line.get("action") == "quarantine" and line.get("path") == path
        for line in map(json.loads, audit.splitlines())
    ), audit[-2000:]

    restored = target.ssh(f"{CLI} restore {entry['id']}", check=False)
    try:
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert f"restored {entry['id']} to {path}" in restored.stdout
        back = host.file(path)
        assert back.content_string == data
        assert (back.user, back.group, back.mode) == ("www-data", "www-data", 0o640)
        assert back.mtime == mtime
        assert not held.exists
        assert not [e for e in _listed(target) if e["path"] == path]
        # Held from the sweep for the rule's retention, though its mtime is 3 days old.
        sweeps = deployed.state(target.name)["sweeps"]
        assert wait_for(lambda: deployed.state(target.name)["sweeps"] >= sweeps + 2, 30)
        assert host.file(path).exists
        again = target.ssh(f"{CLI} restore {entry['id']}", check=False)
        assert again.returncode == 1 and entry["id"] in again.stderr, again.stderr
    finally:
        target.ssh(f"rm -f {path}", check=False)
