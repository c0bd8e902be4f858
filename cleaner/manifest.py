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
  (a ``Hold``: its device, inode and mtime are on the line), so a restored file is not
  taken again at the next sweep.
- ``expire``: the file was unlinked (``reason``: retention, max_bytes or purge).
- ``drop``: reconciliation found no file for the entry.

The lines that end an entry carry its ``rule`` and ``allocated`` bytes, so what each rule
holds is kept up to date from the new lines alone. A line that does not parse (a disk
error, an editor) is skipped and counted, never fatal.

Nothing holds the entries in memory: a ``Scan`` streams the file twice (the ids of the
lines that end an entry, then the ``add`` lines not ended), so memory is bounded by the
lines that ended an entry since the last compaction, not by what the quarantine holds.
The ``add`` lines are in the order the files were quarantined, oldest first.
``compact`` rewrites the file with only the live entries and the holds (temporary file,
fsync, rename), under the quarantine's lock. After an expiry or a purge it does not learn
again the ids they ended: it streams the Scan they streamed, whose entries they ended one
line each in its order, and skips the ids of the lines appended since as it meets them, in
that order (any other line since, or another order, and it reads the file afresh). So
ending a million entries holds no more than ending one. The lines themselves are
``cleaner.manifest_lines``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cleaner.manifest_lines import (
    ADD_MARK,
    ID_MARK,
    OPS,
    Entry,
    Hold,
    RuleTally,
    encode,
    encode_add,
    ending,
    parse_entry,
    parse_hold,
    parse_line,
)

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _lines(fd: int, start: int, end: int) -> Iterator[tuple[bytes, int]]:
    """The whole lines between ``start`` and ``end``, each with the offset after it."""
    offset, rest = start, b""
    while offset < end:
        chunk = os.pread(fd, min(_CHUNK, end - offset), offset)
        if not chunk:
            break
        after = offset - len(rest)  # the offset of rest's first byte
        offset += len(chunk)
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            after += len(part) + 1
            if part.strip():
                yield part, after


@dataclass
class Scan:
    """One read of the manifest up to ``end``: the ids of the lines that ended an entry
    (first pass), then ``entries()`` streams the ``add`` lines not ended, in order, as
    often as asked. It reads through a descriptor of its own: a compaction meanwhile
    leaves it reading the file it began with."""

    fd: int
    end: int
    ended: dict[str, float | None] = field(default_factory=dict)
    holds: dict[tuple[int, int], Hold] = field(default_factory=dict)
    lines: int = 0
    bad_lines: int = 0
    live: int = 0
    gone_left: str | None = None

    def __enter__(self) -> Scan:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @classmethod
    def read(cls, fd: int) -> Scan:
        """The first pass over the file ``fd`` (which the Scan then owns and closes)."""
        scan = cls(fd, 0)
        try:
            end = os.fstat(fd).st_size
            for line, after in _lines(fd, 0, end):
                scan.end = after
                scan.lines += 1
                if ADD_MARK in line:
                    continue
                raw = parse_line(line)
                qid = None if raw is None else raw.get("id")
                if raw is None or raw.get("op") not in OPS or not isinstance(qid, str):
                    scan.bad_lines += 1
                    continue
                hold = parse_hold(raw) if raw["op"] == "restore" else None
                if hold is not None:
                    scan.holds[(hold.dev, hold.ino)] = hold
                if qid == "-":  # a compacted hold
                    continue
                # A restore line of old has no hold: its add line gives it (entries()).
                until = raw.get("hold_until") if raw["op"] == "restore" and hold is None else None
                scan.ended[qid] = float(until) if isinstance(until, int | float) else None
        except BaseException:
            scan.close()
            raise
        return scan

    def entries(self, gone: Iterator[str] | None = None) -> Iterator[Entry]:
        """The live entries, oldest first (the order they were quarantined).

        ``gone``: ids of entries ended since the first pass, in the order this method
        gives them (what ``expire`` and ``purge`` append as they stream it): each is
        matched to the next entry given and skips it. ``gone_left`` is then the first id
        not matched (None: all were), so a caller can tell the ids were not in that
        order. Nothing is held per id."""
        self.live = 0
        ids: Iterator[str] = iter(()) if gone is None else gone
        self.gone_left = pending = next(ids, None)
        ended = self.ended
        for line, _ in _lines(self.fd, 0, self.end):
            if ADD_MARK not in line:
                continue
            if ended:  # an ended entry is skipped without parsing its line
                at = line.find(ID_MARK) + len(ID_MARK)
                qid = line[at : line.find(b'"', at)].decode("ascii", "replace")
                if qid in ended and ended[qid] is None:
                    continue
            raw = parse_line(line)
            entry = None if raw is None else parse_entry(raw)
            if entry is None:
                continue
            if entry.id in self.ended:
                until = self.ended[entry.id]
                if until is not None:  # a restore line of old, without its hold
                    self.holds[(entry.dev, entry.ino)] = Hold(
                        entry.dev, entry.ino, entry.mtime_ns, until
                    )
                continue
            if pending is not None and entry.id == pending:
                self.gone_left = pending = next(ids, None)
                continue
            self.live += 1
            yield entry


class Manifest:
    """The manifest file: appends, group-committed fsyncs, and what the lines add up to.

    Kept between reads (bounded: per rule, and the holds): the holds, what each rule holds
    (``tally``) and the offset read up to, so a long-lived reader (the daemon) only reads
    the lines others (a restore, a purge) appended since. A manifest compacted by another
    process is a new file: the reader notices (another inode) and scans it whole.
    """

    def __init__(self, path: Path, sync_every: float = 0.0) -> None:
        self.path = path
        self._fd: int | None = None
        self._ino: int | None = None
        self._offset = 0
        self.holds: dict[tuple[int, int], Hold] = {}
        #: Per rule, from the lines read; None when a line could not be counted
        #: incrementally (a line of old without its rule), so the next read scans.
        self.tally: dict[str, RuleTally] | None = None
        self.lines = 0
        self.live = 0
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
        self._offset, self.tally = 0, None
        return fd

    def scan(self) -> Scan:
        """A streaming read of the whole file as it is now (call under the lock); a
        context manager that closes its own descriptor."""
        return Scan.read(os.dup(self._current()))

    def refresh(self) -> None:
        """Brings the holds and the tally up to the end of the file (under the lock)."""
        fd = self._current()
        if self.tally is not None:
            for line, after in _lines(fd, self._offset, os.fstat(fd).st_size):
                self._offset = after
                self._count(line)
        if self.tally is None:
            self.rescan()

    def rescan(self, visit: Callable[[Entry], None] | None = None) -> None:
        """Reads the whole file again (under the lock): holds, tally, and each live entry
        given to ``visit``, which must not write to the manifest."""
        tally: dict[str, RuleTally] = {}
        with self.scan() as scan:
            for entry in scan.entries():
                counts = tally.setdefault(entry.rule, RuleTally())
                counts.files += 1
                counts.bytes += entry.allocated
                counts.oldest = min(counts.oldest, entry.time)
                if visit is not None:
                    visit(entry)
            self.holds, self.tally = scan.holds, tally
            self._offset, self.lines, self.live = scan.end, scan.lines, scan.live

    def _count(self, line: bytes) -> None:
        """Folds one new line into the tally and the holds."""
        self.lines += 1
        raw = parse_line(line)
        if raw is None or self.tally is None:
            return
        op, rule = raw.get("op"), raw.get("rule")
        if op == "add":
            entry = parse_entry(raw)
            if entry is not None:
                counts = self.tally.setdefault(entry.rule, RuleTally())
                counts.files += 1
                counts.bytes += entry.allocated
                counts.oldest = min(counts.oldest, entry.time)
                self.live += 1
            return
        hold = parse_hold(raw) if op == "restore" else None
        if hold is not None:
            self.holds[(hold.dev, hold.ino)] = hold
        if raw.get("id") == "-" or op not in OPS:
            return
        allocated = raw.get("allocated")
        if not isinstance(rule, str) or not isinstance(allocated, int):
            self.tally = None  # a line of old: the next refresh scans
            return
        counts = self.tally.setdefault(rule, RuleTally())
        counts.files -= 1
        counts.bytes -= allocated
        self.live -= 1
        if op == "restore" and hold is None:
            self.tally = None  # an old restore line: its hold needs its add line

    def write(self, data: bytes) -> None:
        """One line, one ``write`` (under the lock, after ``refresh``); fsynced now or
        within ``sync_every``."""
        fd = self._fd if self._fd is not None else self._current()
        written = os.write(fd, data)
        if written != len(data):  # a full disk mid-line: end it, so the next line parses
            os.write(fd, b"\n")
            raise OSError(f"short write to {self.path}")
        self._offset += len(data)
        self._dirty = True
        if not self.sync_every or time.monotonic() - self._synced_at >= self.sync_every:
            self.sync()

    def add(self, line: bytes, rule: str, allocated: int, when: float) -> None:
        """An ``add`` line (``add_line``), counted without reading it back."""
        self.write(line)
        self.lines += 1
        if self.tally is not None:
            counts = self.tally.get(rule)
            if counts is None:
                counts = self.tally[rule] = RuleTally()
            counts.files += 1
            counts.bytes += allocated
            if when < counts.oldest:
                counts.oldest = when
            self.live += 1

    def end(self, op: str, entry: Entry, now: float, **extra: object) -> None:
        """A line that ends ``entry`` (``ending``), counted without reading it back."""
        self.write(encode(ending(op, entry, now, **extra)))
        self.lines += 1
        if self.tally is not None:
            counts = self.tally.setdefault(entry.rule, RuleTally())
            counts.files -= 1
            counts.bytes -= entry.allocated
            self.live -= 1
        hold = extra.get("hold")
        until = extra.get("hold_until")
        if op == "restore" and isinstance(hold, list) and isinstance(until, int | float):
            self.holds[(entry.dev, entry.ino)] = Hold(entry.dev, entry.ino, entry.mtime_ns, until)

    def append(self, record: dict[str, object]) -> None:
        """Any other line; counted as if read back."""
        data = encode(record)
        self.write(data)
        self._count(data.rstrip(b"\n"))

    def compact(self, now: float, read: Scan | None = None) -> None:
        """Rewrites the manifest with the live entries and the holds not yet over.

        ``read``: the Scan an expiry or a purge streamed, under the lock held since, and
        whose entries it then ended one line each in the order it read them. The live
        entries are then that Scan's less the ids of the lines appended since, matched in
        order (``Scan.entries``): nothing is learnt, nor held, per entry ended. Should the
        lines since be anything else (or not in that order), the file is read afresh.
        Only an entry whose id a line since ends is left out, so no live entry ever is;
        an id on two ``add`` lines (which no writer makes) may keep one of them, which
        reconciliation then drops (its file went with the other).
        """
        self.refresh()
        written = None
        if read is not None:
            written = self._rewrite(read, now, self._ended_since(read))
            if read.gone_left is not None:
                written = None
        if written is None:
            with self.scan() as scan:
                written = self._rewrite(scan, now)
        os.replace(self.path.with_name(self.path.name + ".tmp"), self.path)
        # The same entries: the tally holds; only the file and its counts of lines change.
        tally, holds = self.tally, {k: h for k, h in self.holds.items() if h.until > now}
        self._current()
        assert self._fd is not None
        self._offset, self.lines = os.fstat(self._fd).st_size, written
        self.tally, self.holds = tally, holds

    def _ended_since(self, read: Scan) -> Iterator[str]:
        """The ids the lines after ``read`` end, in order; ``""`` (no entry's id) for a
        line that is not an ``expire`` or ``drop`` of one entry, or when ``read`` is of
        another file, so that the match fails and the compaction reads afresh."""
        fd = self._current()
        if os.fstat(read.fd).st_ino != os.fstat(fd).st_ino:
            yield ""
            return
        for line, _ in _lines(fd, read.end, os.fstat(fd).st_size):
            raw = parse_line(line)
            qid = None if raw is None else raw.get("id")
            if raw is None or raw.get("op") not in ("expire", "drop") or not isinstance(qid, str):
                yield ""
                return
            yield qid

    def _rewrite(self, scan: Scan, now: float, gone: Iterator[str] | None = None) -> int:
        """Writes the temporary file (the entries of ``scan`` less ``gone``, see
        ``Scan.entries``); returns its number of lines."""
        written = 0
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            batch: list[bytes] = []
            for entry in scan.entries(gone):
                written += 1
                batch.append(encode_add(entry))
                if len(batch) >= 4096:
                    _write_all(fd, b"".join(batch))
                    batch.clear()
            for hold in scan.holds.values():
                if hold.until > now:
                    written += 1
                    batch.append(
                        encode(
                            {
                                "op": "restore",
                                "id": "-",
                                "hold": [hold.dev, hold.ino, hold.mtime_ns],
                                "hold_until": hold.until,
                            }
                        )
                    )
            _write_all(fd, b"".join(batch))
            os.fsync(fd)
        finally:
            os.close(fd)
        return written

    def sync(self) -> None:
        """fsyncs what was appended, if anything."""
        if self._dirty and self._fd is not None:
            os.fsync(self._fd)
        self._dirty = False
        self._synced_at = time.monotonic()

    def due(self) -> bool:
        """Whether the group commit's time is up (``sync_every`` since the last fsync)."""
        return time.monotonic() - self._synced_at >= self.sync_every

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
