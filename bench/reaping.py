"""Section 3, reaping jobs in a real PostgreSQL: limpeza's batched reap and one plain UPDATE.

A throwaway cluster (``initdb`` on a temporary directory, 127.0.0.1 and a free port, owned
by an unprivileged user when run as root, durable settings: fsync and synchronous commit
on) holds a ``jobs`` table like the API's: 1% of the rows are stale active jobs (an hour
without an update), 1% fresh active ones, the rest finished. Each contender starts from
the same rows (the stale ones are put back and the table vacuumed between runs):

* limpeza: ``cleaner.jobs.database.end_jobs`` per active status, as the daemon's reaper calls it:
  batches of ``batch_size`` rows, ``UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE
  SKIP LOCKED)``, each batch its own transaction (``BEGIN``, the ``SET LOCAL`` limits, the
  UPDATE, ``COMMIT``: four round trips);
* the same through PgBouncer (Debian's package) in transaction pooling mode with a pool of
  one server connection, as Supabase's pooler on port 6543 hands them out, logged in as a
  password-protected role (SCRAM on both sides);
* one statement: ``UPDATE jobs SET status = 'error', error_message = ... WHERE
  (status = 'running' AND updated_at < now() - 3 min) OR (status = 'queued' AND ...)``.

Row locks are held until commit, so a contender's longest transaction (``BEGIN`` sent to
``COMMIT`` answered, timed by the client) bounds the time any row stays locked: the longest
an API request touching such a row can be blocked. The SQL is timed on a plain psycopg2
connection: the daemon's client-side deadline (a watcher thread per statement) is not in
these figures. The idle cycle is the daemon's whole JobReaper cycle (reap each status,
count the active jobs) when nothing is stale, without and with the index the README
recommends, ``CREATE INDEX ON jobs (status, updated_at)``, directly and through PgBouncer.
"""

from __future__ import annotations

import contextlib
import shutil
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
from devtools import pgbouncer, postgres
from devtools.pgbouncer import PgBouncer
from devtools.postgres import PostgresServer
from devtools.process import MissingRequirementError

STALE_AFTER = {"running": "3m", "queued": "2m"}
REASON = "stale (benchmark)"
INDEX = "jobs_status_updated_at_idx"
BATCHED = "limpeza batched"
POOLED = "limpeza batched, PgBouncer transaction pool"
SINGLE = "single UPDATE"
CONTENDERS = (BATCHED, POOLED, SINGLE)
DIRECT, THROUGH_POOLER = "direct", "PgBouncer"


class _TimedCursor(psycopg2.extensions.cursor):
    """Records how long each transaction takes, from ``BEGIN`` sent to ``COMMIT`` answered;
    a statement outside ``BEGIN`` is a transaction of its own (autocommit)."""

    def execute(self, query: Any, vars: Any = None) -> None:
        conn = self.connection
        assert isinstance(conn, _TimedConnection)
        start = time.perf_counter()
        try:
            super().execute(query, vars)
        finally:
            end = time.perf_counter()
            command = query.strip().upper() if isinstance(query, str) else None
            if command == "BEGIN":
                conn.began = start
            elif command in ("COMMIT", "ROLLBACK") and conn.began is not None:
                conn.durations.append(end - conn.began)
                conn.began = None
            elif conn.began is None:
                conn.durations.append(end - start)


class _TimedConnection(psycopg2.extensions.connection):
    durations: list[float]
    began: float | None

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.durations = []
        self.began = None
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
    """Creates and fills the jobs table (the test role may reap it through the pooler);
    returns the expected stale count per status."""
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
        cur.execute(f"GRANT SELECT, UPDATE ON jobs TO {postgres.ROLE}")
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


def config_for(dsn: str) -> Config:
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
    return build(raw, env={"LIMPEZA_DATABASE_URL": dsn})


def reap_batched(config: Config) -> tuple[float, list[float], int]:
    """limpeza's reap: wall time, each batch's duration, rows changed."""
    db = config.jobs.database
    assert db is not None and db.dsn is not None
    conn = psycopg2.connect(db.dsn, connection_factory=_TimedConnection)
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
    #: "no index|direct" -> idle cycle walls.
    idle: dict[str, list[float]] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)


def measure(
    pg: PostgresServer,
    pooler: PgBouncer | None,
    rows: int,
    repeats: int,
    log: Callable[[str], None],
) -> ReapOutcome:
    configs = {DIRECT: config_for(pg.dsn())}
    if pooler is not None:
        configs[THROUGH_POOLER] = config_for(pooler.dsn("postgres"))
    names = [BATCHED, SINGLE] if pooler is None else [BATCHED, POOLED, SINGLE]
    with contextlib.closing(pg.connect()) as conn:
        started = time.perf_counter()
        expected = load(conn, rows)
        log(f"loaded {rows} jobs in {time.perf_counter() - started:.1f}s")
        stale = sum(expected.values())
        out = ReapOutcome(rows, stale)
        for indexed in (False, True):
            set_index(conn, indexed)
            tag = "with index" if indexed else "no index"
            for name in names:
                out.runs[f"{name}|{tag}"] = {"wall": [], "longest": [], "batches": []}
            for rep in range(repeats):
                # Each repeat runs the contenders in another order.
                shift = rep % len(names)
                for name in names[shift:] + names[:shift]:
                    reset(conn)
                    if name == BATCHED:
                        wall, durations, changed = reap_batched(configs[DIRECT])
                    elif name == POOLED:
                        wall, durations, changed = reap_batched(configs[THROUGH_POOLER])
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
                        f"  {rows} {name} ({tag}): {wall:.3f}s, longest transaction "
                        f"{max(durations):.3f}s of {len(durations)}"
                    )
            paths = list(configs)
            for path in paths:
                out.idle[f"{tag}|{path}"] = []
            for rep in range(max(repeats, 5)):
                for path in paths if rep % 2 == 0 else paths[::-1]:
                    out.idle[f"{tag}|{path}"].append(idle_cycle(configs[path]))
            for path in paths:
                walls = out.idle[f"{tag}|{path}"]
                log(f"  {rows} idle cycle ({tag}, {path}): {Summary.of(walls).median:.4f}s")
    return out


@contextlib.contextmanager
def pooler_for(pg: PostgresServer, log: Callable[[str], None]) -> Iterator[PgBouncer | None]:
    """PgBouncer in transaction mode (pool of one) in front of ``pg``, stopped afterwards;
    None, said in the log, when it is not installed."""
    postgres.create_test_role(pg)
    try:
        bouncer = pgbouncer.start_pgbouncer(pg, pool_mode="transaction", pool_size=1)
    except MissingRequirementError as missing:
        log(f"no PgBouncer contender: {missing}")
        yield None
        return
    try:
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(bouncer.base, ignore_errors=True)


def run_section(
    sizes: tuple[int, ...], repeats: int, log: Callable[[str], None]
) -> list[ReapOutcome]:
    outcomes = []
    with server() as pg, pooler_for(pg, log) as pooler:
        for rows in sizes:
            outcomes.append(measure(pg, pooler, rows, repeats, log))
    return outcomes


def report(outcomes: list[ReapOutcome]) -> str:
    rows = []
    for out in outcomes:
        for tag in ("no index", "with index"):
            single = Summary.of(out.runs[f"{SINGLE}|{tag}"]["wall"])
            for name in CONTENDERS:
                entry = out.runs.get(f"{name}|{tag}")
                if entry is None:
                    continue
                wall = Summary.of(entry["wall"])
                longest = Summary.of(entry["longest"])
                single_longest = Summary.of(out.runs[f"{SINGLE}|{tag}"]["longest"])
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
        "longest transaction (row lock)",
        "lock / single",
    ]
    idle_rows = []
    for out in outcomes:
        plain = Summary.of(out.idle[f"no index|{DIRECT}"])
        for tag in ("no index", "with index"):
            for path in (DIRECT, THROUGH_POOLER):
                walls = out.idle.get(f"{tag}|{path}")
                if walls is None:
                    continue
                idle = Summary.of(walls)
                idle_rows.append(
                    [
                        f"{out.rows:,}",
                        tag,
                        path,
                        show_seconds(idle),
                        ratio(idle.median, plain.median),
                    ]
                )
    problems = [f"{o.rows}: {m}" for o in outcomes for m in o.mismatches]
    verdict = (
        "Every run of every contender turned exactly the stale rows to `error` and no other."
        if not problems
        else "**Mismatches:** " + "; ".join(problems)
    )
    pooled = any(key.startswith(POOLED) for o in outcomes for key in o.runs)
    missing = "" if pooled else "\n\nPgBouncer is not installed: no pooler contender ran."
    return (
        table(header, rows)
        + "\n\n"
        + verdict
        + missing
        + "\n\nThe daemon's whole job cycle when nothing is stale (reap each active status, "
        "count active jobs), connection kept:\n\n"
        + table(
            ["rows", "index", "connection", "idle cycle wall", "vs no index, direct"], idle_rows
        )
    )
