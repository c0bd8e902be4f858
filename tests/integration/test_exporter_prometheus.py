"""End to end: a real cleaner run writes the state file, the exporter reads it and a real
PostgreSQL, and a real Prometheus scrapes the exporter; the test asks Prometheus."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.exporter import StartExporter, write_site
from tests.fixtures.postgres import JobsDatabase
from tests.fixtures.prometheus import PrometheusFactory

pytestmark = pytest.mark.integration

DAY = 86400.0


def cleaner_command() -> list[str]:
    script = Path(sys.executable).parent / "limpeza-cleaner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cleaner"]


def make_file(path: Path, size: int, age: float) -> int:
    """Writes ``size`` bytes aged ``age``; returns what removing it frees (its blocks)."""
    path.write_bytes(b"x" * size)
    moment = time.time() - age
    os.utime(path, (moment, moment))
    return os.stat(path).st_blocks * 512


def by_label(results: list[dict[str, object]], label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for result in results:
        metric = result["metric"]
        value = result["value"]
        assert isinstance(metric, dict) and isinstance(value, list)
        out[str(metric[label])] = float(value[1])
    return out


def test_prometheus_scrapes_what_the_cleaner_did_and_the_jobs_table(
    start_exporter: StartExporter,
    prometheus_factory: PrometheusFactory,
    jobs_db: JobsDatabase,
    tmp_path: Path,
) -> None:
    site = write_site(tmp_path, jobs_db)
    # Expired files (removed), a fresh one and a protected-looking one (kept).
    sessions = sum(
        make_file(site.uploads / f"session_{i}.json", 100 + i, 2 * DAY) for i in range(3)
    )
    make_file(site.uploads / "session_fresh.json", 50, 60)
    make_file(site.uploads / "original_session_1.json", 70, 3 * DAY)
    finals = make_file(site.renders / "final_a.mp4", 1000, 2 * DAY)
    finals += make_file(site.renders / "final_b.mp4", 2000, 5 * DAY)

    # Stale jobs the cleaner run reaps (and counts in its state file).
    jobs_db.insert_many(
        [("old-r1", "running", 3600), ("old-r2", "running", 900), ("old-q1", "queued", 600)]
    )

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **site.env}
    run = subprocess.run(
        [*cleaner_command(), "--config", str(site.config), "once"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert site.state_file.exists()
    assert sorted(p.name for p in site.uploads.iterdir()) == [
        "original_session_1.json",
        "session_fresh.json",
    ]

    assert {k: v for k, v in jobs_db.statuses().items() if k.startswith("old-")} == {
        "old-r1": "error",
        "old-r2": "error",
        "old-q1": "error",
    }

    # Jobs written after the cleaner ran: what the exporter counts live.
    jobs_db.insert_many(
        [
            ("r-fresh-1", "running", 5),
            ("r-fresh-2", "running", 60),
            ("r-stale-1", "running", 600),
            ("r-stale-2", "running", 7200),
            ("q-fresh", "queued", 10),
            ("q-stale", "queued", 300),
            ("done-1", "done", 5 * DAY),
        ]
    )

    exporter = start_exporter(site.config, env=site.env)
    prom = prometheus_factory([f"127.0.0.1:{exporter.port}"])

    assert prom.value("limpeza_database_up") == 1
    assert prom.value("limpeza_state_up") == 1
    assert prom.value("limpeza_jobs_active") == 6
    assert by_label(prom.query("limpeza_jobs_stale"), "status") == {"running": 2, "queued": 1}
    assert by_label(prom.query("limpeza_jobs"), "status") == {"running": 4, "queued": 2}
    assert by_label(prom.query("limpeza_files_removed_total"), "rule") == {
        "sessions": 3,
        "final_videos": 2,
    }
    assert by_label(prom.query("limpeza_bytes_removed_total"), "rule") == {
        "sessions": sessions,  # bytes freed: the files' blocks
        "final_videos": finals,
    }
    reaped = prom.query('limpeza_jobs_reaped_total{source="database"}')
    assert by_label(reaped, "status") == {"running": 2, "queued": 1}
    assert prom.value("limpeza_sweeps_total") == 1
    last_sweep = prom.value("limpeza_last_sweep_timestamp_seconds")
    assert last_sweep is not None and abs(last_sweep - time.time()) < 3600
    size = by_label(prom.query("limpeza_filesystem_size_bytes"), "directory")
    assert set(size) == {str(site.uploads), str(site.renders)}
    assert all(v > 0 for v in size.values())
    assert by_label(prom.query("limpeza_directory_files"), "directory")[str(site.uploads)] == 2

    # Fresh values at every scrape: a job goes stale and one finishes.
    jobs_db.execute("UPDATE jobs SET updated_at = now() - interval '1 hour' WHERE id = 'q-fresh'")
    jobs_db.execute("UPDATE jobs SET status = 'done' WHERE id = 'r-stale-2'")
    prom.wait_for(
        'limpeza_jobs_stale{status="queued"} == 2',
        timeout=30,
    )
    prom.wait_for("limpeza_jobs_active == 5", timeout=30)

    # The database goes away: the target stays up and says so.
    jobs_db.server.stop()
    try:
        prom.wait_for("limpeza_database_up == 0", timeout=30)
        assert prom.value('up{job="limpeza"}') == 1
        assert prom.value("limpeza_state_up") == 1
    finally:
        jobs_db.server.start()
    prom.wait_for("limpeza_database_up == 1", timeout=30)
    assert exporter.stop() == 0
