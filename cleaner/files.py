"""The file rules and the safe sweep.

A file is removed only when it is a regular file whose base name matches a rule, matches
no ``protect`` glob, and is at least the rule's ``max_age`` old by mtime. The walk is made
through directory file descriptors and never follows a symlink nor crosses a mount point;
right before ``unlink`` the entry is checked to be the very file that was examined, and a
file another process holds with ``flock`` is left alone (systemd-tmpfiles' pin contract).

Memory does not grow with the number of files: directories are read as streams and only
the names of subdirectories still to visit are held.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase, translate
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG

from cleaner.config import FilesConfig, Rule
from cleaner.state import SKIP_REASONS, DirectoryUsage

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

#: Called once per file removed (or, in a dry run, that would be removed).
RemovalHook = Callable[["Removal"], None]


@dataclass(frozen=True)
class Removal:
    """One file removed (or that a dry run would remove)."""

    rule: str
    path: str
    size: int
    age: float
    mtime: float


@dataclass
class RuleTally:
    files: int = 0
    bytes: int = 0


@dataclass
class SweepResult:
    """What one sweep did: counters per rule, skips per reason, errors, usage seen."""

    dry_run: bool
    removed: dict[str, RuleTally] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    directories: dict[str, DirectoryUsage] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def files_removed(self) -> int:
        return sum(t.files for t in self.removed.values())

    @property
    def bytes_removed(self) -> int:
        return sum(t.bytes for t in self.removed.values())

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        """The one line logged per sweep."""
        verb = "would be removed" if self.dry_run else "removed"
        per_rule = ", ".join(f"{name}: {t.files}" for name, t in self.removed.items())
        parts = [per_rule] if per_rule else []
        parts.append(f"errors: {self.errors}")
        skipped = sum(self.skipped.values())
        if skipped:
            parts.append(
                "skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()) if v)
            )
        freed = "would be freed" if self.dry_run else "freed"
        head = "cleanup dry run" if self.dry_run else "cleanup done"
        return (
            f"{head}: {self.files_removed} files {verb} ({', '.join(parts)}), "
            f"{format_bytes(self.bytes_removed)} {freed}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "files_removed": self.files_removed,
            "bytes_removed": self.bytes_removed,
            "rules": {n: {"files": t.files, "bytes": t.bytes} for n, t in self.removed.items()},
            "skipped": dict(self.skipped),
            "errors": self.errors,
            "directories": {
                d: {"files": u.files, "bytes": u.bytes} for d, u in self.directories.items()
            },
            "missing_directories": list(self.missing),
            "stopped": self.stopped,
        }


def format_bytes(size: float) -> str:
    """1.2 GB style (decimal units, as df -H and the seed's log line)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def format_age(seconds: float) -> str:
    """A rough age for people: 45s, 12m, 5h, 3d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


class _Globs(tuple[str, ...]):
    """Base-name globs with one compiled expression: ``fnmatchcase`` of any, in one match."""

    regex: re.Pattern[str]

    def __new__(cls, globs: tuple[str, ...]) -> _Globs:
        self = super().__new__(cls, globs)
        self.regex = re.compile("|".join(f"(?:{translate(g)})" for g in globs) or "(?!)")
        return self


class _RuleSet(tuple[Rule, ...]):
    """Rules with one compiled expression; the first matching alternative names the rule."""

    regex: re.Pattern[str]

    def __new__(cls, rules: tuple[Rule, ...]) -> _RuleSet:
        self = super().__new__(cls, rules)
        alternatives = (f"(?P<r{i}>{translate(r.pattern)})" for i, r in enumerate(rules))
        self.regex = re.compile("|".join(alternatives) or "(?!)")
        return self


def is_protected(name: str, protect: tuple[str, ...]) -> bool:
    if isinstance(protect, _Globs):
        return protect.regex.match(name) is not None
    return any(fnmatchcase(name, glob) for glob in protect)


def match_rule(name: str, rules: tuple[Rule, ...]) -> Rule | None:
    """The first rule whose pattern matches the base name, in configuration order."""
    if isinstance(rules, _RuleSet):
        # Alternatives are tried left to right and each is anchored at the end, so the
        # group that matched is the first rule in order that matches the whole name.
        found = rules.regex.match(name)
        return None if found is None else rules[int(str(found.lastgroup)[1:])]
    for rule in rules:
        if fnmatchcase(name, rule.pattern):
            return rule
    return None


def _display(directory: str, name: str) -> str:
    return os.path.join(directory, name)


class _Candidate:
    """A regular file that matches a rule, seen through its parent's descriptor."""

    __slots__ = ("dir_fd", "directory", "name", "rule", "st")

    def __init__(
        self, dir_fd: int, directory: str, name: str, rule: Rule, st: os.stat_result
    ) -> None:
        self.dir_fd = dir_fd
        self.directory = directory
        self.name = name
        self.rule = rule
        self.st = st

    @property
    def path(self) -> str:
        return _display(self.directory, self.name)


#: A directory modified less than this long before it was read is read again next time:
#: timestamps come from a coarse clock, so a change right after the read could leave the
#: same mtime behind.
MTIME_MARGIN_NS = 2_000_000_000
#: Static skips remembered with a directory and counted again when it is not re-read.
_STATIC_SKIPS = ("protected", "symlink", "not_regular", "mount_point")


@dataclass(frozen=True)
class _Seen:
    """What reading one directory found, kept while its mtime proves nothing came or went."""

    dev: int
    ino: int
    mtime_ns: int
    files: int
    bytes: int
    skips: tuple[int, ...]
    #: The earliest moment a matching file here reaches its rule's age.
    next_expiry: float
    subdirs: tuple[str, ...]


class SweepMemory:
    """What the daemon's sweeps remember between cycles, so an idle sweep is cheap.

    A directory whose mtime is unchanged since it was read holds the same names, so until
    the earliest of its matching files expires there is nothing to remove in it: the sweep
    does not read it again and counts the files and bytes it found last time. Removal stays
    exact whenever a directory is read; what can lag, by at most ``full_every`` cycles
    (every directory is read again then), is what changes without touching the directory's
    mtime: a file whose mtime is set back (it is removed late, never early) and a file that
    grows or shrinks in place (its bytes are counted late). A directory where anything was
    removed, skipped as locked or changed, or failed, is read again next cycle.
    """

    def __init__(self, full_every: int = 10) -> None:
        self.full_every = max(1, full_every)
        self.directories: dict[tuple[str, str], _Seen] = {}
        self._files: FilesConfig | None = None
        self._sweeps = 0
        self.reused = 0

    def begin(self, files: FilesConfig) -> None:
        """Called at the start of each sweep: forgets everything on a full one."""
        if files != self._files or self._sweeps % self.full_every == 0:
            self.directories.clear()
        self._files = files
        self._sweeps += 1
        self.reused = 0


class _DirTally:
    """Counts of one directory while it is read."""

    __slots__ = ("bytes", "clean", "files", "next_expiry", "skips")

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0
        self.skips = [0] * len(_STATIC_SKIPS)
        self.next_expiry = math.inf
        self.clean = True


class _Walker:
    """Streams the entries under one root through directory descriptors.

    With ``now`` set only expired candidates are yielded (``max_age`` overrides every
    rule's age); without it every matching regular file is.
    """

    def __init__(
        self,
        root: Path,
        rules: tuple[Rule, ...],
        protect: tuple[str, ...],
        result: SweepResult,
        usage: DirectoryUsage,
        *,
        now: float | None = None,
        max_age: float | None = None,
        memory: SweepMemory | None = None,
    ) -> None:
        self.root = root
        self.rules = _RuleSet(rules)
        self.recursive_rules = _RuleSet(tuple(r for r in rules if r.recursive))
        self.protect = _Globs(protect)
        self.result = result
        self.usage = usage
        self.now = now
        self.max_age = max_age
        self.memory = memory

    def candidates(self) -> Iterator[_Candidate]:
        try:
            # The configured root itself is the operator's choice and may be a link;
            # nothing below it is ever followed.
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            log.warning("directory %s does not exist: nothing to sweep there", self.root)
            self.result.missing.append(str(self.root))
            return
        except OSError as exc:
            self._error("cannot open directory", str(self.root), exc)
            return
        root_dev = os.fstat(root_fd).st_dev
        yield from self._directory(root_fd, str(self.root), root_dev, self.rules)

    def _directory(
        self, dir_fd: int, directory: str, root_dev: int, rules: _RuleSet
    ) -> Iterator[_Candidate]:
        try:
            subdirs: tuple[str, ...] | list[str]
            seen = self._remembered(dir_fd, directory)
            if seen is not None:
                self.usage.files += seen.files
                self.usage.bytes += seen.bytes
                for reason, count in zip(_STATIC_SKIPS, seen.skips, strict=True):
                    if count:
                        self.result.skipped[reason] = self.result.skipped.get(reason, 0) + count
                subdirs = seen.subdirs
            else:
                subdirs = []
                yield from self._read(dir_fd, directory, root_dev, rules, subdirs)
            for name in subdirs:
                child_fd = self._open_subdir(dir_fd, directory, name, root_dev)
                if child_fd is not None:
                    yield from self._directory(
                        child_fd, _display(directory, name), root_dev, self.recursive_rules
                    )
        finally:
            os.close(dir_fd)

    def _remembered(self, dir_fd: int, directory: str) -> _Seen | None:
        if self.memory is None or self.now is None:
            return None
        seen = self.memory.directories.get((str(self.root), directory))
        if seen is None:
            return None
        st = os.fstat(dir_fd)
        if (st.st_dev, st.st_ino, st.st_mtime_ns) != (seen.dev, seen.ino, seen.mtime_ns):
            return None
        if self.now >= seen.next_expiry:
            return None
        self.memory.reused += 1
        return seen

    def _read(
        self, dir_fd: int, directory: str, root_dev: int, rules: _RuleSet, subdirs: list[str]
    ) -> Iterator[_Candidate]:
        before = os.fstat(dir_fd) if self.memory is not None else None
        started_ns = time.time_ns()
        tally = _DirTally()
        errors = self.result.errors
        try:
            entries = os.scandir(dir_fd)
        except OSError as exc:
            self._error("cannot read directory", directory, exc)
            return
        with entries:
            for entry in entries:
                candidate = self._entry(
                    entry.name, dir_fd, directory, root_dev, rules, tally, subdirs
                )
                if candidate is not None:
                    tally.clean = False  # something to remove: read it again next time
                    yield candidate
        self.usage.files += tally.files
        self.usage.bytes += tally.bytes
        if before is not None and self.memory is not None:
            key = (str(self.root), directory)
            after = os.fstat(dir_fd)
            stable = (
                tally.clean
                and self.result.errors == errors
                and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
                and before.st_mtime_ns < started_ns - MTIME_MARGIN_NS
            )
            if stable:
                self.memory.directories[key] = _Seen(
                    before.st_dev,
                    before.st_ino,
                    before.st_mtime_ns,
                    tally.files,
                    tally.bytes,
                    tuple(tally.skips),
                    tally.next_expiry,
                    tuple(subdirs),
                )
            else:
                self.memory.directories.pop(key, None)

    def _entry(
        self,
        name: str,
        dir_fd: int,
        directory: str,
        root_dev: int,
        rules: _RuleSet,
        tally: _DirTally,
        subdirs: list[str],
    ) -> _Candidate | None:
        """The candidate this entry is, if any; subdirectories to visit go to ``subdirs``."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None  # vanished since the directory was read: nothing to do
        except OSError as exc:
            self._error("cannot stat", _display(directory, name), exc)
            return None
        mode = st.st_mode
        regular = S_ISREG(mode)
        if regular:
            tally.files += 1
            tally.bytes += st.st_size
        elif S_ISDIR(mode) and self.recursive_rules:
            if st.st_dev != root_dev:
                self._skip("mount_point", tally)
                log.debug("not crossing mount point %s", _display(directory, name))
            else:
                subdirs.append(name)
        rule = match_rule(name, rules)
        if rule is None:
            return None
        if is_protected(name, self.protect):
            self._skip("protected", tally)
            return None
        if not regular:
            if S_ISLNK(mode):
                self._skip("symlink", tally)
                log.info("skipping symlink %s", _display(directory, name))
            else:
                self._skip("not_regular", tally)
            return None
        if st.st_dev != root_dev:
            self._skip("mount_point", tally)
            return None
        if self.now is not None:
            limit = rule.max_age if self.max_age is None else self.max_age
            if limit > 0 and self.now - st.st_mtime < limit:
                expiry = st.st_mtime + limit
                if expiry < tally.next_expiry:
                    tally.next_expiry = expiry
                return None
        return _Candidate(dir_fd, directory, name, rule, st)

    def _skip(self, reason: str, tally: _DirTally) -> None:
        self.result.skip(reason)
        tally.skips[_STATIC_SKIPS.index(reason)] += 1

    def _open_subdir(self, dir_fd: int, directory: str, name: str, root_dev: int) -> int | None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self.result.skip("changed")  # replaced by a symlink or a file since the scan
                return None
            self._error("cannot open directory", _display(directory, name), exc)
            return None
        if os.fstat(fd).st_dev != root_dev:
            os.close(fd)
            self.result.skip("mount_point")
            return None
        return fd

    def _error(self, what: str, path: str, exc: OSError) -> None:
        self.result.errors += 1
        log.error("%s %s: %s", what, path, exc.strerror or exc)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and S_ISREG(b.st_mode)


def _remove(candidate: _Candidate, result: SweepResult, dry_run: bool) -> bool:
    """Removes one candidate if it is still the same, unlocked regular file."""
    try:
        fd = os.open(candidate.name, _FILE_FLAGS, dir_fd=candidate.dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            result.skip("changed")  # swapped for a symlink since the scan
            return False
        if exc.errno not in (errno.EACCES, errno.EPERM):
            result.errors += 1
            log.error("cannot open %s: %s", candidate.path, exc.strerror or exc)
            return False
        fd = -1  # unreadable: no lock can be taken through it; unlink needs no read access
    try:
        if fd >= 0:
            if not _same_file(candidate.st, os.fstat(fd)):
                result.skip("changed")
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                result.skip("locked")
                log.info("skipping %s: locked by another process", candidate.path)
                return False
        if dry_run:
            return True
        try:
            now_st = os.stat(candidate.name, dir_fd=candidate.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not _same_file(candidate.st, now_st):
            result.skip("changed")
            return False
        try:
            os.unlink(candidate.name, dir_fd=candidate.dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            result.errors += 1
            log.error("cannot remove %s: %s", candidate.path, exc.strerror or exc)
            return False
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def sweep(
    files: FilesConfig,
    *,
    now: float,
    dry_run: bool = False,
    max_age: float | None = None,
    on_remove: RemovalHook | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    memory: SweepMemory | None = None,
) -> SweepResult:
    """One pass over every configured directory.

    ``now`` is the caller's clock (seconds since the epoch); ``max_age`` overrides every
    rule's age (0 removes every matching file); ``should_stop`` is asked after each file.
    ``memory`` (the daemon's, kept between cycles) lets directories that provably hold
    nothing new nor expired go unread; it is not used with ``dry_run`` or ``max_age``.
    """
    result = SweepResult(dry_run=dry_run, removed={r.name: RuleTally() for r in files.rules})
    result.skipped = dict.fromkeys(SKIP_REASONS, 0)
    if dry_run or max_age is not None:
        memory = None
    if memory is not None:
        memory.begin(files)
    for root in files.all_directories():
        rules = tuple(r for r in files.rules if root in r.directories)
        usage = result.directories.setdefault(str(root), DirectoryUsage())
        walker = _Walker(
            root, rules, files.protect, result, usage, now=now, max_age=max_age, memory=memory
        )
        for candidate in walker.candidates():
            if _remove(candidate, result, dry_run):
                st = candidate.st
                tally = result.removed[candidate.rule.name]
                tally.files += 1
                tally.bytes += st.st_size
                if not dry_run:  # usage is what stays on disk after the sweep
                    usage.files -= 1
                    usage.bytes -= st.st_size
                if on_remove is not None:
                    on_remove(
                        Removal(
                            candidate.rule.name,
                            candidate.path,
                            st.st_size,
                            now - st.st_mtime,
                            st.st_mtime,
                        )
                    )
            if should_stop():
                result.stopped = True
                return result
    return result


@dataclass
class RuleSurvey:
    files: int = 0
    bytes: int = 0
    expired: int = 0
    expired_bytes: int = 0


def survey(files: FilesConfig, *, now: float) -> dict[str, dict[str, RuleSurvey]]:
    """What is there now, per directory and rule: files, bytes, and how many are expired."""
    report: dict[str, dict[str, RuleSurvey]] = {}
    scratch = SweepResult(dry_run=True)
    for root in files.all_directories():
        rules = tuple(r for r in files.rules if root in r.directories)
        per_rule = report.setdefault(str(root), {r.name: RuleSurvey() for r in rules})
        walker = _Walker(root, rules, files.protect, scratch, DirectoryUsage())
        for candidate in walker.candidates():
            entry = per_rule[candidate.rule.name]
            entry.files += 1
            entry.bytes += candidate.st.st_size
            if now - candidate.st.st_mtime >= candidate.rule.max_age:
                entry.expired += 1
                entry.expired_bytes += candidate.st.st_size
    return report


def session_file_names(files: FilesConfig, session_id: str, *, include_final: bool) -> list[str]:
    templates = files.session_files + (files.final_files if include_final else ())
    return [t.replace("{id}", session_id) for t in templates]


def purge_session(
    files: FilesConfig,
    session_id: str,
    *,
    include_final: bool = False,
    dry_run: bool = False,
    on_remove: RemovalHook | None = None,
    now: float = 0.0,
) -> SweepResult:
    """Removes one session's files at once, whatever their age.

    ``session_id`` must be 1 to 128 of ``[A-Za-z0-9_-]``; anything else raises
    ValueError before the disk is touched. Protected names, symlinks and locked files
    are left alone exactly as in a sweep.
    """
    validate_session_id(session_id)
    names = session_file_names(files, session_id, include_final=include_final)
    result = SweepResult(dry_run=dry_run)
    result.skipped = dict.fromkeys(SKIP_REASONS, 0)
    for root in files.all_directories():
        try:
            dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            result.missing.append(str(root))
            continue
        except OSError as exc:
            result.errors += 1
            log.error("cannot open directory %s: %s", root, exc.strerror or exc)
            continue
        try:
            for name in names:
                _purge_one(files, dir_fd, str(root), name, result, dry_run, on_remove, now)
        finally:
            os.close(dir_fd)
    return result


def _purge_one(
    files: FilesConfig,
    dir_fd: int,
    directory: str,
    name: str,
    result: SweepResult,
    dry_run: bool,
    on_remove: RemovalHook | None,
    now: float,
) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        result.errors += 1
        log.error("cannot stat %s: %s", _display(directory, name), exc.strerror or exc)
        return
    if is_protected(name, files.protect):
        result.skip("protected")
        return
    if S_ISLNK(st.st_mode):
        result.skip("symlink")
        return
    if not S_ISREG(st.st_mode):
        result.skip("not_regular")
        return
    rule = match_rule(name, files.rules)
    label = rule.name if rule is not None else "session_purge"
    pseudo = Rule(label, name, 0.0, (Path(directory),))
    candidate = _Candidate(dir_fd, directory, name, pseudo, st)
    if _remove(candidate, result, dry_run):
        tally = result.removed.setdefault(label, RuleTally())
        tally.files += 1
        tally.bytes += st.st_size
        if on_remove is not None:
            on_remove(Removal(label, candidate.path, st.st_size, now - st.st_mtime, st.st_mtime))


SESSION_ID_MAX = 128


def validate_session_id(session_id: str) -> None:
    """Raises ValueError unless the id is 1 to 128 characters of [A-Za-z0-9_-]."""
    ok = (
        isinstance(session_id, str)
        and 0 < len(session_id) <= SESSION_ID_MAX
        and all(c.isascii() and (c.isalnum() or c in "_-") for c in session_id)
    )
    if not ok:
        shown = repr(session_id)[:60]
        raise ValueError(
            f"invalid session id {shown}: expected 1 to {SESSION_ID_MAX} characters "
            "of A-Z, a-z, 0-9, _ and -"
        )
