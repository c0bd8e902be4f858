"""The quarantine through real processes: the daemon, its restart, list, restore, expiry,
max_bytes, purge-session, hostile ids, and kill -9 at each step losing nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.trees import DAY, Tree

pytestmark = pytest.mark.integration

ENV = {k: v for k, v in os.environ.items() if not k.startswith("LIMPEZA_")}


def _write(tree: Tree, retention: str = "7d", max_bytes: int = 0, interval: str = "1s") -> Path:
    quarantine = {"directory": str(tree.root / "q"), "retention": retention, "max_bytes": max_bytes}
    rules = [
        {
            "name": "sessions",
            "pattern": "session_*.json",
            "max_age": "1h",
            "quarantine": quarantine,
        },
        {
            "name": "temp_audio",
            "pattern": "temp_audio_*.wav",
            "max_age": "1h",
            "quarantine": quarantine,
        },
    ]
    files = {"directories": [str(tree.uploads)], "rules": rules}
    return tree.write_config(interval=interval, files=files)


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cleaner", "--config", str(config), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _listed(config: Path) -> dict[str, object]:
    done = _cli(config, "quarantine", "list", "--json")
    assert done.returncode == 0, done.stderr
    listed: dict[str, object] = json.loads(done.stdout)
    return listed


def _entries(config: Path) -> list[dict[str, object]]:
    entries = _listed(config)["entries"]
    assert isinstance(entries, list)
    return entries


@pytest.fixture
def daemon_of(tree: Tree) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=30)


def _start(config: Path, started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cleaner", "--config", str(config), "run"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started.append(process)
    return process


def _wait(condition: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_daemon_quarantines_restart_list_restore(
    tree: Tree, daemon_of: list[subprocess.Popen[bytes]]
) -> None:
    config = _write(tree)
    now = time.time()
    original = tree.file("session_a.json", age=2 * DAY, now=now, data=b"mine")
    os.chmod(original, 0o640)
    mtime_ns = os.stat(original).st_mtime_ns
    daemon = _start(config, daemon_of)
    _wait(lambda: not original.exists(), "the daemon quarantined nothing")
    daemon.terminate()
    assert daemon.wait(timeout=30) == 0
    daemon = _start(config, daemon_of)  # a restart: the quarantine is as it was
    [entry] = _entries(config)
    assert entry["path"] == str(original) and entry["rule"] == "sessions"
    done = _cli(config, "restore", str(entry["id"]))
    assert done.returncode == 0, done.stderr
    assert f"restored {entry['id']} to {original}" in done.stdout
    assert original.read_bytes() == b"mine"
    assert os.stat(original).st_mode & 0o777 == 0o640
    assert os.stat(original).st_mtime_ns == mtime_ns
    time.sleep(3)  # several sweeps: a restored file is held, not taken again
    assert original.exists()
    assert _entries(config) == []
    audit = [json.loads(line) for line in (tree.var / "audit.jsonl").read_text().splitlines()]
    assert [a.get("action") for a in audit] == ["quarantine", "restore"]
    summary = json.loads((tree.root / "q" / "summary.json").read_text())
    assert summary["restored"] == {"sessions": 1}


def test_expiry_and_max_bytes_in_the_daemon(
    tree: Tree, daemon_of: list[subprocess.Popen[bytes]]
) -> None:
    config = _write(tree, retention="3s", max_bytes=2 * 4096)
    now = time.time()
    for i in range(4):
        tree.file(f"session_{i}.json", age=2 * DAY, now=now)
    _start(config, daemon_of)
    _wait(lambda: not any(tree.uploads.iterdir()), "nothing quarantined")
    _wait(lambda: os.listdir(tree.root / "q" / "files") == [], "nothing expired", timeout=20)
    audit = [json.loads(line) for line in (tree.var / "audit.jsonl").read_text().splitlines()]
    reasons = sorted(a["reason"] for a in audit if a.get("action") == "expire")
    # One 4 KiB block each, 2 blocks allowed: the two oldest go at the next sweep, the
    # others once their 3 s are over.
    assert reasons == ["max_bytes", "max_bytes", "retention", "retention"]
    summary = tree.root / "q" / "summary.json"
    _wait(lambda: json.loads(summary.read_text())["expired"] == {"sessions": 4}, "summary")


def test_purge_session_quarantines_unless_told_not_to(tree: Tree) -> None:
    config = _write(tree)
    tree.file("session_s1.json", age=0)
    tree.file("temp_audio_s1.wav", age=0)
    done = _cli(config, "purge-session", "s1")
    assert done.returncode == 0, done.stderr
    assert "quarantined" in done.stdout
    assert len(_entries(config)) == 2
    listed = _cli(config, "quarantine", "list", "--session", "s1")
    assert "2 quarantined" in listed.stdout
    tree.file("session_s2.json", age=0)
    done = _cli(config, "purge-session", "s2", "--no-quarantine")
    assert done.returncode == 0 and "removed" in done.stdout
    assert len(_entries(config)) == 2
    done = _cli(config, "restore", "--session", "s1")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in tree.uploads.iterdir()} == {"session_s1.json", "temp_audio_s1.wav"}


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "/etc/passwd", "../files", "a b"])
def test_hostile_ids_exit_2_and_touch_nothing(tree: Tree, hostile: str) -> None:
    config = _write(tree)
    done = _cli(config, "restore", hostile)
    assert done.returncode == 2
    assert "invalid quarantine id" in done.stderr


def test_unknown_id_and_occupied_name_exit_1_and_say_which(tree: Tree) -> None:
    config = _write(tree)
    original = tree.file("session_a.json", age=2 * DAY, now=time.time(), data=b"old")
    assert _cli(config, "once").returncode == 0
    [entry] = _entries(config)
    done = _cli(config, "restore", "0000000a-000000000000")
    assert done.returncode == 1 and "0000000a-000000000000: no such entry" in done.stderr
    original.write_bytes(b"new")
    done = _cli(config, "restore", "--path", str(original))
    assert done.returncode == 1
    assert f"not restored: {entry['id']} to {original}: a file of that name exists" in done.stderr
    assert original.read_bytes() == b"new"
    assert len(_entries(config)) == 1
    done = _cli(config, "restore", "--dry-run", str(entry["id"]), "--to", str(tree.root))
    assert done.returncode == 0 and "would restore" in done.stdout
    assert not (tree.root / "session_a.json").exists()


def test_purge_needs_yes(tree: Tree) -> None:
    config = _write(tree)
    tree.file("session_a.json", age=2 * DAY, now=time.time())
    assert _cli(config, "once").returncode == 0
    assert _cli(config, "quarantine", "purge").returncode == 2
    done = _cli(config, "quarantine", "purge", "--yes")
    assert done.returncode == 0 and "1 quarantined files unlinked" in done.stdout
    assert _entries(config) == [] and os.listdir(tree.root / "q" / "files") == []


_KILLER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from cleaner import config as config_mod
    from cleaner.files import sweep
    from cleaner.quarantine import QuarantineHooks, Quarantines, Store
    from cleaner.restore import restore_entry

    def die(_qid):
        os.kill(os.getpid(), signal.SIGKILL)

    config = config_mod.load(Path(sys.argv[1]), {})
    if sys.argv[2] == "quarantine":
        quarantines = Quarantines(config.files, hooks=QuarantineHooks(after_record=die))
        sweep(config.files, now=time.time(), quarantines=quarantines)
    else:
        store = Store(Path(sys.argv[3]))
        [entry] = store.entries().values()
        restore_entry(store, entry, to=None, hold_for=60, after_rename=die)
    """
)


def _killed_at(config: Path, step: str, *extra: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _KILLER, str(config), step, *extra],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_kill_9_between_manifest_and_rename_loses_nothing(tree: Tree) -> None:
    config = _write(tree)
    original = tree.file("session_a.json", age=2 * DAY, now=time.time(), data=b"keep")
    _killed_at(config, "quarantine")
    assert original.read_bytes() == b"keep"  # the line was written, the file never moved
    assert _entries(config) == []  # reconciled: the entry without a file is dropped
    assert _cli(config, "once").returncode == 0
    [entry] = _entries(config)
    assert entry["path"] == str(original)


def test_kill_9_during_restore_loses_nothing(tree: Tree) -> None:
    config = _write(tree)
    original = tree.file("session_a.json", age=2 * DAY, now=time.time(), data=b"keep")
    assert _cli(config, "once").returncode == 0
    assert len(_entries(config)) == 1
    _killed_at(config, "restore", str(tree.root / "q"))
    assert original.read_bytes() == b"keep"  # renamed back before the kill
    assert _entries(config) == []  # the entry without its file is dropped


def test_a_file_without_an_entry_is_listed_as_orphaned_and_kept(tree: Tree) -> None:
    config = _write(tree)
    tree.file("session_a.json", age=2 * DAY, now=time.time())
    assert _cli(config, "once").returncode == 0
    stray = tree.root / "q" / "files" / "stray"
    stray.write_bytes(b"?")
    listed = _listed(config)
    assert listed["orphans"] == [
        {"id": "stray", "quarantine": str(tree.root / "q"), "orphaned": True}
    ]
    assert stray.exists() and len(_entries(config)) == 1


def test_check_config_refuses_a_quarantine_in_a_swept_directory(tree: Tree) -> None:
    rules = [
        {
            "name": "sessions",
            "pattern": "session_*.json",
            "max_age": "1h",
            "quarantine": {"directory": str(tree.uploads / "q"), "retention": "7d"},
        }
    ]
    config = tree.write_config(files={"directories": [str(tree.uploads)], "rules": rules})
    done = _cli(config, "check-config", str(config))
    assert done.returncode == 2
    assert "files.rules[0].quarantine.directory:" in done.stderr


def test_once_expires_the_quarantine_as_the_daemon_does(tree: Tree) -> None:
    config = _write(tree, retention="1s")
    tree.file("session_a.json", age=2 * DAY, now=time.time())
    assert _cli(config, "once").returncode == 0
    assert len(_entries(config)) == 1
    time.sleep(1.5)
    assert _cli(config, "once").returncode == 0
    assert _entries(config) == [] and os.listdir(tree.root / "q" / "files") == []
    summary = json.loads((tree.root / "q" / "summary.json").read_text())
    assert summary["expired"] == {"sessions": 1} and summary["rules"] == {}


def test_an_orphan_is_restored_only_into_a_directory_the_operator_names(tree: Tree) -> None:
    config = _write(tree)
    tree.file("session_a.json", age=2 * DAY, now=time.time())
    assert _cli(config, "once").returncode == 0
    # A file of the quarantine without its manifest line (lost to a power cut, say), named
    # as a session file and old: once back in a swept directory, the sweep would take it.
    orphan = tree.root / "q" / "files" / "session_lost.json"
    orphan.write_bytes(b"the user's work")
    orphan.chmod(0o640)
    old = time.time() - 3 * DAY
    os.utime(orphan, (old, old))
    inode = orphan.stat().st_ino

    no_dir = _cli(config, "restore", "--orphan", "session_lost.json")
    assert no_dir.returncode == 2 and "--to DIR" in no_dir.stderr, no_dir.stderr
    for hostile in ("../../etc/passwd", "..", "files/x", ""):
        done = _cli(config, "restore", "--orphan", hostile, "--to", str(tree.uploads))
        assert done.returncode == 2 and "invalid orphan name" in done.stderr, (hostile, done)
    mixed = _cli(config, "restore", "--session", "a", "--orphan", "session_lost.json")
    assert mixed.returncode == 2
    [entry] = _entries(config)  # an entry is not an orphan
    not_orphan = _cli(config, "restore", "--orphan", str(entry["id"]), "--to", str(tree.uploads))
    assert not_orphan.returncode == 1 and "no such orphaned file" in not_orphan.stderr

    taken = tree.uploads / "session_lost.json"
    taken.write_bytes(b"newer")
    refused = _cli(config, "restore", "--orphan", "session_lost.json", "--to", str(tree.uploads))
    assert refused.returncode == 1 and "not overwritten" in refused.stderr, refused.stderr
    assert taken.read_bytes() == b"newer" and orphan.exists()
    taken.unlink()

    dry = _cli(
        config, "restore", "--orphan", "session_lost.json", "--to", str(tree.uploads), "--dry-run"
    )
    assert dry.returncode == 0 and "would restore orphan" in dry.stdout and orphan.exists()
    done = _cli(config, "restore", "--orphan", "session_lost.json", "--to", str(tree.uploads))
    assert done.returncode == 0, done.stderr
    assert f"restored orphan session_lost.json to {taken}" in done.stdout
    assert not orphan.exists() and taken.read_bytes() == b"the user's work"
    st = taken.stat()
    assert (st.st_ino, st.st_mode & 0o7777, int(st.st_mtime)) == (inode, 0o640, int(old))
    assert _listed(config)["orphans"] == []
    # Held from the sweep, as any restored file: its mtime is 3 days old.
    assert _cli(config, "once").returncode == 0
    assert taken.exists() and [e["id"] for e in _entries(config)] == [entry["id"]]
    again = _cli(config, "restore", "--orphan", "session_lost.json", "--to", str(tree.uploads))
    assert again.returncode == 1 and "no such orphaned file" in again.stderr
