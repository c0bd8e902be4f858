"""What "stale" means: the one definition the cleaner and the exporter share.

A job is stale when its status is active (``queued``, ``running``) and its timestamp (the
last state change or heartbeat) is older than ``jobs.stale_after[status]``. A job that keeps
updating its timestamp is never stale, however long ago it started; a job without a
readable timestamp is never stale either, since nothing proves it was abandoned.

A naive ISO time (no offset, as ``datetime.now().isoformat()`` writes it) is read in the
zone ``jobs.cache_timezone`` names; the callers pass it in: None is the host's local time
(the API and the cleaner share the host), as the C library resolves it at that moment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo

#: Record fields that date a cached job, the first one present wins.
TIMESTAMP_FIELDS = ("updated_at", "started_at", "created_at")
#: Epoch values above this are milliseconds (1e11 seconds is the year 5138).
_MILLISECONDS_ABOVE = 1e11


@dataclass(frozen=True)
class JobCounts:
    """Jobs per status now and, per active status, how many of them are stale."""

    by_status: dict[str, int]
    stale: dict[str, int]

    @property
    def active(self) -> int:
        """Jobs in an active status (the keys of ``stale``)."""
        return sum(self.by_status.get(status, 0) for status in self.stale)


def parse_timestamp(value: object, zone: tzinfo | None) -> float | None:
    """Epoch seconds from epoch seconds (or milliseconds) or an ISO 8601 string.

    A naive ISO time is read in ``zone``, or in the host's local time when ``zone`` is
    None. Anything unreadable is None.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                return None
            if moment.tzinfo is None and zone is not None:
                moment = moment.replace(tzinfo=zone)
            # A naive datetime's timestamp() is the host's local time, DST included.
            return moment.timestamp()
    else:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number / 1000.0 if number > _MILLISECONDS_ABOVE else number


def record_timestamp(record: Mapping[str, object], zone: tzinfo | None = None) -> float | None:
    """When a job last changed: ``updated_at``, else ``started_at``, else ``created_at``.

    ``zone`` reads naive ISO times (see parse_timestamp); None is the host's local time.
    """
    for name in TIMESTAMP_FIELDS:
        moment = parse_timestamp(record.get(name), zone)
        if moment is not None:
            return moment
    return None


def is_stale(
    status: str, timestamp: float | None, stale_after: Mapping[str, float], now: float
) -> bool:
    """True for an active status whose timestamp is older than its threshold.

    A job without a readable timestamp is never stale: nothing proves it was abandoned.
    """
    limit = stale_after.get(status)
    return limit is not None and timestamp is not None and now - timestamp > limit
