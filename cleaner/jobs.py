"""Stale jobs: what "stale" means, the JSON job cache, the PostgreSQL reaper, force-clean.

A job is stale when its status is active (``queued``, ``running``) and its timestamp (the
last state change or heartbeat) is older than ``jobs.stale_after[status]``. The exporter
imports the counting functions from here, so the cleaner and the exporter agree on it.

The API writes its job cache too, so the cache is rewritten under an exclusive ``flock``,
atomically (temporary file, fsync, ``os.replace``, same mode and owner), and the whole
read-modify-write starts over when the file changed underneath. A cache that does not parse
is never written.

In PostgreSQL, one cleaner across all hosts reaps at a time (a session-level
``pg_try_advisory_lock``), in bounded batches of ``UPDATE ... WHERE id IN (SELECT ... LIMIT n
FOR UPDATE SKIP LOCKED)`` under ``lock_timeout`` and ``statement_timeout``, so the API's own
writes never wait long. Identifiers are quoted with ``psycopg2.sql``; the DSN's password
never reaches a log line or an error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from cleaner.config import DatabaseConfig, JobsConfig, format_duration, mask_dsn
from cleaner.health import HealthMonitor, HealthResult, check_health
from cleaner.state import State, write_json_atomic

log = logging.getLogger(__name__)

#: Record fields that date a cached job, the first one present wins.
TIMESTAMP_FIELDS = ("updated_at", "started_at", "created_at")
#: The reason written to ``error_message_column`` by a force-clean.
FORCE_CLEAN_REASON = "force-clean"
#: How long a cache rewrite waits for the API to release the file.
CACHE_LOCK_WAIT = 5.0
#: How many times a cache rewrite starts over when the file keeps changing underneath.
CACHE_ATTEMPTS = 10
#: Statistics (jobs per status over the last 24 h) are logged every this many cycles.
STATS_EVERY = 10
STATS_WINDOW = 86400.0
#: Epoch values above this are milliseconds (1e11 seconds is the year 5138).
_MILLISECONDS_ABOVE = 1e11

Connection = psycopg2.extensions.connection
T = TypeVar("T")


# --------------------------------------------------------------------------- staleness


@dataclass(frozen=True)
class JobCounts:
    """Jobs per status now and, per active status, how many of them are stale."""

    by_status: dict[str, int]
    stale: dict[str, int]

    @property
    def active(self) -> int:
        """Jobs in an active status (the keys of ``stale``)."""
        return sum(self.by_status.get(status, 0) for status in self.stale)


def parse_timestamp(value: object) -> float | None:
    """Epoch seconds from epoch seconds (or milliseconds) or an ISO 8601 string.

    A naive ISO time is taken as UTC. Anything unreadable is None.
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
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    else:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number / 1000.0 if number > _MILLISECONDS_ABOVE else number


def record_timestamp(record: Mapping[str, object]) -> float | None:
    """When a job last changed: ``updated_at``, else ``started_at``, else ``created_at``."""
    for name in TIMESTAMP_FIELDS:
        moment = parse_timestamp(record.get(name))
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


# --------------------------------------------------------------------------- the JSON cache


class CacheError(Exception):
    """The job cache could not be read or rewritten; the file was left as it was."""


def _parse_cache(data: bytes, path: Path) -> dict[str, dict[str, object]]:
    if not data.strip():
        return {}
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CacheError(f"{path}: expected a JSON object of job id -> record")
    for job_id, record in raw.items():
        if not isinstance(record, dict):
            raise CacheError(f"{path}: job {job_id!r} is not a JSON object")
    return raw


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _lock(fd: int, kind: int, path: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise CacheError(
                    f"{path}: still locked by another process after {wait:g}s"
                ) from None
            time.sleep(0.005)


def _open_cache(path: Path) -> int | None:
    """The cache opened for reading (never through a symlink); None when there is none."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"{path}: cannot open: {exc.strerror}") from None


def read_cache(path: Path, *, lock_wait: float = CACHE_LOCK_WAIT) -> dict[str, dict[str, object]]:
    """The cache's records under a shared flock; {} when missing, CacheError when corrupt."""
    fd = _open_cache(path)
    if fd is None:
        return {}
    try:
        _lock(fd, fcntl.LOCK_SH, path, lock_wait)
        return _parse_cache(_read_all(fd), path)
    finally:
        os.close(fd)


def count_cache(
    records: Mapping[str, Mapping[str, object]], stale_after: Mapping[str, float], now: float
) -> JobCounts:
    """Jobs per status (every status seen, active ones always) and stale ones per status."""
    by_status = dict.fromkeys(stale_after, 0)
    stale = dict.fromkeys(stale_after, 0)
    for record in records.values():
        status = str(record.get("status"))
        by_status[status] = by_status.get(status, 0) + 1
        if is_stale(status, record_timestamp(record), stale_after, now):
            stale[status] += 1
    return JobCounts(by_status, stale)


Selector = Callable[[Mapping[str, object]], bool]


def rewrite_cache(
    path: Path,
    select: Selector,
    *,
    dry_run: bool = False,
    lock_wait: float = CACHE_LOCK_WAIT,
    attempts: int = CACHE_ATTEMPTS,
) -> dict[str, int]:
    """Removes the records ``select`` picks; returns how many per status.

    Holds an exclusive flock on the file from reading to replacing it; starts over when
    the path no longer names the file it locked or the file changed while it worked.
    A missing file is nothing to do; a corrupt one raises CacheError and is not touched.
    """
    for _ in range(attempts):
        fd = _open_cache(path)
        if fd is None:
            return {}
        try:
            _lock(fd, fcntl.LOCK_EX, path, lock_wait)
            before = os.fstat(fd)
            if not _same_file(path, before):
                continue  # replaced while we waited for the lock
            records = _parse_cache(_read_all(fd), path)
            removed: dict[str, int] = {}
            kept: dict[str, dict[str, object]] = {}
            for job_id, record in records.items():
                if select(record):
                    status = str(record.get("status"))
                    removed[status] = removed.get(status, 0) + 1
                else:
                    kept[job_id] = record
            if not removed or dry_run:
                return removed
            if not _same_file(path, before) or not _unchanged(fd, before):
                continue
            _replace_keeping_owner(path, kept, before)
            return removed
        finally:
            os.close(fd)
    raise CacheError(f"{path}: kept changing underneath; gave up after {attempts} attempts")


def _same_file(path: Path, opened: os.stat_result) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


def _unchanged(fd: int, before: os.stat_result) -> bool:
    after = os.fstat(fd)
    return (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def _replace_keeping_owner(
    path: Path, records: Mapping[str, object], original: os.stat_result
) -> None:
    try:
        write_json_atomic(
            path,
            records,
            mode=original.st_mode & 0o7777,
            owner=(original.st_uid, original.st_gid),
            indent=2,
            sort_keys=False,
            ensure_ascii=False,
        )
    except PermissionError as exc:
        raise CacheError(
            f"{path}: cannot rewrite it with its owner {original.st_uid}:{original.st_gid} "
            f"and mode ({exc.strerror}); not rewritten"
        ) from None


def reap_cache(
    path: Path, stale_after: Mapping[str, float], now: float, *, dry_run: bool = False
) -> dict[str, int]:
    """Removes the stale active records from the cache; returns how many per status."""

    def stale(record: Mapping[str, object]) -> bool:
        return is_stale(str(record.get("status")), record_timestamp(record), stale_after, now)

    return rewrite_cache(path, stale, dry_run=dry_run)


# --------------------------------------------------------------------------- PostgreSQL


class DatabaseDownError(Exception):
    """The database could not be reached; the message never holds the DSN's password."""


def _scrub(text: str, dsn: str) -> str:
    """``text`` with the DSN (and its password, wherever it appears) masked."""
    masked = text.replace(dsn, mask_dsn(dsn)) if dsn else text
    with contextlib.suppress(psycopg2.ProgrammingError):
        password = psycopg2.extensions.parse_dsn(dsn).get("password") if dsn else None
        if password:
            masked = masked.replace(password, "***")
    return mask_dsn(masked)


def describe_error(exc: BaseException, db: DatabaseConfig) -> str:
    """One line about a database error, safe for a log."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return _scrub(text, db.dsn or "")


def connect(
    db: DatabaseConfig, *, application_name: str, statement_timeout: float | None = None
) -> Connection:
    """An autocommit connection with connect, statement and lock timeouts set.

    Raises DatabaseDownError, whose message names the server but never the password.
    """
    if not db.dsn:
        raise DatabaseDownError("no DSN: $LIMPEZA_DATABASE_URL is not set")
    timeout = db.statement_timeout if statement_timeout is None else statement_timeout
    try:
        conn = psycopg2.connect(
            db.dsn,
            connect_timeout=max(2, math.ceil(db.connect_timeout)),
            application_name=application_name,
        )
    except (psycopg2.Error, ValueError) as exc:
        raise DatabaseDownError(
            f"cannot connect to {_scrub(db.dsn, db.dsn)}: {describe_error(exc, db)}"
        ) from None
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT set_config('statement_timeout', %s, false), "
                "set_config('lock_timeout', %s, false)",
                (f"{int(timeout * 1000)}ms", f"{int(db.lock_timeout * 1000)}ms"),
            )
    except psycopg2.Error as exc:
        conn.close()
        raise DatabaseDownError(
            f"cannot set up the session on {_scrub(db.dsn, db.dsn)}: {describe_error(exc, db)}"
        ) from None
    return conn


def _table(db: DatabaseConfig) -> sql.Identifier:
    return sql.Identifier(*db.table_parts)


def _col(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def count_database(
    conn: Connection,
    db: DatabaseConfig,
    stale_after: Mapping[str, float],
    *,
    all_statuses: bool = False,
) -> JobCounts:
    """Jobs per active status and stale ones per active status, in one query.

    Staleness is judged by the server's clock (``now()``). With ``all_statuses`` every
    status in the table is counted too (a full scan on a big table).
    """
    thresholds = [float(stale_after.get(s, math.inf)) for s in db.active_statuses]
    case = sql.SQL("CASE {status}::text {whens} END").format(
        status=_col(db.status_column),
        whens=sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(sql.Literal(s), sql.Literal(t))
            for s, t in zip(db.active_statuses, thresholds, strict=True)
            if math.isfinite(t)
        )
        or sql.SQL("WHEN NULL THEN NULL"),
    )
    where = (
        sql.SQL("")
        if all_statuses
        else sql.SQL("WHERE {status} = ANY(%(active)s)").format(status=_col(db.status_column))
    )
    query = sql.SQL(
        "SELECT {status}::text, count(*), "
        "count(*) FILTER (WHERE {ts} < now() - make_interval(secs => {case})) "
        "FROM {table} {where} GROUP BY 1"
    ).format(
        status=_col(db.status_column),
        ts=_col(db.timestamp_column),
        case=case,
        table=_table(db),
        where=where,
    )
    by_status = dict.fromkeys(db.active_statuses, 0)
    stale = dict.fromkeys(db.active_statuses, 0)
    with conn.cursor() as cur:
        cur.execute(query, {"active": list(db.active_statuses)})
        for status, total, stale_count in cur.fetchall():
            by_status[str(status)] = int(total)
            if status in stale:
                stale[str(status)] = int(stale_count)
    return JobCounts(by_status, stale)


def advisory_key(db: DatabaseConfig) -> int:
    """The advisory lock every cleaner of this table takes (a signed 64-bit integer)."""
    digest = hashlib.sha256(f"limpeza:reaper:{db.table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def reaper_lock(conn: Connection, db: DatabaseConfig) -> Iterator[bool]:
    """Yields whether this session got the reaper lock; releases it afterwards."""
    key = advisory_key(db)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        row = cur.fetchone()
    got = bool(row and row[0])
    try:
        yield got
    finally:
        if got and not conn.closed:
            with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))


def end_jobs(
    conn: Connection,
    db: DatabaseConfig,
    status: str,
    older_than: float | None,
    reason: str,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Sets ``error_status`` on jobs in ``status`` older than ``older_than`` seconds.

    ``older_than=None`` ends them all. Works in batches of ``batch_size``, each one
    statement (its own transaction) that skips rows the API holds locked. Returns how many
    rows changed (or, in a dry run, would change); ``progress`` hears of each batch.
    """
    params: dict[str, Any] = {
        "status": status,
        "secs": older_than,
        "error": db.error_status,
        "reason": reason,
        "batch": db.batch_size,
    }
    match = sql.SQL("{status} = %(status)s").format(status=_col(db.status_column))
    if older_than is not None:
        match = sql.SQL("{match} AND {ts} < now() - make_interval(secs => %(secs)s)").format(
            match=match, ts=_col(db.timestamp_column)
        )
    table = _table(db)
    if dry_run:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT count(*) FROM {table} WHERE {match}").format(
                    table=table, match=match
                ),
                params,
            )
            row = cur.fetchone()
        count = int(row[0]) if row else 0
        if progress is not None and count:
            progress(count)
        return count
    assignments = [sql.SQL("{} = %(error)s").format(_col(db.status_column))]
    if db.error_message_column:
        assignments.append(sql.SQL("{} = %(reason)s").format(_col(db.error_message_column)))
    update = sql.SQL(
        "UPDATE {table} SET {assignments} WHERE {id} IN ("
        "SELECT {id} FROM {table} WHERE {match} LIMIT %(batch)s FOR UPDATE SKIP LOCKED"
        ") AND {match} RETURNING {id}"
    ).format(
        table=table,
        assignments=sql.SQL(", ").join(assignments),
        id=_col(db.id_column),
        match=match,
    )
    total = 0
    while True:
        with conn.cursor() as cur:
            cur.execute(update, params)
            changed = cur.rowcount
        total += changed
        if progress is not None and changed:
            progress(changed)
        if changed < db.batch_size:
            return total


def stats_since(conn: Connection, db: DatabaseConfig, seconds: float) -> dict[str, int]:
    """Jobs per status whose timestamp is within the last ``seconds``."""
    query = sql.SQL(
        "SELECT {status}::text, count(*) FROM {table} "
        "WHERE {ts} >= now() - make_interval(secs => %s) GROUP BY 1 ORDER BY 1"
    ).format(status=_col(db.status_column), table=_table(db), ts=_col(db.timestamp_column))
    with conn.cursor() as cur:
        cur.execute(query, (seconds,))
        return {str(status): int(count) for status, count in cur.fetchall()}


def recommended_index(db: DatabaseConfig) -> str:
    """The index that serves the stale query and the count (README: the jobs table)."""
    return f"CREATE INDEX ON {db.table} ({db.status_column}, {db.timestamp_column})"


_INDEX_NODES = ("Index Scan", "Index Only Scan", "Bitmap Index Scan")


def stale_query_index(
    conn: Connection, db: DatabaseConfig, stale_after: Mapping[str, float]
) -> dict[str, Any]:
    """Whether an index serves the stale query, from EXPLAIN with sequential scans off.

    With ``enable_seqscan`` off the planner picks an index whenever one is usable, even on
    a small table. Returns ``{"usable": bool, "indexes": [...], "covers_timestamp": bool}``.
    """
    status = db.active_statuses[0]
    query = sql.SQL(
        "EXPLAIN (FORMAT JSON) SELECT {id} FROM {table} WHERE {status} = %s "
        "AND {ts} < now() - make_interval(secs => %s)"
    ).format(
        id=_col(db.id_column),
        table=_table(db),
        status=_col(db.status_column),
        ts=_col(db.timestamp_column),
    )
    with conn.cursor() as cur:
        cur.execute("SET enable_seqscan = off")
        try:
            cur.execute(query, (status, float(stale_after.get(status, 0.0))))
            row = cur.fetchone()
        finally:
            cur.execute("RESET enable_seqscan")
    plan = row[0] if row else []
    if isinstance(plan, str):
        plan = json.loads(plan)
    indexes: list[str] = []
    covers = False
    for node in _plan_nodes(plan[0]["Plan"] if plan else {}):
        if node.get("Node Type") in _INDEX_NODES:
            indexes.append(str(node.get("Index Name")))
            cond = str(node.get("Index Cond", ""))
            covers = covers or db.timestamp_column in cond
    return {"usable": bool(indexes), "indexes": indexes, "covers_timestamp": covers}


def _plan_nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


# --------------------------------------------------------------------------- the reaper


def _summary(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))


def _source_summary(counts: Mapping[str, int] | None, *, configured: bool) -> str:
    if not configured:
        return "not configured"
    if counts is None:
        return "failed"
    return _summary(counts) or "none"


@dataclass
class ForceCleanReport:
    """What a force-clean did (or, in a dry run, would do), per source and status."""

    dry_run: bool
    database: dict[str, int] | None = None
    cache: dict[str, int] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum((self.database or {}).values()) + sum((self.cache or {}).values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "database": self.database,
            "cache": self.cache,
            "total": self.total,
            "errors": self.errors,
        }


@dataclass
class CycleReport:
    """What one cycle of the reaper did."""

    cache_reaped: dict[str, int] = field(default_factory=dict)
    database_reaped: dict[str, int] = field(default_factory=dict)
    #: False when another cleaner held the reaper lock, None when the step did not run.
    database_locked: bool | None = None
    api: HealthResult | None = None
    jobs_active: int | None = None
    stats: dict[str, int] | None = None
    force_clean: ForceCleanReport | None = None
    errors: list[str] = field(default_factory=list)


class JobReaper:
    """One cleaner's job reaping: the cache, the database, the API's health, force-clean.

    ``cycle()`` never raises: every failure is logged and counted in ``state.errors`` by
    stage (``cache``, ``database``, ``health``). The database connection is kept between
    cycles; when it fails the reaper reconnects with a backoff capped at ``interval`` and
    logs one line when the database goes down and one when it is back.
    """

    def __init__(
        self,
        config: JobsConfig,
        state: State,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = 30.0,
        application_name: str = "limpeza-cleaner",
        health: HealthMonitor | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.interval = interval
        self.application_name = application_name
        self._clock = clock
        self._conn: Connection | None = None
        self._db_down = False
        self._db_failures = 0
        self._next_connect = 0.0
        self._cycles = 0
        self._over_threshold = 0
        self._cache_problem: str | None = None
        self._said_idle = False
        self.health = health
        if self.health is None and config.health_url:
            self.health = HealthMonitor(
                config.health_url, config.health_timeout, state, clock=clock
            )

    # ------------------------------------------------------------------ connection

    @property
    def has_work(self) -> bool:
        return self.config.database is not None or self.config.cache_file is not None

    def _connection(self) -> Connection | None:
        """The open connection, a new one, or None while the database is down."""
        db = self.config.database
        if db is None:
            return None
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        now = self._clock()
        if self._db_down and now < self._next_connect:
            return None
        try:
            self._conn = connect(db, application_name=self.application_name)
        except DatabaseDownError as exc:
            self._database_failed(str(exc))
            return None
        if self._db_down:
            log.info("database back after %d failed attempts", self._db_failures)
        self._db_down = False
        self._db_failures = 0
        self.state.database_up = True
        return self._conn

    def _database_failed(self, reason: str) -> None:
        self._db_failures += 1
        self.state.database_up = False
        self.state.count_error("database")
        delay = min(self.interval, 2.0 ** (self._db_failures - 1))
        self._next_connect = self._clock() + delay
        if not self._db_down:
            log.warning(
                "database down: %s; reconnecting with backoff up to %s",
                reason,
                format_duration(self.interval),
            )
        else:
            log.debug("database still down: %s", reason)
        self._db_down = True

    def _with_database(
        self, report_errors: list[str], doing: str, work: Callable[[Connection], T]
    ) -> T | None:
        """Runs ``work`` on the connection; None when the database is down or it failed.

        A kept connection found dead (the server restarted since the last cycle) is
        replaced once at once, so a restart between cycles costs no cycle.
        """
        for attempt in range(2):
            reused = self._conn is not None and not self._conn.closed
            conn = self._connection()
            if conn is None:
                report_errors.append("database: down")
                return None
            try:
                return work(conn)
            except psycopg2.Error as exc:
                if reused and attempt == 0 and conn.closed:
                    self._drop_connection()
                    log.debug("database: kept connection lost (%s); reconnecting", doing)
                    continue
                report_errors.append(self._database_error(exc, doing))
                return None
        return None

    def _database_error(self, exc: psycopg2.Error, doing: str) -> str:
        """Handles an error of a statement: a lost connection marks the database down."""
        db = self.config.database
        assert db is not None
        reason = describe_error(exc, db)
        if self._conn is None or self._conn.closed:
            self._drop_connection()
            self._database_failed(reason)
        else:
            self.state.count_error("database")
            log.warning("database: %s failed: %s", doing, reason)
        return f"database: {doing}: {reason}"

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        """Closes the database connection and the health session."""
        self._drop_connection()
        if self.health is not None:
            self.health.close()

    # ------------------------------------------------------------------ one cycle

    def cycle(self) -> CycleReport:
        """One daemon cycle: cache, database, API health, stats, automatic force-clean."""
        self._cycles += 1
        report = CycleReport()
        if not self.has_work and not self._said_idle:
            log.info("job reaper: no jobs.database and no jobs.cache_file; nothing to reap")
            self._said_idle = True
        try:
            self._cycle_steps(report)
        except Exception as exc:  # a bug must not stop the daemon
            log.exception("job reaper cycle failed")
            self.state.count_error("sweep")
            report.errors.append(f"reaper: {exc}")
        return report

    def _cycle_steps(self, report: CycleReport) -> None:
        cache_counts: JobCounts | None = None
        if self.config.cache_file is not None:
            report.cache_reaped = self._reap_cache(report)
            cache_counts = self._count_cache(report)
        db_counts: JobCounts | None = None
        if self.config.database is not None:
            self._reap_database(report)
            db_counts = self._count_database(report)
        if self.health is not None:
            report.api = self.health.check()
        if db_counts is not None:
            report.jobs_active = db_counts.active
        elif cache_counts is not None:
            report.jobs_active = cache_counts.active
        self.state.jobs_active = report.jobs_active
        if self._cycles % STATS_EVERY == 0:
            report.stats = self._stats(report)
        if self.config.force_clean.auto:
            self._maybe_force_clean(report, db_counts)

    def _reap_cache(self, report: CycleReport) -> dict[str, int]:
        path = self.config.cache_file
        assert path is not None
        try:
            removed = reap_cache(path, self.config.stale_after, self._clock())
        except (CacheError, OSError) as exc:
            message = str(exc) if isinstance(exc, CacheError) else f"{path}: {exc}"
            self.state.count_error("cache")
            report.errors.append(f"cache: {message}")
            if message != self._cache_problem:
                log.error("job cache left untouched: %s", message)
            self._cache_problem = message
            return {}
        if self._cache_problem is not None:
            log.info("job cache %s readable again", path)
            self._cache_problem = None
        for status, n in removed.items():
            self.state.count_reaped("cache", status, n)
        if removed:
            log.info(
                "reaped %d stale jobs from the cache %s (%s)",
                sum(removed.values()),
                path,
                _summary(removed),
            )
        return removed

    def _count_cache(self, report: CycleReport) -> JobCounts | None:
        path = self.config.cache_file
        assert path is not None
        try:
            return count_cache(read_cache(path), self.config.stale_after, self._clock())
        except CacheError:
            return None  # already counted and logged by the reaping step

    def _reap_database(self, report: CycleReport) -> None:
        db = self.config.database
        assert db is not None

        def reap(conn: Connection) -> None:
            with reaper_lock(conn, db) as got:
                report.database_locked = got
                if not got:
                    log.debug("database: another cleaner holds the reaper lock; skipping")
                    return
                for status in db.active_statuses:
                    limit = self.config.stale_after[status]
                    reason = (
                        f"stale: {status} with no update for over {format_duration(limit)} "
                        "(reaped by limpeza)"
                    )

                    def done(n: int, status: str = status) -> None:
                        report.database_reaped[status] = report.database_reaped.get(status, 0) + n
                        self.state.count_reaped("database", status, n)

                    end_jobs(conn, db, status, limit, reason, progress=done)

        self._with_database(report.errors, "reaping", reap)
        if report.database_reaped:
            log.info(
                "reaped %d stale jobs in the database (%s) -> %s",
                sum(report.database_reaped.values()),
                _summary(report.database_reaped),
                db.error_status,
            )

    def _count_database(self, report: CycleReport) -> JobCounts | None:
        db = self.config.database
        assert db is not None
        return self._with_database(
            report.errors,
            "counting jobs",
            lambda conn: count_database(conn, db, self.config.stale_after),
        )

    def _stats(self, report: CycleReport) -> dict[str, int] | None:
        stats: dict[str, int] | None = None
        db = self.config.database
        if db is not None:
            stats = self._with_database(
                report.errors, "stats", lambda conn: stats_since(conn, db, STATS_WINDOW)
            )
        elif self.config.cache_file is not None:
            with contextlib.suppress(CacheError):
                records = read_cache(self.config.cache_file)
                since = self._clock() - STATS_WINDOW
                stats = {}
                for record in records.values():
                    moment = record_timestamp(record)
                    if moment is not None and moment >= since:
                        status = str(record.get("status"))
                        stats[status] = stats.get(status, 0) + 1
        if stats is not None:
            log.info("jobs in the last 24h by status: %s", dict(sorted(stats.items())))
        return stats

    def _maybe_force_clean(self, report: CycleReport, db_counts: JobCounts | None) -> None:
        settings = self.config.force_clean
        seen = [
            n
            for n in (
                report.api.jobs_active if report.api else None,
                db_counts.active if db_counts else None,
            )
            if n is not None
        ]
        if seen and max(seen) > settings.threshold:
            self._over_threshold += 1
            log.warning(
                "%d active jobs, over the force-clean threshold %d (%d of %d cycles)",
                max(seen),
                settings.threshold,
                self._over_threshold,
                settings.confirm_cycles,
            )
        else:
            self._over_threshold = 0
        if self._over_threshold >= settings.confirm_cycles:
            self._over_threshold = 0
            report.force_clean = self.force_clean(dry_run=False, min_age=settings.min_age)

    # ------------------------------------------------------------------ force-clean

    def force_clean(self, dry_run: bool, *, min_age: float = 0.0) -> ForceCleanReport:
        """Ends every active job older than ``min_age`` (0: all of them) in every source.

        Database rows get ``error_status`` (reason "force-clean"); cache entries go.
        """
        report = ForceCleanReport(dry_run=dry_run)
        older_than = min_age if min_age > 0 else None
        active = set(self.config.active_statuses)
        if self.config.cache_file is not None:
            now = self._clock()

            def chosen(record: Mapping[str, object]) -> bool:
                if str(record.get("status")) not in active:
                    return False
                if older_than is None:
                    return True
                moment = record_timestamp(record)
                return moment is not None and now - moment > older_than

            try:
                report.cache = rewrite_cache(self.config.cache_file, chosen, dry_run=dry_run)
            except (CacheError, OSError) as exc:
                self.state.count_error("cache")
                report.errors.append(f"cache: {exc}")
                log.error("force-clean: job cache left untouched: %s", exc)
        db = self.config.database
        if db is not None:
            ended: dict[str, int] = {}

            def end_all(conn: Connection) -> None:
                for status in db.active_statuses:

                    def done(n: int, status: str = status) -> None:
                        ended[status] = ended.get(status, 0) + n

                    end_jobs(
                        conn,
                        db,
                        status,
                        older_than,
                        FORCE_CLEAN_REASON,
                        dry_run=dry_run,
                        progress=done,
                    )

            self._with_database(report.errors, "force-clean", end_all)
            report.database = ended
        if not dry_run:
            self.state.force_cleans += 1
            for source, counts in (("database", report.database), ("cache", report.cache)):
                for status, n in (counts or {}).items():
                    self.state.count_reaped(source, status, n)
        verb = "would end" if dry_run else "ended"
        log.warning(
            "force-clean%s: %s %d active jobs (database: %s; cache: %s)%s",
            " (dry run)" if dry_run else "",
            verb,
            report.total,
            _source_summary(report.database, configured=db is not None),
            _source_summary(report.cache, configured=self.config.cache_file is not None),
            f"; errors: {'; '.join(report.errors)}" if report.errors else "",
        )
        return report

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Jobs per status, active and stale counts, the index check and the API's health."""
        result: dict[str, Any] = {"database": None, "cache": None, "api": None}
        stale_after = self.config.stale_after
        if self.config.cache_file is not None:
            cache: dict[str, Any] = {"path": str(self.config.cache_file)}
            try:
                counts = count_cache(read_cache(self.config.cache_file), stale_after, self._clock())
                cache.update(
                    jobs=counts.by_status, active=counts.active, stale=counts.stale, error=None
                )
            except CacheError as exc:
                cache["error"] = str(exc)
            result["cache"] = cache
        db = self.config.database
        if db is not None:
            database: dict[str, Any] = {
                "table": db.table,
                "up": False,
                "error": None,
                "recommended_index": recommended_index(db),
            }
            try:
                conn = connect(
                    db,
                    application_name=self.application_name,
                )
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
                    )
                except psycopg2.Error as exc:
                    database["error"] = describe_error(exc, db)
                finally:
                    conn.close()
            result["database"] = database
        if self.config.health_url:
            health = check_health(self.config.health_url, self.config.health_timeout)
            result["api"] = {
                "url": self.config.health_url,
                "up": health.up,
                "status": health.status,
                "jobs_active": health.jobs_active,
                "error": health.error,
            }
        return result


# --------------------------------------------------------------------------- reports


def format_force_clean(report: ForceCleanReport, config: JobsConfig) -> list[str]:
    """Human lines for a force-clean report: what was (or would be) ended, per source."""
    would = report.dry_run
    lines = [
        f"force-clean{' (dry run)' if would else ''}: "
        f"{'would end' if would else 'ended'} {report.total} active jobs"
    ]
    db = config.database
    if db is None:
        lines.append("  database: not configured")
    elif report.database is not None:
        n = sum(report.database.values())
        detail = f" ({_summary(report.database)})" if n else ""
        verb = "would set" if would else "set"
        lines.append(f"  database {db.table}: {verb} {db.error_status!r} on {n} jobs{detail}")
    if config.cache_file is None:
        lines.append("  cache: not configured")
    elif report.cache is not None:
        n = sum(report.cache.values())
        detail = f" ({_summary(report.cache)})" if n else ""
        verb = "would remove" if would else "removed"
        lines.append(f"  cache {config.cache_file}: {verb} {n} entries{detail}")
    lines.extend(f"  error: {error}" for error in report.errors)
    return lines


def _counts_line(part: Mapping[str, Any]) -> str:
    jobs = part.get("jobs") or {}
    stale = part.get("stale") or {}
    return (
        f"{part.get('active', 0)} active ({_summary(jobs) or 'none'}); "
        f"stale: {_summary(stale) or 'none'}"
    )


def format_jobs_status(status: Mapping[str, Any]) -> list[str]:
    """Human lines for ``JobReaper.status()``."""
    lines = ["jobs:"]
    database, cache, api = status.get("database"), status.get("cache"), status.get("api")
    if database is None and cache is None:
        lines.append("  no jobs.database and no jobs.cache_file configured")
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
