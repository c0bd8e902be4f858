"""A quarantine of tens of thousands of entries purged and expired by real processes: what
goes is exactly what was chosen, what stays is kept whole and restorable, and the manifest
ends compacted to the entries that stay (and the hold of the file restored)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cleaner.manifest_lines import add_line, lines
from tests.fixtures.trees import DAY, Tree

pytestmark = pytest.mark.integration

ENV = {k: v for k, v in os.environ.items() if not k.startswith("LIMPEZA_")}
COUNT = 30_000


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cleaner", "--config", str(config), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _quarantine(tree: Tree, now: float) -> list[tuple[str, str]]:
    """COUNT entries made as a sweep makes them (a file in ``files/``, an ``add`` line, in
    the order quarantined): 40% 5 days ago, 40% 3 days ago, 20% a minute ago, two of every
    three of rule ``sessions``, the third of ``temp_audio``. Each id and its rule."""
    files = tree.root / "q" / "files"
    files.mkdir(parents=True, mode=0o700)
    os.chmod(tree.root / "q", 0o700)
    bits = random.Random(16)
    made, out = [], []
    fd = os.open(files, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(COUNT):
            age = 5 * DAY if i < COUNT * 0.4 else 3 * DAY if i < COUNT * 0.8 else 60.0
            when = round(now - age + i / 1000, 3)
            qid = f"{int(when):08x}-{bits.getrandbits(48):012x}"
            os.close(os.open(qid, os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd))
            os.utime(qid, (when - DAY, when - DAY), dir_fd=fd)
            st = os.stat(qid, dir_fd=fd)
            rule, name = (
                ("temp_audio", f"temp_audio_{i:05d}.wav")
                if i % 3 == 2
                else (
                    "sessions",
                    f"session_{i:05d}.json",
                )
            )
            fields = (st.st_size, st.st_blocks * 512, st.st_mtime_ns, st.st_uid, st.st_gid)
            path = str(tree.uploads / name)
            out.append(add_line(qid, path, rule, *fields, 0o640, st.st_dev, st.st_ino, when))
            made.append((qid, rule))
    finally:
        os.close(fd)
    manifest = tree.root / "q" / "manifest.jsonl"
    manifest.write_bytes(b"".join(out))
    os.chmod(manifest, 0o600)
    return made


def _config(tree: Tree) -> Path:
    """Both rules quarantine into ``q``: ``sessions`` for 2 days, ``temp_audio`` for 7."""
    rules = [
        {
            "name": name,
            "pattern": pattern,
            "max_age": "1h",
            "quarantine": {"directory": str(tree.root / "q"), "retention": keep, "max_bytes": 0},
        }
        for name, pattern, keep in (
            ("sessions", "session_*.json", "2d"),
            ("temp_audio", "temp_audio_*.wav", "7d"),
        )
    ]
    return tree.write_config(files={"directories": [str(tree.uploads)], "rules": rules})


def _left(tree: Tree) -> tuple[list[str], list[dict[str, Any]]]:
    """The ids in ``files/`` (sorted), and the manifest's lines."""
    names = sorted(os.listdir(tree.root / "q" / "files"))
    return names, [json.loads(line) for line in lines(tree.root / "q" / "manifest.jsonl")]


def test_purge_then_expiry_of_tens_of_thousands_end_exactly_what_they_chose(tree: Tree) -> None:
    made = _quarantine(tree, time.time())
    config = _config(tree)
    old, middle = int(COUNT * 0.4), int(COUNT * 0.8)

    done = _cli(config, "quarantine", "purge", "--older-than", "4d", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{old} quarantined files unlinked"
    stay = [qid for qid, _ in made[old:]]
    names, manifest = _left(tree)
    assert names == sorted(stay)
    assert [line["id"] for line in manifest] == stay  # compacted, oldest first
    assert all(line["op"] == "add" for line in manifest)

    # A file that stays is restorable, and held from the sweep through the compaction.
    restored_id = made[old][0]
    done = _cli(config, "restore", restored_id)
    assert done.returncode == 0, done.stderr
    restored = tree.uploads / f"session_{old:05d}.json"
    assert restored.exists()

    # The daemon's expiry: the sessions of 3 days go, the temp_audio of 3 days stay (7d),
    # those of a minute stay; ending one entry in three interleaved with those it keeps.
    done = _cli(config, "once")
    assert done.returncode == 0, done.stderr
    young = [
        qid
        for i, (qid, rule) in enumerate(made)
        if i >= old and not (i < middle and rule == "sessions")
    ]
    names, manifest = _left(tree)
    assert names == sorted(young)
    adds = [line for line in manifest if line["op"] == "add"]
    assert [line["id"] for line in adds] == young  # compacted, oldest first
    [hold] = [line for line in manifest if line["op"] != "add"]
    assert hold["id"] == "-" and hold["hold"][1] == os.stat(restored).st_ino
    assert restored.exists()  # held: not quarantined again

    listed = _cli(config, "quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout)["entries"]] == young
    summary = json.loads((tree.root / "q" / "summary.json").read_text())
    assert {r: c["files"] for r, c in summary["rules"].items()} == {
        "sessions": sum(1 for i, (q, r) in enumerate(made) if i >= middle and r == "sessions"),
        "temp_audio": sum(1 for i, (q, r) in enumerate(made) if i >= old and r == "temp_audio"),
    }
    for qid in (young[0], young[-1]):
        done = _cli(config, "restore", qid)
        assert done.returncode == 0, done.stderr
    assert (tree.uploads / f"temp_audio_{old + 2:05d}.wav").exists()
    assert (tree.uploads / f"temp_audio_{COUNT - 1:05d}.wav").exists()  # 29999: temp_audio
