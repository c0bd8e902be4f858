"""What limpeza runs on the jobs table: counting, ending jobs, the reaper lock, index advice.

Each query is one ``transaction()`` that sets its limits with ``SET LOCAL``, so nothing
outlives it (direct connections, session and transaction pools behave the same). Table and
column names come from the configuration (already checked to be identifiers) and are
always quoted with ``psycopg2.sql``. Connecting is ``cleaner.jobs.connection``'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from cleaner.config import DatabaseConfig
from cleaner.jobs.connection import Connection
from cleaner.jobs.staleness import JobCounts


def _table(db: DatabaseConfig) -> sql.Identifier:
    return sql.Identifier(*db.table_parts)


def _col(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _status(db: DatabaseConfig) -> sql.Composable:
    """The status column as text: ENUM, varchar and text columns all compare alike."""
    return sql.SQL("{}::text").format(_col(db.status_column))


def timestamp_expression(db: DatabaseConfig) -> sql.Composable:
    """The job's last sign of life: ``COALESCE`` of the timestamp columns, in order.

    A NULL in the first column (no heartbeat yet) falls back to the next one, so a dead
    job is never hidden by a missing value.
    """
    columns = [_col(c) for c in db.timestamp_columns]
    if len(columns) == 1:
        return columns[0]
    return sql.SQL("COALESCE({})").format(sql.SQL(", ").join(columns))


def _ms(seconds: float) -> str:
    return f"{max(1, int(seconds * 1000))}ms"


@contextlib.contextmanager
def transaction(
    conn: Connection,
    db: DatabaseConfig,
    *,
    statement_timeout: float | None = None,
    commit: bool = True,
    settings: Mapping[str, str] | None = None,
) -> Iterator[psycopg2.extensions.cursor]:
    """One transaction whose limits are set with ``SET LOCAL``; nothing outlives it.

    Sets ``statement_timeout`` (default ``db.statement_timeout``), ``lock_timeout``,
    ``idle_in_transaction_session_timeout`` and ``TimeZone`` (``db.timestamp_timezone``, so
    a ``timestamp without time zone`` column compared with ``now()`` is read in that zone
    whatever the server's or the role's TimeZone; ``timestamptz`` columns are instants and
    do not care), then ``settings``. Commits at the end (rolls back with ``commit=False``
    or on an error). Works on autocommit connections (explicit BEGIN) and on others.
    Through a transaction-mode pooler the whole transaction runs on one server connection
    and leaves it as it found it.
    """
    timeout = db.statement_timeout if statement_timeout is None else statement_timeout
    limits = {
        "statement_timeout": _ms(timeout),
        "lock_timeout": _ms(db.lock_timeout),
        # A client that stalls inside a transaction loses it (and the reaper lock with it).
        "idle_in_transaction_session_timeout": _ms(max(timeout, db.lock_timeout) * 2),
        "TimeZone": db.timestamp_timezone,
        **(settings or {}),
    }
    explicit = conn.autocommit
    with conn.cursor() as cur:
        if explicit:
            cur.execute("BEGIN")
        done = False
        try:
            cur.execute(
                sql.SQL("SELECT {}").format(
                    sql.SQL(", ").join(
                        sql.SQL("set_config({}, {}, true)").format(
                            sql.Literal(name), sql.Literal(value)
                        )
                        for name, value in limits.items()
                    )
                )
            )
            yield cur
            done = True
        finally:
            if not conn.closed:
                if done and commit:
                    if explicit:
                        cur.execute("COMMIT")
                    else:
                        conn.commit()
                else:
                    with contextlib.suppress(psycopg2.Error):
                        if explicit:
                            cur.execute("ROLLBACK")
                        else:
                            conn.rollback()


def count_database(
    conn: Connection,
    db: DatabaseConfig,
    stale_after: Mapping[str, float],
    *,
    statement_timeout: float | None = None,
) -> JobCounts:
    """Jobs per active status and stale ones per active status, in one transaction.

    Staleness is judged by the server's clock (``now()``).
    """
    thresholds = [float(stale_after.get(s, math.inf)) for s in db.active_statuses]
    case = sql.SQL("CASE {status} {whens} END").format(
        status=_status(db),
        whens=sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(sql.Literal(s), sql.Literal(t))
            for s, t in zip(db.active_statuses, thresholds, strict=True)
            if math.isfinite(t)
        )
        or sql.SQL("WHEN NULL THEN NULL"),
    )
    query = sql.SQL(
        "SELECT {status}, count(*), "
        "count(*) FILTER (WHERE {ts} < now() - make_interval(secs => {case})) "
        "FROM {table} WHERE {status} = ANY(%(active)s) GROUP BY 1"
    ).format(status=_status(db), ts=timestamp_expression(db), case=case, table=_table(db))
    by_status = dict.fromkeys(db.active_statuses, 0)
    stale = dict.fromkeys(db.active_statuses, 0)
    with transaction(conn, db, statement_timeout=statement_timeout, commit=False) as cur:
        cur.execute(query, {"active": list(db.active_statuses)})
        rows = cur.fetchall()
    for status, total, stale_count in rows:
        by_status[str(status)] = int(total)
        if status in stale:
            stale[str(status)] = int(stale_count)
    return JobCounts(by_status, stale)


def advisory_key(db: DatabaseConfig) -> int:
    """The advisory lock every cleaner of this table takes (a signed 64-bit integer)."""
    digest = hashlib.sha256(f"limpeza:reaper:{db.table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class ReaperLockHeldError(Exception):
    """Another cleaner holds the reaper lock (``pg_try_advisory_xact_lock`` said no)."""


def take_reaper_lock(cur: psycopg2.extensions.cursor, db: DatabaseConfig) -> bool:
    """Takes the reaper lock for the current transaction; False when another holds it.

    A transaction-level advisory lock ends with its transaction: through a pooler it can
    neither move to another server connection nor stay behind on one the API gets next.
    """
    cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (advisory_key(db),))
    row = cur.fetchone()
    return bool(row and row[0])


def _match(db: DatabaseConfig, older_than: float | None) -> sql.Composable:
    match = sql.SQL("{status} = %(status)s").format(status=_status(db))
    if older_than is None:
        return match
    return sql.SQL("{match} AND {ts} < now() - make_interval(secs => %(secs)s)").format(
        match=match, ts=timestamp_expression(db)
    )


def end_jobs(
    conn: Connection,
    db: DatabaseConfig,
    status: str,
    older_than: float | None,
    reason: str,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    lock: bool = False,
) -> int:
    """Sets ``error_status`` on jobs in ``status`` older than ``older_than`` seconds.

    ``older_than=None`` ends them all. Works in batches of ``batch_size``, each one
    transaction (with its own ``SET LOCAL`` limits) whose UPDATE skips rows the API holds
    locked. With ``lock`` each batch's transaction first takes the reaper lock
    (``take_reaper_lock``) and ``ReaperLockHeldError`` is raised when another cleaner has it
    (after the batches already done were committed). Returns how many rows changed (or,
    in a dry run, would change); ``progress`` hears of each batch.
    """
    params: dict[str, Any] = {
        "status": status,
        "secs": older_than,
        "error": db.error_status,
        "reason": reason,
        "batch": db.batch_size,
    }
    match = _match(db, older_than)
    table = _table(db)
    if dry_run:
        with transaction(conn, db, commit=False) as cur:
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
    # psycopg2 sends %(error)s as an untyped literal, which the assignment turns into the
    # column's own type: an ENUM label, varchar or text alike.
    assignments = [sql.SQL("{} = %(error)s").format(_col(db.status_column))]
    if db.error_message_column:
        assignments.append(sql.SQL("{} = %(reason)s").format(_col(db.error_message_column)))
    update = sql.SQL(
        "UPDATE {table} SET {assignments} WHERE {id} IN ("
        "SELECT {id} FROM {table} WHERE {match} LIMIT %(batch)s FOR UPDATE SKIP LOCKED"
        ") AND {match}"
    ).format(
        table=table,
        assignments=sql.SQL(", ").join(assignments),
        id=_col(db.id_column),
        match=match,
    )
    total = 0
    while True:
        with transaction(conn, db) as cur:
            if lock and not take_reaper_lock(cur, db):
                raise ReaperLockHeldError(total)
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
        "SELECT {status}, count(*) FROM {table} "
        "WHERE {ts} >= now() - make_interval(secs => %s) GROUP BY 1 ORDER BY 1"
    ).format(status=_status(db), table=_table(db), ts=timestamp_expression(db))
    with transaction(conn, db, commit=False) as cur:
        cur.execute(query, (seconds,))
        return {str(status): int(count) for status, count in cur.fetchall()}


def recommended_index(db: DatabaseConfig, status_type: str | None = None) -> str:
    """The index that serves the stale query and the count (README: the jobs table).

    With several timestamp columns it is an expression index on their ``COALESCE``; with an
    ENUM (or any type but text and varchar) status column, on ``(status::text)``, which is
    what the queries compare.
    """
    status = db.status_column
    if status_type is not None and status_type not in ("text", "character varying"):
        status = f"({status}::text)"
    if len(db.timestamp_columns) == 1:
        ts = db.timestamp_columns[0]
    else:
        ts = f"(COALESCE({', '.join(db.timestamp_columns)}))"
    return f"CREATE INDEX ON {db.table} ({status}, {ts})"


def status_column_type(conn: Connection, db: DatabaseConfig) -> str | None:
    """The status column's type (``text``, ``character varying``, an ENUM's name...)."""
    with transaction(conn, db, commit=False) as cur:
        cur.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped",
            (sql.Identifier(*db.table_parts).as_string(cur), db.status_column),
        )
        row = cur.fetchone()
    if row is None:
        return None
    return str(row[0]).split("(")[0]


_INDEX_NODES = ("Index Scan", "Index Only Scan", "Bitmap Index Scan")


def stale_query_index(
    conn: Connection, db: DatabaseConfig, stale_after: Mapping[str, float]
) -> dict[str, Any]:
    """Whether an index serves the stale query, from EXPLAIN with sequential scans off.

    With ``enable_seqscan`` off (``SET LOCAL`` in a transaction that is rolled back) the
    planner picks an index whenever one is usable, even on a small table. Returns
    ``{"usable": bool, "indexes": [...], "covers_timestamp": bool}``.
    """
    status = db.active_statuses[0]
    query = sql.SQL("EXPLAIN (FORMAT JSON) SELECT {id} FROM {table} WHERE {match}").format(
        id=_col(db.id_column), table=_table(db), match=_match(db, 0.0)
    )
    params = {"status": status, "secs": float(stale_after.get(status, 0.0))}
    with transaction(conn, db, commit=False, settings={"enable_seqscan": "off"}) as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    plan = row[0] if row else []
    if isinstance(plan, str):
        plan = json.loads(plan)
    indexes: list[str] = []
    covers = False
    for node in _plan_nodes(plan[0]["Plan"] if plan else {}):
        if node.get("Node Type") in _INDEX_NODES:
            indexes.append(str(node.get("Index Name")))
            cond = str(node.get("Index Cond", ""))
            covers = covers or any(c in cond for c in db.timestamp_columns)
    return {"usable": bool(indexes), "indexes": indexes, "covers_timestamp": covers}


def _plan_nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)
