"""The on-call playbooks across both targets: cleanup_now, purge_session, force_clean, status."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.fixtures.playbook_output import task_results
from tests.host.conftest import UPLOADS, Deployment

pytestmark = pytest.mark.host

#: Each target's JSON job cache, as the API keeps it (its own per host), for the tests below.
CACHE = "/srv/app/cache/jobs.json"
CONFIG = "etc/limpeza/limpeza.yml"


@pytest.fixture
def job_caches(deployed: Deployment) -> Iterator[None]:
    """Both targets' limpeza.yml name a job cache, for the on-call commands of one test.

    The daemons are not reloaded (they go on without it); the configuration is put back
    byte for byte afterwards.
    """
    originals: dict[str, str] = {}
    try:
        for name, target in deployed.targets.items():
            # The API's directory: the cleaner (in www-data) may rewrite the cache in it.
            target.ssh(f"install -d -o www-data -g www-data -m 2775 {os.path.dirname(CACHE)}")
            config = target.root / CONFIG
            originals[name] = config.read_text(encoding="utf-8")
            raw = yaml.safe_load(originals[name])
            raw["jobs"]["cache_file"] = CACHE
            config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        yield
    finally:
        for name, text in originals.items():
            (deployed.targets[name].root / CONFIG).write_text(text, encoding="utf-8")
            deployed.targets[name].ssh(f"rm -f {CACHE}")


def _write_cache(deployed: Deployment) -> None:
    now = time.time()
    for name, target in deployed.targets.items():
        records = {
            f"{name}-run": {"status": "running", "updated_at": now},
            f"{name}-queue": {"status": "queued", "updated_at": now},
            f"{name}-done": {"status": "done", "updated_at": now},
        }
        path = target.root / CACHE.lstrip("/")
        path.write_text(json.dumps(records), encoding="utf-8")
        os.chown(path, 33, 33)  # www-data, as the API writes it
        path.chmod(0o664)


def _cache(deployed: Deployment, name: str) -> dict[str, Any]:
    path = deployed.targets[name].root / CACHE.lstrip("/")
    return dict(json.loads(path.read_text(encoding="utf-8")))


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


def test_force_clean_clears_each_hosts_cache_and_ends_the_database_once(
    deployed: Deployment, job_caches: None
) -> None:
    database = deployed.database
    ids = [f"fleet-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    database.insert_many([(ids[0], "running", 5), (ids[1], "queued", 5), (ids[2], "running", 1)])
    _write_cache(deployed)
    active_before = sum(s in ("running", "queued") for s in database.statuses().values())
    names = set(deployed.targets)

    preview = deployed.playbook("force_clean.yml", "--check")
    assert preview.returncode == 0, preview.explain()
    assert sum(preview.changed().values()) == 0, preview.explain()
    assert all(len(_cache(deployed, name)) == 3 for name in names)
    assert {database.statuses()[i] for i in ids} <= {"running", "queued"}

    run = deployed.playbook("force_clean.yml", "-e", "confirm=yes")
    assert run.returncode == 0, run.explain()
    for name in names:
        assert set(_cache(deployed, name)) == {f"{name}-done"}, run.explain()
    assert {database.statuses()[i] for i in ids} == {"error"}
    rows = database.rows()
    assert {rows[i]["error_message"] for i in ids} == {"force-clean"}
    ((_, result),) = task_results(run.output, "Report what force-clean").items()
    report = result["msg"]
    # The report names every host, with what was cleared there, and the database once.
    assert report["hosts"] == {
        name: {"ok": True, "ended": {"running": 1, "queued": 1}, "total": 2, "errors": []}
        for name in names
    }, run.explain()
    via = report["database"]["via"]
    assert via in names
    assert (report["database"]["ok"], report["database"]["total"]) == (True, active_before)
    # Each host changed its cache; the one that ended the database's jobs, one more.
    assert run.changed() == {name: 2 if name == via else 1 for name in names}, run.explain()


def test_status_shows_each_host_and_the_database_once(
    deployed: Deployment, job_caches: None
) -> None:
    _write_cache(deployed)
    run = deployed.playbook("status.yml")
    assert run.returncode == 0, run.explain()
    hosts = {name: r["msg"] for name, r in task_results(run.output, "Show this host's").items()}
    assert set(hosts) == set(deployed.targets), run.explain()
    for name, lines in hosts.items():
        assert lines[:2] == [
            "limpeza-cleaner.service: active",
            "limpeza-exporter.service: active",
        ], (name, lines)
        assert UPLOADS in lines, (name, lines)
        assert any(line.startswith("last sweep: ") for line in lines), (name, lines)
        assert f"  cache {CACHE}: 2 active (done: 1, queued: 1, running: 1); " in "\n".join(
            lines
        ), (name, lines)
    (shared,) = task_results(run.output, "Show the shared database's jobs").values()
    assert shared["msg"][1].startswith("  database jobs: "), shared
    assert run.output.count("database jobs: ") == 1, run.explain()
