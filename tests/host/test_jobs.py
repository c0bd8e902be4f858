"""Jobs in the suite's PostgreSQL, shared by both targets: force_clean.yml and the reapers."""

from __future__ import annotations

import uuid

import pytest

from tests.host.conftest import Deployment, wait_for

pytestmark = pytest.mark.host

ACTIVE = ("queued", "running")


def _reaped(deployed: Deployment) -> int:
    """Jobs the cleaners of all targets have reaped from the database, by their counters."""
    total = 0
    for name in deployed.targets:
        reaped = deployed.state(name).get("jobs_reaped", {}).get("database", {})
        total += sum(int(n) for n in reaped.values())
    return total


def _ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{uuid.uuid4().hex[:8]}" for _ in range(count)]


def test_force_clean_refuses_previews_then_ends_every_active_job(deployed: Deployment) -> None:
    database = deployed.database
    ids = _ids("fc", 4)
    # Fresh jobs: far from stale, so only force-clean ends them.
    database.insert_many([(ids[0], "running", 5), (ids[1], "queued", 5)])
    database.insert_many([(ids[2], "running", 1), (ids[3], "queued", 1)])

    def mine() -> dict[str, str]:
        return {k: v for k, v in database.statuses().items() if k in ids}

    refused = deployed.playbook("force_clean.yml")
    assert refused.returncode != 0, refused.explain()
    assert "confirm=yes" in refused.output
    assert set(mine().values()) <= set(ACTIVE), mine()

    preview = deployed.playbook("force_clean.yml", "--check")
    assert preview.returncode == 0, preview.explain()
    assert sum(preview.changed().values()) == 0, preview.explain()
    assert set(mine().values()) <= set(ACTIVE), mine()

    run = deployed.playbook("force_clean.yml", "-e", "confirm=yes")
    assert run.returncode == 0, run.explain()
    assert mine() == dict.fromkeys(ids, "error"), run.explain()
    # run_once: one host ended them, and that is the one change reported.
    assert sum(run.changed().values()) == 1, run.explain()


def test_two_cleaners_reap_each_stale_job_exactly_once(deployed: Deployment) -> None:
    database = deployed.database
    for name, target in deployed.targets.items():
        state = target.ssh("systemctl is-active limpeza-cleaner.service", check=False)
        assert state.stdout.strip() == "active", f"{name}\n{target.journal('limpeza-cleaner')}"
    before = _reaped(deployed)
    running, queued = _ids("stale-r", 20), _ids("stale-q", 10)
    database.insert_many([(i, "running", 600) for i in running])
    database.insert_many([(i, "queued", 600) for i in queued])
    ids = set(running + queued)

    def all_reaped() -> bool:
        return all(status == "error" for job, status in database.statuses().items() if job in ids)

    assert wait_for(all_reaped, 90), {
        k: v for k, v in database.statuses().items() if k in ids and v != "error"
    }
    assert wait_for(lambda: _reaped(deployed) - before >= len(ids), 30)
    # Several more cycles of both cleaners: nothing is counted twice.
    target = next(iter(deployed.targets.values()))
    target.ssh("sleep 6")
    assert _reaped(deployed) - before == len(ids)
