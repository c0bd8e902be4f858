"""What a state file may hold: every field's type and range, checked with its key path.

``validate_state`` is a pure function of what ``json.loads`` returned, shared by every
reader of the file (the cleaner, its commands and the exporter): a state file it refuses
is corrupt, moved aside by the cleaner and reported unreadable by the exporter. The file's
format and persistence are ``cleaner.state``'s.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: The state file format this code reads and writes.
STATE_VERSION = 1

#: The largest count a state file may hold (a signed 64-bit integer): beyond it a number is
#: damage, not something counted.
MAX_COUNT = 2**63 - 1


def _show(value: object) -> str:
    """A value read from the file, fit for a message: JSON, at most 40 characters."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _key(path: str, key: str) -> str:
    return f"{path}[{json.dumps(key, ensure_ascii=True)}]"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _is_seconds(value: object) -> bool:
    """A finite, non-negative number (a time since the epoch or a duration)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


class _Checker:
    """Collects every problem of a parsed state file, each with its key path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, expected: str, value: object) -> None:
        self.problems.append(f"{path}: expected {expected}, got {_show(value)}")

    def count(self, path: str, value: object, *, nullable: bool = False) -> None:
        if not (_is_count(value) or (nullable and value is None)):
            self.fail(path, "a count (an integer from 0 to 2**63-1)", value)

    def seconds(self, path: str, value: object) -> None:
        if value is not None and not _is_seconds(value):
            self.fail(path, "a finite number of seconds, not negative, or null", value)

    def boolean(self, path: str, value: object) -> None:
        if value is not None and not isinstance(value, bool):
            self.fail(path, "true, false or null", value)

    def mapping(self, path: str, value: object) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.fail(path, "an object", value)
        return None

    def counts(self, path: str, value: object) -> None:
        for key, number in (self.mapping(path, value) or {}).items():
            self.count(_key(path, key), number)


#: Top-level keys that hold a count (absent in an older file: 0).
_COUNT_KEYS = ("force_cleans", "reaps_skipped", "sweeps", "clock_jumps")
#: Top-level keys that hold counts by name.
_COUNT_MAP_KEYS = ("files_removed", "bytes_removed", "skipped", "errors")
#: Top-level keys that hold a time or a duration in seconds, or null.
_SECONDS_KEYS = ("last_sweep_start", "last_sweep_end", "last_sweep_duration", "last_success")


def validate_state(raw: object) -> list[str]:
    """Every problem of a parsed state file, each with its key path; none for a good one.

    A pure function of what ``json.loads`` returned, for every reader of the file (the
    cleaner, its commands and the exporter). Counts are integers from 0 to MAX_COUNT,
    times and durations finite and not negative; a key that is absent takes its default
    (a file written before the key existed), one that is present has the right type.
    Keys it does not know are ignored.
    """
    check = _Checker()
    if not isinstance(raw, dict):
        check.fail("(top)", "an object", raw)
        return check.problems
    version = raw.get("version")
    if not (_is_count(version) and version == STATE_VERSION):
        check.fail("version", str(STATE_VERSION), version)
        return check.problems  # another format: its keys mean something else
    for name in _COUNT_KEYS:
        if name in raw:
            check.count(name, raw[name])
    for name in _COUNT_MAP_KEYS:
        if name in raw:
            check.counts(name, raw[name])
    if "jobs_reaped" in raw:
        for source, per_status in (check.mapping("jobs_reaped", raw["jobs_reaped"]) or {}).items():
            check.counts(_key("jobs_reaped", source), per_status)
    for name in _SECONDS_KEYS:
        check.seconds(name, raw.get(name))
    if "directories" in raw:
        for directory, usage in (check.mapping("directories", raw["directories"]) or {}).items():
            where = _key("directories", directory)
            fields = check.mapping(where, usage)
            if fields is not None:
                for name in ("files", "bytes"):
                    if name not in fields:
                        check.problems.append(f"{where}.{name}: missing")
                    else:
                        check.count(f"{where}.{name}", fields[name])
    missing = raw.get("missing_directories", [])
    if not isinstance(missing, list):
        check.fail("missing_directories", "a list of paths", missing)
    else:
        for index, directory in enumerate(missing):
            if not isinstance(directory, str):
                check.fail(f"missing_directories[{index}]", "a path", directory)
    if "api" in raw:
        api = check.mapping("api", raw["api"]) or {}
        check.boolean("api.up", api.get("up"))
        check.count("api.jobs_active", api.get("jobs_active"), nullable=True)
        check.seconds("api.checked_at", api.get("checked_at"))
    check.boolean("database_up", raw.get("database_up"))
    check.count("jobs_active", raw.get("jobs_active"), nullable=True)
    return check.problems
