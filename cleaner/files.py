"""The rules' sweep: the safe walk, the removal, and what a sweep did.

A file is removed only when it is a regular file whose base name matches a rule, matches
no ``protect`` glob, and is at least the rule's ``max_age`` old by mtime. The walk is made
through directory file descriptors and never follows a symlink nor crosses a mount point;
right before ``unlink`` the entry is checked to be the very file that was examined, and a
file another process holds with ``flock`` is left alone (systemd-tmpfiles' pin contract).

Memory does not grow with the number of files: directories are read as streams, walked
depth first with an explicit stack at most ``MAX_DEPTH`` levels deep, and only the names of
subdirectories still to visit are held.

The walk and the removal stay in one module (about 600 lines) because they are one safety
argument: every check the walk makes is re-made by the removal right before the unlink,
and reading them side by side is how a reviewer sees that nothing slips between. What a
sweep did (removals, counters, checkpoints) is ``cleaner.sweep_result``.

Which rule a name falls under is ``cleaner.patterns``; which entries are mount points,
``cleaner.mounts``; what the daemon's sweeps remember between cycles, ``cleaner.memory``;
purging one session, ``cleaner.sessions``; the files part of ``status``, ``cleaner.survey``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG

from cleaner.config import FilesConfig, Rule
from cleaner.memory import STATIC_SKIPS, DirectoryTally, Seen, SweepMemory
from cleaner.mounts import MountPoints
from cleaner.patterns import Globs, RuleSet, is_protected, match_rule
from cleaner.quarantine import QuarantineError, Quarantines
from cleaner.report import Printable
from cleaner.state import SKIP_REASONS, DirectoryUsage
from cleaner.sweep_result import (
    CHECKPOINT_EVERY,
    CheckpointHook,
    Checkpoints,
    Removal,
    RemovalHook,
    RuleTally,
    SweepResult,
    freed_bytes,
)

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _display(directory: str, name: str) -> str:
    return os.path.join(directory, name)


@dataclass(frozen=True, slots=True)
class SweepHooks:
    """Callables the sweep calls at named points, each with the path concerned.

    They let a test act at the exact moment a race could happen (replace, swap or delete
    a file between two steps of the sweep) and watch what it does, without patching its
    internals. Each is optional; one left at None is not called and costs nothing.
    """

    #: A directory is about to be read (its entries listed): its path.
    before_read: Callable[[str], None] | None = None
    #: A file the scan chose for removal is about to be opened for the checks that precede
    #: ``unlink`` (still the same file, not held with ``flock``): its path.
    before_open: Callable[[str], None] | None = None
    #: Those checks passed; what remains is to lstat the name once more, compare, and
    #: unlink it: its path. Not called in a dry run, which unlinks nothing.
    before_unlink: Callable[[str], None] | None = None


#: No hooks: what every caller but the tests uses.
NO_HOOKS = SweepHooks()


class Candidate:
    """A regular file that matches a rule, seen through its parent's descriptor.

    ``mount`` is the mount id of the walk's root (None: the parent directory's is asked).
    """

    __slots__ = ("_path", "dir_fd", "directory", "mount", "name", "quarantine_id", "rule", "st")

    def __init__(
        self,
        dir_fd: int,
        directory: str,
        name: str,
        rule: Rule,
        st: os.stat_result,
        mount: int | None = None,
    ) -> None:
        self.dir_fd = dir_fd
        self.directory = directory
        self.name = name
        self.rule = rule
        self.st = st
        self.mount = mount
        #: Set by remove_candidate when the file went to its rule's quarantine.
        self.quarantine_id: str | None = None
        self._path: str | None = None

    @property
    def path(self) -> str:
        """Built when first asked (a quarantine's manifest line, then the removal's report)."""
        path = self._path
        if path is None:
            path = self._path = _display(self.directory, self.name)
        return path


#: How many levels below a root the walk descends; deeper directories are counted as
#: skipped (``too_deep``) and left alone. It bounds the directories held open at once.
MAX_DEPTH = 256
#: The skip reason of a directory below MAX_DEPTH.
TOO_DEEP = "too_deep"


class _Level:
    """One directory on the walk's stack: open, with its subdirectories still to visit."""

    __slots__ = ("depth", "fd", "path", "pending")

    def __init__(self, fd: int, path: str, depth: int) -> None:
        self.fd = fd
        self.path = path
        self.depth = depth
        self.pending: Iterator[str] = iter(())


class Walker:
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
        hooks: SweepHooks = NO_HOOKS,
        other_roots: frozenset[tuple[int, int]] = frozenset(),
        mounts: MountPoints | None = None,
        max_depth: int = MAX_DEPTH,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        #: Called every few hundred entries read, so a checkpoint can be taken in a long
        #: walk that finds nothing to remove.
        self.tick = tick
        self.max_depth = max_depth
        self._logged_too_deep = False
        #: Mount points are told by mount id: a bind mount of the same filesystem has the
        #: same st_dev as the directory it is mounted in.
        self.mounts = MountPoints.detect((root,)) if mounts is None else mounts
        self.root_mount: int | None = None
        #: (st_dev, st_ino) of the other configured roots: a subdirectory that is one is
        #: swept by its own rules, never also by this root's (the more specific one wins,
        #: as in systemd-tmpfiles), and its files are counted once.
        self.other_roots = other_roots
        self.rules = RuleSet(rules)
        self.recursive_rules = RuleSet(tuple(r for r in rules if r.recursive))
        self.protect = Globs(protect)
        self.result = result
        self.usage = usage
        self.now = now
        self.max_age = max_age
        self.memory = memory
        self.hooks = hooks

    def candidates(self) -> Iterator[Candidate]:
        try:
            # The configured root itself is the operator's choice and may be a link;
            # nothing below it is ever followed.
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            # Counted, not logged here: the daemon logs it when it changes, ``once`` always.
            log.debug(
                "directory %s does not exist: nothing to sweep there", Printable(str(self.root))
            )
            self.result.missing.append(str(self.root))
            return
        except OSError as exc:
            self._error("cannot open directory", str(self.root), exc)
            return
        try:
            root_dev = os.fstat(root_fd).st_dev
            self.root_mount = self.mounts.of(root_fd)
        except OSError as exc:
            os.close(root_fd)
            self._error("cannot stat directory", str(self.root), exc)
            return
        # Depth first with an explicit stack (one open directory and its pending
        # subdirectories per level), so depth costs no recursion and is bounded.
        stack = [_Level(root_fd, str(self.root), 0)]
        try:
            yield from self._visit(stack[-1], root_dev, self.rules)
            while stack:
                level = stack[-1]
                name = next(level.pending, None)
                if name is None:
                    os.close(stack.pop().fd)
                    continue
                path = _display(level.path, name)
                if level.depth >= self.max_depth:
                    self._too_deep(path)
                    continue
                child_fd = self._open_subdir(level.fd, level.path, name, root_dev)
                if child_fd is not None:
                    stack.append(_Level(child_fd, path, level.depth + 1))
                    yield from self._visit(stack[-1], root_dev, self.recursive_rules)
        finally:
            for level in stack:
                os.close(level.fd)

    def _visit(self, level: _Level, root_dev: int, rules: RuleSet) -> Iterator[Candidate]:
        """Sweeps one directory's entries; its subdirectories to visit go to ``level``."""
        subdirs: tuple[str, ...] | list[str]
        seen = self._remembered(level.fd, level.path)
        if seen is not None:
            self.usage.files += seen.files
            self.usage.bytes += seen.bytes
            for reason, count in zip(STATIC_SKIPS, seen.skips, strict=True):
                if count:
                    self.result.skipped[reason] = self.result.skipped.get(reason, 0) + count
            subdirs = seen.subdirs
        else:
            subdirs = []
            yield from self._read(level.fd, level.path, root_dev, rules, subdirs)
        level.pending = iter(subdirs)

    def _too_deep(self, path: str) -> None:
        """A subdirectory below ``max_depth``: counted, not entered; logged once per walk."""
        self.result.skip(TOO_DEEP)
        if self._logged_too_deep:
            log.debug("not descending below the depth limit into %s", Printable(path))
            return
        self._logged_too_deep = True
        log.warning(
            "directory %s is more than %d levels below %s: not swept (counted as skipped, "
            "too_deep; further ones at debug level)",
            Printable(path),
            self.max_depth,
            Printable(str(self.root)),
        )

    def _remembered(self, dir_fd: int, directory: str) -> Seen | None:
        if self.memory is None or self.now is None:
            return None
        return self.memory.recall((str(self.root), directory), dir_fd, self.now)

    def _read(
        self, dir_fd: int, directory: str, root_dev: int, rules: RuleSet, subdirs: list[str]
    ) -> Iterator[Candidate]:
        before = os.fstat(dir_fd) if self.memory is not None else None
        started_ns = time.time_ns()
        tally = DirectoryTally()
        errors = self.result.errors
        if self.hooks.before_read is not None:
            self.hooks.before_read(directory)
        try:
            entries = os.scandir(dir_fd)
        except OSError as exc:
            self._error("cannot read directory", directory, exc)
            return
        tick, read = self.tick, 0
        with entries:
            for entry in entries:
                if tick is not None:
                    read += 1
                    if read & 255 == 0:
                        tick()
                candidate = self._entry(
                    entry.name, dir_fd, directory, root_dev, rules, tally, subdirs
                )
                if candidate is not None:
                    candidate.mount = self.root_mount
                if candidate is not None:
                    tally.clean = False  # something to remove: read it again next time
                    yield candidate
        self.usage.files += tally.files
        self.usage.bytes += tally.bytes
        if before is not None and self.memory is not None:
            clean = tally.clean and self.result.errors == errors
            key = (str(self.root), directory)
            after = os.fstat(dir_fd)
            self.memory.store(key, before, after, started_ns, tally if clean else None, subdirs)

    def _entry(
        self,
        name: str,
        dir_fd: int,
        directory: str,
        root_dev: int,
        rules: RuleSet,
        tally: DirectoryTally,
        subdirs: list[str],
    ) -> Candidate | None:
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
                log.debug("not crossing mount point %s", Printable(_display(directory, name)))
            elif (st.st_dev, st.st_ino) not in self.other_roots:
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
                log.debug("skipping symlink %s", Printable(_display(directory, name)))
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
        return Candidate(dir_fd, directory, name, rule, st)

    def _skip(self, reason: str, tally: DirectoryTally) -> None:
        self.result.skip(reason)
        tally.skips[STATIC_SKIPS.index(reason)] += 1

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
        try:
            st = os.fstat(fd)
            crossed = st.st_dev != root_dev or self.mounts.crosses_fd(self.root_mount, fd, st)
        except OSError as exc:
            os.close(fd)
            self._error("cannot stat directory", _display(directory, name), exc)
            return None
        if crossed:
            os.close(fd)
            self.result.skip("mount_point")
            log.debug("not crossing mount point %s", Printable(_display(directory, name)))
            return None
        return fd

    def _error(self, what: str, path: str, exc: OSError) -> None:
        self.result.errors += 1
        log.error("%s %s: %s", what, Printable(path), exc.strerror or exc)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and S_ISREG(b.st_mode)


def is_mount_point(candidate: Candidate, fd: int, mounts: MountPoints | None) -> bool:
    """Whether the candidate (open as ``fd``, or -1) is on another mount than its root."""
    if mounts is None:
        mounts = MountPoints.detect((Path(candidate.directory),))
    mount = candidate.mount if candidate.mount is not None else mounts.of(candidate.dir_fd)
    if fd >= 0:
        return mounts.crosses_fd(mount, fd, candidate.st)
    return mounts.crosses(mount, candidate.dir_fd, candidate.name, candidate.st)


def remove_candidate(
    candidate: Candidate,
    result: SweepResult,
    dry_run: bool,
    hooks: SweepHooks = NO_HOOKS,
    mounts: MountPoints | None = None,
    quarantines: Quarantines | None = None,
) -> bool:
    """Removes one candidate if it is still the same, unlocked regular file.

    A file that is a mount point (a file bind-mounted onto it) is never removed. When its
    rule has a quarantine (and ``quarantines`` is given) the file is moved there instead
    of unlinked, after the very same checks; ``candidate.quarantine_id`` is then set. A
    file restored from the quarantine lately is left alone (skipped as ``restored``).
    """
    if hooks.before_open is not None:
        hooks.before_open(candidate.path)
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
            log.error("cannot open %s: %s", Printable(candidate.path), exc.strerror or exc)
            return False
        fd = -1  # unreadable: no lock can be taken through it; unlink needs no read access
    try:
        if fd >= 0 and not _same_file(candidate.st, os.fstat(fd)):
            result.skip("changed")
            return False
        try:
            mounted = is_mount_point(candidate, fd, mounts)
        except FileNotFoundError:
            return False
        except OSError as exc:
            result.errors += 1
            log.error("cannot stat %s: %s", Printable(candidate.path), exc.strerror or exc)
            return False
        if mounted:
            result.skip("mount_point")
            log.debug("not removing mount point %s", Printable(candidate.path))
            return False
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                result.skip("locked")
                log.debug("skipping %s: locked by another process", Printable(candidate.path))
                return False
        if dry_run:
            return True
        if hooks.before_unlink is not None:
            hooks.before_unlink(candidate.path)
        try:
            now_st = os.stat(candidate.name, dir_fd=candidate.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not _same_file(candidate.st, now_st):
            result.skip("changed")
            return False
        candidate.st = now_st  # the same file; its link count right before the unlink
        try:
            store = None if quarantines is None else quarantines.for_rule(candidate.rule)
            if store is not None and store.held(now_st):
                result.skip("restored")
                return False
            if store is not None:
                candidate.quarantine_id = store.put(
                    candidate.dir_fd, candidate.name, candidate.path, candidate.rule.name, now_st
                )
            else:
                os.unlink(candidate.name, dir_fd=candidate.dir_fd)
        except FileNotFoundError:
            return False
        except (OSError, QuarantineError) as exc:
            result.errors += 1
            what = getattr(exc, "strerror", None) or exc
            log.error("cannot remove %s: %s", Printable(candidate.path), what)
            return False
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def root_identities(roots: tuple[Path, ...]) -> dict[Path, tuple[int, int]]:
    """(st_dev, st_ino) of each configured root that exists (followed: roots may be links)."""
    found: dict[Path, tuple[int, int]] = {}
    for root in roots:
        try:
            st = os.stat(root)
        except OSError:
            continue  # missing or unreadable: the walk of that root reports it
        found[root] = (st.st_dev, st.st_ino)
    return found


def _report(on_remove: RemovalHook, removal: Removal, result: SweepResult, first: bool) -> bool:
    """Calls ``on_remove``; False when it failed (the output closed, say).

    Reporting a removal never aborts a sweep: a failure is counted as an error and the
    sweep goes on; the ``first`` one is logged, the others at debug level.
    """
    try:
        on_remove(removal)
    except Exception as exc:
        result.errors += 1
        log.log(
            logging.ERROR if first else logging.DEBUG,
            "cannot report the removal of %s (%s: %s): the sweep goes on%s",
            Printable(removal.path),
            type(exc).__name__,
            Printable(str(exc)),
            ", further failures at debug level" if first else "",
        )
        return False
    return True


def sweep(
    files: FilesConfig,
    *,
    now: float,
    dry_run: bool = False,
    max_age: float | None = None,
    on_remove: RemovalHook | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    memory: SweepMemory | None = None,
    hooks: SweepHooks = NO_HOOKS,
    mounts: MountPoints | None = None,
    checkpoint: CheckpointHook | None = None,
    checkpoint_every: float = CHECKPOINT_EVERY,
    monotonic: Callable[[], float] = time.monotonic,
    quarantines: Quarantines | None = None,
) -> SweepResult:
    """One pass over every configured directory.

    ``now`` is the caller's clock (seconds since the epoch); ``max_age`` overrides every
    rule's age (0 removes every matching file); ``should_stop`` is asked after each file.
    ``memory`` (the daemon's, kept between cycles) lets directories that provably hold
    nothing new nor expired go unread; it is not used with ``dry_run`` or ``max_age``.
    ``hooks`` are called at the points they name (see SweepHooks); none by default.
    ``mounts`` tells mount points (default: by mount id where the kernel gives it).

    ``on_remove`` is called right after each unlink, before anything else, so an audit
    log it writes loses at most the file being removed in a crash. ``checkpoint``, when
    given, is called at most once per ``checkpoint_every`` seconds of ``monotonic`` with
    the counters of what the sweep did since the previous call: the caller records them
    (the daemon saves its state), so a crash loses at most that long of the sweep's
    counts. The result returned is the whole sweep; its ``pending()`` is what no
    checkpoint carried. ``quarantines`` (not with ``dry_run``) moves the files of rules
    with a quarantine there instead of unlinking them; they free nothing until expired.
    """
    result = SweepResult(dry_run=dry_run, removed={r.name: RuleTally() for r in files.rules})
    result.skipped = dict.fromkeys(SKIP_REASONS, 0)
    if dry_run or max_age is not None:
        memory = None
    if memory is not None:
        memory.begin(files)
    roots = root_identities(files.all_directories())
    if mounts is None:
        mounts = MountPoints.detect(files.all_directories())
    reported = True  # no on_remove has failed yet
    tick = None
    if checkpoint is not None:
        tick = Checkpoints(result, checkpoint, checkpoint_every, monotonic).tick
    for root in files.all_directories():
        rules = tuple(r for r in files.rules if root in r.directories)
        usage = result.directories.setdefault(str(root), DirectoryUsage())
        walker = Walker(
            root,
            rules,
            files.protect,
            result,
            usage,
            now=now,
            max_age=max_age,
            memory=memory,
            hooks=hooks,
            other_roots=frozenset(v for k, v in roots.items() if k != root),
            mounts=mounts,
            tick=tick,
        )
        for candidate in walker.candidates():
            if remove_candidate(candidate, result, dry_run, hooks, mounts, quarantines):
                st = candidate.st
                qid = candidate.quarantine_id
                freed = 0 if qid is not None else freed_bytes(st)
                result.quarantined += qid is not None
                if on_remove is not None:
                    removal = Removal(
                        candidate.rule.name,
                        candidate.path,
                        st.st_size,
                        now - st.st_mtime,
                        st.st_mtime,
                        freed,
                        quarantine_id=qid,
                    )
                    reported &= _report(on_remove, removal, result, first=reported)
                tally = result.removed[candidate.rule.name]
                tally.files += 1
                tally.bytes += freed
                tally.apparent += st.st_size
                if not dry_run:  # usage is what stays on disk after the sweep
                    usage.files -= 1
                    usage.bytes -= st.st_size
            if tick is not None:
                tick()
            if should_stop():
                result.stopped = True
                return result
    return result
