"""A fleet: three exporters on three hosts counting one shared jobs table, nothing mocked.

A real PostgreSQL holds 6 running jobs; three real exporters (each with its own config,
state file and directories, as on three application hosts) count the same table; a real
Prometheus scrapes all three and evaluates ``alerts/limpeza.rules.yml``; a real
Alertmanager routes with ``alerts/alertmanager.example.yml`` to a webhook in the test.

The table pages once: one LimpezaJobsActiveHigh alert in Prometheus, one notification
with one alert at the pager, labelled with the table and no instance. The dashboard's
"Jobs by status" query, over all instances, says what the table holds (running = 6, not
18).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cleaner.dsn import location
from tests.fixtures.alertmanager import AlertmanagerFactory, WebhookServer, routing_for
from tests.fixtures.exporter import StartExporter, write_site
from tests.fixtures.postgres import JobsDatabase
from tests.fixtures.prometheus import PrometheusFactory

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "alerts" / "limpeza.rules.yml"
DASHBOARD = REPO / "dashboards" / "limpeza.json"
ALERT = "LimpezaJobsActiveHigh"
HOSTS = ("app1", "app2", "app3")


def rules_with_short_for(directory: Path) -> Path:
    """The rules, with only LimpezaJobsActiveHigh's ``for: 1m`` shortened to 3s."""
    text = RULES.read_text(encoding="utf-8")
    old = f"- alert: {ALERT}\n        expr: table:limpeza_jobs_active:max > 5\n        for: 1m\n"
    assert text.count(old) == 1, f"{RULES} no longer has the expected {ALERT} rule"
    copy = directory / "limpeza.rules.yml"
    copy.write_text(text.replace(old, old.replace("for: 1m", "for: 3s")), encoding="utf-8")
    return copy


def panel_query(title: str) -> str:
    """The panel's query as Grafana sends it with every instance selected (All)."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (panel,) = [p for p in dashboard["panels"] if p["title"] == title]
    (target,) = panel["targets"]
    return str(target["expr"]).replace("$instance", ".*")


def table_truth(jobs_db: JobsDatabase) -> dict[str, float]:
    """Jobs per active status, counted in the table itself."""
    rows = jobs_db.execute(
        "SELECT s, count(j.id) FROM unnest(ARRAY['queued', 'running']) AS s "
        "LEFT JOIN jobs j ON j.status::text = s GROUP BY s"
    )
    return {str(status): float(count) for status, count in rows}


def test_three_exporters_on_one_table_page_once(
    jobs_db: JobsDatabase,
    start_exporter: StartExporter,
    prometheus_factory: PrometheusFactory,
    alertmanager_factory: AlertmanagerFactory,
    webhook_server: WebhookServer,
    tmp_path: Path,
) -> None:
    jobs_db.insert_many([(f"job{i}", "running", 10) for i in range(6)])
    table = f"{location(jobs_db.dsn)}/jobs"
    exporters = []
    for host in HOSTS:
        site = write_site(tmp_path / host, jobs_db)
        exporters.append(start_exporter(site.config, env=site.env))
    targets = [f"127.0.0.1:{e.port}" for e in exporters]
    am = alertmanager_factory(
        routing_for(webhook_server, group_wait="1s", group_interval="1s", repeat_interval="1h")
    )
    prom = prometheus_factory(
        targets,
        rule_files=[rules_with_short_for(tmp_path)],
        alertmanagers=[am.address],
        scrape_interval=1.0,
        evaluation_interval=1.0,
    )
    prom.wait_for('count(limpeza_jobs_active{job="limpeza"} == 6) == 3', timeout=60)
    series = prom.query("limpeza_jobs_active")
    assert {s["metric"]["table"] for s in series} == {table}, series
    assert "password" not in table and jobs_db.dsn not in table

    def is_page(alert: dict[str, Any]) -> bool:
        return bool(alert["labels"].get("alertname") == ALERT and alert.get("status") == "firing")

    page = webhook_server.wait_for(
        lambda n: n.path == "/pager" and any(is_page(a) for a in n.alerts),
        120,
        what=f"{ALERT} page\n{prom.log_tail()}",
    )
    (alert,) = page.alerts
    assert alert["labels"] == {
        "alertname": ALERT,
        "severity": "critical",
        "job": "limpeza",
        "table": table,
    }
    assert alert["annotations"]["description"] == (
        f"Table {table} reports 6 active jobs, above the paging threshold."
    )
    # Well past group_wait and several group intervals and evaluations: still one.
    prom.wait_for(f'count_over_time(ALERTS{{alertname="{ALERT}"}}[10s]) >= 8', timeout=60)
    time.sleep(3)
    firing = [a for a in prom.alerts() if a["labels"]["alertname"] == ALERT]
    assert len(firing) == 1, firing
    pages = [n for n in webhook_server.received() if ALERT in n.alertnames()]
    assert len(pages) == 1, [(n.path, n.status, len(n.alerts)) for n in pages]

    # The dashboard says what the table holds, not three times it.
    truth = table_truth(jobs_db)
    assert truth == {"running": 6.0, "queued": 0.0}
    shown = {
        str(r["metric"]["status"]): float(r["value"][1])
        for r in prom.query(panel_query("Jobs by status"))
    }
    assert shown == truth
    (active,) = prom.query(panel_query("Active jobs"))
    assert float(active["value"][1]) == 6
    assert active["metric"] == {"table": table}
