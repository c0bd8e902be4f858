"""Force-clean: end every active job at once, by hand (``--yes``) or by the daemon itself.

Database rows get ``error_status`` with the reason ``force-clean``; active cache entries
are removed. ``min_age`` limits it to jobs older than that (0: all of them). The automatic
form (``jobs.force_clean.auto``) runs when the API or the database reports more than
``threshold`` active jobs on ``confirm_cycles`` cycles in a row.

The two sources can be cleaned apart (``sources``): the database is shared by every
application host, so a fleet ends its jobs once, while each host's job cache is its own.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from cleaner.config import ForceCleanConfig, JobsConfig
from cleaner.jobs.cache import CacheError, rewrite_cache
from cleaner.jobs.connection import Connection, KeptConnection, run_step
from cleaner.jobs.database import end_jobs
from cleaner.jobs.staleness import record_timestamp
from cleaner.report import source_summary
from cleaner.state import StageErrors

log = logging.getLogger(__name__)

#: The reason written to ``error_message_column`` by a force-clean.
FORCE_CLEAN_REASON = "force-clean"

#: The job sources a force-clean can end jobs in, in the order it cleans them.
JOB_SOURCES = ("database", "cache")


@dataclass
class ForceCleanReport:
    """What a force-clean did (or, in a dry run, would do), per source and status."""

    dry_run: bool
    database: dict[str, int] | None = None
    cache: dict[str, int] | None = None
    errors: StageErrors = field(default_factory=StageErrors)
    #: The sources it was asked to clean; the others it left alone, configured or not.
    sources: tuple[str, ...] = JOB_SOURCES

    @property
    def total(self) -> int:
        return sum((self.database or {}).values()) + sum((self.cache or {}).values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "database": self.database,
            "cache": self.cache,
            "total": self.total,
            "errors": list(self.errors.messages),
            "sources": list(self.sources),
        }


def force_clean(
    config: JobsConfig,
    database: KeptConnection | None,
    *,
    now: float,
    dry_run: bool,
    min_age: float = 0.0,
    sources: Collection[str] = JOB_SOURCES,
) -> ForceCleanReport:
    """Ends every active job older than ``min_age`` (0: all of them) in each of ``sources``
    (``JOB_SOURCES``, all by default) that is configured."""
    unknown = set(sources) - set(JOB_SOURCES)
    if unknown or not sources:
        raise ValueError(f"force-clean sources must be some of {JOB_SOURCES}, got {sources!r}")
    report = ForceCleanReport(
        dry_run=dry_run, sources=tuple(s for s in JOB_SOURCES if s in sources)
    )
    older_than = min_age if min_age > 0 else None
    active = set(config.active_statuses)
    if config.cache_file is not None and "cache" in report.sources:

        def chosen(record: Mapping[str, object]) -> bool:
            if str(record.get("status")) not in active:
                return False
            if older_than is None:
                return True
            moment = record_timestamp(record, config.cache_zone)
            return moment is not None and now - moment > older_than

        try:
            report.cache = rewrite_cache(config.cache_file, chosen, dry_run=dry_run)
        except (CacheError, OSError) as exc:
            report.errors.add("cache", f"cache: {exc}")
            log.error("force-clean: job cache left untouched: %s", exc)
    db = config.database
    if db is not None and database is not None and "database" in report.sources:
        ended: dict[str, int] = {}

        def end_all(conn: Connection) -> bool:
            for status in db.active_statuses:

                def done(n: int, status: str = status) -> None:
                    ended[status] = ended.get(status, 0) + n

                end_jobs(
                    conn, db, status, older_than, FORCE_CLEAN_REASON, dry_run=dry_run, progress=done
                )
            return True

        # A database it could not reach, or whose statement failed before ending any job,
        # is None ("failed"), not {} ("none"): the report must not say it ended nothing.
        worked = run_step(database, report.errors, "force-clean", end_all)
        report.database = ended if worked or ended else None
    done = {
        "database": source_summary(report.database, configured=db is not None),
        "cache": source_summary(report.cache, configured=config.cache_file is not None),
    }
    log.warning(
        "force-clean%s: %s %d active jobs (%s)%s",
        " (dry run)" if dry_run else "",
        "would end" if dry_run else "ended",
        report.total,
        "; ".join(f"{source}: {done[source]}" for source in report.sources),
        f"; errors: {'; '.join(report.errors.messages)}" if report.errors.messages else "",
    )
    return report


class AutoForceClean:
    """Counts the cycles in a row with more active jobs than the threshold."""

    def __init__(self, settings: ForceCleanConfig) -> None:
        self.settings = settings
        self._over = 0

    def due(self, *active_counts: int | None) -> bool:
        """True when this cycle completes ``confirm_cycles`` cycles over the threshold.

        ``active_counts`` are what each source reported (None: it did not answer); the
        highest one counts.
        """
        seen = [n for n in active_counts if n is not None]
        if seen and max(seen) > self.settings.threshold:
            self._over += 1
            log.warning(
                "%d active jobs, over the force-clean threshold %d (%d of %d cycles)",
                max(seen),
                self.settings.threshold,
                self._over,
                self.settings.confirm_cycles,
            )
        else:
            self._over = 0
        if self._over >= self.settings.confirm_cycles:
            self._over = 0
            return True
        return False
