"""`make demo`: limpeza end to end on an embedded default, in a temporary directory.

It makes an uploads tree (old and fresh session, audio and final files, plus the users'
originals) and an API job cache with ghosts in it, shows what a dry run would do, runs
the cleaner for real (the sessions rule quarantines its files; one session is restored),
then starts the exporter and prints what Prometheus would scrape.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from cleaner.config import DEFAULTS
from devtools.process import free_port, terminate

REPO = Path(__file__).resolve().parents[1]
HOUR = 3600.0
DAY = 24 * HOUR

#: name -> age in seconds: what a backend leaves behind after a few days.
TREE = {
    "session_4f1c.json": 3 * DAY,
    "session_9a02.json": 2 * HOUR,
    "temp_audio_4f1c.wav": 30 * HOUR,
    "temp_audio_9a02.wav": 1 * HOUR,
    "final_4f1c.mp4": 5 * DAY,
    "final_9a02.mp4": 10 * 60,
    "original_4f1c.mp4": 9 * DAY,
    "original_9a02.mp4": 2 * HOUR,
    "original_session_export.json": 30 * DAY,
}

#: job id -> (status, minutes since its last update): 9 "active", 4 of them ghosts.
JOBS = {
    "scan-101": ("running", 11),
    "scan-102": ("running", 7),
    "scan-103": ("queued", 6),
    "scan-104": ("queued", 3),
    "scan-105": ("running", 1),
    "scan-106": ("running", 0.5),
    "scan-107": ("queued", 0.2),
    "scan-108": ("running", 2),
    "scan-109": ("queued", 1),
    "scan-090": ("done", 60),
}


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def cleaner(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cleaner", "--config", str(config), *args]
    print("$ limpeza-cleaner --config limpeza.yml " + " ".join(args), flush=True)
    result = subprocess.run(cmd, text=True, capture_output=True, check=False)
    sys.stdout.write(result.stdout)
    for line in result.stderr.splitlines():
        print(f"  (log) {line}")
    return result


def build(base: Path) -> Path:
    uploads = base / "uploads"
    uploads.mkdir()
    now = time.time()
    for name, age in TREE.items():
        path = uploads / name
        path.write_bytes(os.urandom(2048 if name.endswith(".mp4") else 256))
        os.utime(path, (now - age, now - age))
    cache = base / "desfollow_jobs.json"
    cache.write_text(
        json.dumps(
            {
                job: {"status": status, "updated_at": now - minutes * 60}
                for job, (status, minutes) in JOBS.items()
            },
            indent=1,
        )
    )
    config = base / "limpeza.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "interval": "30s",
                "state_file": str(base / "state" / "state.json"),
                "audit_log": str(base / "log" / "audit.jsonl"),
                "files": {"directories": [str(uploads)], "rules": _rules(base)},
                "jobs": {"cache_file": str(cache)},
            },
            sort_keys=False,
        )
    )
    return config


def _rules(base: Path) -> list[dict[str, object]]:
    """The default rules; the sessions rule keeps what it takes in a quarantine for 7 days."""
    quarantine = {"directory": str(base / "quarantine"), "retention": "7d", "max_bytes": "1GB"}
    return [
        {**rule, "quarantine": quarantine} if rule["name"] == "sessions" else dict(rule)
        for rule in DEFAULTS["files"]["rules"]
    ]


def show_quarantine(config: Path, uploads: Path) -> None:
    say("The sessions rule quarantined its file instead of deleting it")
    cleaner(config, "quarantine", "list")
    say("Someone needed session 4f1c after all: restore it")
    cleaner(config, "restore", "--session", "4f1c")
    path = uploads / "session_4f1c.json"
    if not path.exists():
        raise SystemExit("the restore did not put session_4f1c.json back")
    age = time.time() - path.stat().st_mtime
    print(f"back: {path.name}, its mtime kept ({age / HOUR:.1f} h old), held from the sweep")


def listing(uploads: Path) -> list[str]:
    return sorted(p.name for p in uploads.iterdir())


def show_exporter(config: Path, base: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    say(f"The exporter on http://{address}/metrics")
    log = (base / "exporter.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config",
            str(config),
            "--web.listen-address",
            address,
        ],
        stdout=log,
        stderr=log,
    )
    try:
        body = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
                    body = reply.read().decode()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        if not body:
            print("the exporter did not answer; its log:")
            print((base / "exporter.log").read_text())
            return
        wanted = (
            "limpeza_jobs_active",
            "limpeza_jobs_stale",
            "limpeza_jobs{",
            "limpeza_files_removed_total",
            "limpeza_bytes_removed_total",
            "limpeza_jobs_reaped_total",
            "limpeza_directory_files",
            "limpeza_quarantine_restored_total",
            "limpeza_filesystem_avail_bytes",
            "limpeza_last_success",
        )
        for line in body.splitlines():
            if line.startswith(wanted):
                print("  " + line)
    finally:
        terminate(proc)
        log.close()


# --------------------------------------------------------------------------- the whole stack

DEMO_FOR = "10s"
#: The alert the demo waits for: more than 5 active jobs in a table.
PAGING_ALERT = "LimpezaJobsActiveHigh"
DEMO_STALE_RUNNING = "45s"


def stack_missing() -> list[str]:
    """What the whole-stack part needs and this machine lacks."""
    missing = [b for b in ("prometheus", "prometheus-alertmanager") if not shutil.which(b)]
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) and not shutil.which("pg_ctl"):
        missing.append("postgresql")
    return missing


def rules_for_demo(directory: Path) -> Path:
    """The shipped rules, with LimpezaJobsActiveHigh's `for:` cut short for the demo.

    Found by its name in the parsed rule file, not by its text, so that the demo follows
    the rule however its expression is spelled.
    """
    document = yaml.safe_load((REPO / "alerts" / "limpeza.rules.yml").read_text(encoding="utf-8"))
    paging = [
        rule
        for group in document["groups"]
        for rule in group["rules"]
        if rule.get("alert") == PAGING_ALERT
    ]
    if len(paging) != 1:
        raise SystemExit(f"alerts/limpeza.rules.yml has {len(paging)} rules named {PAGING_ALERT}")
    paging[0]["for"] = DEMO_FOR
    copy = directory / "limpeza.rules.yml"
    copy.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return copy


def print_pages(hook: object, seen: int) -> int:
    """Prints the notifications that arrived since ``seen``; returns the new count."""
    received = hook.received()  # type: ignore[attr-defined]
    for note in received[seen:]:
        for alert in note.alerts:
            labels = alert.get("labels", {})
            summary = alert.get("annotations", {}).get("summary", "")
            status = alert.get("status", note.status).upper()
            print(
                f"  \033[1m[{note.receiver}] {status}\033[0m {labels.get('alertname')} "
                f"({labels.get('severity')}, {labels.get('table') or labels.get('instance')}): "
                f"{summary}",
                flush=True,
            )
    return len(received)


def wait_pages(hook: object, predicate: object, seen: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = print_pages(hook, seen)
        if any(predicate(n) for n in hook.received()):  # type: ignore[attr-defined, operator]
            return seen
        time.sleep(0.5)
    raise SystemExit("no notification arrived in time: see the logs above")


def is_note(status: str) -> object:
    def check(note: object) -> bool:
        return note.receiver == "pager" and any(  # type: ignore[attr-defined]
            a.get("labels", {}).get("alertname") == "LimpezaJobsActiveHigh"
            and a.get("status") == status
            for a in note.alerts  # type: ignore[attr-defined]
        )

    return check


def whole_stack(stack: contextlib.ExitStack, base: Path) -> None:
    """PostgreSQL, the cleaner daemon, the exporter, Prometheus, Alertmanager, a webhook."""
    import psycopg2

    from devtools import alertmanager as am
    from devtools import postgres as pg
    from devtools import prometheus as prom
    from devtools.limpeza import LimpezaProcesses

    say("The whole stack, every server on 127.0.0.1")
    # The cluster's owner is unprivileged when the demo runs as root: it gets a
    # directory of its own that it can reach.
    server = stack.enter_context(pg.cluster("limpeza-demo-pg-"))
    with contextlib.closing(server.connect()) as conn, conn.cursor() as cur:
        cur.execute("CREATE ROLE demo LOGIN PASSWORD 'demo-password'")
        cur.execute("CREATE DATABASE app OWNER demo")
    dsn = server.dsn("app", "demo", "demo-password")
    with contextlib.closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE jobs (id text PRIMARY KEY, status text NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz, "
            "error_message text)"
        )
        cur.execute("CREATE INDEX ON jobs (status, updated_at)")
        # 3 ghosts long past 3 minutes, 6 running jobs whose workers died just now.
        cur.execute(
            "INSERT INTO jobs (id, status, updated_at) SELECT 'ghost-' || i, 'running', "
            "now() - interval '10 minutes' FROM generate_series(1, 3) i"
        )
        cur.execute(
            "INSERT INTO jobs (id, status, updated_at) SELECT 'scan-' || i, 'running', now() "
            "FROM generate_series(1, 6) i"
        )
        cur.execute(
            "INSERT INTO jobs (id, status, updated_at) SELECT 'old-' || i, 'done', "
            "now() - interval '1 hour' FROM generate_series(1, 40) i"
        )
        conn.commit()
    print(f"PostgreSQL on 127.0.0.1:{server.port}: 9 jobs 'running' (3 ghosts for 10 min)")

    hook = stack.enter_context(am.serve_webhook())

    procs = LimpezaProcesses(base / "run", env={"LIMPEZA_DATABASE_URL": dsn})
    procs.base.mkdir()
    stack.callback(procs.stop_all)
    config = procs.write_config(
        interval="5s",
        directories=[base / "uploads"],
        extra={
            "log_level": "info",
            "jobs": {
                "database": {"table": "jobs"},
                "stale_after": {"running": DEMO_STALE_RUNNING, "queued": "2m"},
            },
        },
    )
    procs.start_cleaner(config)
    exporter = procs.start_exporter(config)
    alertmanager = am.start_alertmanager(am.routing_for(hook))
    stack.callback(shutil.rmtree, alertmanager.base, True)
    stack.callback(alertmanager.stop)
    prometheus = prom.start_prometheus(
        [exporter.address],
        rule_files=[rules_for_demo(base)],
        alertmanagers=[alertmanager.address],
        scrape_interval=2,
        evaluation_interval=2,
    )
    stack.callback(shutil.rmtree, prometheus.base, True)
    stack.callback(prometheus.stop)
    print(f"the cleaner daemon runs every 5s; running jobs go stale after {DEMO_STALE_RUNNING}")
    print(f"  exporter      http://{exporter.address}/metrics")
    print(f"  Prometheus    {prometheus.url('/alerts')}")
    print(f"  Alertmanager  {alertmanager.url()}")
    print(f"(the demo's copy of the rules waits {DEMO_FOR} instead of 1m before paging)")

    say("Waiting for the page: more than 5 jobs active")
    seen = wait_pages(hook, is_note("firing"), 0, 120)
    active = prometheus.value("limpeza_jobs_active")
    print(f"limpeza_jobs_active = {active:g}: the cleaner reaped the 3 ghosts, 6 remain")

    say("The operator answers the page: force-clean")
    result = procs.cleaner_command(config, "force-clean", "--yes")
    sys.stdout.write(result.stdout)
    say("Waiting for the resolved notification")
    wait_pages(hook, is_note("resolved"), seen, 120)
    print(
        f"\nlook around: {prometheus.url('/graph?g0.expr=limpeza_jobs_active')} "
        f"and {alertmanager.url()}"
    )
    if sys.stdin.isatty():
        print("Ctrl-C stops everything.")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="limpeza-demo-"))
    try:
        config = build(base)
        uploads = base / "uploads"
        say(f"An uploads tree in {uploads}")
        now = time.time()
        for name in listing(uploads):
            age = now - (uploads / name).stat().st_mtime
            print(f"  {name:<32} {age / HOUR:6.1f} h old")
        active = {j: v for j, v in JOBS.items() if v[0] in ("running", "queued")}
        say(f"The API's job cache: {len(active)} jobs 'active'")
        for job, (status, minutes) in active.items():
            print(f"  {job}  {status:<8} last update {minutes:4.1f} min ago")
        print("stale after: running 3 min, queued 2 min")
        say("What would go (dry run: nothing changes)")
        cleaner(config, "once", "--dry-run")
        say("One cycle for real: files, then the job cache")
        cleaner(config, "once")
        kept = listing(uploads)
        removed = sorted(set(TREE) - set(kept))
        print("removed: " + ", ".join(removed))
        print("kept:    " + ", ".join(kept))
        originals = {name for name in TREE if name.startswith("original_")}
        if not originals <= set(kept):
            raise SystemExit(f"an original was removed: {sorted(originals - set(kept))}")
        show_quarantine(config, uploads)
        say("Status")
        cleaner(config, "status")
        show_exporter(config, base)
        say("Audit log (one JSON line per file removed)")
        audit = base / "log" / "audit.jsonl"
        if audit.exists():
            for line in audit.read_text().splitlines():
                print("  " + line)
        missing = stack_missing()
        if missing:
            say("The whole stack")
            print(
                f"not shown: {', '.join(missing)} not installed (make demo installs them as "
                "root); the cleaner and exporter above ran on the JSON cache alone."
            )
        else:
            with contextlib.ExitStack() as stack:
                whole_stack(stack, base)
        print(f"\ndemo done; everything it made was in {base} and is removed now.")
        return 0
    except KeyboardInterrupt:
        print("\nstopped; everything the demo started is stopped.")
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
