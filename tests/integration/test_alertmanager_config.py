"""The example Alertmanager routing: valid for amtool, routes as documented, inhibits.

``amtool check-config`` and ``amtool config routes test`` (Debian's amtool) run on
``alerts/alertmanager.example.yml`` with the cases of ``alerts/tests/alertmanager/
routes.yml``; a failure shows amtool's output. Grouping and inhibition are checked on a
real Alertmanager running the same routing, its webhooks pointed at a test server.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.alertmanager import (
    EXAMPLE_ROUTING,
    AlertmanagerFactory,
    Notification,
    WebhookServer,
    routing_for,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROUTE_CASES = REPO / "alerts" / "tests" / "alertmanager" / "routes.yml"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail(
            "no amtool; `make test` installs Debian's prometheus-alertmanager", pytrace=False
        )
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def route_cases() -> list[dict[str, Any]]:
    return list(yaml.safe_load(ROUTE_CASES.read_text(encoding="utf-8"))["cases"])


def example() -> dict[str, Any]:
    return dict(yaml.safe_load(EXAMPLE_ROUTING.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- amtool


def test_amtool_checks_the_example() -> None:
    result = amtool("check-config", str(EXAMPLE_ROUTING))
    assert result.returncode == 0, shown(result)
    assert "SUCCESS" in result.stdout, shown(result)


def test_amtool_rejects_a_broken_routing(tmp_path: Path) -> None:
    broken = example()
    broken["route"]["receiver"] = "nobody"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = amtool("check-config", str(path))
    assert result.returncode != 0, shown(result)
    assert "nobody" in result.stdout + result.stderr, shown(result)


@pytest.mark.parametrize("case", route_cases(), ids=lambda c: str(c["name"]))
def test_route(case: dict[str, Any]) -> None:
    labels = [f"{key}={value}" for key, value in case["labels"].items()]
    receivers = ",".join(case["receivers"])
    result = amtool(
        "config",
        "routes",
        "test",
        f"--config.file={EXAMPLE_ROUTING}",
        f"--verify.receivers={receivers}",
        *labels,
    )
    assert result.returncode == 0, shown(result)
    assert result.stdout.split() == case["receivers"], shown(result)


def test_route_verification_can_fail() -> None:
    result = amtool(
        "config",
        "routes",
        "test",
        f"--config.file={EXAMPLE_ROUTING}",
        "--verify.receivers=ticket",
        "alertname=LimpezaJobsActiveHigh",
        "severity=critical",
    )
    assert result.returncode != 0, shown(result)


def test_every_severity_of_the_rules_has_a_route_case() -> None:
    rules = yaml.safe_load((REPO / "alerts" / "limpeza.rules.yml").read_text(encoding="utf-8"))
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    severities = {r["labels"]["severity"] for r in alerts}
    covered = {c["labels"].get("severity") for c in route_cases()}
    assert severities <= covered, severities - covered


def test_groups_by_alertname_instance_and_table() -> None:
    # Per-host alerts carry instance; alerts about a shared jobs table carry table instead.
    assert example()["route"]["group_by"] == ["alertname", "instance", "table"]


# --------------------------------------------------------------------------- a real Alertmanager


def alert(name: str, severity: str, instance: str = "app1:9817", **labels: str) -> dict[str, Any]:
    return {
        "labels": {
            "alertname": name,
            "severity": severity,
            "instance": instance,
            "job": "limpeza",
            **labels,
        },
        "annotations": {"summary": f"{name} in a test."},
    }


def carries(notification: Notification, name: str, severity: str) -> bool:
    return any(
        a["labels"].get("alertname") == name and a["labels"].get("severity") == severity
        for a in notification.alerts
    )


def mentions(notification: Notification, name: str, directory: str) -> bool:
    return any(
        a["labels"].get("alertname") == name and a["labels"].get("directory") == directory
        for a in notification.alerts
    )


def test_critical_pages_and_warning_tickets(
    alertmanager_factory: AlertmanagerFactory, webhook_server: WebhookServer
) -> None:
    am = alertmanager_factory(routing_for(webhook_server))
    am.post_alerts(
        [
            alert("LimpezaJobsActiveHigh", "critical"),
            alert("LimpezaJobsStale", "warning", status="running"),
        ]
    )
    page = webhook_server.wait_for(
        lambda n: carries(n, "LimpezaJobsActiveHigh", "critical"), what="page"
    )
    ticket = webhook_server.wait_for(
        lambda n: carries(n, "LimpezaJobsStale", "warning"), what="ticket"
    )
    assert (page.path, page.receiver, page.status) == ("/pager", "pager", "firing")
    assert (ticket.path, ticket.receiver, ticket.status) == ("/ticket", "ticket", "firing")
    assert page.payload["groupLabels"] == {
        "alertname": "LimpezaJobsActiveHigh",
        "instance": "app1:9817",
    }


def test_alerts_of_one_name_and_instance_make_one_notification(
    alertmanager_factory: AlertmanagerFactory, webhook_server: WebhookServer
) -> None:
    am = alertmanager_factory(routing_for(webhook_server, group_wait="3s"))
    am.post_alerts(
        [
            alert("LimpezaJobsStale", "warning", status="running"),
            alert("LimpezaJobsStale", "warning", status="queued"),
            alert("LimpezaJobsStale", "warning", instance="app2:9817", status="running"),
        ]
    )
    first = webhook_server.wait_for(
        lambda n: n.payload.get("groupLabels", {}).get("instance") == "app1:9817", what="app1"
    )
    second = webhook_server.wait_for(
        lambda n: n.payload.get("groupLabels", {}).get("instance") == "app2:9817", what="app2"
    )
    assert sorted(a["labels"]["status"] for a in first.alerts) == ["queued", "running"]
    assert [a["labels"]["status"] for a in second.alerts] == ["running"]


def test_critical_inhibits_the_warning_of_the_same_alert(
    alertmanager_factory: AlertmanagerFactory, webhook_server: WebhookServer
) -> None:
    am = alertmanager_factory(routing_for(webhook_server))
    directory = {"directory": "/srv/app/uploads"}
    am.post_alerts(
        [
            alert("LimpezaFilesystemSpaceLow", "critical", **directory),
            alert("LimpezaFilesystemSpaceLow", "warning", **directory),
            alert("LimpezaFilesystemFillingUp", "warning", **directory),
            # Another directory: its warning is not inhibited.
            alert("LimpezaFilesystemSpaceLow", "warning", directory="/srv/app/backend/app/uploads"),
        ]
    )

    def states(alerts: list[dict[str, Any]]) -> dict[tuple[str, str, str], str]:
        return {
            (
                a["labels"]["alertname"],
                a["labels"]["severity"],
                a["labels"]["directory"],
            ): a["status"]["state"]
            for a in alerts
        }

    expected = {
        ("LimpezaFilesystemSpaceLow", "critical", "/srv/app/uploads"): "active",
        ("LimpezaFilesystemSpaceLow", "warning", "/srv/app/uploads"): "suppressed",
        ("LimpezaFilesystemFillingUp", "warning", "/srv/app/uploads"): "suppressed",
        ("LimpezaFilesystemSpaceLow", "warning", "/srv/app/backend/app/uploads"): "active",
    }
    am.wait_for_alerts(lambda alerts: states(alerts) == expected)
    webhook_server.wait_for(
        lambda n: carries(n, "LimpezaFilesystemSpaceLow", "critical"), what="page"
    )
    webhook_server.wait_for(
        lambda n: any(
            a["labels"].get("directory") == "/srv/app/backend/app/uploads" for a in n.alerts
        ),
        what="ticket for the other directory",
    )
    # Positive control: one more warning in each group that holds a suppressed alert,
    # for a directory no critical covers. A group's notification carries every alert of the
    # group that is not muted, so once both controls have arrived, a suppressed warning
    # that was not muted would have been sent with them.
    control = "/srv/app/control"
    am.post_alerts(
        [
            alert("LimpezaFilesystemSpaceLow", "warning", directory=control),
            alert("LimpezaFilesystemFillingUp", "warning", directory=control),
        ]
    )
    webhook_server.wait_for(
        lambda n: mentions(n, "LimpezaFilesystemSpaceLow", control), what="SpaceLow control"
    )
    webhook_server.wait_for(
        lambda n: mentions(n, "LimpezaFilesystemFillingUp", control), what="FillingUp control"
    )
    for notification in webhook_server.received():
        for sent in notification.alerts:
            labels = sent["labels"]
            assert not (
                labels.get("severity") == "warning"
                and labels.get("directory") == "/srv/app/uploads"
            ), f"an inhibited warning was sent: {notification.payload}"


def test_database_down_inhibits_its_consequences(
    alertmanager_factory: AlertmanagerFactory, webhook_server: WebhookServer
) -> None:
    am = alertmanager_factory(routing_for(webhook_server))
    am.post_alerts(
        [
            alert("LimpezaDatabaseDown", "critical", table="db:5432/app/jobs"),
            alert("LimpezaJobsStale", "warning", status="running", table="db:5432/app/jobs"),
            alert("LimpezaCleanupErrors", "warning", stage="database"),
            alert("LimpezaCleanupErrors", "warning", stage="files"),
        ]
    )

    def states(alerts: list[dict[str, Any]]) -> dict[str, str]:
        return {
            a["labels"]["alertname"] + "/" + a["labels"].get("stage", ""): a["status"]["state"]
            for a in alerts
        }

    am.wait_for_alerts(
        lambda alerts: (
            states(alerts)
            == {
                "LimpezaDatabaseDown/": "active",
                "LimpezaJobsStale/": "suppressed",
                "LimpezaCleanupErrors/database": "suppressed",
                "LimpezaCleanupErrors/files": "active",
            }
        )
    )
