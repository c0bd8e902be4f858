"""The live alert path, end to end, nothing mocked.

A real PostgreSQL holds the jobs; the real cleaner daemon runs (automatic force-clean
off); the real exporter serves the counts; a real Prometheus scrapes it every second and
evaluates ``alerts/limpeza.rules.yml``; a real Alertmanager routes with
``alerts/alertmanager.example.yml`` to a webhook server in the test.

Six running jobs page the pager receiver with LimpezaJobsActiveHigh as critical; a
``limpeza-cleaner force-clean --yes`` ends them and the resolved notification arrives.
Five jobs page nobody, and one more job then does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cleaner.dsn import location
from tests.fixtures.alertmanager import (
    AlertmanagerFactory,
    Notification,
    WebhookServer,
    routing_for,
)
from tests.fixtures.limpeza_processes import LimpezaProcess, LimpezaProcesses
from tests.fixtures.postgres import JobsDatabase
from tests.fixtures.prometheus import PrometheusFactory, PrometheusServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "alerts" / "limpeza.rules.yml"
ALERT = "LimpezaJobsActiveHigh"
# The rule waits `for: 1m` before it fires; the test's copy waits this long instead.
SHORT_FOR = "3s"
PAGE_TIMEOUT = 120.0


def rules_with_short_for(directory: Path) -> Path:
    """A copy of the rules where only LimpezaJobsActiveHigh's ``for: 1m`` is shortened.

    Everything else (expression, threshold, labels, annotations, the other rules) is
    byte for byte the file that is deployed.
    """
    text = RULES.read_text(encoding="utf-8")
    old = f"- alert: {ALERT}\n        expr: table:limpeza_jobs_active:max > 5\n        for: 1m\n"
    assert text.count(old) == 1, f"{RULES} no longer has the expected {ALERT} rule"
    copy = directory / "limpeza.rules.yml"
    copy.write_text(text.replace(old, old.replace("for: 1m", f"for: {SHORT_FOR}")), "utf-8")
    return copy


def is_page(notification: Notification, status: str) -> bool:
    return (
        notification.path == "/pager"
        and notification.status == status
        and any(
            a["labels"].get("alertname") == ALERT and a.get("status") == status
            for a in notification.alerts
        )
    )


def the_alert(notification: Notification) -> dict[str, Any]:
    (alert,) = [a for a in notification.alerts if a["labels"].get("alertname") == ALERT]
    return dict(alert)


def start_stack(
    jobs_db: JobsDatabase,
    processes: LimpezaProcesses,
    prometheus_factory: PrometheusFactory,
    alertmanager_factory: AlertmanagerFactory,
    webhook_server: WebhookServer,
) -> tuple[LimpezaProcess, LimpezaProcess, PrometheusServer]:
    """Cleaner, exporter, Alertmanager and Prometheus, each waited for."""
    config = processes.write_config(jobs_db, interval="1s")
    cleaner = processes.start_cleaner(config)
    exporter = processes.start_exporter(config)
    am = alertmanager_factory(
        routing_for(webhook_server, group_wait="1s", group_interval="1s", repeat_interval="1h")
    )
    prom = prometheus_factory(
        [exporter.address],
        rule_files=[rules_with_short_for(processes.base)],
        alertmanagers=[am.address],
        scrape_interval=1.0,
        evaluation_interval=1.0,
    )
    # Prometheus applies its targets and its Alertmanagers a few seconds after /-/ready.
    prom.wait_for(f'up{{job="limpeza", instance="{exporter.address}"}} == 1')
    deadline = time.monotonic() + 60
    while not prom.api("alertmanagers")["activeAlertmanagers"]:
        prom.check_running()
        assert time.monotonic() < deadline, f"Prometheus found no Alertmanager:\n{prom.log_tail()}"
        time.sleep(0.5)
    return cleaner, exporter, prom


def diagnostics(*parts: LimpezaProcess | PrometheusServer) -> str:
    return "\n".join(f"--- {type(p).__name__} log:\n{p.log_tail()}" for p in parts)


def test_six_running_jobs_page_and_force_clean_resolves(
    jobs_db: JobsDatabase,
    limpeza_processes: LimpezaProcesses,
    prometheus_factory: PrometheusFactory,
    alertmanager_factory: AlertmanagerFactory,
    webhook_server: WebhookServer,
) -> None:
    jobs_db.insert_many([(f"job{i}", "running", 10) for i in range(6)])
    cleaner, exporter, prom = start_stack(
        jobs_db, limpeza_processes, prometheus_factory, alertmanager_factory, webhook_server
    )
    prom.wait_for("limpeza_jobs_active == 6")

    page = webhook_server.wait_for(
        lambda n: is_page(n, "firing"), PAGE_TIMEOUT, what=f"{ALERT} page"
    )
    alert = the_alert(page)
    table = f"{location(jobs_db.dsn)}/jobs"
    assert page.receiver == "pager"
    assert alert["labels"] == {
        "alertname": ALERT,
        "severity": "critical",
        "table": table,
        "job": "limpeza",
    }
    assert alert["annotations"]["description"] == (
        f"Table {table} reports 6 active jobs, above the paging threshold."
    )
    assert alert["annotations"]["runbook_url"].endswith("runbook.md#limpezajobsactivehigh")
    # Automatic force-clean is off: the running cleaner left the jobs alone.
    cleaner.check_running()
    assert set(jobs_db.statuses().values()) == {"running"}
    assert not any(
        n.path == "/ticket" and ALERT in n.alertnames() for n in webhook_server.received()
    )

    result = limpeza_processes.cleaner_command(
        limpeza_processes.base / "limpeza.yml", "force-clean", "--yes"
    )
    assert result.returncode == 0, (
        f"force-clean: {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    assert set(jobs_db.statuses().values()) == {"error"}

    resolved = webhook_server.wait_for(
        lambda n: is_page(n, "resolved"),
        PAGE_TIMEOUT,
        what=f"resolved {ALERT} notification\n{diagnostics(cleaner, exporter, prom)}",
    )
    assert resolved.receiver == "pager"
    assert the_alert(resolved)["labels"]["table"] == table
    assert prom.value("limpeza_jobs_active") == 0
    assert prom.value("sum(limpeza_force_cleans_total)") == 1


def test_five_running_jobs_page_nobody(
    jobs_db: JobsDatabase,
    limpeza_processes: LimpezaProcesses,
    prometheus_factory: PrometheusFactory,
    alertmanager_factory: AlertmanagerFactory,
    webhook_server: WebhookServer,
) -> None:
    jobs_db.insert_many([(f"job{i}", "running", 10) for i in range(5)])
    cleaner, exporter, prom = start_stack(
        jobs_db, limpeza_processes, prometheus_factory, alertmanager_factory, webhook_server
    )
    prom.wait_for("limpeza_jobs_active == 5")
    # A bounded wait, well past the shortened `for`, Alertmanager's group_wait and several
    # evaluations: the rule has seen 5 long enough to have fired if it ever would.
    prom.wait_for(
        "count_over_time(limpeza_jobs_active[30s]) >= 15 and limpeza_jobs_active == 5",
        timeout=90,
    )
    assert [a for a in prom.alerts() if a["labels"]["alertname"] == ALERT] == []
    assert not [n for n in webhook_server.received() if ALERT in n.alertnames()]

    # The same stack does page one job later: the silence above was the threshold's doing.
    jobs_db.insert("job5", "running", 10)
    page = webhook_server.wait_for(
        lambda n: is_page(n, "firing"),
        PAGE_TIMEOUT,
        what=f"{ALERT} page at 6 jobs\n{diagnostics(cleaner, exporter, prom)}",
    )
    assert "reports 6 active jobs" in the_alert(page)["annotations"]["description"]
