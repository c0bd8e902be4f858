"""Human-readable formatting: bytes, ages, durations, and the lines the commands print.

Everything a person reads (the sweep's log line aside, which the sweep result builds with
these helpers) is formatted here, so the CLI, the daemon's log and the reaper say things
the same way. Nothing here does any work; it only turns results into text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from cleaner.config_reader import UNIT_SECONDS

if TYPE_CHECKING:
    from cleaner.config import JobsConfig


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


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration in the units the configuration accepts."""
    for unit in ("w", "d", "h", "m", "s"):
        size = UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def summary(counts: Mapping[str, int]) -> str:
    """``queued: 1, running: 2`` (sorted by key; empty when there is nothing)."""
    return ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))


def source_summary(counts: Mapping[str, int] | None, *, configured: bool) -> str:
    """What one job source did: its counts, ``none``, ``failed`` or ``not configured``."""
    if not configured:
        return "not configured"
    if counts is None:
        return "failed"
    return summary(counts) or "none"


# --------------------------------------------------------------------------- names

#: Control characters written as their usual escapes.
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(name: str) -> str:
    """A name from outside (a file's, a path) safe on one line of a log or of the output.

    Names are data: one with a newline must not forge a log line, one with an escape
    sequence must not drive the terminal, and one that is not UTF-8 must not make printing
    fail. Printable characters stay as they are; a backslash is doubled; ``\\n``, ``\\r``
    and ``\\t`` are written so; a byte that is not UTF-8 (which Python holds as a surrogate
    escape) and any other ASCII control character as ``\\xNN``; any other character that
    is not printable (C1 controls, format characters, line and paragraph separators) as
    ``\\uNNNN`` or ``\\UNNNNNNNN``. So the result is one line, and unambiguous: ``\\xNN``
    is always the byte NN of the name.
    """
    if name.isprintable() and "\\" not in name:
        return name
    out: list[str] = []
    for char in name:
        code = ord(char)
        if char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


class Printable:
    """A name for a log line's arguments: escaped with ``printable`` only if it is logged."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return printable(self.name)


# --------------------------------------------------------------------------- files


class RemovedFile(Protocol):
    """What ``format_removal`` reads of a removal (``cleaner.sweep_result.Removal``)."""

    @property
    def rule(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def age(self) -> float: ...
    @property
    def quarantine_id(self) -> str | None: ...


def format_removal(removal: RemovedFile, dry_run: bool) -> str:
    """One removed (or, in a dry run, removable) file, as ``once`` and ``purge`` print it;
    a file moved to its rule's quarantine says so, with its id."""
    verb = "would remove" if dry_run else "removed"
    where = ""
    if removal.quarantine_id is not None:
        verb, where = "quarantined", f" as {removal.quarantine_id}"
    return (
        f"{verb} {printable(removal.path)} ({removal.rule}, {format_bytes(removal.size)}, "
        f"{format_age(removal.age)} old){where}"
    )


def format_files_status(report: Mapping[str, Any]) -> list[str]:
    """The files part of ``status``: per directory and rule, then the last sweep."""
    lines: list[str] = []
    now = float(report["now"])
    for directory, per_rule in report["directories"].items():
        lines.append(printable(directory))
        for rule, s in per_rule.items():
            lines.append(
                f"  {rule:<16} {s['files']:>8} files {format_bytes(s['bytes']):>10}"
                f"   expired: {s['expired']} ({format_bytes(s['expired_bytes'])})"
            )
    last = report["last_sweep"]
    if "problem" in last:
        lines.append(f"last sweep: {last['problem']} ({last['state_file']})")
    else:
        ended = last.get("last_sweep_end")
        ago = f"{now - ended:.0f}s ago" if isinstance(ended, float) else "never"
        lines.append(
            f"last sweep: {ago}; {last['sweeps']} sweeps, {last['files_removed']} files and "
            f"{format_bytes(int(last['bytes_removed']))} removed in all, "
            f"errors: {last['errors'] or 0}"
        )
    return lines


# --------------------------------------------------------------------------- jobs


def format_force_clean(report: Mapping[str, Any], config: JobsConfig) -> list[str]:
    """Human lines for a force-clean report (``ForceCleanReport.to_dict()``): what was (or
    would be) ended, per source."""
    would = report["dry_run"]
    sources = report.get("sources", ("database", "cache"))
    only = f" in the {' and the '.join(sources)}" if len(sources) == 1 else ""
    lines = [
        f"force-clean{' (dry run)' if would else ''}: "
        f"{'would end' if would else 'ended'} {report['total']} active jobs{only}"
    ]
    db = config.database
    if "database" not in sources:
        pass
    elif db is None:
        lines.append("  database: not configured")
    elif report["database"] is not None:
        verb = f"{'would set' if would else 'set'} {db.error_status!r} on"
        lines.append(_source_line(f"database {db.table}", report["database"], verb, "jobs"))
    if "cache" not in sources:
        pass
    elif config.cache_file is None:
        lines.append("  cache: not configured")
    elif report["cache"] is not None:
        verb = "would remove" if would else "removed"
        lines.append(_source_line(f"cache {config.cache_file}", report["cache"], verb, "entries"))
    lines.extend(f"  error: {error}" for error in report["errors"])
    return lines


def _source_line(label: str, counts: Mapping[str, int], verb: str, noun: str) -> str:
    n = sum(counts.values())
    detail = f" ({summary(counts)})" if n else ""
    return f"  {label}: {verb} {n} {noun}{detail}"


def _counts_line(part: Mapping[str, Any]) -> str:
    jobs = part.get("jobs") or {}
    stale = part.get("stale") or {}
    return (
        f"{part.get('active', 0)} active ({summary(jobs) or 'none'}); "
        f"stale: {summary(stale) or 'none'}"
    )


def format_jobs_status(status: Mapping[str, Any]) -> list[str]:
    """Human lines for ``cleaner.jobs.status.jobs_status()``."""
    lines = ["jobs:"]
    database, cache, api = status.get("database"), status.get("cache"), status.get("api")
    # A source absent from ``status`` was not asked for; one that is None is not configured.
    asked = {
        name: status[key]
        for key, name in (("database", "jobs.database"), ("cache", "jobs.cache_file"))
        if key in status
    }
    if asked and all(part is None for part in asked.values()):
        lines.append(f"  no {' and no '.join(asked)} configured")
    if database is not None:
        table = database.get("table")
        if database.get("error"):
            lines.append(f"  database {table}: down: {database['error']}")
        else:
            lines.append(f"  database {table}: {_counts_line(database)}")
            index = database.get("index") or {}
            if index.get("usable"):
                covers = " (with the timestamp)" if index.get("covers_timestamp") else ""
                lines.append(
                    f"    index for the stale query: {', '.join(index['indexes'])}{covers}"
                )
            else:
                lines.append(
                    "    no index serves the stale query; recommended: "
                    f"{database.get('recommended_index')}"
                )
    if cache is not None:
        if cache.get("error"):
            lines.append(f"  cache {cache['path']}: unreadable: {cache['error']}")
        else:
            lines.append(f"  cache {cache['path']}: {_counts_line(cache)}")
    if api is not None:
        if api.get("up"):
            lines.append(f"  api {api['url']}: up, {api.get('jobs_active')} jobs active")
        else:
            lines.append(f"  api {api['url']}: down: {api.get('error')}")
    return lines
