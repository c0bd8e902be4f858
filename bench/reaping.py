"""Section 3, reaping jobs in a real PostgreSQL: limpeza's batched reap and one plain UPDATE.

A throwaway cluster (``initdb`` on a temporary directory, 127.0.0.1 and a free port, owned
by an unprivileged user when run as root, durable settings: fsync and synchronous commit
on) holds a ``jobs`` table like the API's: 1% of the rows are stale active jobs (an hour
without an update), 1% fresh active ones, the rest finished. Each contender starts from
the same rows (the stale ones are put back and the table vacuumed between runs):

* limpeza: ``cleaner.jobs.database.end_jobs`` per active status, as the daemon's reaper calls it:
  batches of ``batch_size`` rows, ``UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE
  SKIP LOCKED)``, each batch its own transaction;
* one statement: ``UPDATE jobs SET status = 'error', error_message = ... WHERE
  (status = 'running' AND updated_at < now() - 3 min) OR (status = 'queued' AND ...)``.

Row locks are held until commit, so the longest statement (transaction) of a contender
is the longest time any row stays locked: the longest an API request touching such a row
can be blocked. The idle cycle is the daemon's whole JobReaper cycle (reap each status,
count the active jobs) when nothing is stale, without and with the index the README
recommends, ``CREATE INDEX ON jobs (status, updated_at)``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions

from bench.measure import Summary, ratio, show_seconds, table
from cleaner.config import Config, build
from cleaner.jobs.database import end_jobs
from cleaner.jobs.reaper import JobReaper
from devtools import postgres
from devtools.postgres import PostgresServer

STALE_AFTER = {"running": "3m", "queued": "2m"}
REASON = "stale (benchmark)"
INDEX = "jobs_status_updated_at_idx"


class _TimedCursor(psycopg2.extensions.cursor):
    """Records how long each statement takes, commit included (autocommit)."""

    durations: list[float]

    def execute(self, query: Any, vars: Any = None) -> None:
        start = time.perf_counter()
        try:
            super().execute(query, vars)
        finally:
            self.connection.durations.append(time.perf_counter() - start)  # type: ignore[attr-defined]


class _TimedConnection(psycopg2.extensions.connection):
    durations: list[float]

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.durations = []
        self.cursor_factory = _TimedCursor


@contextlib.contextmanager
def server() -> Iterator[PostgresServer]:
    """A durable throwaway cluster, always stopped and removed afterwards."""
    with postgres.cluster(
        "limpeza-bench-pg-",
        settings=(
            "\n# benchmark: durable like production\n"
            "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
            "shared_buffers = 512MB\nmax_wal_size = 4GB\n"
        ),
        stop_mode="fast",
    ) as pg:
        yield pg


def load(conn: psycopg2.extensions.connection, rows: int) -> dict[str, int]:
    """Creates and fills the jobs table; returns the expected stale count per status."""
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS jobs")
        cur.execute(
            "CREATE TABLE jobs (id bigint PRIMARY KEY, status text NOT NULL, "
            "created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, "
            "error_message text)"
        )
        cur.execute(
            """
            INSERT INTO jobs
            SELECT i,
                   CASE WHEN i %% 100 = 0 THEN (CASE WHEN i %% 200 = 0 THEN 'running'
                                                    ELSE 'queued' END)
                        WHEN i %% 100 = 1 THEN 'running'
                        WHEN i %% 100 < 5 THEN 'error'
                        ELSE 'done' END,
                   now() - make_interval(secs => 3600 + i %% 2592000),
                   CASE WHEN i %% 100 = 0 THEN now() - interval '1 hour'
                        WHEN i %% 100 = 1 THEN now() - interval '10 seconds'
                        ELSE now() - make_interval(secs => 600 + i %% 2592000) END,
                   NULL
            FROM generate_series(1, %s) AS i
            """,
            (rows,),
        )
        cur.execute("VACUUM ANALYZE jobs")
    stale = rows // 100
    return {"running": rows // 200, "queued": stale - rows // 200}


def reset(conn: psycopg2.extensions.connection) -> None:
    """Puts the stale jobs back as they were and vacuums, so every run starts alike."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE jobs SET status = CASE WHEN id % 200 = 0 THEN 'running' ELSE 'queued' END, "
            "updated_at = now() - interval '1 hour', error_message = NULL "
            "WHERE id % 100 = 0 AND status = 'error'"
        )
        cur.execute("UPDATE jobs SET updated_at = now() - interval '10 seconds' WHERE id % 100 = 1")
        cur.execute("VACUUM ANALYZE jobs")


def set_index(conn: psycopg2.extensions.connection, present: bool) -> None:
    with conn.cursor() as cur:
        if present:
            cur.execute(f"CREATE INDEX IF NOT EXISTS {INDEX} ON jobs (status, updated_at)")
            cur.execute("ANALYZE jobs")
        else:
            cur.execute(f"DROP INDEX IF EXISTS {INDEX}")


def reaped(conn: psycopg2.extensions.connection) -> tuple[int, int]:
    """(stale rows now in error with the reason, rows in error that were not stale)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FILTER (WHERE id % 100 = 0), "
            "count(*) FILTER (WHERE id % 100 <> 0 AND error_message IS NOT NULL) "
            "FROM jobs WHERE status = 'error'"
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def config_for(pg: PostgresServer) -> Config:
    raw = {
        "state_file": "/nonexistent/state.json",
        "audit_log": None,
        "jobs": {
            "stale_after": STALE_AFTER,
            "database": {
                "table": "jobs",
                "error_message_column": "error_message",
                "statement_timeout": "10m",
                "lock_timeout": "10s",
            },
        },
    }
    return build(raw, env={"LIMPEZA_DATABASE_URL": pg.dsn()})


def reap_batched(pg: PostgresServer, config: Config) -> tuple[float, list[float], int]:
    """limpeza's reap: wall time, each batch's duration, rows changed."""
    db = config.jobs.database
    assert db is not None
    conn = psycopg2.connect(pg.dsn(), connection_factory=_TimedConnection)
    try:
        conn.autocommit = True
        start = time.perf_counter()
        changed = 0
        for status in db.active_statuses:
            limit = config.jobs.stale_after[status]
            changed += end_jobs(conn, db, status, limit, REASON)
        wall = time.perf_counter() - start
        return wall, list(conn.durations), changed
    finally:
        conn.close()


def reap_single(pg: PostgresServer) -> tuple[float, list[float], int]:
    conn = psycopg2.connect(pg.dsn())
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            start = time.perf_counter()
            cur.execute(
                "UPDATE jobs SET status = 'error', error_message = %s "
                "WHERE (status = 'running' AND updated_at < now() - interval '3 minutes') "
                "OR (status = 'queued' AND updated_at < now() - interval '2 minutes')",
                (REASON,),
            )
            wall = time.perf_counter() - start
            return wall, [wall], cur.rowcount
    finally:
        conn.close()


def idle_cycle(config: Config) -> float:
    """One whole JobReaper cycle with a kept connection (the daemon's steady state)."""
    reaper = JobReaper(config.jobs, interval=30.0)
    try:
        reaper.cycle()  # connects; the daemon keeps its connection between cycles
        start = time.perf_counter()
        report = reaper.cycle()
        wall = time.perf_counter() - start
    finally:
        reaper.close()
    if report.errors.messages or report.database_reaped:
        raise RuntimeError(f"idle cycle was not idle: {report}")
    return wall


@dataclass
class ReapOutcome:
    rows: int
    stale: int
    runs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    idle: dict[str, list[float]] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)


def measure(pg: PostgresServer, rows: int, repeats: int, log: Callable[[str], None]) -> ReapOutcome:
    config = config_for(pg)
    with contextlib.closing(pg.connect()) as conn:
        started = time.perf_counter()
        expected = load(conn, rows)
        log(f"loaded {rows} jobs in {time.perf_counter() - started:.1f}s")
        stale = sum(expected.values())
        out = ReapOutcome(rows, stale)
        for indexed in (False, True):
            set_index(conn, indexed)
            tag = "with index" if indexed else "no index"
            for name in ("limpeza batched", "single UPDATE"):
                out.runs[f"{name}|{tag}"] = {"wall": [], "longest": [], "batches": []}
            for rep in range(repeats):
                names = ["limpeza batched", "single UPDATE"]
                for name in names if rep % 2 == 0 else names[::-1]:
                    reset(conn)
                    if name == "limpeza batched":
                        wall, durations, changed = reap_batched(pg, config)
                    else:
                        wall, durations, changed = reap_single(pg)
                    done, wrong = reaped(conn)
                    if changed != stale or done != stale or wrong:
                        out.mismatches.append(
                            f"{name} ({tag}): changed {changed}, stale now error {done}, "
                            f"others touched {wrong}, expected {stale}"
                        )
                    entry = out.runs[f"{name}|{tag}"]
                    entry["wall"].append(wall)
                    entry["longest"].append(max(durations))
                    entry["batches"].append(len(durations))
                    log(
                        f"  {rows} {name} ({tag}): {wall:.3f}s, longest lock "
                        f"{max(durations):.3f}s over {len(durations)} statements"
                    )
            out.idle[tag] = [idle_cycle(config) for _ in range(max(repeats, 5))]
            log(f"  {rows} idle cycle ({tag}): {Summary.of(out.idle[tag]).median:.4f}s")
    return out


def run_section(
    sizes: tuple[int, ...], repeats: int, log: Callable[[str], None]
) -> list[ReapOutcome]:
    outcomes = []
    with server() as pg:
        for rows in sizes:
            outcomes.append(measure(pg, rows, repeats, log))
    return outcomes


def report(outcomes: list[ReapOutcome]) -> str:
    rows = []
    for out in outcomes:
        for tag in ("no index", "with index"):
            single = Summary.of(out.runs[f"single UPDATE|{tag}"]["wall"])
            for name in ("limpeza batched", "single UPDATE"):
                entry = out.runs[f"{name}|{tag}"]
                wall = Summary.of(entry["wall"])
                longest = Summary.of(entry["longest"])
                single_longest = Summary.of(out.runs[f"single UPDATE|{tag}"]["longest"])
                rows.append(
                    [
                        f"{out.rows:,}",
                        f"{out.stale:,}",
                        tag,
                        name,
                        str(int(Summary.of(entry["batches"]).median)),
                        show_seconds(wall),
                        ratio(wall.median, single.median),
                        show_seconds(longest),
                        ratio(longest.median, single_longest.median),
                    ]
                )
    header = [
        "rows",
        "stale",
        "index",
        "contender",
        "transactions",
        "reap wall",
        "wall / single",
        "longest row lock",
        "lock / single",
    ]
    idle_rows = []
    for out in outcomes:
        plain = Summary.of(out.idle["no index"])
        for tag in ("no index", "with index"):
            idle = Summary.of(out.idle[tag])
            idle_rows.append(
                [f"{out.rows:,}", tag, show_seconds(idle), ratio(idle.median, plain.median)]
            )
    problems = [f"{o.rows}: {m}" for o in outcomes for m in o.mismatches]
    verdict = (
        "Every run of both contenders turned exactly the stale rows to `error` and no other."
        if not problems
        else "**Mismatches:** " + "; ".join(problems)
    )
    return (
        table(header, rows)
        + "\n\n"
        + verdict
        + "\n\nThe daemon's whole job cycle when nothing is stale (reap each active status, "
        "count active jobs), connection kept:\n\n"
        + table(["rows", "index", "idle cycle wall", "vs no index"], idle_rows)
    )
