"""The jobs part of ``limpeza-cleaner status``: what each source says right now.

Per source (database, cache, API): jobs per status, active and stale counts, or why the
source could not be read; for the database also whether an index serves the stale query
and the index to create (an expression index when there are several timestamp columns or
the status column is an ENUM). Every query is its own transaction: nothing is left set on
the connection, which a pooler may hand to the API next. ``sources`` limits it to some of
them: a fleet asks each host for its own cache and API, and the shared database once.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import psycopg2

from cleaner.config import JobsConfig
from cleaner.dsn import mask_url
from cleaner.health import check_health
from cleaner.jobs.cache import CacheError, count_cache, read_cache
from cleaner.jobs.connection import DatabaseDownError, connect, describe_error
from cleaner.jobs.database import (
    count_database,
    recommended_index,
    stale_query_index,
    status_column_type,
)

#: The job sources ``status`` reads, each a key of its answer.
STATUS_SOURCES = ("database", "cache", "api")


def jobs_status(
    config: JobsConfig,
    *,
    now: float,
    application_name: str,
    sources: Collection[str] = STATUS_SOURCES,
) -> dict[str, Any]:
    """Jobs per status, active and stale counts, the index check and the API's health.

    Each of ``sources`` is a key of the answer: None when it is not configured. A source
    not asked for is not read and not in the answer.
    """
    if set(sources) - set(STATUS_SOURCES):
        raise ValueError(f"status sources must be some of {STATUS_SOURCES}, got {sources!r}")
    result: dict[str, Any] = {source: None for source in STATUS_SOURCES if source in sources}
    stale_after = config.stale_after
    if config.cache_file is not None and "cache" in result:
        cache: dict[str, Any] = {"path": str(config.cache_file)}
        try:
            records = read_cache(config.cache_file)
            counts = count_cache(records, stale_after, now, zone=config.cache_zone)
            cache.update(
                jobs=counts.by_status, active=counts.active, stale=counts.stale, error=None
            )
        except CacheError as exc:
            cache["error"] = str(exc)
        result["cache"] = cache
    db = config.database
    if db is not None and "database" in result:
        database: dict[str, Any] = {
            "table": db.table,
            "up": False,
            "error": None,
            "recommended_index": recommended_index(db),
        }
        try:
            conn = connect(db, application_name=application_name)
        except DatabaseDownError as exc:
            database["error"] = str(exc)
        else:
            try:
                counts = count_database(conn, db, stale_after)
                database.update(
                    up=True,
                    jobs=counts.by_status,
                    active=counts.active,
                    stale=counts.stale,
                    index=stale_query_index(conn, db, stale_after),
                    recommended_index=recommended_index(db, status_column_type(conn, db)),
                )
            except psycopg2.Error as exc:
                database["error"] = describe_error(exc, db)
            finally:
                conn.close()
        result["database"] = database
    if config.health_url and "api" in result:
        health = check_health(config.health_url, config.health_timeout)
        result["api"] = {
            "url": mask_url(config.health_url),
            "up": health.up,
            "status": health.status,
            "jobs_active": health.jobs_active,
            "error": health.error,
        }
    return result
