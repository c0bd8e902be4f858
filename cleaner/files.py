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
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

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


def is_protected(name: str, protect: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, glob) for glob in protect)


def match_rule(name: str, rules: tuple[Rule, ...]) -> Rule | None:
    """The first rule whose pattern matches the base name, in configuration order."""
    for rule in rules:
        if fnmatchcase(name, rule.pattern):
            return rule
    return None


def _display(directory: str, name: str) -> str:
    return os.path.join(directory, name)


@dataclass(frozen=True)
class _Candidate:
    """A regular file that matches a rule, seen through its parent's descriptor."""

    dir_fd: int
    directory: str
    name: str
    rule: Rule
    st: os.stat_result

    @property
    def path(self) -> str:
        return _display(self.directory, self.name)


class _Walker:
    """Streams the entries under one root through directory descriptors."""

    def __init__(
        self,
        root: Path,
        rules: tuple[Rule, ...],
        protect: tuple[str, ...],
        result: SweepResult,
        usage: DirectoryUsage,
    ) -> None:
        self.root = root
        self.rules = rules
        self.recursive_rules = tuple(r for r in rules if r.recursive)
        self.protect = protect
        self.result = result
        self.usage = usage

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
        self, dir_fd: int, directory: str, root_dev: int, rules: tuple[Rule, ...]
    ) -> Iterator[_Candidate]:
        subdirs: list[str] = []
        try:
            try:
                entries = os.scandir(dir_fd)
            except OSError as exc:
                self._error("cannot read directory", directory, exc)
                return
            with entries:
                for entry in entries:
                    candidate = self._entry(entry, dir_fd, directory, root_dev, rules, subdirs)
                    if candidate is not None:
                        yield candidate
            for name in subdirs:
                child_fd = self._open_subdir(dir_fd, directory, name, root_dev)
                if child_fd is not None:
                    yield from self._directory(
                        child_fd, _display(directory, name), root_dev, self.recursive_rules
                    )
        finally:
            os.close(dir_fd)

    def _entry(
        self,
        entry: os.DirEntry[str],
        dir_fd: int,
        directory: str,
        root_dev: int,
        rules: tuple[Rule, ...],
        subdirs: list[str],
    ) -> _Candidate | None:
        name = entry.name
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None  # vanished since the directory was read: nothing to do
        except OSError as exc:
            self._error("cannot stat", _display(directory, name), exc)
            return None
        if stat.S_ISREG(st.st_mode):
            self.usage.files += 1
            self.usage.bytes += st.st_size
        elif stat.S_ISDIR(st.st_mode) and self.recursive_rules:
            if st.st_dev != root_dev:
                self.result.skip("mount_point")
                log.debug("not crossing mount point %s", _display(directory, name))
            else:
                subdirs.append(name)
        rule = match_rule(name, rules)
        if rule is None:
            return None
        if is_protected(name, self.protect):
            self.result.skip("protected")
            return None
        if stat.S_ISLNK(st.st_mode):
            self.result.skip("symlink")
            log.info("skipping symlink %s", _display(directory, name))
            return None
        if not stat.S_ISREG(st.st_mode):
            self.result.skip("not_regular")
            return None
        if st.st_dev != root_dev:
            self.result.skip("mount_point")
            return None
        return _Candidate(dir_fd, directory, name, rule, st)

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
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and stat.S_ISREG(b.st_mode)


def _remove(candidate: _Candidate, result: SweepResult, dry_run: bool) -> bool:
    """Removes one candidate if it is still the same, unlocked regular file."""
    path = candidate.path
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
            log.error("cannot open %s: %s", path, exc.strerror or exc)
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
                log.info("skipping %s: locked by another process", path)
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
            log.error("cannot remove %s: %s", path, exc.strerror or exc)
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
) -> SweepResult:
    """One pass over every configured directory.

    ``now`` is the caller's clock (seconds since the epoch); ``max_age`` overrides every
    rule's age (0 removes every matching file); ``should_stop`` is asked after each file.
    """
    result = SweepResult(dry_run=dry_run, removed={r.name: RuleTally() for r in files.rules})
    result.skipped = dict.fromkeys(SKIP_REASONS, 0)
    for root in files.all_directories():
        rules = tuple(r for r in files.rules if root in r.directories)
        usage = result.directories.setdefault(str(root), DirectoryUsage())
        walker = _Walker(root, rules, files.protect, result, usage)
        for candidate in walker.candidates():
            limit = candidate.rule.max_age if max_age is None else max_age
            age = now - candidate.st.st_mtime
            if limit > 0 and age < limit:
                continue
            if _remove(candidate, result, dry_run):
                tally = result.removed[candidate.rule.name]
                tally.files += 1
                tally.bytes += candidate.st.st_size
                if not dry_run:  # usage is what stays on disk after the sweep
                    usage.files -= 1
                    usage.bytes -= candidate.st.st_size
                if on_remove is not None:
                    on_remove(
                        Removal(
                            candidate.rule.name,
                            candidate.path,
                            candidate.st.st_size,
                            age,
                            candidate.st.st_mtime,
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
    if stat.S_ISLNK(st.st_mode):
        result.skip("symlink")
        return
    if not stat.S_ISREG(st.st_mode):
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
