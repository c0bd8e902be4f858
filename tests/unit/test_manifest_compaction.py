"""The compaction after an expiry or a purge: from the Scan they streamed, less the
entries they ended in its order, it writes exactly what a compaction that reads the file
afresh writes, for every kind of line (old formats, garbled, hostile); lines that are not
that (another order, a restore) make it read the file afresh."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from cleaner.manifest import Manifest, Scan
from cleaner.manifest_lines import Entry, encode, encode_add

NOW = 1_700_000_000.0


def _entry(i: int) -> Entry:
    return Entry(
        f"{int(NOW) + i:08x}-{i * 7919:012x}",
        f"/srv/up/session_{i}.json",
        "sessions" if i % 2 else "temp_audio",
        10,
        4096,
        1_600_000_000_000_000_000 + i,
        1000,
        1000,
        0o640,
        2049,
        10_000 + i,
        NOW + i,
    )


def _manifest(path: Path, count: int) -> list[Entry]:
    """``count`` entries, some ended already, among lines of every kind; the live ones."""
    entries = [_entry(i) for i in range(count)]
    ended = {entries[1].id, entries[4].id}
    lines = [encode_add(e) for e in entries]
    lines += [
        b"{not json\n",
        b'{"op": "expire", "id": 5}\n',  # an id that is not a string
        b'{"op": "shred", "id": "00000000-000000000000"}\n',  # an unknown op
        b'{"op": "add", "id": "../../etc", "path": "/x"}\n',  # an add that is no entry
        b"[1, 2]\n",
        # An ending line of old (no rule, no allocated bytes).
        encode({"op": "expire", "id": entries[1].id, "time": NOW, "reason": "purge"}),
        # A restore of old: its hold comes from its add line.
        encode({"op": "restore", "id": entries[4].id, "time": NOW, "hold_until": NOW + 9e9}),
        # A compacted hold, and one that is over.
        encode({"op": "restore", "id": "-", "hold": [2049, 77, 5], "hold_until": NOW + 9e9}),
        encode({"op": "restore", "id": "-", "hold": [2049, 78, 5], "hold_until": NOW - 1}),
    ]
    path.write_bytes(b"".join(lines))
    return [e for e in entries if e.id not in ended]


def _end(manifest: Manifest, scan: Scan, chosen: Callable[[Entry], bool]) -> list[Entry]:
    """What ``purge`` does: streams the scan and ends the chosen entries as they come;
    returns the entries not ended."""
    kept = []
    for entry in scan.entries():
        if chosen(entry):
            manifest.end("expire", entry, NOW, reason="purge")
        else:
            kept.append(entry)
    return kept


def _compacted_afresh(path: Path, chosen: Callable[[Entry], bool]) -> bytes:
    """The same steps on a copy, the compaction reading the file afresh."""
    copy = path.with_name("afresh.jsonl")
    shutil.copyfile(path, copy)
    manifest = Manifest(copy)
    manifest.refresh()
    with manifest.scan() as scan:
        _end(manifest, scan, chosen)
    manifest.compact(NOW)
    manifest.close()
    return copy.read_bytes()


@pytest.mark.parametrize(
    "chosen",
    [
        lambda e: True,
        lambda e: False,
        lambda e: e.time % 3 == 0,
        lambda e: e.rule == "sessions",
        lambda e: e.time > NOW + 20,
    ],
    ids=["all", "none", "every-third", "one-rule", "the-youngest"],
)
def test_compaction_from_the_streamed_scan_is_the_compaction_afresh(
    tmp_path: Path, chosen: Callable[[Entry], bool]
) -> None:
    path = tmp_path / "manifest.jsonl"
    live = _manifest(path, 40)
    expected = _compacted_afresh(path, chosen)
    manifest = Manifest(path)
    manifest.refresh()
    with manifest.scan() as scan:
        kept = _end(manifest, scan, chosen)
        manifest.compact(NOW, scan)
        assert scan.gone_left is None  # matched in order: the file was not read afresh
    assert path.read_bytes() == expected
    assert kept == [e for e in live if not chosen(e)]
    with manifest.scan() as scan:
        assert list(scan.entries()) == kept
        assert set(scan.holds) == {(2049, 77), (2049, 10_004)}
    manifest.close()


def _end_reversed(manifest: Manifest, scan: Scan) -> None:
    for entry in reversed(list(scan.entries())[::3]):
        manifest.end("expire", entry, NOW, reason="purge")


def _end_then_restore(manifest: Manifest, scan: Scan) -> None:
    first, second, *_ = scan.entries()
    manifest.end("expire", first, NOW, reason="purge")
    manifest.end("restore", second, NOW, to=None, hold=[2049, 99, 1], hold_until=NOW + 9e9)


def _hostile_line(manifest: Manifest, scan: Scan) -> None:
    manifest.write(b'{"op": "expire", "id": "-"}\n')
    manifest.write(b"garbage\n")


@pytest.mark.parametrize("after", [_end_reversed, _end_then_restore, _hostile_line])
def test_other_lines_since_the_scan_make_it_read_the_file_afresh(
    tmp_path: Path, after: Callable[[Manifest, Scan], None]
) -> None:
    path = tmp_path / "manifest.jsonl"
    _manifest(path, 40)
    copy = tmp_path / "copy.jsonl"
    shutil.copyfile(path, copy)
    for each in (path, copy):
        manifest = Manifest(each)
        manifest.refresh()
        with manifest.scan() as scan:
            after(manifest, scan)
            manifest.compact(NOW, scan if each == path else None)
            if each == path:
                assert scan.gone_left is not None
        manifest.close()
    assert path.read_bytes() == copy.read_bytes()


def test_a_scan_of_a_file_since_replaced_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    live = _manifest(path, 10)
    manifest = Manifest(path)
    manifest.refresh()
    with manifest.scan() as old:
        manifest.compact(NOW)  # another file at the path now
        manifest.end("expire", live[0], NOW, reason="purge")
        manifest.compact(NOW, old)
        assert old.gone_left is not None
    with manifest.scan() as scan:
        assert list(scan.entries()) == live[1:]
    manifest.close()


def test_entries_skips_the_ids_gone_in_their_order(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    live = _manifest(path, 10)
    manifest = Manifest(path)
    with manifest.scan() as scan:
        assert list(scan.entries(iter([live[0].id, live[2].id]))) == [live[1], *live[3:]]
        assert scan.gone_left is None and scan.live == len(live) - 2
        assert list(scan.entries(iter([live[2].id, live[0].id]))) == [live[0], live[1], *live[3:]]
        assert scan.gone_left == live[0].id
        assert list(scan.entries(iter([]))) == live and scan.gone_left is None
    manifest.close()
