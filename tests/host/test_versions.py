"""The deployed artifact: exactly the pinned set, one version of it, and a rollback."""

from __future__ import annotations

import re

import pytest

from tests.host.conftest import REPO, Deployment, snapshot_sources

pytestmark = pytest.mark.host

CLEANER = "limpeza-cleaner.service"


def _canonical(line: str) -> str:
    name, _, version = line.strip().partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


def _pinned(version: str) -> list[str]:
    lines = (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines()
    pins = [_canonical(line) for line in lines if line.strip() and not line.startswith("#")]
    return sorted([*pins, f"limpeza=={version}"])


def _installed(deployed: Deployment) -> dict[str, list[str]]:
    command = "/opt/limpeza/venv/bin/python -m pip freeze --disable-pip-version-check"
    return {
        name: sorted(_canonical(line) for line in target.ssh(command).stdout.splitlines())
        for name, target in deployed.targets.items()
    }


def _limpeza_wheels(deployed: Deployment) -> dict[str, list[str]]:
    return {
        name: sorted(target.ssh("ls /opt/limpeza/wheelhouse").stdout.split())
        for name, target in deployed.targets.items()
    }


def _running(deployed: Deployment) -> dict[str, tuple[str, str]]:
    """Each host's cleaner process, and the limpeza version its running exporter reports."""
    result = {}
    for name, target in deployed.targets.items():
        pid = target.ssh(f"systemctl show -P MainPID {CLEANER}").stdout.strip()
        body = deployed.scrape(name)
        match = re.search(r'^limpeza_exporter_build_info\{version="([^"]*)"\} 1', body, re.M)
        result[name] = (pid, match.group(1) if match else body[:500])
    return result


def test_the_virtualenv_holds_exactly_the_pinned_set(deployed: Deployment) -> None:
    assert _installed(deployed) == dict.fromkeys(deployed.targets, _pinned("0.1.0"))
    for name, files in _limpeza_wheels(deployed).items():
        assert [f for f in files if f.startswith("limpeza-")] == [
            "limpeza-0.1.0-py3-none-any.whl"
        ], name


def test_a_downgrade_runs_the_earlier_version(deployed: Deployment) -> None:
    earlier = snapshot_sources(deployed.workdir / "src-0.0.9", version="0.0.9")
    before = _running(deployed)
    run = deployed.playbook(
        "deploy.yml", "-e", f"limpeza_source_dir={earlier}", "-e", "limpeza_version=0.0.9"
    )
    try:
        assert run.returncode == 0, run.explain()
        assert _installed(deployed) == dict.fromkeys(deployed.targets, _pinned("0.0.9"))
        for name, files in _limpeza_wheels(deployed).items():
            assert "limpeza-0.1.0-py3-none-any.whl" not in files, name
        after = _running(deployed)
        for name in deployed.targets:
            assert after[name][0] != before[name][0], f"{name}: the cleaner was not restarted"
            assert after[name][1] == "0.0.9", name
    finally:
        back = deployed.playbook("deploy.yml")
    assert back.returncode == 0, back.explain()
    assert _installed(deployed) == dict.fromkeys(deployed.targets, _pinned("0.1.0"))
    assert {name: version for name, (_, version) in _running(deployed).items()} == dict.fromkeys(
        deployed.targets, "0.1.0"
    )
