"""The deploy's life cycle: the controller left alone, tags, a stopped service, a crash loop.

Each test that changes a host puts it back as the deployment left it.
"""

from __future__ import annotations

import pytest
import yaml

from tests.host.conftest import Deployment, wait_for

pytestmark = pytest.mark.host

CLEANER = "limpeza-cleaner.service"


def _reloads(deployed: Deployment) -> dict[str, int]:
    """How many times each cleaner logged that it read its configuration again."""
    command = f"journalctl -u {CLEANER} -o cat --no-pager | grep -c 'configuration reloaded'"
    return {
        name: int(target.ssh(command, check=False).stdout.strip() or 0)
        for name, target in deployed.targets.items()
    }


def _interval(deployed: Deployment) -> dict[str, str]:
    return {
        name: target.ssh("grep '^interval:' /etc/limpeza/limpeza.yml").stdout.split()[1]
        for name, target in deployed.targets.items()
    }


def _unit_state(deployed: Deployment, unit: str) -> dict[str, tuple[str, str]]:
    return {
        name: (
            target.ssh(f"systemctl is-active {unit}", check=False).stdout.strip(),
            target.ssh(f"systemctl is-enabled {unit}", check=False).stdout.strip(),
        )
        for name, target in deployed.targets.items()
    }


def test_check_mode_writes_nothing_on_the_controller(deployed: Deployment) -> None:
    assert deployed.cache_after_check == [], "--check wrote to the controller's cache"
    assert deployed.sentinel_after_check, "--check removed a file under the sources' build/"


def test_deploy_leaves_the_sources_untouched(deployed: Deployment) -> None:
    assert deployed.sentinel_after_deploy, "the deploy removed a file under the sources' build/"
    assert list((deployed.workdir / "cache" / "wheels").glob("limpeza-*.whl"))


def test_check_mode_refuses_an_invalid_configuration(deployed: Deployment) -> None:
    run = deployed.playbook("deploy.yml", "--check", "-e", "limpeza_interval=20000w")
    assert run.returncode != 0, run.explain()
    assert "interval" in run.output, run.explain()


def test_configure_tag_alone_applies_a_new_interval(deployed: Deployment) -> None:
    before = _reloads(deployed)
    run = deployed.playbook(
        "deploy.yml", "--tags", "limpeza_configure", "-e", "limpeza_interval=3s"
    )
    try:
        assert run.returncode == 0, run.explain()
        assert _interval(deployed) == dict.fromkeys(deployed.targets, "3s")
        assert wait_for(
            lambda: all(_reloads(deployed)[n] > before[n] for n in deployed.targets), 30
        ), run.explain()
    finally:
        back = deployed.playbook("deploy.yml", "--tags", "limpeza_configure")
    assert back.returncode == 0, back.explain()
    assert _interval(deployed) == dict.fromkeys(deployed.targets, "2s")


def test_a_disabled_service_is_stopped(deployed: Deployment) -> None:
    run = deployed.playbook(
        "deploy.yml", "--tags", "limpeza_cleaner_run", "-e", "limpeza_cleaner_service_enabled=false"
    )
    try:
        assert run.returncode == 0, run.explain()
        assert _unit_state(deployed, CLEANER) == dict.fromkeys(
            deployed.targets, ("inactive", "disabled")
        )
    finally:
        back = deployed.playbook("deploy.yml", "--tags", "limpeza_cleaner_run")
    assert back.returncode == 0, back.explain()
    assert _unit_state(deployed, CLEANER) == dict.fromkeys(deployed.targets, ("active", "enabled"))


def test_a_unit_that_cannot_start_fails_the_deploy(deployed: Deployment) -> None:
    # A writable path that does not exist is kept in the sandbox (no leading '-'): the unit
    # cannot start, and the deploy waiting for it to be active says so.
    run = deployed.playbook(
        "deploy.yml",
        "--tags",
        "limpeza_cleaner_configure",
        "-e",
        '{"limpeza_cleaner_read_write_paths": ["/srv/limpeza-missing"]}',
    )
    try:
        assert run.returncode != 0, run.explain()
        assert "limpeza-cleaner" in run.output, run.explain()
    finally:
        back = deployed.playbook("deploy.yml", "--tags", "limpeza_cleaner_configure")
    assert back.returncode == 0, back.explain()
    assert _unit_state(deployed, CLEANER) == dict.fromkeys(deployed.targets, ("active", "enabled"))


def test_a_missing_swept_directory_is_created_when_asked(deployed: Deployment) -> None:
    extra = "/srv/app/created-by-limpeza"
    rules = (
        '{"limpeza_cleaner_directories_create": true, "limpeza_files_rules": ['
        '{"name": "sessions", "pattern": "session_*.json", "max_age": "24h"},'
        '{"name": "temp_audio", "pattern": "temp_audio_*.wav", "max_age": "24h"},'
        '{"name": "final_videos", "pattern": "final_*.mp4", "max_age": "24h"},'
        f'{{"name": "extra", "pattern": "x_*.tmp", "max_age": "1h", "directories": ["{extra}"]}}]}}'
    )
    refused = deployed.playbook("deploy.yml", "--tags", "limpeza_cleaner_configure", "-e",
                                rules.replace("true", "false", 1))  # fmt: skip
    assert refused.returncode != 0 and extra in refused.output, refused.explain()
    run = deployed.playbook("deploy.yml", "-e", rules)
    try:
        assert run.returncode == 0, run.explain()
        for target in deployed.targets.values():
            stat = target.ssh(f"stat -c '%U %G %a' {extra}").stdout.split()
            assert stat == ["root", "limpeza", "2770"], target.name
    finally:
        back = deployed.playbook("deploy.yml")
        for target in deployed.targets.values():
            target.ssh(f"rmdir {extra}", check=False)
    assert back.returncode == 0, back.explain()


def _assert_prometheus_without_limpeza(deployed: Deployment) -> None:
    """The Prometheus host as the uninstall leaves it: no job, no files, Prometheus up."""
    prometheus = deployed.prometheus
    config = yaml.safe_load(prometheus.ssh("cat /etc/prometheus/prometheus.yml").stdout)
    assert "limpeza" not in [job["job_name"] for job in config["scrape_configs"]], config
    assert "/etc/prometheus/rules/*.yml" not in (config.get("rule_files") or []), config
    # The suite's stock file already sent alerts to the Alertmanager: that stays.
    assert config["alerting"] == {
        "alertmanagers": [{"static_configs": [{"targets": ["localhost:9093"]}]}]
    }
    check = prometheus.ssh("promtool check config /etc/prometheus/prometheus.yml", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    for gone in ("/etc/prometheus/limpeza", "/etc/prometheus/rules/limpeza.rules.yml"):
        assert prometheus.ssh(f"test -e {gone}", check=False).returncode, gone
    assert prometheus.ssh("systemctl is-active prometheus.service", check=False).stdout.strip() == (
        "active"
    )
    pools = {t["scrapePool"] for t in deployed.prometheus_api("/api/v1/targets")["activeTargets"]}
    assert "limpeza" not in pools, pools
    assert "prometheus" in pools, pools
    state = prometheus.ssh(
        "systemctl is-active prometheus-alertmanager.service", check=False
    ).stdout.strip()
    assert state == "active", state


def test_uninstall_removes_the_units_and_keeps_state_and_logs(deployed: Deployment) -> None:
    run = deployed.playbook("uninstall.yml")
    try:
        assert run.returncode == 0, run.explain()
        for name, target in deployed.targets.items():
            for unit in (CLEANER, "limpeza-exporter.service"):
                state = target.ssh(f"systemctl is-active {unit}", check=False).stdout.strip()
                assert state in ("inactive", "unknown"), f"{name}: {unit} is {state}"
                assert target.ssh(f"test -e /etc/systemd/system/{unit}", check=False).returncode
            for gone in ("/opt/limpeza", "/etc/limpeza", "/usr/local/sbin/limpeza-cleaner"):
                assert target.ssh(f"test -e {gone}", check=False).returncode, f"{name}: {gone}"
            assert target.ssh("getent passwd limpeza", check=False).returncode, name
            for kept in ("/var/lib/limpeza/state.json", "/var/log/limpeza"):
                assert target.ssh(f"test -e {kept}", check=False).returncode == 0, f"{name}: {kept}"
        _assert_prometheus_without_limpeza(deployed)
        again = deployed.playbook("uninstall.yml")
        assert again.returncode == 0, again.explain()
        assert again.changed() == dict.fromkeys(deployed.hosts, 0), again.explain()
        purged = deployed.playbook("uninstall.yml", "-e", "purge=true")
        assert purged.returncode == 0, purged.explain()
        for name, target in deployed.targets.items():
            for gone in ("/var/lib/limpeza", "/var/log/limpeza"):
                assert target.ssh(f"test -e {gone}", check=False).returncode, f"{name}: {gone}"
    finally:
        back = deployed.playbook("deploy.yml")
    assert back.returncode == 0, back.explain()
    assert _unit_state(deployed, CLEANER) == dict.fromkeys(deployed.targets, ("active", "enabled"))
