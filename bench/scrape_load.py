"""Scrape latency with 1, 10 and 100 concurrent scrapers, the database up, down and frozen.

A real limpeza-exporter process in front of a real PostgreSQL (10,000 job rows, 1,000 of
them active, the recommended index), scraped by a load generator of our own (non-blocking
sockets and epoll, one thread of this process). Each round, N scrapers start at the same
instant, each on a new TCP connection (the worst case for the listen backlog: Prometheus
keeps its connections alive), sending what Prometheus sends (``Accept-Encoding: gzip``); a
scrape's latency runs from ``connect()`` to the last byte of the answer. Rounds are 20 ms
apart. The generator's own CPU per scrape is measured too, so a reader can tell whether it
or the exporter was the bottleneck: an asyncio-streams generator cost about 0.3 ms per
scrape, as much as the exporter, on this 2-core machine. ``wrk`` is not used: it times a
request from its write, not from ``connect()``, and keeps a closed loop of N connections
rather than rounds that start together.

* **up**: the database answers;
* **down**: PostgreSQL stopped (connections refused);
* **frozen**: the postmaster and every backend stopped with SIGSTOP: TCP still connects and
  the kernel acknowledges the queries, but nothing answers; only client-side deadlines end
  a scrape's wait (``exporter.database_timeout`` is 1 s here).

Listen overflows and drops are the TcpExt ``ListenOverflows`` and ``ListenDrops`` counters of
/proc/net/netstat before and after each run (they count the whole network namespace).

    python -m bench.scrape_load [--quick] [--output section.md] [--json results.json]

Not part of the tests: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import selectors
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from bench.scrape import fill_jobs, write_config, write_state
from devtools import postgres
from devtools.limpeza import ExporterProcess, start_exporter
from devtools.process import frozen

SCRAPERS = (1, 10, 100)
#: Scrapes per run: at least this many, in rounds of N simultaneous scrapers.
SAMPLES = {"up": 1000, "down": 1000, "frozen": 100}
QUICK_SAMPLES = {"up": 200, "down": 200, "frozen": 20}
MIN_ROUNDS = {"up": 20, "down": 20, "frozen": 3}
ROWS = 10_000
DATABASE_TIMEOUT = 1.0
#: The goals: p99 at 100 scrapers under 50 ms with the database up, and under
#: database_timeout + 50 ms with it frozen; no listen overflow anywhere.
GOAL_UP = 0.050
GOAL_FROZEN = DATABASE_TIMEOUT + 0.050
PAUSE = 0.020
SCRAPE_DEADLINE = 30.0
REQUEST = (
    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: limpeza-bench\r\n"
    b"Accept: text/plain;version=0.0.4;q=0.9,*/*;q=0.1\r\nAccept-Encoding: gzip\r\n"
    b"Connection: close\r\n\r\n"
)


def log(message: str) -> None:
    print(f"[bench.scrape_load] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the load


class ScrapeError(Exception):
    pass


@dataclass
class _Scrape:
    """One scrape in flight: its socket, when its connect() began, what it received."""

    sock: socket.socket
    started: float
    sent: bool = False
    received: bytearray = field(default_factory=bytearray)
    #: The length of the whole answer (head and body), once the head is in.
    total: int | None = None


def _head_length(received: bytearray) -> int | None:
    """The answer's whole length from its head (status 200 and Content-Length required)."""
    end = received.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(received[:end]).split(b"\r\n")
    status = head[0].split(b" ", 2)[1]
    if status != b"200":
        raise ScrapeError(f"HTTP {status.decode()}")
    for line in head[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return end + 4 + int(value)
    raise ScrapeError("no Content-Length")


def one_round(port: int, scrapers: int) -> tuple[list[float], list[str]]:
    """``scrapers`` scrapes started together, each on a new connection; their latencies.

    Non-blocking sockets and epoll in this thread: per scrape that costs a fraction of what
    asyncio's streams cost, so the generator takes less of the CPU it shares with the
    exporter.
    """
    latencies: list[float] = []
    errors: list[str] = []
    with selectors.DefaultSelector() as selector:
        for _ in range(scrapers):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            started = time.perf_counter()
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                errors.append(f"connect: {os.strerror(code)}")
                sock.close()
                continue
            selector.register(sock, selectors.EVENT_WRITE, _Scrape(sock, started))
        deadline = time.monotonic() + SCRAPE_DEADLINE
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for key in list(selector.get_map().values()):
                    errors.append(f"TimeoutError: no answer within {SCRAPE_DEADLINE:g} s")
                    selector.unregister(key.fileobj)
                    key.data.sock.close()
                break
            for key, _ in selector.select(remaining):
                scrape: _Scrape = key.data
                try:
                    latency = _step(selector, scrape)
                except (OSError, ScrapeError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    latency = -1.0
                if latency is not None:
                    selector.unregister(scrape.sock)
                    scrape.sock.close()
                    if latency >= 0:
                        latencies.append(latency)
    return latencies, errors


def _step(selector: selectors.BaseSelector, scrape: _Scrape) -> float | None:
    """Advances one scrape on readiness; its latency once the answer is complete."""
    sock = scrape.sock
    if not scrape.sent:  # writable: connected, or refused
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise ConnectionError(os.strerror(code))
        sock.send(REQUEST)  # a few hundred bytes: the socket buffer takes them at once
        selector.modify(sock, selectors.EVENT_READ, scrape)
        scrape.sent = True
        return None
    chunk = sock.recv(262144)
    if not chunk:
        raise ScrapeError("closed before the whole answer")
    scrape.received += chunk
    if scrape.total is None:
        scrape.total = _head_length(scrape.received)
    if scrape.total is not None and len(scrape.received) >= scrape.total:
        return time.perf_counter() - scrape.started
    return None


def rounds(port: int, scrapers: int, count: int) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    for _ in range(count):
        done, failed = one_round(port, scrapers)
        latencies += done
        errors += failed
        time.sleep(PAUSE)
    return latencies, errors


def listen_counters() -> tuple[int, int]:
    """TcpExt ListenOverflows and ListenDrops of this network namespace."""
    with open("/proc/net/netstat", encoding="ascii") as fh:
        lines = fh.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table["ListenOverflows"]), int(table["ListenDrops"])
    return 0, 0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Run:
    database: str
    scrapers: int
    scrapes: int
    errors: int
    p50: float
    p99: float
    max: float
    mean: float
    overflows: int
    drops: int
    cpu_per_scrape: float
    generator_cpu_per_scrape: float
    first_error: str


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(exporter: ExporterProcess, database: str, scrapers: int, samples: int) -> Run:
    count = max(MIN_ROUNDS[database], -(-samples // scrapers))
    overflows, drops = listen_counters()
    cpu = cpu_seconds(exporter.process.pid)
    generator = time.thread_time()
    latencies, errors = rounds(exporter.port or 0, scrapers, count)
    generator = time.thread_time() - generator
    cpu = cpu_seconds(exporter.process.pid) - cpu
    after = listen_counters()
    run = Run(
        database,
        scrapers,
        len(latencies) + len(errors),
        len(errors),
        percentile(latencies, 0.5) if latencies else float("nan"),
        percentile(latencies, 0.99) if latencies else float("nan"),
        max(latencies, default=float("nan")),
        statistics.fmean(latencies) if latencies else float("nan"),
        after[0] - overflows,
        after[1] - drops,
        cpu / max(1, len(latencies) + len(errors)),
        generator / max(1, len(latencies) + len(errors)),
        errors[0] if errors else "",
    )
    log(
        f"{database:6} {scrapers:3} scrapers: p50 {run.p50 * 1000:.1f} ms, "
        f"p99 {run.p99 * 1000:.1f} ms, {run.errors} errors, {run.overflows} overflows, "
        f"{run.cpu_per_scrape * 1000:.2f} CPU-ms per scrape "
        f"(generator {run.generator_cpu_per_scrape * 1000:.2f})"
    )
    return run


# --------------------------------------------------------------------------- the setting


def bench_config(workdir: Path) -> Path:
    roots = [workdir / "uploads0", workdir / "uploads1"]
    for root in roots:
        root.mkdir(parents=True)
    path = write_config(workdir, roots)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["exporter"] = {"database_timeout": f"{DATABASE_TIMEOUT:g}s"}
    raw["jobs"]["database"]["connect_timeout"] = "2s"  # libpq's minimum
    raw["log_level"] = "warning"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    write_state(workdir / "state.json", roots, 1000)
    return path


def run_section(quick: bool, scratch: Path) -> list[Run]:
    samples = QUICK_SAMPLES if quick else SAMPLES
    results: list[Run] = []
    workdir = Path(tempfile.mkdtemp(prefix="scrape-load-", dir=scratch))
    try:
        with postgres.cluster("pg-load-", parent=scratch) as server:
            with contextlib.closing(server.connect()) as conn:
                fill_jobs(conn, ROWS)
            config = bench_config(workdir)
            exporter = start_exporter(
                config, base=workdir, env={"LIMPEZA_DATABASE_URL": server.dsn()}
            )
            try:
                exporter.wait_metrics()
                check(exporter, "limpeza_database_up")
                for scrapers in SCRAPERS:
                    results.append(measure(exporter, "up", scrapers, samples["up"]))
                with frozen(server.pid()):
                    for scrapers in SCRAPERS:
                        results.append(measure(exporter, "frozen", scrapers, samples["frozen"]))
                server.stop()
                for scrapers in SCRAPERS:
                    results.append(measure(exporter, "down", scrapers, samples["down"]))
                server.start()
            finally:
                exporter.stop()
                log(f"exporter log:\n{exporter.log_tail(2000)}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def check(exporter: ExporterProcess, name: str) -> None:
    text = exporter.get().text
    if not any(line.startswith(name) and line.endswith(" 1.0") for line in text.splitlines()):
        raise RuntimeError(f"the exporter does not report {name} 1 before the runs:\n{text}")


# --------------------------------------------------------------------------- the report


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(run: Run) -> str:
    if run.scrapers != max(SCRAPERS) or run.database == "down":
        return ""
    goal = GOAL_UP if run.database == "up" else GOAL_FROZEN
    met = run.p99 < goal and run.errors == 0 and run.overflows == 0
    return f"{'met' if met else 'NOT met'} (p99 < {_ms(goal)}, no overflow)"


def report(results: Sequence[Run], quick: bool) -> str:
    rows = [
        "| database | scrapers | scrapes | errors | p50 | p99 | max | exporter CPU per scrape "
        "| generator CPU per scrape | listen overflows (drops) | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        rows.append(
            f"| {r.database} | {r.scrapers} | {r.scrapes:,} | {r.errors} | {_ms(r.p50)} "
            f"| {_ms(r.p99)} | {_ms(r.max)} | {r.cpu_per_scrape * 1000:.2f} ms "
            f"| {r.generator_cpu_per_scrape * 1000:.2f} ms "
            f"| {r.overflows} ({r.drops}) | {verdict(r)} |"
        )
    errors = [
        f"- {r.database}, {r.scrapers} scrapers: {r.first_error}" for r in results if r.errors
    ]
    return (
        _intro(quick)
        + "\n\n"
        + "\n".join(rows)
        + ("\n\nErrors:\n" + "\n".join(errors) if errors else "")
        + "\n\n"
        + reading(results)
        + "\n"
    )


def reading(results: Sequence[Run]) -> str:
    """What the numbers say against the goals, from the numbers themselves."""
    by = {(r.database, r.scrapers): r for r in results}
    most = max(SCRAPERS)
    lines = []
    up = by.get(("up", most))
    single = by.get(("up", min(SCRAPERS)))
    if up is not None:
        round_cpu = up.cpu_per_scrape * most
        generator_cpu = up.generator_cpu_per_scrape * most
        collection = (
            f" A scrape alone cost {single.cpu_per_scrape * 1000:.2f} ms of exporter CPU, "
            "most of it the collection (its queries, each watched by a thread of its own "
            "for its deadline, and the rendering), which a round's scrapes share."
            if single is not None
            else ""
        )
        lines.append(
            f"- **Database up, {most} scrapers**: p99 {_ms(up.p99)} against the goal of "
            f"{_ms(GOAL_UP)}: {verdict(up).split(' (')[0]}. One event loop serves every "
            "connection and the collection runs in a worker thread; the exporter spent "
            f"{up.cpu_per_scrape * 1000:.2f} ms of CPU per scrape, about {_ms(round_cpu)} "
            f"per round of {most}, and the load generator {_ms(generator_cpu)} per round."
            + collection
            + " Both shared the machine's 2 cores with PostgreSQL and whatever else ran "
            "(load average above), at a lower priority (`nice`); what a round's p99 holds "
            "beyond that CPU is waiting: for a core, for PostgreSQL, for the shared "
            "collection."
        )
    frozen_run = by.get(("frozen", most))
    if frozen_run is not None:
        lines.append(
            f"- **Database frozen, {most} scrapers**: p99 {_ms(frozen_run.p99)} against "
            f"`database_timeout` + 50 ms = {_ms(GOAL_FROZEN)}: "
            f"{verdict(frozen_run).split(' (')[0]}. The scrapes of a round wait together for "
            "the one collection that waits on the database, which gives up at "
            "`database_timeout`; what comes on top is the per-connection CPU as above and "
            "waiting for a core."
        )
    overflows = sum(r.overflows for r in results)
    drops = sum(r.drops for r in results)
    lines.append(
        f"- **Listen overflows**: {overflows} in all runs ({drops} drops), with a backlog of "
        f"1024 (the kernel's `somaxconn` caps it)."
        if overflows or drops
        else "- **Listen overflows**: none in any run (backlog 1024; it was 5, and 100 "
        "scrapers at once overflowed it)."
    )
    down = by.get(("down", most))
    if down is not None:
        lines.append(
            f"- **Database down**: a refused connection fails at once; p99 {_ms(down.p99)} "
            f"with {most} scrapers."
        )
    return "\n".join(lines)


def _intro(quick: bool) -> str:
    load = os.getloadavg()[0]
    return (
        "Rounds of N scrapers starting at the same instant, each scrape on a new TCP "
        "connection with `Accept-Encoding: gzip`, 20 ms between rounds, against a real "
        f"limpeza-exporter and PostgreSQL ({ROWS:,} job rows, 1,000 active; "
        f"`exporter.database_timeout: {DATABASE_TIMEOUT:g}s`). Latency from `connect()` to "
        "the last byte. *frozen*: the postmaster and its backends stopped with SIGSTOP; "
        "*down*: PostgreSQL stopped. The load generator (non-blocking sockets and epoll, one "
        f"thread) shares the machine's {os.cpu_count()} cores with the exporter and "
        "PostgreSQL, and the whole run is `nice`d; its own CPU per scrape is in the table. "
        "Overflows are the namespace's TcpExt `ListenOverflows` (`ListenDrops`) "
        f"during the run. Load average (1 min) when the table was written: {load:.2f}."
        + (" Quick run: fewer scrapes." if quick else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scrape_load", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer scrapes per run")
    p.add_argument("--output", type=Path, help="write the Markdown section here (else stdout)")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="limpeza-bench-load-"))
    scratch.chmod(0o755)  # the cluster may belong to an unprivileged user
    try:
        results = run_section(args.quick, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    section = report(results, args.quick)
    if args.output:
        args.output.write_text(section, encoding="utf-8")
    else:
        sys.stdout.write(section)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
