"""A quarantine's manifest: one JSON line per event, appended with ``O_APPEND`` and fsync.

The manifest is the quarantine's memory of where each file came from. It is only ever
appended to, one ``write`` per line on an ``O_APPEND`` descriptor, written before the step
it announces (so a killed process leaves its line in the page cache), and fsynced: each
line, or (``sync_every``, what a sweep uses) at most a second apart and when the sweep
ends. The state of the quarantine is the fold of its lines, in order:

- ``add``: a file is about to be moved in (id, original path, rule, size, allocated bytes,
  mtime, owner, mode, device and inode, time). Written *before* the rename, so a file in
  the quarantine always has its line; a crash between the two leaves a line without a
  file, which reconciliation drops (the file never left its directory).
- ``restore``: the file went back (to ``to``); it is then held from the sweep for a while
  (``Hold``), so a restored file is not taken again at the next sweep.
- ``expire``: the file was unlinked (``reason``: retention, max_bytes or purge).
- ``drop``: reconciliation found no file for the entry.

A line that does not parse (a disk error, an editor) is skipped and counted, never fatal.
``compact`` rewrites the file with only the live entries and the holds (temporary file,
fsync, rename), under the quarantine's lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: A quarantine id: the time quarantined (seconds, hex) and 48 random bits. Anything else
#: given to ``restore`` is refused before the disk is touched.
ID_RE = re.compile(r"^[0-9a-f]{8,12}-[0-9a-f]{12}$")
OPS = ("add", "restore", "expire", "drop")


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Hold:
    """A restored file (its device, inode and mtime) the sweep leaves alone until ``until``."""

    dev: int
    ino: int
    mtime_ns: int
    until: float


@dataclass
class Fold:
    """What the manifest's lines add up to."""

    entries: dict[str, Entry]
    holds: dict[tuple[int, int], Hold]
    lines: int = 0
    bad_lines: int = 0


def _entry(raw: dict[str, object]) -> Entry | None:
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


def apply(fold: Fold, line: bytes) -> None:
    """Folds one line in; a line that does not parse is counted in ``bad_lines``."""
    fold.lines += 1
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        fold.bad_lines += 1
        return
    op = raw.get("op") if isinstance(raw, dict) else None
    if op == "add":
        entry = _entry(raw)
        if entry is None:
            fold.bad_lines += 1
            return
        fold.entries[entry.id] = entry
        return
    if op not in OPS or not isinstance(raw.get("id"), str):
        fold.bad_lines += 1
        return
    gone = fold.entries.pop(raw["id"], None)
    until = raw.get("hold_until")
    if op == "restore" and gone is not None and isinstance(until, int | float):
        fold.holds[(gone.dev, gone.ino)] = Hold(gone.dev, gone.ino, gone.mtime_ns, until)
    elif op == "restore" and isinstance(raw.get("hold"), list):  # a compacted hold
        try:
            dev, ino, mtime_ns = (int(v) for v in raw["hold"])
            fold.holds[(dev, ino)] = Hold(dev, ino, mtime_ns, float(until))
        except (TypeError, ValueError):
            fold.bad_lines += 1


class Manifest:
    """The manifest file: appends with fsync, reads what was appended since the last read.

    ``read_new`` keeps an offset, so a long-lived reader (the daemon) only reads the lines
    others (a restore, a purge) appended since. A manifest compacted by another process is
    a new file: the reader notices (another inode) and reads it whole.
    """

    def __init__(self, path: Path, sync_every: float = 0.0) -> None:
        self.path = path
        self._fd: int | None = None
        self._ino: int | None = None
        self._offset = 0
        self._rest = b""
        self.fold = Fold({}, {})
        #: 0: every line is fsynced before ``append`` returns. Else lines are fsynced at
        #: most this many seconds apart and by ``sync()`` and ``close()`` (a group
        #: commit: a sweep of many files is not one fsync per file).
        self.sync_every = sync_every
        self._synced_at = time.monotonic()
        self._dirty = False

    def _current(self) -> int:
        """The descriptor of the file now at ``path`` (reopened after a compaction)."""
        fd = self._fd
        if fd is not None:
            try:
                same = os.stat(self.path).st_ino == self._ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            self.sync()
            os.close(fd)
            self._fd = None
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fd, self._ino = fd, os.fstat(fd).st_ino
        self._offset, self._rest, self.fold = 0, b"", Fold({}, {})
        return fd

    def read_new(self) -> Fold:
        """Folds the lines appended since the last read (all of them the first time)."""
        fd = self._current()
        while True:
            chunk = os.pread(fd, 1 << 20, self._offset)
            if not chunk:
                break
            self._offset += len(chunk)
            lines = (self._rest + chunk).split(b"\n")
            self._rest = lines.pop()
            for line in lines:
                if line.strip():
                    apply(self.fold, line)
        return self.fold

    def append(self, record: dict[str, object], *, read: bool = True) -> None:
        """One line, one ``write``, fsynced; folded in as if read back.

        ``read=False``: the caller has just read the manifest under the lock (``read_new``),
        so nobody can have appended since.
        """
        if read:
            self.read_new()
        data = encode(record)
        fd = self._fd if not read and self._fd is not None else self._current()
        written = os.write(fd, data)
        if written != len(data):  # a full disk mid-line: end it, so the next line parses
            os.write(fd, b"\n")
            raise OSError(f"short write to {self.path}")
        self._dirty = True
        if not self.sync_every or time.monotonic() - self._synced_at >= self.sync_every:
            self.sync()
        self._offset += len(data)
        if record.get("op") == "add" and isinstance(record.get("id"), str):
            # What apply() would make of it, without parsing back the line just encoded.
            fields = {k: v for k, v in record.items() if k != "op"}
            self.fold.entries[str(record["id"])] = Entry(**fields)  # type: ignore[arg-type]
            self.fold.lines += 1
        else:
            apply(self.fold, data.rstrip(b"\n"))

    def compact(self, now: float) -> None:
        """Rewrites the manifest with the live entries and the holds not yet over."""
        fold = self.read_new()
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            parts = [encode(add_record(e)) for e in fold.entries.values()]
            for hold in fold.holds.values():
                if hold.until > now:
                    parts.append(
                        encode(
                            {
                                "op": "restore",
                                "id": "-",
                                "hold": [hold.dev, hold.ino, hold.mtime_ns],
                                "hold_until": hold.until,
                            }
                        )
                    )
            os.write(fd, b"".join(parts))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._current()
        self.read_new()

    def sync(self) -> None:
        """fsyncs what was appended, if anything."""
        if self._dirty and self._fd is not None:
            os.fsync(self._fd)
        self._dirty = False
        self._synced_at = time.monotonic()

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None


def lines(path: Path) -> Iterator[bytes]:
    """The manifest's lines, for tests and tools."""
    with path.open("rb") as handle:
        yield from (line.rstrip(b"\n") for line in handle if line.strip())
