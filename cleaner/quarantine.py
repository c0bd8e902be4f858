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

A crash loses nothing: the manifest line is fsynced before the rename, so ``reconcile``
(at the daemon's start and in every command) only ever finds an entry whose file is gone
(dropped: the file never left, or was restored or expired right before the crash) or a
file without an entry (not limpeza's doing: listed as orphaned and kept).

``expire`` unlinks entries older than their rule's ``retention``, then the oldest of a
rule over its ``max_bytes``; it returns what it did, and the caller audits and counts it.
Restoring is ``cleaner.restore``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleaner.config_types import FilesConfig, QuarantineConfig, Rule
from cleaner.manifest import Entry, Fold, Manifest
from cleaner.state import write_json_atomic
from cleaner.sweep_result import Removal

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
RENAME_NOREPLACE = 1
#: Compact the manifest at reconciliation when it holds this many dead lines and more
#: dead lines than live ones.
COMPACT_AFTER = 1000

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


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


def new_id(now: float) -> str:
    """Collision-free in practice (48 random bits per second), and sorted by time."""
    return f"{int(now):08x}-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class QuarantineHooks:
    """Points a test may act at (kill the process, say); none by default."""

    #: The ``add`` line is on disk; the rename has not happened.
    after_record: Callable[[str], None] | None = None
    #: A restore's rename happened; its ``restore`` line is not written yet.
    after_restore_rename: Callable[[str], None] | None = None


NO_HOOKS = QuarantineHooks()


@dataclass
class RuleCounts:
    files: int = 0
    bytes: int = 0


@dataclass
class Expired:
    """One entry unlinked by ``expire`` or ``purge``: the entry, why, the bytes freed."""

    entry: Entry
    reason: str
    freed: int

    def removal(self, now: float) -> Removal:
        """Its audit log line."""
        entry = self.entry
        mtime = entry.mtime_ns / 1e9
        return Removal(
            entry.rule,
            entry.path,
            entry.size,
            now - mtime,
            mtime,
            self.freed,
            entry.id,
            action="expire",
            reason=self.reason,
        )


def expired_counts(gone: list[Expired]) -> dict[str, RuleCounts]:
    """Files expired and bytes freed, per rule."""
    per_rule: dict[str, RuleCounts] = {}
    for item in gone:
        counts = per_rule.setdefault(item.entry.rule, RuleCounts())
        counts.files += 1
        counts.bytes += item.freed
    return per_rule


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
        self.manifest.close()
        for fd in (self._lock_fd, self.files_fd, self.dir_fd):
            os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Fold]:
        """Holds the quarantine's lock; yields the manifest's fold, read up to now."""
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield self.manifest.read_new()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def entries(self) -> dict[str, Entry]:
        with self.locked() as fold:
            return dict(fold.entries)

    def held(self, st: os.stat_result, now: float) -> bool:
        """Whether this file was restored lately and is to be left alone (a Hold)."""
        hold = self.manifest.fold.holds.get((st.st_dev, st.st_ino))
        return hold is not None and hold.mtime_ns == st.st_mtime_ns and now < hold.until

    # -- moving a file in ----------------------------------------------------------------

    def put(self, dir_fd: int, name: str, path: str, rule: str, st: os.stat_result) -> str:
        """Moves ``name`` (in ``dir_fd``, examined as ``st``) in; returns its id.

        The ``add`` line is fsynced first; a failed rename is then recorded as a ``drop``.
        """
        with self.locked():
            now = self.clock()
            qid = new_id(now)
            entry = Entry(
                qid,
                path,
                rule,
                st.st_size,
                st.st_blocks * 512,
                st.st_mtime_ns,
                st.st_uid,
                st.st_gid,
                st.st_mode & 0o7777,
                st.st_dev,
                st.st_ino,
                round(now, 3),
            )
            self.manifest.append({"op": "add", **entry.__dict__}, read=False)
            if self.hooks.after_record is not None:
                self.hooks.after_record(qid)
            try:
                rename_noreplace(dir_fd, name, self.files_fd, qid)
            except OSError:
                with contextlib.suppress(OSError):
                    self.manifest.append({"op": "drop", "id": qid, "time": now})
                raise
            return qid

    # -- reconciliation, expiry, purge ----------------------------------------------------

    def reconcile(self) -> Reconciled:
        """Drops entries without a file, lists files without an entry (kept), compacts."""
        done = Reconciled()
        with self.locked() as fold:
            present = set(os.listdir(self.files_fd))
            now = self.clock()
            for qid in [q for q in fold.entries if q not in present]:
                self.manifest.append({"op": "drop", "id": qid, "time": now})
                done.dropped.append(qid)
            done.orphans = sorted(present - set(fold.entries))
            dead = fold.lines - len(fold.entries)
            if dead >= COMPACT_AFTER and dead > len(fold.entries):
                self.manifest.compact(now)
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

    def _unlink(self, entry: Entry, reason: str) -> Expired | None:
        try:
            st = os.stat(entry.id, dir_fd=self.files_fd, follow_symlinks=False)
            os.unlink(entry.id, dir_fd=self.files_fd)
        except FileNotFoundError:
            st = None
        self.manifest.append(
            {"op": "expire", "id": entry.id, "time": self.clock(), "reason": reason}
        )
        if st is None:
            return None
        return Expired(entry, reason, st.st_blocks * 512 if st.st_nlink == 1 else 0)

    def expire(
        self, retention: Callable[[str], float], max_bytes: Callable[[str], int]
    ) -> list[Expired]:
        """Unlinks the entries past their rule's retention, then the oldest of each rule over
        its max_bytes (0: no limit); returns them."""
        done: list[Expired] = []
        with self.locked() as fold:
            now = self.clock()
            for entry in sorted(fold.entries.values(), key=lambda e: e.time):
                if now - entry.time >= retention(entry.rule):
                    gone = self._unlink(entry, "retention")
                    if gone is not None:
                        done.append(gone)
            per_rule: dict[str, list[Entry]] = {}
            for entry in sorted(fold.entries.values(), key=lambda e: e.time):
                per_rule.setdefault(entry.rule, []).append(entry)
            for rule, entries in per_rule.items():
                limit = max_bytes(rule)
                held = sum(e.allocated for e in entries)
                for entry in entries:
                    if not limit or held <= limit:
                        break
                    held -= entry.allocated
                    gone = self._unlink(entry, "max_bytes")
                    if gone is not None:
                        done.append(gone)
        return done

    def purge(self, older_than: float | None = None) -> list[Expired]:
        """Unlinks every entry (or those quarantined more than ``older_than`` ago)."""
        done: list[Expired] = []
        with self.locked() as fold:
            now = self.clock()
            for entry in sorted(fold.entries.values(), key=lambda e: e.time):
                if older_than is None or now - entry.time >= older_than:
                    gone = self._unlink(entry, "purge")
                    if gone is not None:
                        done.append(gone)
        return done

    # -- what is in it ---------------------------------------------------------------------

    def counts(self) -> dict[str, RuleCounts]:
        per_rule: dict[str, RuleCounts] = {}
        for entry in self.manifest.fold.entries.values():
            counts = per_rule.setdefault(entry.rule, RuleCounts())
            counts.files += 1
            counts.bytes += entry.allocated
        return per_rule

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
        self.restored: dict[str, int] = {}

    def store(self, directory: Path) -> Store:
        store = self._stores.get(directory)
        if store is None:
            store = Store(directory, self.clock, self.hooks, self.sync_every)
            self._stores[directory] = store
            store.reconcile()
        return store

    def for_rule(self, rule: Rule) -> Store | None:
        return None if rule.quarantine is None else self.store(rule.quarantine.directory)

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
            done[store] = store.expire(*self._setting(directory))
        return done

    def sync(self) -> None:
        """fsyncs every manifest's lines not yet synced."""
        for store in self._stores.values():
            store.manifest.sync()

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
