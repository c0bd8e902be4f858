"""Purging one session's files at once (``limpeza-cleaner purge-session``).

The names come from the configuration's ``session_files`` (and ``final_files`` on
request) with ``{id}`` replaced by the session id, which is checked first: only 1 to 128
characters of ``[A-Za-z0-9_-]`` are accepted, so an id can never name a path elsewhere.
Each name is looked up directly in every configured directory, whatever its age, and
removed through the sweep's own checks (protected names, symlinks, other files than
regular ones and files held with ``flock`` are left alone).

``purge_and_record`` is the command as a whole, for ``limpeza-cleaner purge-session`` and
``cleaner.purge_session`` alike: each removal is written to the audit log and the counts
are added to the state file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from stat import S_ISLNK, S_ISREG

from cleaner.audit import AuditLog
from cleaner.config import Config, FilesConfig, Rule
from cleaner.daemon import apply_sweep
from cleaner.files import Candidate, remove_candidate
from cleaner.patterns import is_protected, match_rule
from cleaner.quarantine import Quarantines
from cleaner.state import SKIP_REASONS, State, record
from cleaner.sweep_result import Removal, RemovalHook, RuleTally, SweepResult, freed_bytes

log = logging.getLogger(__name__)

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
    quarantines: Quarantines | None = None,
) -> SweepResult:
    """Removes one session's files at once, whatever their age.

    ``session_id`` must be 1 to 128 of ``[A-Za-z0-9_-]``; anything else raises
    ValueError before the disk is touched. Protected names, symlinks and locked files
    are left alone exactly as in a sweep. With ``quarantines``, a file whose name
    matches a rule with a quarantine goes there instead of being unlinked.
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
                _purge_one(
                    files, dir_fd, str(root), name, result, dry_run, on_remove, now, quarantines
                )
        finally:
            os.close(dir_fd)
    return result


def purge_and_record(
    config: Config,
    session_id: str,
    *,
    include_final: bool = False,
    dry_run: bool = False,
    on_remove: RemovalHook | None = None,
    clock: Callable[[], float] = time.time,
    quarantine: bool = True,
) -> SweepResult:
    """purge-session whole: the purge, each removal audited, the counts in the state file.

    A dry run writes neither. ``on_remove`` sees each removal after its audit line (the
    command prints it). Raises ValueError for a bad id, before the disk is touched.
    ``quarantine=False`` unlinks even the files of rules that have a quarantine.
    """
    validate_session_id(session_id)
    quarantines = Quarantines(config.files, clock) if quarantine and not dry_run else None
    with AuditLog(None if dry_run else config.audit_log, clock) as audit:

        def audited(removal: Removal) -> None:
            audit.write(removal)
            if on_remove is not None:
                on_remove(removal)

        result = purge_session(
            config.files,
            session_id,
            include_final=include_final,
            dry_run=dry_run,
            on_remove=audited,
            now=clock(),
            quarantines=quarantines,
        )
    if quarantines is not None:
        quarantines.close()
    if not dry_run:
        delta = State()
        apply_sweep(delta, result)
        delta.directories = {}  # a purge looks at one session's files, not at the usage
        record(config.state_file, delta, clock)
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
    quarantines: Quarantines | None = None,
) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        result.errors += 1
        log.error("cannot stat %s: %s", os.path.join(directory, name), exc.strerror or exc)
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
    held = rule.quarantine if rule is not None else None
    pseudo = Rule(label, name, 0.0, (Path(directory),), quarantine=held)
    candidate = Candidate(dir_fd, directory, name, pseudo, st)
    if remove_candidate(candidate, result, dry_run, quarantines=quarantines):
        st = candidate.st  # as it was right before the unlink: its link count then
        qid = candidate.quarantine_id
        freed = 0 if qid is not None else freed_bytes(st)
        result.quarantined += qid is not None
        if on_remove is not None:
            age = now - st.st_mtime
            on_remove(Removal(label, candidate.path, st.st_size, age, st.st_mtime, freed, qid))
        tally = result.removed.setdefault(label, RuleTally())
        tally.files += 1
        tally.bytes += freed
        tally.apparent += st.st_size
