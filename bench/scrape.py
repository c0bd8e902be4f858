"""Scrape latency of limpeza-exporter against a naive exporter, with many files and jobs.

Both exporters run as their own processes, read the same configuration and answer
``/metrics`` over HTTP; the benchmark scrapes each one in turn and reports p50/p99 latency:

* **limpeza-exporter** reads the cleaner's state file, runs one indexed count query on the
  jobs table and calls statvfs on each monitored directory;
* **naive** walks every monitored directory (``os.walk`` + ``lstat``) and counts the whole
  jobs table (``GROUP BY status``) at each scrape, as a first attempt would.

The data: N files spread over the monitored directories (sparse, 100 per leaf directory)
and N job rows in a temporary PostgreSQL cluster (1,000 of them queued or running, a third of
those stale, the rest finished) with the recommended index ``(status, updated_at)``.

    python -m bench.scrape            # 10,000 and 1,000,000 files and rows
    python -m bench.scrape --quick    # 10,000 only, fewer scrapes
    python -m bench.scrape --output section.md --json results.json

Not part of the tests: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg2
import requests
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from psycopg2 import sql

from cleaner.config import Config, load
from cleaner.state import DirectoryUsage, State, StateStore
from devtools import postgres
from devtools.limpeza import exporter_command
from devtools.process import free_port, terminate

FULL_SIZES = (10_000, 1_000_000)
QUICK_SIZES = (10_000,)
FILES_PER_LEAF = 100
DIRECTORIES = 2
#: Queued or running jobs, whatever the table size: finished jobs are what accumulates.
ACTIVE_JOBS = 1000
PATTERNS = (("session_{}.json", 700), ("temp_audio_{}.wav", 48_000), ("final_{}.mp4", 2_000_000))


def log(message: str) -> None:
    print(f"[bench.scrape] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def make_files(roots: Sequence[Path], total: int, now: float) -> None:
    """``total`` sparse files spread evenly over ``roots``, 100 per leaf directory."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for n, root in enumerate(roots):
        count = total // len(roots) + (1 if n < total % len(roots) else 0)
        for i in range(count):
            if i % FILES_PER_LEAF == 0:
                leaf = root / f"d{i // 100_000:02d}" / f"l{(i // FILES_PER_LEAF) % 1000:03d}"
                leaf.mkdir(parents=True, exist_ok=True)
            template, size = PATTERNS[i % len(PATTERNS)]
            path = os.path.join(leaf, template.format(f"{n}_{i:07d}"))
            fd = os.open(path, flags, 0o644)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
            age = 3600 + (i * 7919) % 7200  # all fresh: nothing for the cleaner to remove
            os.utime(path, (now - age, now - age))


def fill_jobs(conn: Any, rows: int) -> None:
    """``rows`` jobs: 1,000 queued or running (a third of them stale), the rest finished."""
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS jobs")
        cur.execute(
            "CREATE TABLE jobs (id bigint PRIMARY KEY, status text NOT NULL, "
            "created_at timestamptz NOT NULL, updated_at timestamptz)"
        )
        every = max(2, rows // ACTIVE_JOBS)
        cur.execute(
            "INSERT INTO jobs SELECT i, "
            "CASE WHEN i %% (2 * %(every)s) = 0 THEN 'running' "
            "     WHEN i %% (2 * %(every)s) = %(every)s THEN 'queued' "
            "     WHEN i %% 10 = 2 THEN 'error' ELSE 'done' END, "
            "now() - make_interval(secs => i %% 86400), "
            "now() - make_interval(secs => CASE WHEN i %% 3 = 0 THEN 3600 ELSE i %% 60 END) "
            "FROM generate_series(1, %(rows)s) AS i",
            {"every": every, "rows": rows},
        )
        cur.execute("CREATE INDEX ON jobs (status, updated_at)")
        cur.execute("VACUUM ANALYZE jobs")


def write_config(workdir: Path, roots: Sequence[Path]) -> Path:
    raw = {
        "state_file": str(workdir / "state.json"),
        "audit_log": None,
        "files": {
            "directories": [str(r) for r in roots],
            "rules": [
                {"name": name, "pattern": pattern, "max_age": "24h", "recursive": True}
                for name, pattern in (
                    ("sessions", "session_*.json"),
                    ("temp_audio", "temp_audio_*.wav"),
                    ("final_videos", "final_*.mp4"),
                )
            ],
        },
        "jobs": {"database": {"table": "jobs"}},
    }
    path = workdir / "limpeza.yml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def write_state(path: Path, roots: Sequence[Path], files: int) -> None:
    """What a cleaner run would have left: counters and the per-directory totals."""
    per_dir = files // len(roots)
    StateStore(path).save(
        State(
            files_removed={"sessions": 1000, "temp_audio": 500, "final_videos": 20},
            bytes_removed={
                "sessions": 700_000,
                "temp_audio": 24_000_000,
                "final_videos": 40_000_000,
            },
            sweeps=100,
            last_sweep_end=time.time(),
            last_success=time.time(),
            last_sweep_duration=1.0,
            directories={str(r): DirectoryUsage(per_dir, per_dir * 1000) for r in roots},
        )
    )


# --------------------------------------------------------------------------- naive exporter


class NaiveCollector(Collector):
    """What the exporter must not do: walk every tree and count the whole table per scrape."""

    def __init__(self, config: Config) -> None:
        self.config = config
        db = config.jobs.database
        assert db is not None and db.dsn
        self.conn = psycopg2.connect(db.dsn)
        self.conn.autocommit = True

    def collect(self) -> Iterator[Metric]:
        files = GaugeMetricFamily("naive_directory_files", "Files (walked)", labels=["directory"])
        size = GaugeMetricFamily("naive_directory_bytes", "Bytes (walked)", labels=["directory"])
        for directory in self.config.files.all_directories():
            count = total = 0
            for dirpath, _dirs, names in os.walk(directory):
                for name in names:
                    st = os.lstat(os.path.join(dirpath, name))
                    count += 1
                    total += st.st_size
            files.add_metric([str(directory)], count)
            size.add_metric([str(directory)], total)
        yield files
        yield size
        jobs = GaugeMetricFamily("naive_jobs", "Jobs per status (counted)", labels=["status"])
        stale = GaugeMetricFamily("naive_jobs_stale", "Stale jobs (counted)", labels=["status"])
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT status, count(*), count(*) FILTER (WHERE updated_at < now() - "
                    "CASE status WHEN 'running' THEN interval '3 minutes' "
                    "WHEN 'queued' THEN interval '2 minutes' END) FROM jobs GROUP BY status"
                )
            )
            for status, total_jobs, stale_jobs in cur.fetchall():
                jobs.add_metric([status], total_jobs)
                stale.add_metric([status], stale_jobs)
        yield jobs
        yield stale


def serve_naive(config_path: Path, port: int, env: dict[str, str]) -> None:
    registry = CollectorRegistry()
    registry.register(NaiveCollector(load(config_path, env)))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


# --------------------------------------------------------------------------- measuring


@dataclass
class Latency:
    exporter: str
    files: int
    rows: int
    scrapes: int
    p50: float
    p99: float
    mean: float
    max: float
    body_bytes: int


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def running(argv: Sequence[str], port: int, env: dict[str, str]) -> Iterator[None]:
    process = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {process.returncode}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv} is not listening after 60s")
            time.sleep(0.1)
        yield
    finally:
        terminate(process, timeout=30)


def scrape_latency(
    name: str, port: int, scrapes: int, files: int, rows: int, check: str
) -> Latency:
    url = f"http://127.0.0.1:{port}/metrics"
    session = requests.Session()
    warm = session.get(url, timeout=600)
    warm.raise_for_status()
    if check not in warm.text:
        raise RuntimeError(f"{name}: {check!r} not in its output")
    times: list[float] = []
    size = 0
    for _ in range(scrapes):
        started = time.perf_counter()
        response = session.get(url, timeout=600)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
        size = len(response.content)
    return Latency(
        name,
        files,
        rows,
        scrapes,
        percentile(times, 0.50),
        percentile(times, 0.99),
        statistics.fmean(times),
        max(times),
        size,
    )


def measure_size(
    size: int, scratch: Path, server: postgres.PostgresServer, scrapes: int, naive_scrapes: int
) -> list[Latency]:
    workdir = scratch / f"n{size}"
    workdir.mkdir()
    roots = [workdir / f"uploads{i}" for i in range(DIRECTORIES)]
    started = time.perf_counter()
    make_files(roots, size, time.time())
    log(f"{size:,} files in {time.perf_counter() - started:.1f}s")
    with contextlib.closing(server.connect()) as conn:
        started = time.perf_counter()
        fill_jobs(conn, size)
        log(f"{size:,} job rows in {time.perf_counter() - started:.1f}s")
    config = write_config(workdir, roots)
    write_state(workdir / "state.json", roots, size)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LIMPEZA_DATABASE_URL": server.dsn()}
    results: list[Latency] = []
    port = free_port()
    argv = [
        *exporter_command(),
        "--config",
        str(config),
        "--web.listen-address",
        f"127.0.0.1:{port}",
    ]
    with running([*argv, "--log.level", "warning"], port, env):
        results.append(
            scrape_latency("limpeza-exporter", port, scrapes, size, size, "limpeza_database_up 1.0")
        )
    log(f"limpeza-exporter at {size:,}: p50 {results[-1].p50 * 1000:.1f} ms")
    port = free_port()
    naive = [sys.executable, "-m", "bench.scrape", "--serve-naive", str(config), str(port)]
    with running(naive, port, env):
        results.append(scrape_latency("naive", port, naive_scrapes, size, size, "naive_jobs"))
    log(f"naive at {size:,}: p50 {results[-1].p50 * 1000:.1f} ms")
    shutil.rmtree(workdir)
    return results


def report(results: Sequence[Latency], quick: bool) -> str:
    rows = [
        "| exporter | files | job rows | scrapes | p50 | p99 | max | body |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.exporter} | {r.files:,} | {r.rows:,} | {r.scrapes} | {r.p50 * 1000:.1f} ms "
            f"| {r.p99 * 1000:.1f} ms | {r.max * 1000:.1f} ms | {r.body_bytes:,} B |"
        )
    cpu = platform.processor() or platform.machine()
    return (
        "## Scrape latency (`python -m bench.scrape" + (" --quick" if quick else "") + "`)\n\n"
        "Sequential scrapes of `/metrics` over HTTP on 127.0.0.1, after one warm-up scrape. "
        "limpeza-exporter reads the state file, runs one indexed count query (index on "
        "`(status, updated_at)`) and calls statvfs; the naive exporter walks every monitored "
        "directory and counts the whole jobs table at each scrape. Files are sparse, 100 per "
        f"directory; {ACTIVE_JOBS:,} of the job rows are queued or running, the rest finished.\n\n"
        + "\n".join(rows)
        + f"\n\nMachine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}.\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scrape", description=__doc__)
    p.add_argument("--quick", action="store_true", help="10,000 files and rows only")
    p.add_argument("--output", type=Path, help="write the Markdown section here (else stdout)")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--scratch", type=Path, help="where to build the data (default: a temp dir)")
    p.add_argument("--serve-naive", nargs=2, metavar=("CONFIG", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_naive:
        serve_naive(Path(args.serve_naive[0]), int(args.serve_naive[1]), dict(os.environ))
        return 0

    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    scrapes, naive_scrapes = (50, 10) if args.quick else (500, 20)
    scratch = Path(tempfile.mkdtemp(prefix="limpeza-bench-scrape-", dir=args.scratch))
    scratch.chmod(0o755)  # the cluster may belong to an unprivileged user
    results: list[Latency] = []
    try:
        with postgres.cluster("pg-", parent=scratch) as server:
            for size in sizes:
                results.extend(measure_size(size, scratch, server, scrapes, naive_scrapes))
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(scratch)], check=False)

    section = report(results, args.quick)
    if args.output:
        args.output.write_text(section, encoding="utf-8")
    else:
        sys.stdout.write(section)
    if args.json:
        args.json.write_text(
            json.dumps({"quick": args.quick, "results": [asdict(r) for r in results]}, indent=1)
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
