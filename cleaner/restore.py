"""Putting quarantined files back: by id, by session, or by original path.

A restore moves the file from ``DIRECTORY/files/ID`` to where it was (or into ``--to
DIR``) with ``renameat2(RENAME_NOREPLACE)``: an existing file of that name is never
overwritten (the restore of that one fails and says which), and no byte is copied (a
target on another filesystem fails with EXDEV). Its mode, owner and mtime are set back to
the manifest's first (they only differ if someone changed the file in the quarantine;
the owner only where the process may). Then the ``restore`` line is appended, with a hold:
the sweep leaves the restored file alone for its rule's ``max_age``, as if it had just
been written, although its mtime is the original one.

A crash between the rename and the line leaves an entry without a file, which
reconciliation drops: the file is back, nothing is lost.

Ids come from outside: only ``ID_RE`` is accepted (no ``/``, no ``..``), and a restore
never follows a symlink in the quarantine.

``select`` reads the entries once, as a stream, and keeps only those chosen.

An orphan (a file in ``files/`` without a manifest entry, listed by ``quarantine list``)
has no original path on record: ``restore_orphan`` moves it, under its own name, into a
directory the operator names, the same way (never over a name, never a copy). The rename
keeps its inode, so its mode, owner and mtime are still the original ones; a hold line
(``"id": "-"``, the form a compaction writes) keeps the sweep off it as for any restore.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from cleaner.config_types import FilesConfig
from cleaner.manifest_lines import ID_RE, Entry
from cleaner.quarantine import Store, rename_noreplace
from cleaner.sessions import session_file_names, validate_session_id


@dataclass(frozen=True)
class Outcome:
    """What became of one entry: ``restored`` (to ``target``), or why not."""

    entry: Entry
    target: str
    restored: bool
    problem: str | None = None


def check_selectors(files: FilesConfig, ids: Iterable[str], session: str | None) -> set[str]:
    """The names of the session's files (empty without one); ValueError for an id or a
    session id that is malformed, before the disk is touched."""
    for qid in ids:
        if not ID_RE.match(qid):
            shown = repr(qid)[:80]
            raise ValueError(
                f"invalid quarantine id {shown}: expected what `quarantine list` shows"
            )
    if session is None:
        return set()
    validate_session_id(session)
    return set(session_file_names(files, session, include_final=True))


def select(
    entries: Iterable[Entry],
    files: FilesConfig,
    *,
    ids: Iterable[str] = (),
    session: str | None = None,
    path: str | None = None,
) -> tuple[list[Entry], list[str]]:
    """The entries asked for, oldest first, and a problem per id that names none.

    ``entries`` is read once (a stream will do); only the chosen ones are kept. Raises
    ValueError for an id or session id that is malformed (before ``entries`` is read).
    """
    ids = list(ids)
    names = check_selectors(files, ids, session)
    wanted = set(ids)
    chosen: dict[str, Entry] = {}
    latest: Entry | None = None
    for entry in entries:
        if entry.id in wanted or (session is not None and entry.name in names):
            chosen[entry.id] = entry
        # The latest one taken from that path: an earlier one would be an older version.
        if entry.path == path and (latest is None or entry.time >= latest.time):
            latest = entry
    problems = [f"{qid}: no such entry in the quarantine" for qid in ids if qid not in chosen]
    if path is not None:
        if latest is None:
            problems.append(f"{path}: nothing quarantined from there")
        else:
            chosen[latest.id] = latest
    return sorted(chosen.values(), key=lambda e: e.time), problems


def restore_entry(
    store: Store,
    entry: Entry,
    *,
    to: Path | None,
    hold_for: float,
    dry_run: bool = False,
    after_rename: Callable[[str], None] | None = None,
) -> Outcome:
    """Moves one entry back (under the quarantine's lock); never over an existing name.

    The entry is still in the quarantine while its file is (a restore or an expiry takes
    the file away before its line is written)."""
    target = str(to / entry.name) if to is not None else entry.path
    parent, name = os.path.split(target)
    with store.locked():
        if not store.holds_file(entry.id):
            return Outcome(entry, target, False, "no longer in the quarantine")
        try:
            dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            return Outcome(entry, target, False, f"cannot open {parent}: {exc.strerror or exc}")
        try:
            if _exists(dir_fd, name):
                return Outcome(entry, target, False, "a file of that name exists; not overwritten")
            if dry_run:
                return Outcome(entry, target, True)
            problem = _reset_metadata(store, entry)
            if problem is not None:
                return Outcome(entry, target, False, problem)
            try:
                rename_noreplace(store.files_fd, entry.id, dir_fd, name)
            except FileExistsError:
                return Outcome(entry, target, False, "a file of that name exists; not overwritten")
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    why = "on another filesystem than the quarantine (a restore never copies)"
                    return Outcome(entry, target, False, why)
                return Outcome(entry, target, False, exc.strerror or str(exc))
        finally:
            os.close(dir_fd)
        if after_rename is not None:
            after_rename(entry.id)
        now = store.clock()
        store.manifest.end(
            "restore",
            entry,
            now,
            to=target,
            hold_until=now + hold_for,
            hold=[entry.dev, entry.ino, entry.mtime_ns],
        )
    return Outcome(entry, target, True)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _reset_metadata(store: Store, entry: Entry) -> str | None:
    """Mode, owner and mtime as the manifest has them; a problem, or None."""
    try:
        fd = os.open(
            entry.id,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=store.files_fd,
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "not a regular file in the quarantine; left alone"
        return f"cannot open it in the quarantine: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode):
            return "not a regular file in the quarantine; left alone"
        if (st.st_uid, st.st_gid) != (entry.uid, entry.gid):
            # Only root may give a file away; otherwise it keeps limpeza's owner.
            with contextlib.suppress(PermissionError):
                os.fchown(fd, entry.uid, entry.gid)
        if st.st_mode & 0o7777 != entry.mode:
            os.fchmod(fd, entry.mode)
        if st.st_mtime_ns != entry.mtime_ns:
            os.utime(fd, ns=(st.st_atime_ns, entry.mtime_ns))
    except OSError as exc:
        return f"cannot set its mode, owner or mtime back: {exc.strerror or exc}"
    finally:
        os.close(fd)
    return None


def check_orphan_name(name: str) -> None:
    """ValueError unless ``name`` could be a file of ``files/``: a plain base name."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(
            f"invalid orphan name {repr(name)[:80]}: expected what `quarantine list` shows"
        )


def restore_orphan(
    store: Store, name: str, to: Path, *, hold_for: float, dry_run: bool = False
) -> tuple[str, str | None]:
    """Moves the orphan ``name`` of ``store`` to ``to/name``; the target, and a problem or
    None. Only a name ``reconcile`` found without an entry is taken (``store.orphans``)."""
    check_orphan_name(name)
    target = str(to / name)
    with store.locked():
        if name not in store.orphans or not store.holds_file(name):
            return target, "no such orphaned file in the quarantine"
        try:
            dir_fd = os.open(to, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            return target, f"cannot open {to}: {exc.strerror or exc}"
        try:
            st = os.stat(name, dir_fd=store.files_fd, follow_symlinks=False)
            if not S_ISREG(st.st_mode):
                return target, "not a regular file in the quarantine; left alone"
            if _exists(dir_fd, name):
                return target, "a file of that name exists; not overwritten"
            if dry_run:
                return target, None
            try:
                rename_noreplace(store.files_fd, name, dir_fd, name)
            except FileExistsError:
                return target, "a file of that name exists; not overwritten"
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    return target, "on another filesystem than the quarantine (never copied)"
                return target, exc.strerror or str(exc)
        finally:
            os.close(dir_fd)
        store.orphans = [n for n in store.orphans if n != name]
        hold = [st.st_dev, st.st_ino, st.st_mtime_ns]
        until = store.clock() + hold_for
        store.manifest.append({"op": "restore", "id": "-", "hold": hold, "hold_until": until})
    return target, None
