"""The on-call playbooks besides force_clean.yml: cleanup_now.yml, purge_session.yml, status.yml."""

from __future__ import annotations

import pytest

from tests.host.conftest import UPLOADS, Deployment

pytestmark = pytest.mark.host


def _touch(deployed: Deployment, *names: str) -> None:
    for target in deployed.targets.values():
        for name in names:
            target.ssh(f"install -o www-data -g www-data -m 0664 /dev/null {UPLOADS}/{name}")


def _exists(deployed: Deployment, name: str) -> dict[str, bool]:
    return {
        host: target.ssh(f"test -e {UPLOADS}/{name}", check=False).returncode == 0
        for host, target in deployed.targets.items()
    }


def test_cleanup_now_with_max_age_zero_removes_fresh_files(deployed: Deployment) -> None:
    _touch(deployed, "temp_audio_now.wav")
    preview = deployed.playbook("cleanup_now.yml", "-e", "max_age=0", "--check")
    assert preview.returncode == 0, preview.explain()
    assert _exists(deployed, "temp_audio_now.wav") == dict.fromkeys(deployed.targets, True)
    run = deployed.playbook("cleanup_now.yml", "-e", "max_age=0")
    assert run.returncode == 0, run.explain()
    assert _exists(deployed, "temp_audio_now.wav") == dict.fromkeys(deployed.targets, False)
    assert run.changed() == dict.fromkeys(deployed.targets, 1), run.explain()


def test_purge_session_removes_only_that_session(deployed: Deployment) -> None:
    _touch(deployed, "session_s1.json", "temp_audio_s1.wav", "session_s2.json")
    refused = deployed.playbook("purge_session.yml")
    assert refused.returncode != 0, refused.explain()
    run = deployed.playbook("purge_session.yml", "-e", "session_id=s1")
    assert run.returncode == 0, run.explain()
    assert _exists(deployed, "session_s1.json") == dict.fromkeys(deployed.targets, False)
    assert _exists(deployed, "temp_audio_s1.wav") == dict.fromkeys(deployed.targets, False)
    assert _exists(deployed, "session_s2.json") == dict.fromkeys(deployed.targets, True)
    for target in deployed.targets.values():
        target.ssh(f"rm -f {UPLOADS}/session_s2.json")


def test_status_prints_every_host(deployed: Deployment) -> None:
    run = deployed.playbook("status.yml")
    assert run.returncode == 0, run.explain()
    assert set(run.recap) == set(deployed.targets), run.explain()
    assert sum(run.changed().values()) == 0
    assert run.output.count(UPLOADS) >= len(deployed.targets), run.explain()
    # The wrapper it runs keeps the unit's directory modes.
    for name, target in deployed.targets.items():
        modes = target.ssh("stat -c %a /var/lib/limpeza /var/log/limpeza").stdout.split()
        assert modes == ["750", "750"], name
