"""A line of a quarantine's manifest: what each event carries, written and read.

Four events (``OPS``), one JSON object per line, keys sorted: ``add`` (an ``Entry``: id,
original path, rule, size, allocated bytes, mtime, owner, mode, device and inode, time
quarantined), and the lines that end an entry, ``restore`` (with the ``Hold`` of the file
put back), ``expire`` and ``drop``, each with the entry's rule and allocated bytes
(``ending``). ``add_line`` writes an ``add`` line without the generic encoder (a sweep
writes one per file); ``encode`` and ``add_line`` agree byte for byte. Reading is
forgiving: a line that does not parse, or an entry with a malformed id or a relative
path, is ``None``, never an exception. ``cleaner.manifest`` appends and folds them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path

#: A quarantine id: the time quarantined (seconds, hex) and 48 random bits. Anything else
#: given to ``restore`` is refused before the disk is touched.
ID_RE = re.compile(r"^[0-9a-f]{8,12}-[0-9a-f]{12}$")
OPS = ("add", "restore", "expire", "drop")
#: What an ``add`` line holds as ``encode`` writes it (sorted keys), and where its id
#: starts: an ``add`` line is found, and its id read, without parsing the line.
ADD_MARK = b'"op": "add"'
ID_MARK = b'"id": "'


@dataclass(frozen=True, slots=True)
class Entry:
    """One file in the quarantine, as its ``add`` line describes it."""

    id: str
    path: str
    rule: str
    size: int
    allocated: int
    mtime_ns: int
    uid: int
    gid: int
    mode: int
    dev: int
    ino: int
    time: float

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(frozen=True, slots=True)
class Hold:
    """A restored file (its device, inode and mtime) the sweep leaves alone until ``until``."""

    dev: int
    ino: int
    mtime_ns: int
    until: float


@dataclass
class RuleTally:
    """What one rule holds: files, allocated bytes, and the oldest time quarantined."""

    files: int = 0
    bytes: int = 0
    oldest: float = float("inf")


def parse_entry(raw: dict[str, object]) -> Entry | None:
    try:
        entry = Entry(
            id=str(raw["id"]),
            path=str(raw["path"]),
            rule=str(raw["rule"]),
            size=int(raw["size"]),  # type: ignore[call-overload]
            allocated=int(raw["allocated"]),  # type: ignore[call-overload]
            mtime_ns=int(raw["mtime_ns"]),  # type: ignore[call-overload]
            uid=int(raw["uid"]),  # type: ignore[call-overload]
            gid=int(raw["gid"]),  # type: ignore[call-overload]
            mode=int(raw["mode"]),  # type: ignore[call-overload]
            dev=int(raw["dev"]),  # type: ignore[call-overload]
            ino=int(raw["ino"]),  # type: ignore[call-overload]
            time=float(raw["time"]),  # type: ignore[arg-type]
        )
    except (KeyError, TypeError, ValueError):
        return None
    return entry if ID_RE.match(entry.id) and os.path.isabs(entry.path) else None


def add_record(entry: Entry) -> dict[str, object]:
    return {"op": "add", **asdict(entry)}


def encode(record: dict[str, object]) -> bytes:
    """One line; ensure_ascii keeps names that are not UTF-8 (surrogate escapes) valid."""
    return (json.dumps(record, ensure_ascii=True, sort_keys=True) + "\n").encode("ascii")


def encode_add(entry: Entry) -> bytes:
    """``encode(add_record(entry))``, byte for byte."""
    return add_line(
        entry.id,
        entry.path,
        entry.rule,
        entry.size,
        entry.allocated,
        entry.mtime_ns,
        entry.uid,
        entry.gid,
        entry.mode,
        entry.dev,
        entry.ino,
        entry.time,
    )


def add_line(
    qid: str,
    path: str,
    rule: str,
    size: int,
    allocated: int,
    mtime_ns: int,
    uid: int,
    gid: int,
    mode: int,
    dev: int,
    ino: int,
    when: float,
) -> bytes:
    """The ``add`` line of these fields as ``encode`` writes it, without the generic
    encoder nor an ``Entry``: a sweep writes one per file."""
    return (
        f'{{"allocated": {allocated}, "dev": {dev}, "gid": {gid}, "id": "{qid}", '
        f'"ino": {ino}, "mode": {mode}, "mtime_ns": {mtime_ns}, "op": "add", '
        f'"path": {encode_basestring_ascii(path)}, "rule": {encode_basestring_ascii(rule)}, '
        f'"size": {size}, "time": {float(when)!r}, "uid": {uid}}}\n'
    ).encode("ascii")


def ending(op: str, entry: Entry, now: float, **extra: object) -> dict[str, object]:
    """A line that ends ``entry`` (restore, expire, drop), with its rule and bytes."""
    return {
        "op": op,
        "id": entry.id,
        "time": now,
        "rule": entry.rule,
        "allocated": entry.allocated,
        **extra,
    }


def parse_line(line: bytes) -> dict[str, object] | None:
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None


def parse_hold(raw: dict[str, object]) -> Hold | None:
    """The hold a ``restore`` line carries itself (``hold``: device, inode, mtime)."""
    until, held = raw.get("hold_until"), raw.get("hold")
    if not isinstance(until, int | float) or not isinstance(held, list):
        return None
    try:
        dev, ino, mtime_ns = (int(v) for v in held)
    except (TypeError, ValueError):
        return None
    return Hold(dev, ino, mtime_ns, float(until))


def lines(path: Path) -> Iterator[bytes]:
    """The manifest's lines, for tests and tools."""
    with path.open("rb") as handle:
        yield from (line.rstrip(b"\n") for line in handle if line.strip())
