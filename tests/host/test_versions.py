"""The deployed artifact: exactly the pinned set, one version of it, and a rollback."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import pytest

from tests.host.conftest import REPO, Deployment, PlaybookRun, snapshot_sources
from tools.lock import parse as parse_lock

pytestmark = pytest.mark.host

CLEANER = "limpeza-cleaner.service"
#: What a change of version does on every host, whatever else it does.
NEW_VERSION_CHANGES = {
    "limpeza : Copy the wheelhouse",
    "limpeza : Remove the wheels of other versions from the target",
    "limpeza : Install exactly the pinned set into the virtualenv, without a package index",
    "limpeza_cleaner : Restart limpeza-cleaner",
    "limpeza_exporter : Restart limpeza-exporter",
}


def _canonical(line: str) -> str:
    name, _, version = line.strip().partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


def _pinned(version: str) -> list[str]:
    lock = parse_lock((REPO / "requirements.lock").read_text(encoding="utf-8"))
    pins = [_canonical(f"{name}=={pinned}") for name, pinned, _ in lock.values()]
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


def _assert_check_predicted(
    check: PlaybookRun, run: PlaybookRun, applications: Iterable[str]
) -> None:
    """--check, run just before ``run`` with the same arguments, said what it would change
    (on every host: the application hosts install and restart, the Prometheus host not)."""
    assert check.returncode == 0, check.explain()
    assert run.returncode == 0, run.explain()
    tasks = run.changed_tasks()
    for host in applications:
        assert set(tasks[host]) >= NEW_VERSION_CHANGES, (host, tasks[host])
    assert check.changed_tasks() == tasks, check.explain()[-6000:]
    assert check.changed() == run.changed(), check.explain()[-6000:]


def test_a_downgrade_runs_the_earlier_version(deployed: Deployment) -> None:
    earlier = snapshot_sources(deployed.workdir / "src-0.0.9", version="0.0.9")
    before = _running(deployed)
    version = ("-e", f"limpeza_source_dir={earlier}", "-e", "limpeza_version=0.0.9")
    # The earlier wheel is not built yet: check mode builds nothing, and still foresees it.
    check = deployed.playbook("deploy.yml", "--check", *version)
    run = deployed.playbook("deploy.yml", *version)
    try:
        _assert_check_predicted(check, run, deployed.targets)
        assert _installed(deployed) == dict.fromkeys(deployed.targets, _pinned("0.0.9"))
        for name, files in _limpeza_wheels(deployed).items():
            assert "limpeza-0.1.0-py3-none-any.whl" not in files, name
        after = _running(deployed)
        for name in deployed.targets:
            assert after[name][0] != before[name][0], f"{name}: the cleaner was not restarted"
            assert after[name][1] == "0.0.9", name
    finally:
        # Back to the version the sources hold, whose wheel is in the cache.
        back_check = deployed.playbook("deploy.yml", "--check")
        back = deployed.playbook("deploy.yml")
    _assert_check_predicted(back_check, back, deployed.targets)
    assert _installed(deployed) == dict.fromkeys(deployed.targets, _pinned("0.1.0"))
    assert {name: version for name, (_, version) in _running(deployed).items()} == dict.fromkeys(
        deployed.targets, "0.1.0"
    )


def test_the_controllers_cache_keeps_the_last_versions(deployed: Deployment) -> None:
    cache = deployed.workdir / "cache"
    current = cache / "wheels" / "limpeza-0.1.0-py3-none-any.whl"
    assert current.is_file()
    (digest,) = [p.name for p in (cache / "dependencies").iterdir()]  # one lock file so far
    # An older version's wheel and an older lock file's dependencies, built before the others.
    old_wheel = cache / "wheels" / "limpeza-0.0.1-py3-none-any.whl"
    old_wheel.write_bytes(current.read_bytes())
    old_dependencies = cache / "dependencies" / "000000000000"
    (old_dependencies / "cp311-x86_64-glibc2.36").mkdir(parents=True)
    for path in (old_wheel, old_dependencies):
        os.utime(path, (1_000_000_000, 1_000_000_000))

    def listing() -> list[str]:
        return sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))

    before = listing()
    check = deployed.playbook("deploy.yml", "--check", "-e", "limpeza_cache_keep=1")
    assert check.returncode == 0, check.explain()
    assert listing() == before, "check mode pruned the cache"

    # The default keeps 3: nothing goes.
    run = deployed.playbook("deploy.yml")
    assert run.returncode == 0, run.explain()
    assert old_wheel.exists() and old_dependencies.exists()

    run = deployed.playbook("deploy.yml", "-e", "limpeza_cache_keep=1")
    assert run.returncode == 0, run.explain()
    assert run.changed() == dict.fromkeys(deployed.hosts, 0), run.explain()
    assert not old_wheel.exists() and not old_dependencies.exists()
    # The wheel deployed, the one the targets ran before (the same) and the current lock's
    # dependencies stay.
    assert sorted(p.name for p in (cache / "wheels").iterdir()) == [current.name]
    assert [p.name for p in (cache / "dependencies").iterdir()] == [digest]
