"""Which job statuses may become label values: the configured ones, every other is ``other``.

Statuses are data from outside (the API writes the JSON job cache, anyone may write the
state file): 500 distinct strings in the cache made 502 series. A label value is one of
the active statuses (``jobs.stale_after``, ``jobs.database.active_statuses``) or the
status the reaper writes (``jobs.database.error_status``, ``error`` by default); anything
else is counted under ``other``, so a family has at most that many series plus one.
"""

from __future__ import annotations

from collections.abc import Mapping

from cleaner.config import DATABASE_DEFAULTS, Config

OTHER = "other"


def known_statuses(config: Config) -> frozenset[str]:
    """The status values that are label values as they are."""
    jobs = config.jobs
    error = jobs.database.error_status if jobs.database is not None else None
    return frozenset(
        (
            *jobs.stale_after,
            *jobs.active_statuses,
            error or str(DATABASE_DEFAULTS["error_status"]),
        )
    )


def fold(counts: Mapping[str, int], known: frozenset[str]) -> dict[str, int]:
    """``counts`` with every unknown status added up under ``other`` (present only if any)."""
    folded: dict[str, int] = {}
    for status, number in counts.items():
        key = status if status in known else OTHER
        folded[key] = folded.get(key, 0) + number
    return folded
