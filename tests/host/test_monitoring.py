"""The Prometheus host after the deploy: nothing written by hand, monitoring that works.

Prometheus, in a network namespace of its own, loads the limpeza rules and scrapes both
application hosts' exporters over TLS with basic auth, as the deploy set it up from the
inventory; its Alertmanager (installed by the deploy too) pages the suite's webhook once for
6 running jobs, and force_clean.yml resolves it.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from typing import Any

import pytest

from devtools.alertmanager import Notification
from tests.host.conftest import NAMES, SCRAPE_PASSWORD, SCRAPE_USER, Deployment, wait_for

pytestmark = pytest.mark.host

ALERT = "LimpezaJobsActiveHigh"

#: Run on the Prometheus host: GET an exporter with the CA and a password the deploy wrote.
_SCRAPE = """
import base64, ssl, sys, urllib.error, urllib.request
url, user, password = sys.argv[1:]
context = ssl.create_default_context(cafile="/etc/prometheus/limpeza/ca.crt")
request = urllib.request.Request(url)
token = base64.b64encode(f"{user}:{password}".encode()).decode()
request.add_header("Authorization", "Basic " + token)
try:
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
"""

#: Run on the Prometheus host: whether a TCP connection to host:port is accepted.
_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("reached")
except OSError as error:
    print("unreachable", error)
"""


def _on_prometheus(deployed: Deployment, script: str, *args: str) -> str:
    quoted = " ".join(f"'{arg}'" for arg in args)
    command = f"python3 - {quoted} <<'EOF'\n{script}\nEOF"
    return deployed.prometheus.ssh(command, timeout=60).stdout.strip()


def test_prometheus_scrapes_both_exporters_over_tls_with_basic_auth(deployed: Deployment) -> None:
    expected = {deployed.exporter_address(name) for name in NAMES}
    targets = [
        t for t in deployed.prometheus_api("/api/v1/targets")["activeTargets"]
        if t["scrapePool"] == "limpeza"
    ]  # fmt: skip
    assert {t["labels"]["instance"] for t in targets} == expected, targets
    assert all(t["scrapeUrl"].startswith("https://") for t in targets), targets
    query = urllib.parse.quote('up{job="limpeza"}')
    result = deployed.prometheus_api(f"/api/v1/query?query={query}")["result"]
    assert {r["metric"]["instance"]: r["value"][1] for r in result} == dict.fromkeys(expected, "1")


def test_the_scrape_secret_is_readable_by_prometheus_only(deployed: Deployment) -> None:
    host = deployed.prometheus.testinfra()
    for path in ("/etc/prometheus/limpeza/scrape-password", "/etc/prometheus/limpeza/ca.crt"):
        item = host.file(path)
        assert (item.user, item.group, item.mode) == ("root", "prometheus", 0o640), path
    assert host.file("/etc/prometheus/limpeza/scrape-password").content_string == SCRAPE_PASSWORD
    assert SCRAPE_PASSWORD not in host.file("/etc/prometheus/prometheus.yml").content_string


def test_from_the_prometheus_host_a_wrong_password_is_refused(deployed: Deployment) -> None:
    for name in NAMES:
        url = f"https://{deployed.exporter_address(name)}/metrics"
        assert _on_prometheus(deployed, _SCRAPE, url, SCRAPE_USER, SCRAPE_PASSWORD) == "200"
        assert _on_prometheus(deployed, _SCRAPE, url, SCRAPE_USER, "wrong") == "401"


def test_the_application_hosts_loopback_is_out_of_reach(deployed: Deployment) -> None:
    """127.0.0.1 in the Prometheus host's namespace is its own: not the exporters' nor the DB's."""
    database_port = str(urllib.parse.urlsplit(deployed.database.dsn).port)
    for name in NAMES:
        host, port = deployed.exporter_address(name).rsplit(":", 1)
        assert _on_prometheus(deployed, _CONNECT, host, port) == "reached"
        assert _on_prometheus(deployed, _CONNECT, "127.0.0.1", port).startswith("unreachable")
    assert _on_prometheus(deployed, _CONNECT, "127.0.0.1", database_port).startswith("unreachable")


def _ours(start: int, deployed: Deployment, status: str) -> list[Notification]:
    return [
        n for n in deployed.webhook.received()[start:]
        if n.receiver == "pager" and n.status == status and ALERT in n.alertnames()
    ]  # fmt: skip


def _firing(deployed: Deployment) -> list[dict[str, Any]]:
    alerts = deployed.prometheus_api("/api/v1/alerts")["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]


def test_six_running_jobs_page_once_and_force_clean_resolves_it(deployed: Deployment) -> None:
    start = len(deployed.webhook.received())
    ids = [f"page-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    # Fresh: far from stale (3 min), so only force_clean ends them.
    deployed.database.insert_many([(i, "running", 1) for i in ids])
    try:
        assert wait_for(lambda: bool(_ours(start, deployed, "firing")), 180, 1), (
            deployed.webhook.received()[start:],
            deployed.prometheus_api("/api/v1/alerts"),
        )
        # Both exporters see the shared table: still one page a while later.
        time.sleep(10)
        assert len(_ours(start, deployed, "firing")) == 1, deployed.webhook.received()[start:]
    finally:
        run = deployed.playbook("force_clean.yml", "-e", "confirm=yes")
    assert run.returncode == 0, run.explain()
    assert {k: v for k, v in deployed.database.statuses().items() if k in ids} == dict.fromkeys(
        ids, "error"
    )
    assert wait_for(
        lambda: bool(_ours(start, deployed, "resolved")) or not _firing(deployed), 120, 1
    ), deployed.prometheus_api("/api/v1/alerts")
    assert wait_for(lambda: bool(_ours(start, deployed, "resolved")), 60, 1), (
        deployed.webhook.received()[start:]
    )
