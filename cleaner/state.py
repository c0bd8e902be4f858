"""Cumulative counters the cleaner keeps for the exporter, persisted atomically.

The file is JSON, written to a temporary file in the same directory, fsynced and moved
over the old one with ``os.replace``, so a reader (the exporter) sees the old or the new
file, never half of one. A corrupt file (not JSON, or JSON that ``validate_state`` refuses:
a wrong type, a count out of range, a time that is not finite) is moved aside and counting
starts fresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleaner.state_schema import STATE_VERSION, validate_state

log = logging.getLogger(__name__)


#: Stages whose errors are counted (the ``stage`` label of limpeza_cleanup_errors_total):
#: the file sweep, the job cache, the database, the API's health check, the job reaper
#: as a whole (a crash of its cycle) and the state file itself (a failed write).
ERROR_STAGES = ("files", "cache", "database", "health", "jobs", "state")
#: Why a matching entry was left alone.
SKIP_REASONS = (
    "protected",
    "symlink",
    "locked",
    "not_regular",
    "mount_point",
    "changed",
    "too_deep",
    "restored",
)
#: Where a reaped job was (the ``source`` label of limpeza_jobs_reaped_total).
JOB_SOURCES = ("database", "cache")


def _opt_float(raw: object) -> float | None:
    return float(raw) if isinstance(raw, int | float) else None


@dataclass
class StageErrors:
    """What failed in a stage: one line per failure for people, counts per error stage.

    A failure may be counted without a line (the API's health has its own metric) or
    reported without a count (the database is still in its reconnect backoff).
    """

    messages: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str | None, message: str | None = None) -> None:
        if stage is not None:
            self.counts[stage] = self.counts.get(stage, 0) + 1
        if message is not None:
            self.messages.append(message)


@dataclass
class DirectoryUsage:
    files: int = 0
    bytes: int = 0


@dataclass
class ApiHealth:
    up: bool | None = None
    jobs_active: int | None = None
    checked_at: float | None = None


@dataclass
class State:
    """Everything the cleaner has counted since the state file was created."""

    files_removed: dict[str, int] = field(default_factory=dict)
    bytes_removed: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    jobs_reaped: dict[str, dict[str, int]] = field(default_factory=dict)
    force_cleans: int = 0
    #: Database reaping cycles skipped because another cleaner held the reaper lock.
    reaps_skipped: int = 0
    sweeps: int = 0
    #: Cycles held (nothing removed nor reaped) because the wall clock jumped ahead.
    clock_jumps: int = 0
    last_sweep_start: float | None = None
    last_sweep_end: float | None = None
    last_sweep_duration: float | None = None
    last_success: float | None = None
    directories: dict[str, DirectoryUsage] = field(default_factory=dict)
    #: Configured directories the last sweep found missing (nothing was swept there).
    missing_directories: list[str] = field(default_factory=list)
    api: ApiHealth = field(default_factory=ApiHealth)
    database_up: bool | None = None
    jobs_active: int | None = None

    def add(self, counter: dict[str, int], key: str, amount: int = 1) -> None:
        counter[key] = counter.get(key, 0) + amount

    def count_error(self, stage: str, amount: int = 1) -> None:
        self.add(self.errors, stage, amount)

    def count_reaped(self, source: str, status: str, amount: int = 1) -> None:
        self.add(self.jobs_reaped.setdefault(source, {}), status, amount)

    def merge_from(self, delta: State) -> None:
        """Adds ``delta``'s counters to this state and takes its measured values.

        Values ``delta`` did not measure (None, or no directories) leave ours as they are.
        """
        for mine, theirs in (
            (self.files_removed, delta.files_removed),
            (self.bytes_removed, delta.bytes_removed),
            (self.skipped, delta.skipped),
            (self.errors, delta.errors),
        ):
            for key, amount in theirs.items():
                self.add(mine, key, amount)
        for source, per_status in delta.jobs_reaped.items():
            for status, amount in per_status.items():
                self.count_reaped(source, status, amount)
        self.force_cleans += delta.force_cleans
        self.reaps_skipped += delta.reaps_skipped
        self.sweeps += delta.sweeps
        self.clock_jumps += delta.clock_jumps
        for name in (
            "last_sweep_start",
            "last_sweep_end",
            "last_sweep_duration",
            "last_success",
            "database_up",
            "jobs_active",
        ):
            value = getattr(delta, name)
            if value is not None:
                setattr(self, name, value)
        if delta.directories:  # a sweep ran: what it saw replaces what the last one saw
            self.directories = dict(delta.directories)
            self.missing_directories = list(delta.missing_directories)
        if delta.api.checked_at is not None:
            self.api = ApiHealth(delta.api.up, delta.api.jobs_active, delta.api.checked_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "files_removed": self.files_removed,
            "bytes_removed": self.bytes_removed,
            "skipped": self.skipped,
            "errors": self.errors,
            "jobs_reaped": self.jobs_reaped,
            "force_cleans": self.force_cleans,
            "reaps_skipped": self.reaps_skipped,
            "sweeps": self.sweeps,
            "clock_jumps": self.clock_jumps,
            "last_sweep_start": self.last_sweep_start,
            "last_sweep_end": self.last_sweep_end,
            "last_sweep_duration": self.last_sweep_duration,
            "last_success": self.last_success,
            "directories": {
                d: {"files": u.files, "bytes": u.bytes} for d, u in self.directories.items()
            },
            "missing_directories": list(self.missing_directories),
            "api": {
                "up": self.api.up,
                "jobs_active": self.api.jobs_active,
                "checked_at": self.api.checked_at,
            },
            "database_up": self.database_up,
            "jobs_active": self.jobs_active,
        }

    @classmethod
    def from_dict(cls, raw: object) -> State:
        """Builds a State from parsed JSON; raises ValueError when it is not a state file.

        Every problem validate_state finds makes the file unusable: the message names the
        first few, with their key paths.
        """
        problems = validate_state(raw)
        if problems:
            shown = "; ".join(problems[:3])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ValueError(f"not a limpeza state file of version {STATE_VERSION}: {shown}{more}")
        assert isinstance(raw, dict)
        dirs: dict[str, dict[str, int]] = raw.get("directories") or {}
        api: dict[str, Any] = raw.get("api") or {}
        reaped: dict[str, dict[str, int]] = raw.get("jobs_reaped") or {}
        return cls(
            files_removed=dict(raw.get("files_removed") or {}),
            bytes_removed=dict(raw.get("bytes_removed") or {}),
            skipped=dict(raw.get("skipped") or {}),
            errors=dict(raw.get("errors") or {}),
            jobs_reaped={source: dict(counts) for source, counts in reaped.items()},
            force_cleans=raw.get("force_cleans", 0),
            reaps_skipped=raw.get("reaps_skipped", 0),
            sweeps=raw.get("sweeps", 0),
            clock_jumps=raw.get("clock_jumps", 0),
            last_sweep_start=_opt_float(raw.get("last_sweep_start")),
            last_sweep_end=_opt_float(raw.get("last_sweep_end")),
            last_sweep_duration=_opt_float(raw.get("last_sweep_duration")),
            last_success=_opt_float(raw.get("last_success")),
            directories={d: DirectoryUsage(u["files"], u["bytes"]) for d, u in dirs.items()},
            missing_directories=list(raw.get("missing_directories") or []),
            api=ApiHealth(
                up=api.get("up"),
                jobs_active=api.get("jobs_active"),
                checked_at=_opt_float(api.get("checked_at")),
            ),
            database_up=raw.get("database_up"),
            jobs_active=raw.get("jobs_active"),
        )


def read_state(path: Path) -> State:
    """Reads a state file; raises OSError or ValueError (with a reason) when it cannot."""
    with path.open("rb") as handle:
        return parse_state(handle.read())


def parse_state(data: bytes) -> State:
    """A state file's content as a State; ValueError (with a reason) when it is not one."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deep") from None
    return State.from_dict(raw)


class StateStore:
    """Loads the state once at start and writes it back atomically after each change."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self.path = path
        self._clock = clock

    def load(self) -> State:
        """The saved state, or a fresh one; a corrupt file is moved aside with a warning."""
        try:
            return read_state(self.path)
        except FileNotFoundError:
            return State()
        except (OSError, ValueError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
            try:
                os.replace(self.path, aside)
                log.warning(
                    "state file %s unusable (%s): moved to %s, counting starts fresh",
                    self.path,
                    exc,
                    aside,
                )
            except OSError as move_exc:
                log.warning(
                    "state file %s unusable (%s) and could not be moved aside (%s): "
                    "counting starts fresh",
                    self.path,
                    exc,
                    move_exc,
                )
            return State()

    def save(self, state: State) -> None:
        """Writes the state atomically: temp file in the same directory, fsync, os.replace."""
        write_json_atomic(self.path, state.to_dict(), mode=0o644)

    def update(self, delta: State) -> State:
        """Merges ``delta`` into the saved state under a lock and saves the result.

        The daemon and the one-shot commands (once, purge-session, force-clean) each
        merge what they did, so none overwrites the others' counts.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self.load()
            state.merge_from(delta)
            self.save(state)
            return state
        finally:
            os.close(fd)


def record(path: Path, delta: State, clock: Callable[[], float] = time.time) -> None:
    """Adds a one-shot command's counts to the state file the daemon and exporter share.

    A state file that cannot be written is a warning: what the command did is done.
    """
    try:
        StateStore(path, clock).update(delta)
    except OSError as exc:
        log.warning("cannot update state file %s: %s", path, exc)


def write_json_atomic(
    path: Path,
    payload: object,
    *,
    mode: int | None = None,
    owner: tuple[int, int] | None = None,
    indent: int = 1,
    sort_keys: bool = True,
    ensure_ascii: bool = True,
) -> None:
    """Replaces ``path`` with the JSON of ``payload`` so that readers never see half a file.

    A temporary file in the same directory gets ``mode`` and ``owner`` (uid, gid) when
    given, is fsynced and moved over ``path``; then the directory is fsynced. Raises
    OSError (PermissionError when the owner cannot be kept) and leaves ``path`` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(
                payload, handle, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii
            )
            handle.write("\n")
            handle.flush()
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            if owner is not None:
                mine = os.fstat(handle.fileno())
                if (mine.st_uid, mine.st_gid) != owner:
                    os.fchown(handle.fileno(), *owner)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
