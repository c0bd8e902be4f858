"""The quarantine: expired files moved aside instead of unlinked, for a while, to be restored.

A rule with ``quarantine: {directory, retention, max_bytes}`` does not unlink a file the
sweep takes (after every check of a removal: identity, ``flock`` pin, protect, symlink,
mount): ``renameat2(..., RENAME_NOREPLACE)`` moves it into ``DIRECTORY/files/ID`` on the
same filesystem. No byte is copied: a file on another filesystem fails with ``EXDEV``, is
counted as an error and stays where it is (``check-config`` refuses such a directory
beforehand, see ``cleaner.quarantine_placement``). A process that holds the file open keeps it.

The directory belongs to limpeza (created 0700; one owned by another user, or writable by
others, is refused), holds ``manifest.jsonl`` (``cleaner.manifest``), ``lock`` (an
``flock`` every writer takes: the daemon, ``restore``, ``quarantine purge``) and
``summary.json`` (files and bytes per rule, restored and expired totals, for the exporter).

A crash loses nothing: the manifest line is written before the rename, so ``reconcile``
(at the daemon's start and in every command) only ever finds an entry whose file is gone
(dropped: the file never left, or was restored or expired right before the crash) or a
file without an entry (not limpeza's doing: listed as orphaned and kept).

Expiry and purge (unlinking entries for good) are ``cleaner.quarantine_expiry``, restoring
is ``cleaner.restore``.

A sweep moves many files: it takes the lock at its first file and keeps it for its group
commit (``sync_every``, a second), then fsyncs and lets it go, so a ``restore`` waits at
most that long; one ``write`` and one rename per file, nothing read back. Nothing holds
the entries in memory (``cleaner.manifest``): what each rule holds is counted from the
lines as they are written, and expiry, listing, restore and reconciliation stream the
manifest.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleaner.config_types import FilesConfig, QuarantineConfig, Rule
from cleaner.manifest import Manifest, Scan
from cleaner.manifest_lines import Entry, RuleTally, add_line
from cleaner.quarantine_expiry import Expired, RuleCounts, expire
from cleaner.state import write_json_atomic

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
RENAME_NOREPLACE = 1
#: Compact the manifest (at reconciliation, after expiry and purge) when it holds this
#: many dead lines and more dead lines than live ones, or ``COMPACT_ALWAYS`` dead lines:
#: a read of the manifest holds the ids of its dead lines.
COMPACT_AFTER = 1000
COMPACT_ALWAYS = 50_000

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    _renameat2.restype = ctypes.c_int


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Moves ``src`` to ``dst`` (both relative to directory descriptors), never over an
    existing name: FileExistsError if ``dst`` exists. Never copies: EXDEV across
    filesystems. Without renameat2 (or a filesystem that refuses its flag) it is a hard
    link and an unlink, which refuses an existing name just as well."""
    if _renameat2 is not None:
        done = _renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), RENAME_NOREPLACE)
        if done == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    os.unlink(src, dir_fd=src_dir)


def new_id(now: float, bits: random.Random) -> str:
    """Collision-free in practice (48 random bits per second), and sorted by time. The
    bits need not be secret (the quarantine is limpeza's alone), only unlikely to repeat:
    a generator seeded from ``os.urandom`` per store, not a system call per file."""
    return f"{int(now):08x}-{bits.getrandbits(48):012x}"


@dataclass(frozen=True)
class QuarantineHooks:
    """Points a test may act at (kill the process, say); none by default."""

    #: The ``add`` line is on disk; the rename has not happened.
    after_record: Callable[[str], None] | None = None
    #: A restore's rename happened; its ``restore`` line is not written yet.
    after_restore_rename: Callable[[str], None] | None = None


NO_HOOKS = QuarantineHooks()


@dataclass
class Reconciled:
    dropped: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)


class QuarantineError(Exception):
    """A quarantine directory that cannot be used (owner, mode, not a directory)."""


class Store:
    """One quarantine directory: its files, its manifest, its lock and its summary."""

    def __init__(
        self,
        directory: Path,
        clock: Callable[[], float] = time.time,
        hooks: QuarantineHooks = NO_HOOKS,
        sync_every: float = 0.0,
    ) -> None:
        self.directory = directory
        self.clock = clock
        self.hooks = hooks
        self.dir_fd = self._open_dir(directory)
        try:
            self.files_fd = self._open_dir(directory / "files")
            self._lock_fd = os.open(
                "lock",
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o600,
                dir_fd=self.dir_fd,
            )
        except BaseException:
            os.close(self.dir_fd)
            raise
        self.manifest = Manifest(directory / "manifest.jsonl", sync_every)
        self.orphans: list[str] = []
        self._bits = random.Random(os.urandom(16))  # noqa: S311 (ids, not secrets)
        #: Since when a sweep has held the lock (monotonic), or None.
        self._batch: float | None = None

    @staticmethod
    def _open_dir(path: Path) -> int:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        fd = os.open(path, _DIR_FLAGS)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise QuarantineError(
                f"{path} must belong to this user ({os.geteuid()}) and be writable by it "
                f"alone (owner {st.st_uid}, mode {st.st_mode & 0o7777:o})"
            )
        return fd

    def close(self) -> None:
        self.sync()
        self.manifest.close()
        for fd in (self._lock_fd, self.files_fd, self.dir_fd):
            os.close(fd)

    def sync(self) -> None:
        """Ends a sweep's group commit: fsyncs its lines and lets the lock go."""
        self.manifest.sync()
        if self._batch is not None:
            self._batch = None
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def locked(self, read: bool = True) -> Iterator[None]:
        """Holds the quarantine's lock, the manifest read up to now (holds, tally) unless
        ``read`` is False."""
        self.sync()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            if read:
                self.manifest.refresh()
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def each(self) -> Iterator[Entry]:
        """The entries, oldest first, streamed from the manifest as it was when called:
        nothing else is held in memory. The lock is not held while they are read."""
        with self.locked():
            scan = self.manifest.scan()
        with scan:
            yield from scan.entries()

    def entries(self) -> dict[str, Entry]:
        """Every entry by id, in memory (for tests and small quarantines)."""
        return {entry.id: entry for entry in self.each()}

    def holds_file(self, qid: str) -> bool:
        """Whether ``files/ID`` is there (it is, from the rename in to the one out)."""
        try:
            os.stat(qid, dir_fd=self.files_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def held(self, st: os.stat_result) -> bool:
        """Whether this file was restored lately and is to be left alone (a Hold). The
        clock is only read for a file that has a hold: most sweeps have none."""
        holds = self.manifest.holds
        if not holds:
            return False
        hold = holds.get((st.st_dev, st.st_ino))
        return hold is not None and hold.mtime_ns == st.st_mtime_ns and self.clock() < hold.until

    # -- moving a file in ----------------------------------------------------------------

    def put(self, dir_fd: int, name: str, path: str, rule: str, st: os.stat_result) -> str:
        """Moves ``name`` (in ``dir_fd``, examined as ``st``) in; returns its id.

        The ``add`` line is written first (fsynced with ``sync_every`` 0, else by the group
        commit); a failed rename is then recorded as a ``drop``. The lock is taken at the
        first file and held until ``sync_every`` is over (then fsync, unlock) or ``sync()``.
        """
        started = self._batch
        if started is None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._batch = started = time.monotonic()
            try:
                self.manifest.refresh()
            except BaseException:
                self.sync()
                raise
        try:
            now = self.clock()
            qid = new_id(now, self._bits)
            allocated = st.st_blocks * 512
            when = round(now, 3)
            mode = st.st_mode & 0o7777
            fields = (st.st_size, allocated, st.st_mtime_ns, st.st_uid, st.st_gid, mode)
            self.manifest.add(
                add_line(qid, path, rule, *fields, st.st_dev, st.st_ino, when),
                rule,
                allocated,
                when,
            )
            if self.hooks.after_record is not None:
                self.hooks.after_record(qid)
            try:
                rename_noreplace(dir_fd, name, self.files_fd, qid)
            except OSError:
                entry = Entry(qid, path, rule, *fields, st.st_dev, st.st_ino, when)
                with contextlib.suppress(OSError):
                    self.manifest.end("drop", entry, now)
                raise
            return qid
        finally:
            if not self.manifest.sync_every or (
                time.monotonic() - started >= self.manifest.sync_every
            ):
                self.sync()

    # -- reconciliation ----------------------------------------------------

    def reconcile(self) -> Reconciled:
        """Drops entries without a file, lists files without an entry (kept), compacts.

        Streams the manifest and looks for each entry's file; the directory is only read
        into memory when it holds more files than the entries that have theirs (orphans).
        """
        done = Reconciled()
        missing: list[Entry] = []
        found = 0

        def look(entry: Entry) -> None:
            nonlocal found
            if self.holds_file(entry.id):
                found += 1
            else:
                missing.append(entry)

        with self.locked(read=False):  # one read of the manifest: this one
            self.manifest.rescan(look)
            now = self.clock()
            for entry in missing:
                self.manifest.end("drop", entry, now)
                done.dropped.append(entry.id)
            with os.scandir(self.files_fd) as names:
                present = sum(1 for _ in names)
            if present > found:
                with self.manifest.scan() as scan:
                    live = {entry.id for entry in scan.entries()}
                done.orphans = sorted(n for n in os.listdir(self.files_fd) if n not in live)
            self.compact_if_dead(now)
        self.orphans = done.orphans
        for qid in done.dropped:
            log.info(
                "quarantine %s: entry %s has no file (a crash mid-step): dropped",
                self.directory,
                qid,
            )
        if done.orphans:
            log.warning(
                "quarantine %s: %d files without a manifest entry, kept (listed as orphaned)",
                self.directory,
                len(done.orphans),
            )
        return done

    def compact_if_dead(self, now: float, read: Scan | None = None) -> None:
        """Compacts the manifest when its dead lines are many (under the lock): after
        reconciliation, expiry and a purge (``read``: the Scan they ended entries of, in
        its order; see ``Manifest.compact``)."""
        manifest = self.manifest
        manifest.refresh()
        dead = manifest.lines - manifest.live
        if dead >= COMPACT_AFTER and (dead > manifest.live or dead >= COMPACT_ALWAYS):
            manifest.compact(now, read)

    # -- what is in it ---------------------------------------------------------------------

    def counts(self) -> dict[str, RuleCounts]:
        """Files and bytes per rule, as counted up to the last read (under the lock)."""
        tally: dict[str, RuleTally] = self.manifest.tally or {}
        return {r: RuleCounts(t.files, t.bytes) for r, t in tally.items() if t.files}

    def write_summary(self, restored: dict[str, int], expired: dict[str, int]) -> None:
        """Adds to the totals and rewrites ``summary.json`` (atomically, under the lock)."""
        with self.locked():
            summary = read_summary(self.directory)
            for key, add in (("restored", restored), ("expired", expired)):
                totals: dict[str, int] = summary.setdefault(key, {})
                for rule, n in add.items():
                    totals[rule] = totals.get(rule, 0) + n
            summary["rules"] = {
                r: {"files": c.files, "bytes": c.bytes} for r, c in self.counts().items()
            }
            summary["orphans"] = len(self.orphans)
            summary["time"] = self.clock()
            write_json_atomic(self.directory / "summary.json", summary, mode=0o600)


def read_summary(directory: Path) -> dict[str, Any]:
    """``summary.json`` of a quarantine, or an empty one."""
    try:
        raw = json.loads((directory / "summary.json").read_bytes())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


# -- the quarantines of a configuration ---------------------------------------------------


def configs(files: FilesConfig) -> dict[Path, list[Rule]]:
    """Each quarantine directory and the rules that use it."""
    found: dict[Path, list[Rule]] = {}
    for rule in files.rules:
        if rule.quarantine is not None:
            found.setdefault(rule.quarantine.directory, []).append(rule)
    return found


class Quarantines:
    """Every quarantine of a configuration, opened on first use; one per directory."""

    def __init__(
        self,
        files: FilesConfig,
        clock: Callable[[], float] = time.time,
        hooks: QuarantineHooks = NO_HOOKS,
        sync_every: float = 1.0,
    ) -> None:
        self.files = files
        self.clock = clock
        self.hooks = hooks
        #: A sweep's group commit (see cleaner.manifest): its callers ``sync()`` after it.
        self.sync_every = sync_every
        self.rules = configs(files)
        self._stores: dict[Path, Store] = {}
        self._by_rule: dict[str, Store] = {}
        self.restored: dict[str, int] = {}

    def store(self, directory: Path) -> Store:
        store = self._stores.get(directory)
        if store is None:
            store = Store(directory, self.clock, self.hooks, self.sync_every)
            self._stores[directory] = store
            store.reconcile()
        return store

    def for_rule(self, rule: Rule) -> Store | None:
        """The rule's quarantine (asked once per file a sweep removes)."""
        if rule.quarantine is None:
            return None
        store = self._by_rule.get(rule.name)
        if store is None:
            store = self._by_rule[rule.name] = self.store(rule.quarantine.directory)
        return store

    def all(self) -> Iterator[Store]:
        for directory in self.rules:
            yield self.store(directory)

    def refresh(self) -> None:
        """Reads what other processes appended (restores, purges) since the last look."""
        for store in self._stores.values():
            with store.locked():
                pass

    def _setting(self, directory: Path) -> tuple[Callable[[str], float], Callable[[str], int]]:
        by_rule: dict[str, QuarantineConfig] = {
            r.name: r.quarantine for r in self.rules[directory] if r.quarantine is not None
        }
        longest = max(q.retention for q in by_rule.values())

        def retention(rule: str) -> float:
            return by_rule[rule].retention if rule in by_rule else longest

        def max_bytes(rule: str) -> int:
            return by_rule[rule].max_bytes if rule in by_rule else 0

        return retention, max_bytes

    def expire(self) -> dict[Store, list[Expired]]:
        """Expires every quarantine by its rules' retention and max_bytes: what went, per
        quarantine."""
        done: dict[Store, list[Expired]] = {}
        for directory in self.rules:
            store = self.store(directory)
            done[store] = expire(store, *self._setting(directory))
        return done

    def sync(self) -> None:
        """fsyncs every manifest's lines not yet synced; a sweep's lock is let go."""
        for store in self._stores.values():
            store.sync()

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        self._by_rule.clear()
