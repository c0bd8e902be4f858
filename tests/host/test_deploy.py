"""playbooks/deploy.yml on real Debian 12 and 13 systemd hosts, checked with testinfra."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.nspawn import Target
from tests.host.conftest import (
    APP_GROUP,
    BACKEND_UPLOADS,
    QUARANTINE,
    SCRAPE_PASSWORD,
    UPLOADS,
    Deployment,
    wait_for,
)

pytestmark = pytest.mark.host

UNITS = ["limpeza-cleaner.service", "limpeza-exporter.service"]


def _service_down_report(target: Target, unit: str) -> str:
    return f"{unit} on {target.name} is not running:\n{target.journal(unit)}"


# --------------------------------------------------------------------------- the playbook


def test_check_mode_on_fresh_hosts_succeeds(deployment: Deployment) -> None:
    run = deployment.fresh_check
    assert run is not None
    assert run.returncode == 0, run.explain()
    assert set(run.recap) == set(deployment.hosts), run.explain()


def test_second_deploy_changes_nothing(deployed: Deployment) -> None:
    run = deployed.playbook("deploy.yml")
    assert run.returncode == 0, run.explain()
    assert run.changed() == dict.fromkeys(deployed.hosts, 0), run.explain()


def test_check_mode_on_deployed_hosts_changes_nothing(deployed: Deployment) -> None:
    run = deployed.playbook("deploy.yml", "--check")
    assert run.returncode == 0, run.explain()
    assert run.changed() == dict.fromkeys(deployed.hosts, 0), run.explain()


# --------------------------------------------------------------------------- the host


def test_service_user_has_no_login_shell(host: Any) -> None:
    user = host.user("limpeza")
    assert user.exists
    assert user.shell == "/usr/sbin/nologin"
    assert user.group == "limpeza"
    assert user.uid < 1000  # a system user


@pytest.mark.parametrize(
    ("path", "kind", "owner", "group", "mode"),
    [
        ("/etc/limpeza", "directory", "root", "limpeza", 0o750),
        ("/etc/limpeza/limpeza.yml", "file", "root", "limpeza", 0o640),
        ("/etc/limpeza/limpeza.env", "file", "root", "root", 0o600),
        ("/opt/limpeza/venv/bin/limpeza-cleaner", "file", "root", "root", 0o755),
        ("/opt/limpeza/venv/bin/limpeza-exporter", "file", "root", "root", 0o755),
        ("/var/lib/limpeza", "directory", "limpeza", "limpeza", 0o750),
        ("/var/log/limpeza", "directory", "limpeza", "limpeza", 0o750),
        ("/usr/local/sbin/limpeza-cleaner", "file", "root", "root", 0o750),
        ("/etc/systemd/system/limpeza-cleaner.service", "file", "root", "root", 0o644),
        ("/etc/systemd/system/limpeza-exporter.service", "file", "root", "root", 0o644),
    ],
)
def test_paths_and_modes(
    host: Any, path: str, kind: str, owner: str, group: str, mode: int
) -> None:
    item = host.file(path)
    assert item.exists, path
    assert item.is_directory if kind == "directory" else item.is_file
    assert (item.user, item.group, item.mode) == (owner, group, mode)


def test_config_is_rendered_from_the_inventory(
    host: Any, deployed: Deployment, target: Target
) -> None:
    text = host.file("/etc/limpeza/limpeza.yml").content_string
    assert text.startswith("#"), "the file starts with the ansible_managed comment"
    config = yaml.safe_load(text)
    assert config["interval"] == "2s"
    assert config["jobs"]["database"]["table"] == "jobs"
    assert config["exporter"]["listen_address"] == (deployed.exporter_address(target.name))
    assert config["files"]["directories"] == ["/srv/app/backend/app/uploads", UPLOADS]
    assert "LIMPEZA_DATABASE_URL" not in text and deployed.database.password not in text
    env = host.run("cat /etc/limpeza/limpeza.env").stdout
    assert f"LIMPEZA_DATABASE_URL={deployed.database.dsn}" in env
    check = host.run("/opt/limpeza/venv/bin/limpeza-cleaner check-config /etc/limpeza/limpeza.yml")
    assert check.rc == 0, check.stdout + check.stderr


def test_install_used_no_package_index(host: Any) -> None:
    wheels = host.run("ls /opt/limpeza/wheelhouse").stdout.split()
    assert any(w.startswith("limpeza-") and w.endswith(".whl") for w in wheels), wheels
    freeze = host.run("/opt/limpeza/venv/bin/python -m pip freeze").stdout
    assert re.search(r"^limpeza[= @]", freeze, re.M | re.I), freeze


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_enabled_and_running(host: Any, target: Target, unit: str) -> None:
    service = host.service(unit)
    assert service.is_enabled
    assert service.is_running, _service_down_report(target, unit)


_COMMON_HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "User": "limpeza",
    "Restart": "always",
    "StateDirectory": "limpeza",
    "LogsDirectory": "limpeza",
}


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize(("name", "expected"), sorted(_COMMON_HARDENING.items()))
def test_hardening_properties(host: Any, unit: str, name: str, expected: str) -> None:
    properties = host.service(unit).systemd_properties
    # An empty value (CapabilityBoundingSet=, no capability at all) is left out by testinfra;
    # unset, systemctl shows every capability.
    actual = properties.get(name) or ""
    assert actual == expected, f"{unit}: {name}={properties.get(name)!r}"


def test_cleaner_unit_specifics(host: Any) -> None:
    properties = host.service("limpeza-cleaner.service").systemd_properties
    assert "/bin/kill" in properties["ExecReload"] and "-HUP" in properties["ExecReload"]
    writable = properties["ReadWritePaths"].split()
    # The swept directories, and the deepest directory holding the deployment's quarantine
    # and the directories its rule sweeps (a rename never crosses the sandbox's mounts).
    quarantine_root = os.path.commonpath([QUARANTINE, BACKEND_UPLOADS, UPLOADS])
    assert sorted(p.lstrip("-") for p in writable) == sorted(
        [BACKEND_UPLOADS, UPLOADS, quarantine_root]
    )
    assert properties["SupplementaryGroups"] == APP_GROUP
    assert properties["PrivateTmp"] == "yes"
    assert host.file("/etc/systemd/system/limpeza-cleaner.service").content_string.startswith("#")


def test_exporter_listens_on_its_inventory_address_only_and_serves_metrics(
    host: Any, deployed: Deployment, target: Target
) -> None:
    """With a Prometheus host in the inventory: the host's address, not every address."""
    port = deployed.exporter_ports[target.name]
    address = deployed.exporter_address(target.name)
    assert wait_for(lambda: host.socket(f"tcp://{address}").is_listening, 30), _service_down_report(
        target, "limpeza-exporter.service"
    )
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
    assert not host.socket(f"tcp://:::{port}").is_listening
    listeners = host.run(f"ss -Htln 'sport = :{port}'").stdout.split("\n")
    assert [line.split()[3] for line in listeners if line.strip()] == [address]
    body = deployed.scrape(target.name)
    assert "limpeza_" in body
    assert re.search(r"^limpeza_\w+ ", body, re.M), body[:2000]


def test_exporter_serves_only_tls_with_the_right_password(
    host: Any, deployed: Deployment, target: Target
) -> None:
    """The web config the role generated: TLS, and the bcrypt hash of the vault's password."""
    web = host.file("/etc/limpeza/web.yml")
    assert (web.user, web.group, web.mode) == ("root", "limpeza", 0o640)
    assert SCRAPE_PASSWORD not in web.content_string
    key = host.file("/etc/limpeza/tls/exporter.key")
    assert (key.user, key.group, key.mode) == ("root", "limpeza", 0o640)
    with pytest.raises(urllib.error.HTTPError) as refused:
        deployed.scrape(target.name, password="wrong")
    assert refused.value.code == 401
    with pytest.raises(OSError):  # plain HTTP to a TLS port: reset or refused
        urllib.request.urlopen(
            f"http://{deployed.exporter_address(target.name)}/metrics", timeout=10
        )


# --------------------------------------------------------------------------- behaviour


def test_cleaner_removes_an_aged_file_and_logs_it(host: Any, target: Target) -> None:
    aged = f"{UPLOADS}/session_hosttest.json"
    fresh = f"{UPLOADS}/session_fresh.json"
    protected = f"{UPLOADS}/original_session_keep.json"
    for path in (aged, fresh, protected):
        host.run_expect([0], f"install -o www-data -g www-data -m 0664 /dev/null {path}")
    host.run_expect([0], f"touch -d '3 days ago' {aged} {protected}")
    removed = wait_for(lambda: not host.file(aged).exists, 60)
    assert removed, f"{aged} is still there\n{target.journal('limpeza-cleaner.service')}"
    assert host.file(fresh).exists
    assert host.file(protected).exists
    audit = host.file("/var/log/limpeza/audit.jsonl")
    assert wait_for(lambda: aged in audit.content_string, 30)
    entries = [json.loads(line) for line in audit.content_string.splitlines() if line.strip()]
    assert any(aged in json.dumps(entry) for entry in entries)
    assert audit.user == "limpeza"
    host.run(f"rm -f {fresh} {protected}")


def test_cleaner_logs_to_the_journal(host: Any) -> None:
    journal = host.run("journalctl -u limpeza-cleaner.service --no-pager -o cat")
    assert journal.stdout.strip(), "the cleaner wrote nothing to the journal"


def test_systemd_restarts_a_killed_cleaner(host: Any, target: Target) -> None:
    service = host.service("limpeza-cleaner.service")
    before = service.systemd_properties["MainPID"]
    assert before != "0", _service_down_report(target, "limpeza-cleaner.service")
    host.run_expect([0], f"kill -9 {before}")

    def restarted() -> bool:
        properties = host.service("limpeza-cleaner.service").systemd_properties
        return properties["ActiveState"] == "active" and properties["MainPID"] not in (
            "0",
            before,
        )

    assert wait_for(restarted, 60), _service_down_report(target, "limpeza-cleaner.service")
    assert int(host.service("limpeza-cleaner.service").systemd_properties["NRestarts"]) >= 1


def test_alert_rules_installed_and_loaded_by_prometheus(deployed: Deployment) -> None:
    infra = deployed.prometheus.testinfra()
    rules = infra.file("/etc/prometheus/rules/limpeza.rules.yml")
    assert rules.exists and rules.mode == 0o644
    assert infra.run("promtool check rules /etc/prometheus/rules/limpeza.rules.yml").rc == 0
    # The deploy verified it before it ended: no waiting here.
    queries = {
        rule["name"]: rule["query"]
        for group in deployed.prometheus_api("/api/v1/rules")["groups"]
        for rule in group["rules"]
    }
    # The threshold the role renders (limpeza_alerts_jobs_active_threshold, 5).
    assert str(queries.get("LimpezaJobsActiveHigh", "")).endswith("limpeza_jobs_active:max > 5")


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_security_rates_ok_or_better(target: Target, unit: str) -> None:
    result = target.ssh(f"systemd-analyze security --no-pager {unit}", check=False)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    score, rating = float(match.group(1)), match.group(2)
    print(f"{target.name} {unit}: exposure {score} {rating}")
    assert rating in ("SAFE", "OK"), f"{unit}: {score} {rating}\n{result.stdout}"


def test_exporter_unit_bounds_its_open_files(host: Any) -> None:
    """The unit's LimitNOFILE reaches the process: soft and hard, as the template says."""
    template = (
        Path(__file__).resolve().parents[2]
        / "roles/limpeza_exporter/templates/limpeza-exporter.service.j2"
    ).read_text(encoding="utf-8")
    [limit] = re.findall(r"^LimitNOFILE=(\d+)$", template, re.M)
    properties = host.service("limpeza-exporter.service").systemd_properties
    assert (properties["LimitNOFILE"], properties["LimitNOFILESoft"]) == (limit, limit)
    pid = properties["MainPID"]
    limits = host.run(f"cat /proc/{pid}/limits").stdout
    assert re.search(rf"^Max open files\s+{limit}\s+{limit}\s", limits, re.M), limits
