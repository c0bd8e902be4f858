"""The Grafana dashboard: its variables and panels, and every panel's query on real data.

The real cleaner daemon sweeps real expired files and reaps real stale jobs in a real
PostgreSQL, the real exporter serves them, a real Prometheus scrapes it; each query of
``dashboards/limpeza.json`` (with ``$instance`` and ``$__rate_interval`` substituted as
Grafana would) must return data there.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cleaner.config import DEFAULTS
from tests.fixtures.limpeza_processes import LimpezaProcesses
from tests.fixtures.postgres import JobsDatabase
from tests.fixtures.prometheus import PrometheusFactory, PrometheusServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "limpeza.json"
RULES = REPO / "alerts" / "limpeza.rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCRAPE_INTERVAL = 1.0
# What Grafana computes for $__rate_interval: max(4 x scrape interval, step + scrape interval).
RATE_INTERVAL = "15s"

REQUIRED_PANELS = {
    "Active jobs",
    "Jobs by status",
    "Stale jobs",
    "Files removed per rule",
    "Bytes removed per rule",
    "Jobs reaped",
    "Disk used per directory",
    "Free space per directory",
    "Sweep duration",
    "Time since last successful sweep",
    "Cleanup errors",
    "Quarantine per rule",
    "Quarantine restored and expired",
}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels() -> list[dict[str, Any]]:
    return list(dashboard()["panels"])


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in panels() for t in p["targets"]]


def variable(name: str) -> dict[str, Any]:
    (found,) = [v for v in dashboard()["templating"]["list"] if v["name"] == name]
    return dict(found)


def expand(expr: str, instance: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$instance", instance)


# --------------------------------------------------------------------------- the file


def test_datasource_variable_is_prometheus() -> None:
    source = variable("datasource")
    assert (source["type"], source["query"]) == ("datasource", "prometheus")


def test_instance_variable_lists_exporters() -> None:
    instance = variable("instance")
    assert instance["type"] == "query"
    assert instance["datasource"] == DATASOURCE
    assert instance["query"]["query"] == "label_values(limpeza_jobs_active, instance)"
    assert instance["includeAll"] and instance["multi"]


def test_has_every_required_panel() -> None:
    titles = [p["title"] for p in panels()]
    assert len(titles) == len(set(titles)), titles
    assert set(titles) >= REQUIRED_PANELS, REQUIRED_PANELS - set(titles)


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), ids
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["description"], f"{panel['title']} has no description"


@pytest.mark.parametrize(("title", "target"), targets(), ids=lambda v: str(v)[:40])
def test_every_query_uses_the_variables(title: str, target: dict[str, Any]) -> None:
    assert target["datasource"] == DATASOURCE, title
    selectors = re.findall(r"\b(\w+)\{([^}]*)\}", target["expr"])
    assert selectors, f"{title}: {target['expr']} selects no series"
    for metric, matchers in selectors:
        assert 'instance=~"$instance"' in matchers, f"{title}: {metric} ignores $instance"


def test_active_jobs_panel_shows_the_paging_threshold() -> None:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    (rule,) = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "LimpezaJobsActiveHigh"
    ]
    threshold = float(rule["expr"].rsplit(">", 1)[1])
    (panel,) = [p for p in panels() if p["title"] == "Active jobs"]
    defaults = panel["fieldConfig"]["defaults"]
    steps = [s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None]
    assert steps == [threshold]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"


# --------------------------------------------------------------------------- real data


def seed_expired_files(directory: Path) -> int:
    """Files each default rule removes (two days old) and one it keeps; the bytes their
    removal frees (their blocks)."""
    old = time.time() - 2 * 86400
    total = 0
    for name, size in (
        ("session_a.json", 120),
        ("temp_audio_a.wav", 4096),
        ("final_a.mp4", 8192),
    ):
        path = directory / name
        path.write_bytes(b"x" * size)
        os.utime(path, (old, old))
        total += os.stat(path).st_blocks * 512
    (directory / "session_fresh.json").write_bytes(b"{}")
    # Quarantined by the drafts rule: it frees nothing while it is there.
    (directory / "draft_a.json").write_bytes(b"{}")
    os.utime(directory / "draft_a.json", (old, old))
    return total


def rules_with_a_quarantine(base: Path) -> list[dict[str, Any]]:
    """The default rules, and one whose files go to a quarantine (for its panels)."""
    quarantine = {"directory": str(base / "quarantine"), "retention": "1d", "max_bytes": "1GB"}
    drafts = {"name": "drafts", "pattern": "draft_*.json", "max_age": "1h"}
    return [*DEFAULTS["files"]["rules"], {**drafts, "quarantine": quarantine}]


def wait_for_data(prom: PrometheusServer, exprs: list[tuple[str, str]]) -> list[str]:
    """Polls every query until it returns data; the ones that never did, with their result."""
    pending = dict.fromkeys(exprs, "")
    deadline = time.monotonic() + 90
    while pending and time.monotonic() < deadline:
        for key in list(pending):
            results = prom.query(key[1])
            if results:
                del pending[key]
            else:
                pending[key] = str(results)
        time.sleep(SCRAPE_INTERVAL)
    return [f"{title}: {expr} -> {got}" for (title, expr), got in pending.items()]


def test_every_panel_query_returns_data(
    jobs_db: JobsDatabase,
    limpeza_processes: LimpezaProcesses,
    prometheus_factory: PrometheusFactory,
) -> None:
    jobs_db.insert_many(
        [
            ("r1", "running", 10),
            ("r2", "running", 20),
            ("r3", "running", 400),  # stale: reaped by the cleaner
            ("q1", "queued", 5),
            ("q2", "queued", 300),  # stale
            ("d1", "done", 3600),
        ]
    )
    uploads = limpeza_processes.base / "uploads"
    uploads.mkdir()
    removed_bytes = seed_expired_files(uploads)
    config = limpeza_processes.write_config(
        jobs_db,
        interval="1s",
        directories=[uploads],
        extra={"files": {"rules": rules_with_a_quarantine(limpeza_processes.base)}},
    )
    cleaner = limpeza_processes.start_cleaner(config)
    exporter = limpeza_processes.start_exporter(config)
    prom = prometheus_factory([exporter.address], scrape_interval=SCRAPE_INTERVAL)

    instances = prom.api("label/instance/values", {"match[]": "limpeza_jobs_active"})
    assert exporter.address in instances, instances

    exprs = [(title, expand(t["expr"], exporter.address)) for title, t in targets()]
    missing = wait_for_data(prom, exprs)
    cleaner.check_running()
    assert not missing, (
        "panel queries without data:\n  "
        + "\n  ".join(missing)
        + f"\ntargets: {prom.target_health()}\ncleaner log:\n{cleaner.log_tail()}"
        + f"\nexporter log:\n{exporter.log_tail()}"
    )

    # The data is the cleaner's real work: the seeded files went, the stale jobs were ended.
    assert prom.value("sum(limpeza_files_removed_total)") == 4
    assert prom.value("sum(limpeza_quarantine_files)") == 1
    assert prom.value("sum(limpeza_bytes_removed_total)") == removed_bytes
    assert prom.value("sum(limpeza_jobs_reaped_total)") == 2
    assert prom.value("limpeza_jobs_active") == 3
    assert not (uploads / "session_a.json").exists()
    assert (uploads / "session_fresh.json").exists()
