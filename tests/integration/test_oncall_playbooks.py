"""force_clean.yml and status.yml across a fleet: real playbook runs, real CLI, real PostgreSQL.

Three application hosts of one inventory (local connections, each with its own
configuration, job cache and state file, as on three machines) share one jobs database.
Each host's ``limpeza_cleaner_wrapper_path`` runs the real ``limpeza-cleaner`` with its own
configuration, as the deployed wrapper does. The booted-host tier runs the same playbooks
over ssh on the deployed targets (tests/host/test_playbooks.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.process import free_port
from tests.fixtures.playbook_output import task_output, task_results
from tests.fixtures.postgres import JobsDatabase

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOSTS = ("app1", "app2", "app3")
_RECAP_RE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.M)


def _host(tmp_path: Path, name: str, jobs_db: JobsDatabase) -> dict[str, Any]:
    """One host's configuration and wrapper; returns its inventory variables."""
    root = tmp_path / name
    (root / "uploads").mkdir(parents=True)
    config = {
        "state_file": str(root / "state.json"),
        "audit_log": None,
        "files": {"directories": [str(root / "uploads")]},
        "jobs": {
            "cache_file": str(root / "jobs.json"),
            "database": {"table": jobs_db.table, "error_message_column": "error_message"},
        },
    }
    (root / "limpeza.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    wrapper = root / "limpeza-cleaner"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"LIMPEZA_DATABASE_URL={shlex.quote(jobs_db.dsn)} exec {shlex.quote(sys.executable)} "
        f'-m cleaner --config {shlex.quote(str(root / "limpeza.yml"))} "$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(0o700)
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
        "limpeza_cleaner_wrapper_path": str(wrapper),
    }


@pytest.fixture
def fleet(tmp_path: Path, jobs_db: JobsDatabase) -> Path:
    hosts = {name: _host(tmp_path, name, jobs_db) for name in HOSTS}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump({"all": {"children": {"limpeza": {"hosts": hosts}}}}), encoding="utf-8"
    )
    return inventory


def _cache(tmp_path: Path, name: str) -> Path:
    return tmp_path / name / "jobs.json"


def _seed_caches(tmp_path: Path) -> None:
    now = time.time()
    for name in HOSTS:
        records = {
            f"{name}-run": {"status": "running", "updated_at": now},
            f"{name}-queue": {"status": "queued", "updated_at": now},
            f"{name}-done": {"status": "done", "updated_at": now},
        }
        _cache(tmp_path, name).write_text(json.dumps(records), encoding="utf-8")


def _left(tmp_path: Path, name: str) -> set[str]:
    return set(json.loads(_cache(tmp_path, name).read_text(encoding="utf-8")))


class Run:
    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        self.returncode = result.returncode
        self.output = result.stdout + result.stderr
        self.args = args
        self.recap = {
            host: {k: int(v) for k, v in (pair.split("=") for pair in counts.split())}
            for host, counts in _RECAP_RE.findall(self.output.split("PLAY RECAP", 1)[-1])
        }

    def explain(self) -> str:
        return f"ansible-playbook {' '.join(self.args)} exited {self.returncode}:\n{self.output}"

    def task_output(self, task: str) -> str:
        return task_output(self.output, task)

    def results(self, task: str) -> dict[str, Any]:
        return task_results(self.output, task)

    def report(self) -> dict[str, Any]:
        """force_clean.yml's report, printed once."""
        (result,) = self.results("Report what force-clean").values()
        return dict(result["msg"])


def playbook(inventory: Path, name: str, *extra: str) -> Run:
    args = ["-i", str(inventory), str(REPO / "playbooks" / name), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIMPEZA_", "ANSIBLE_"))}
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_STDOUT_CALLBACK="default",
        ANSIBLE_LOCAL_TEMP=str(inventory.parent / "ansible-tmp"),
        ANSIBLE_REMOTE_TEMP=str(inventory.parent / "ansible-remote-tmp"),
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=inventory.parent,
        timeout=300,
        check=False,
    )
    return Run(args, result)


def test_force_clean_ends_the_database_once_and_clears_every_cache(
    tmp_path: Path, fleet: Path, jobs_db: JobsDatabase
) -> None:
    _seed_caches(tmp_path)
    jobs_db.insert_many([("db-r1", "running", 5), ("db-r2", "running", 5), ("db-q", "queued", 1)])
    jobs_db.insert("db-done", "done", 60)
    before = {name: _cache(tmp_path, name).read_bytes() for name in HOSTS}

    refused = playbook(fleet, "force_clean.yml")
    assert refused.returncode != 0, refused.explain()
    assert "confirm=yes" in refused.output

    preview = playbook(fleet, "force_clean.yml", "--check")
    assert preview.returncode == 0, preview.explain()
    assert sum(r["changed"] for r in preview.recap.values()) == 0, preview.explain()
    report = preview.report()
    assert report["dry_run"] is True
    assert report["database"]["ended"] == {"running": 2, "queued": 1}
    assert {h: r["ended"] for h, r in report["hosts"].items()} == {
        name: {"running": 1, "queued": 1} for name in HOSTS
    }
    assert {name: _cache(tmp_path, name).read_bytes() for name in HOSTS} == before
    assert set(jobs_db.statuses().values()) == {"running", "queued", "done"}

    run = playbook(fleet, "force_clean.yml", "-e", "confirm=yes")
    assert run.returncode == 0, run.explain()
    for name in HOSTS:
        assert _left(tmp_path, name) == {f"{name}-done"}, name
    assert jobs_db.statuses() == {
        "db-r1": "error",
        "db-r2": "error",
        "db-q": "error",
        "db-done": "done",
    }
    # Once: one force-clean of the database, by one host, in the database's error message.
    rows = jobs_db.rows()
    assert {rows[j]["error_message"] for j in ("db-r1", "db-r2", "db-q")} == {"force-clean"}
    report = run.report()
    assert report["dry_run"] is False
    assert report["database"]["via"] in HOSTS
    assert (report["database"]["ended"], report["database"]["ok"]) == (
        {"running": 2, "queued": 1},
        True,
    )
    cleared = {"ok": True, "ended": {"running": 1, "queued": 1}, "total": 2, "errors": []}
    assert report["hosts"] == {name: cleared for name in HOSTS}
    states = {
        name: json.loads((tmp_path / name / "state.json").read_text(encoding="utf-8"))
        for name in HOSTS
    }
    database_reaped = {
        name: state.get("jobs_reaped", {}).get("database", {}) for name, state in states.items()
    }
    assert [name for name, reaped in database_reaped.items() if reaped] == [
        report["database"]["via"]
    ]
    # Each host changed its own cache; the host that ended the database's jobs one more.
    changed = {host: counts["changed"] for host, counts in run.recap.items()}
    via = report["database"]["via"]
    assert changed == {name: 2 if name == via else 1 for name in HOSTS}, run.explain()


def test_one_failing_host_shows_in_the_report_and_recap_and_stops_nobody(
    tmp_path: Path, fleet: Path, jobs_db: JobsDatabase
) -> None:
    _seed_caches(tmp_path)
    broken = _cache(tmp_path, "app2")
    broken.write_text("{not json", encoding="utf-8")
    # And a host that cannot be reached at all: nothing listens on its ssh port.
    inventory = yaml.safe_load(fleet.read_text(encoding="utf-8"))
    inventory["all"]["children"]["limpeza"]["hosts"]["gone"] = {
        "ansible_host": "127.0.0.1",
        "ansible_port": free_port(),
        "ansible_ssh_common_args": "-o ConnectTimeout=5 -o BatchMode=yes",
    }
    fleet.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    jobs_db.insert("db-r", "running", 5)
    run = playbook(fleet, "force_clean.yml", "-e", "confirm=yes")
    assert run.returncode != 0, run.explain()
    assert {h: c["failed"] for h, c in run.recap.items()} == {
        "app1": 0,
        "app2": 1,
        "app3": 0,
        "gone": 0,
    }, run.explain()
    assert run.recap["gone"]["unreachable"] == 1, run.explain()
    assert run.report()["hosts"]["gone"] == "unreachable: nothing done"
    assert broken.read_text(encoding="utf-8") == "{not json"
    for name in ("app1", "app3"):
        assert _left(tmp_path, name) == {f"{name}-done"}, name
    assert jobs_db.statuses() == {"db-r": "error"}
    report = run.report()
    assert report["hosts"]["app2"]["ok"] is False
    assert report["hosts"]["app2"]["ended"] is None
    assert "not valid JSON" in report["hosts"]["app2"]["errors"][0]
    assert report["hosts"]["app1"]["ok"] is True
    assert report["database"]["ended"] == {"running": 1}
    assert "force-clean failed here: cache:" in run.task_output("Fail the hosts")


def test_a_database_that_is_down_fails_the_host_that_tried_and_no_cache(
    tmp_path: Path, fleet: Path, jobs_db: JobsDatabase
) -> None:
    _seed_caches(tmp_path)
    jobs_db.server.stop()
    try:
        run = playbook(fleet, "force_clean.yml", "-e", "confirm=yes")
    finally:
        jobs_db.server.start()
    assert run.returncode != 0, run.explain()
    report = run.report()
    via = report["database"]["via"]
    assert (report["database"]["ok"], report["database"]["ended"]) == (False, None)
    assert report["database"]["errors"] == ["database: down"]
    # The caches are each host's own: cleared all the same.
    for name in HOSTS:
        assert _left(tmp_path, name) == {f"{name}-done"}, name
        assert report["hosts"][name]["ok"] is True
    assert {h: c["failed"] for h, c in run.recap.items()} == {
        name: int(name == via) for name in HOSTS
    }
    assert jobs_db.password not in run.output


def test_status_shows_each_host_and_the_database_once(
    tmp_path: Path, fleet: Path, jobs_db: JobsDatabase
) -> None:
    _seed_caches(tmp_path)
    jobs_db.insert_many([("db-r", "running", 5), ("db-q", "queued", 1)])
    run = playbook(fleet, "status.yml")
    assert run.returncode == 0, run.explain()
    assert set(run.recap) == set(HOSTS)
    assert sum(c["changed"] for c in run.recap.values()) == 0
    hosts = {name: result["msg"] for name, result in run.results("Show this host's").items()}
    assert set(hosts) == set(HOSTS), run.explain()
    for name, lines in hosts.items():
        # No unit here (no systemd as PID 1, no limpeza unit): each says what it is.
        assert lines[0].startswith("limpeza-cleaner.service: "), lines
        assert lines[1].startswith("limpeza-exporter.service: "), lines
        assert str(tmp_path / name / "uploads") in lines, lines
        assert any(line.startswith("last sweep: ") for line in lines), lines
        cache = f"  cache {_cache(tmp_path, name)}: 2 active (done: 1, queued: 1, running: 1)"
        assert any(line.startswith(cache) for line in lines), lines
        assert not any("database" in line for line in lines), lines
    (shared,) = run.results("Show the shared database's jobs").values()
    assert shared["msg"][:2] == [
        "jobs:",
        "  database jobs: 2 active (queued: 1, running: 1); stale: queued: 0, running: 0",
    ]
    assert run.output.count("database jobs:") == 1, run.explain()
