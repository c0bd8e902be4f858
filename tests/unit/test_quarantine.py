"""The quarantine on real files with an injected clock: moving in, expiry, restore, reconcile."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from cleaner import config as config_mod
from cleaner.audit import AuditLog
from cleaner.config import Config, ConfigError
from cleaner.config_files import parse_size
from cleaner.files import sweep
from cleaner.manifest_lines import Entry, add_record, encode, encode_add, lines
from cleaner.quarantine import Quarantines, Store
from cleaner.quarantine_expiry import purge
from cleaner.restore import restore_entry, select
from cleaner.sweep_result import Removal
from tests.fixtures.trees import DAY, NOW, Tree


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _config(tree: Tree, **quarantine: object) -> Config:
    q = {"directory": str(tree.root / "q"), "retention": "7d", **quarantine}
    rules = [
        {"name": "sessions", "pattern": "session_*.json", "max_age": "1h", "quarantine": q},
        {"name": "temp_audio", "pattern": "temp_audio_*.wav", "max_age": "1h"},
    ]
    return tree.config(files={"directories": [str(tree.uploads)], "rules": rules})


def _sweep(config: Config, clock: Clock, removals: list[Removal] | None = None) -> Quarantines:
    quarantines = Quarantines(config.files, clock)
    on_remove = removals.append if removals is not None else None
    sweep(config.files, now=clock(), quarantines=quarantines, on_remove=on_remove)
    return quarantines


def test_sizes() -> None:
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size(1024) == 1024
    with pytest.raises(ValueError):
        parse_size("5 parsecs")


def test_bad_quarantine_keys_name_their_path(tree: Tree) -> None:
    rule = {"name": "s", "pattern": "session_*", "max_age": "1h"}
    bad = [
        {**rule, "quarantine": {"directory": "relative", "retention": "7d"}},
        {
            **rule,
            "name": "t",
            "quarantine": {"directory": "/q", "retention": "x", "max_bytes": "5 parsecs"},
        },
        {**rule, "name": "u", "quarantine": {"retention": "7d"}},
    ]
    with pytest.raises(ConfigError) as caught:
        tree.config(files={"rules": bad})
    problems = "\n".join(caught.value.problems)
    assert "files.rules[0].quarantine.directory: expected an absolute path" in problems
    assert "files.rules[1].quarantine.retention" in problems
    assert "files.rules[1].quarantine.max_bytes" in problems
    assert "files.rules[2].quarantine: expected {directory" in problems


def test_a_quarantine_inside_a_swept_directory_is_refused_at_load(tree: Tree) -> None:
    rules = [
        {
            "name": "sessions",
            "pattern": "session_*.json",
            "max_age": "1h",
            "quarantine": {"directory": str(tree.uploads / "q"), "retention": "7d"},
        }
    ]
    path = tree.write_config(files={"directories": [str(tree.uploads)], "rules": rules})
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, {})
    assert caught.value.problems[0].startswith("files.rules[0].quarantine.directory: ")
    assert "inside swept directory" in caught.value.problems[0]


def test_the_files_quarantine_is_every_rule_s_without_its_own(tree: Tree) -> None:
    section = {"directory": str(tree.root / "q"), "retention": "7d", "max_bytes": "1MiB"}
    own = {"directory": str(tree.root / "own"), "retention": "1d"}
    rules = [
        {"name": "sessions", "pattern": "session_*.json", "max_age": "1h"},
        {"name": "temp_audio", "pattern": "temp_audio_*.wav", "max_age": "1h", "quarantine": own},
        {"name": "final_videos", "pattern": "final_*.mp4", "max_age": "1h", "quarantine": None},
    ]
    files = {"directories": [str(tree.uploads)], "rules": rules, "quarantine": section}
    config = config_mod.load(tree.write_config(files=files), {})
    sessions, audio, videos = config.files.rules
    assert config.files.quarantine is not None
    assert sessions.quarantine == config.files.quarantine
    assert (sessions.quarantine.directory, sessions.quarantine.max_bytes) == (
        tree.root / "q",
        2**20,
    )
    assert audio.quarantine is not None and audio.quarantine.directory == tree.root / "own"
    assert videos.quarantine is None
    assert tree.config(files={"directories": [str(tree.uploads)]}).files.quarantine is None


def test_a_bad_files_quarantine_is_told_under_its_own_key_once(tree: Tree) -> None:
    with pytest.raises(ConfigError) as caught:
        tree.config(files={"quarantine": {"directory": "q", "retention": "7d"}})
    assert caught.value.problems == [
        'files.quarantine.directory: expected an absolute path, got "q"'
    ]
    rules = [
        {"name": "sessions", "pattern": "session_*.json", "max_age": "1h"},
        {"name": "temp_audio", "pattern": "temp_audio_*.wav", "max_age": "1h"},
    ]
    inside = {"directory": str(tree.uploads / "q"), "retention": "7d"}
    files = {"directories": [str(tree.uploads)], "rules": rules, "quarantine": inside}
    with pytest.raises(ConfigError) as caught:
        config_mod.load(tree.write_config(files=files), {})
    [problem] = caught.value.problems
    assert problem.startswith("files.quarantine.directory: ") and "inside swept" in problem


def test_a_quarantine_on_another_filesystem_is_refused_at_load(tree: Tree) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tree.uploads).st_dev:
        pytest.skip("no second filesystem here")
    rules = [
        {
            "name": "sessions",
            "pattern": "session_*.json",
            "max_age": "1h",
            "quarantine": {"directory": str(other / "limpeza-q-never-made"), "retention": "7d"},
        }
    ]
    path = tree.write_config(files={"directories": [str(tree.uploads)], "rules": rules})
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, {})
    assert "another filesystem" in caught.value.problems[0]
    assert not (other / "limpeza-q-never-made").exists()


def test_an_expired_file_is_moved_not_unlinked(tree: Tree) -> None:
    config = _config(tree)
    clock = Clock()
    kept = tree.file("session_a.json", age=2 * DAY, data=b"hello")
    os.chmod(kept, 0o640)
    inode = os.stat(kept).st_ino
    gone = tree.file("temp_audio_a.wav", age=2 * DAY)
    removals: list[Removal] = []
    quarantines = _sweep(config, clock, removals)
    assert not kept.exists() and not gone.exists()
    [store] = quarantines.all()
    [entry] = store.entries().values()
    assert entry.path == str(kept) and entry.rule == "sessions" and entry.size == 5
    assert entry.mode == 0o640 and entry.time == NOW
    moved = tree.root / "q" / "files" / entry.id
    assert moved.read_bytes() == b"hello" and os.stat(moved).st_ino == inode  # no copy
    by_path = {r.path: r for r in removals}
    assert by_path[str(kept)].quarantine_id == entry.id and by_path[str(kept)].freed == 0
    assert by_path[str(gone)].quarantine_id is None
    assert oct(os.stat(tree.root / "q").st_mode & 0o777) == "0o700"
    quarantines.close()


def test_every_safety_check_applies_first(tree: Tree) -> None:
    config = _config(tree)
    locked = tree.file("session_locked.json", age=2 * DAY)
    target = tree.file("elsewhere.txt", age=2 * DAY)
    (tree.uploads / "session_link.json").symlink_to(target)
    with open(locked, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        quarantines = _sweep(config, Clock())
    assert locked.exists() and (tree.uploads / "session_link.json").is_symlink()
    assert [e for s in quarantines.all() for e in s.entries()] == []
    quarantines.close()


def test_retention_and_max_bytes_expire_oldest_first(tree: Tree) -> None:
    config = _config(tree, retention="2d", max_bytes=3 * 4096)
    clock = Clock()
    for i in range(2):
        tree.file(f"session_{i}.json", age=2 * DAY)
    quarantines = _sweep(config, clock)
    clock.now += DAY
    for i in range(2, 5):
        tree.file(f"session_{i}.json", age=2 * DAY, now=clock.now)
    quarantines.close()
    quarantines = _sweep(config, clock)
    [store] = quarantines.all()
    allocated = {e.path: e.allocated for e in store.entries().values()}
    assert len(allocated) == 5
    done = quarantines.expire()[store]
    # Each file takes one 4 KiB block here: 5 blocks for 3 allowed, the two oldest go.
    if set(allocated.values()) == {4096}:
        assert sorted(Path(g.entry.path).name for g in done) == ["session_0.json", "session_1.json"]
        assert {g.reason for g in done} == {"max_bytes"}
    clock.now += 1.5 * DAY  # the second batch is 1.5 days old, the first would be 2.5
    for g in quarantines.expire()[store]:
        assert g.reason == "retention"
    clock.now += DAY
    quarantines.expire()
    assert store.entries() == {}
    assert os.listdir(tree.root / "q" / "files") == []
    quarantines.close()


def test_restore_puts_back_mode_mtime_and_never_overwrites(tree: Tree) -> None:
    config = _config(tree)
    clock = Clock()
    original = tree.file("session_a.json", age=2 * DAY, data=b"one")
    os.chmod(original, 0o600)
    mtime_ns = os.stat(original).st_mtime_ns
    quarantines = _sweep(config, clock)
    [store] = quarantines.all()
    [entry] = store.entries().values()
    moved = tree.root / "q" / "files" / entry.id
    os.chmod(moved, 0o644)
    os.utime(moved, (NOW, NOW))
    original.write_bytes(b"new one")  # the application wrote the name again
    refused = restore_entry(store, entry, to=None, hold_for=DAY)
    assert not refused.restored and "exists" in str(refused.problem)
    assert original.read_bytes() == b"new one" and moved.exists()
    original.unlink()
    done = restore_entry(store, entry, to=None, hold_for=DAY)
    assert done.restored and original.read_bytes() == b"one"
    st = os.stat(original)
    assert st.st_mode & 0o777 == 0o600 and st.st_mtime_ns == mtime_ns
    assert store.entries() == {}
    # Held: the next sweep leaves it alone although its mtime says expired.
    quarantines.close()
    quarantines = _sweep(config, clock)
    assert original.exists()
    clock.now += 2 * DAY
    quarantines.close()
    quarantines = _sweep(config, clock)
    assert not original.exists()
    quarantines.close()


def test_restore_to_another_directory(tree: Tree) -> None:
    config = _config(tree)
    tree.file("session_a.json", age=2 * DAY)
    quarantines = _sweep(config, Clock())
    [store] = quarantines.all()
    [entry] = store.entries().values()
    elsewhere = tree.root / "restored"
    elsewhere.mkdir()
    assert restore_entry(store, entry, to=elsewhere, hold_for=DAY).restored
    assert (elsewhere / "session_a.json").exists()
    quarantines.close()


@pytest.mark.parametrize(
    "hostile", ["../../etc/passwd", "/etc/passwd", "..", "", "6b029893-ec75c03fe53c/..", "x" * 200]
)
def test_hostile_ids_are_refused_before_the_disk(tree: Tree, hostile: str) -> None:
    config = _config(tree)
    with pytest.raises(ValueError, match="invalid quarantine id"):
        select([], config.files, ids=[hostile])


def test_select_by_session_and_path(tree: Tree) -> None:
    config = _config(tree)
    for name in ("session_s1.json", "session_s2.json"):
        tree.file(name, age=2 * DAY)
    quarantines = _sweep(config, Clock())
    [store] = quarantines.all()
    entries = list(store.each())
    chosen, problems = select(entries, config.files, session="s1")
    assert [Path(e.path).name for e in chosen] == ["session_s1.json"] and problems == []
    chosen, problems = select(entries, config.files, path=str(tree.uploads / "session_s2.json"))
    assert [Path(e.path).name for e in chosen] == ["session_s2.json"]
    _, problems = select(entries, config.files, path="/nowhere", ids=["0000000a-000000000000"])
    assert len(problems) == 2
    quarantines.close()


def test_reconcile_drops_entries_without_files_and_keeps_orphans(tree: Tree) -> None:
    config = _config(tree)
    for name in ("session_a.json", "session_b.json"):
        tree.file(name, age=2 * DAY)
    quarantines = _sweep(config, Clock())
    [store] = quarantines.all()
    first, second = sorted(store.entries())
    quarantines.close()
    files = tree.root / "q" / "files"
    (files / first).unlink()
    (files / "stray").write_bytes(b"?")
    store = Store(tree.root / "q", Clock())
    done = store.reconcile()
    assert done.dropped == [first] and done.orphans == ["stray"]
    assert list(store.entries()) == [second]
    assert (files / "stray").exists()
    store.close()


def test_compaction_keeps_live_entries_and_holds(tree: Tree) -> None:
    clock = Clock()
    store = Store(tree.root / "q", clock)
    for i in range(1200):
        path = tree.file(f"session_{i}.json", age=2 * DAY)
        fd = os.open(tree.uploads, os.O_RDONLY | os.O_DIRECTORY)
        try:
            store.put(fd, path.name, str(path), "sessions", os.stat(path))
        finally:
            os.close(fd)
    entries = sorted(store.entries().values(), key=lambda e: e.time)
    assert restore_entry(store, entries[0], to=None, hold_for=DAY).restored
    purge(store)  # all but the restored one expire
    store.close()
    store = Store(tree.root / "q", clock)
    store.reconcile()
    kept = list(lines(tree.root / "q" / "manifest.jsonl"))
    assert len(kept) == 1 and json.loads(kept[0])["hold"][1] == entries[0].ino
    assert store.held(os.stat(tree.uploads / "session_0.json"))
    store.close()


def test_expiry_is_audited(tree: Tree) -> None:
    config = _config(tree, retention="1d")
    clock = Clock()
    tree.file("session_a.json", age=2 * DAY)
    quarantines = _sweep(config, clock)
    clock.now += 2 * DAY
    [(_store, gone)] = quarantines.expire().items()
    with AuditLog(tree.var / "audit.jsonl", clock) as audit:
        for item in gone:
            audit.write(item.removal(clock()))
    [line] = (tree.var / "audit.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["action"] == "expire" and record["reason"] == "retention"
    assert record["id"] == gone[0].entry.id and record["freed"] == gone[0].freed
    quarantines.close()


def test_add_line_is_what_the_generic_encoder_writes() -> None:
    entry = Entry(
        "6b029893-ec75c03fe53c",
        '/srv/up/s\udcff\u00e9 "q"\\.json',
        "sessions",
        5,
        4096,
        1_700_000_000_123_456_789,
        1000,
        1000,
        0o640,
        2049,
        123456,
        1_700_000_000.125,
    )
    assert encode_add(entry) == encode(add_record(entry))


def test_a_sweep_takes_the_lock_once_per_group_commit(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tree)
    for i in range(50):
        tree.file(f"session_{i}.json", age=2 * DAY)
    taken: list[int] = []
    real = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX:
            taken.append(fd)
        real(fd, op)

    monkeypatch.setattr("cleaner.quarantine.fcntl.flock", flock)
    quarantines = Quarantines(config.files, Clock())
    [store] = quarantines.all()  # opened and reconciled: the lock taken for that
    taken.clear()
    sweep(config.files, now=NOW, quarantines=quarantines)
    assert len(taken) == 1  # 50 files in well under a second
    quarantines.sync()  # the sweep's end: fsynced and let go
    with open(tree.root / "q" / "lock", "rb") as other:
        real(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert len(store.entries()) == 50
    quarantines.close()


def test_a_manifest_of_old_lines_still_folds(tree: Tree) -> None:
    """Lines written before the ending lines carried their rule and the restore its hold."""
    clock = Clock()
    store = Store(tree.root / "q", clock)
    paths = [tree.file(f"session_{i}.json", age=2 * DAY) for i in range(3)]
    fd = os.open(tree.uploads, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = [store.put(fd, p.name, str(p), "sessions", os.stat(p)) for p in paths]
    finally:
        os.close(fd)
    store.close()
    os.rename(tree.root / "q" / "files" / ids[0], paths[0])
    os.unlink(tree.root / "q" / "files" / ids[1])
    with open(tree.root / "q" / "manifest.jsonl", "ab") as manifest:
        manifest.write(
            encode({"op": "restore", "id": ids[0], "time": NOW, "hold_until": NOW + DAY})
        )
        manifest.write(encode({"op": "expire", "id": ids[1], "time": NOW, "reason": "purge"}))
    store = Store(tree.root / "q", clock)
    assert store.reconcile().dropped == []
    assert list(store.entries()) == [ids[2]]
    assert store.held(os.stat(paths[0]))
    assert store.counts()["sessions"].files == 1
    store.close()
