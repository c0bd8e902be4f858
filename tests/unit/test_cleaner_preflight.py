"""The limpeza_cleaner preflight, run by ansible-playbook in check mode against local hosts.

A quarantine is writable through the deepest directory it shares with what its rules sweep
(a rename never crosses the mounts the unit's sandbox makes): one that shares only / or a
system root is refused with a message naming the quarantine, the rules, their directories,
the common path and where to put it instead; one beside the swept directories passes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
ROLES = REPO / "roles"

FAR = {"directory": "/var/lib/limpeza/q", "retention": "7d", "max_bytes": "1GB"}
BESIDE = {"directory": "/srv/app/.limpeza-quarantine", "retention": "7d", "max_bytes": "1GB"}
UNDO = {"name": "undo", "pattern": "undo_*.dat", "max_age": "1h"}
SESSIONS = {"name": "sessions", "pattern": "session_*.json", "max_age": "24h"}

#: Host name -> its variables over the roles' defaults.
HOSTS: dict[str, dict[str, Any]] = {
    # The host tier's quarantine: beside the default swept directories.
    "beside": {"limpeza_files_rules": [SESSIONS, {**UNDO, "quarantine": BESIDE}]},
    "inherited_beside": {
        "limpeza_files_rules": [SESSIONS, UNDO],
        "limpeza_files_quarantine": BESIDE,
    },
    # A rule of its own directories, its quarantine under the deepest one they share.
    "own_directories": {
        "limpeza_files_rules": [
            {
                **UNDO,
                "directories": ["/data/renders/a", "/data/renders/b"],
                "quarantine": {"directory": "/data/.q", "retention": "1d"},
            }
        ]
    },
    # Far from what the rule sweeps: they share only /.
    "own_far": {
        "limpeza_files_rules": [
            SESSIONS,
            {**UNDO, "directories": ["/srv/app/uploads"], "quarantine": FAR},
        ]
    },
    # Every rule without a quarantine of its own inherits files.quarantine.
    "inherited_far": {
        "limpeza_files_rules": [SESSIONS, {**UNDO, "quarantine": None}],
        "limpeza_files_quarantine": FAR,
    },
    # A system root below /: the quarantine and the swept directory share only /var.
    "system_root": {
        "limpeza_files_rules": [
            {
                **UNDO,
                "directories": ["/var/www/uploads"],
                "quarantine": {"directory": "/var/q", "retention": "1d"},
            }
        ]
    },
}
REFUSED = {"own_far", "inherited_far", "system_root"}


def _defaults() -> dict[str, Any]:
    """The defaults of the limpeza role and of limpeza_cleaner, as the least of the variables."""
    defaults: dict[str, Any] = {}
    for role in ("limpeza", "limpeza_cleaner"):
        defaults.update(
            yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text(encoding="utf-8"))
        )
    return defaults


@pytest.fixture(scope="module")
def preflight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One check-mode run of the preflight over every host: host -> its failure ('' if none)."""
    work = tmp_path_factory.mktemp("preflight")
    hosts = {
        name: {
            **host_vars,
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
        }
        for name, host_vars in HOSTS.items()
    }
    inventory = {"all": {"vars": _defaults(), "hosts": hosts}}
    (work / "hosts.yml").write_text(yaml.safe_dump(inventory), encoding="utf-8")
    playbook = [
        {
            "name": "The limpeza_cleaner preflight",
            "hosts": "all",
            "gather_facts": False,
            "vars_files": [str(ROLES / "limpeza_cleaner" / "vars" / "main.yml")],
            "tasks": [
                {
                    "name": "Run the preflight",
                    "ansible.builtin.include_tasks": str(
                        ROLES / "limpeza_cleaner" / "tasks" / "preflight.yml"
                    ),
                }
            ],
        }
    ]
    (work / "preflight.yml").write_text(yaml.safe_dump(playbook), encoding="utf-8")
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            *("-i", str(work / "hosts.yml"), str(work / "preflight.yml"), "--check"),
            *("--forks", "10"),
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            # Each result as JSON after its host's name: the test reads what the operator reads.
            "ANSIBLE_STDOUT_CALLBACK": "minimal",
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        },
        cwd=work,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    results = re.findall(r"^(\S+) \| (\w+)!? => (\{.*?^\})$", result.stdout, re.M | re.S)
    failures = {name: "" for name in HOSTS}
    for name, status, body in results:
        if status == "FAILED":
            failures[name] += " ".join(
                item["msg"] for item in json.loads(body)["results"] if item.get("failed")
            )
    # A host that passed reached the last task of the preflight.
    reached = {name for name, _, body in results if '"stat"' in body}
    assert reached == {name for name, failure in failures.items() if not failure}, output
    assert set(failures) == set(HOSTS), output
    return failures


def test_a_quarantine_beside_what_its_rules_sweep_passes(preflight: dict[str, str]) -> None:
    assert {name for name, failure in preflight.items() if not failure} == set(HOSTS) - REFUSED


def test_a_rules_own_quarantine_sharing_only_root_is_refused_by_name(
    preflight: dict[str, str],
) -> None:
    message = preflight["own_far"]
    assert message.startswith(
        "The quarantine /var/lib/limpeza/q and the directories its rules sweep share no "
        "directory but /, which the cleaner may not write: rule undo sweeps /srv/app/uploads, "
        "common path /;"
    ), message
    # Not the rule without a quarantine, and not the generic refusal of /.
    assert "sessions" not in message
    assert "cannot be a path the cleaner writes" not in message
    assert "rename" in message and "EXDEV" in message
    assert "Put the quarantine beside the swept directories" in message
    assert message.endswith("e.g. /srv/app/.limpeza-quarantine for rule undo."), message


def test_an_inherited_quarantine_sharing_only_root_names_every_rule(
    preflight: dict[str, str],
) -> None:
    message = preflight["inherited_far"]
    assert "The quarantine /var/lib/limpeza/q and the directories its rules sweep" in message
    swept = "/srv/app/backend/app/uploads, /srv/app/uploads, common path /"
    assert f"rule sessions (inheriting limpeza_files_quarantine) sweeps {swept};" in message
    # A rule's null quarantine is none: it neither inherits nor is named.
    assert "undo" not in message
    assert message.endswith("e.g. /srv/app/.limpeza-quarantine for rule sessions."), message


def test_a_quarantine_sharing_only_a_system_root_is_refused(preflight: dict[str, str]) -> None:
    message = preflight["system_root"]
    assert message.startswith(
        "The quarantine /var/q and the directories its rules sweep share no directory but /var,"
    ), message
    assert "rule undo sweeps /var/www/uploads, common path /var;" in message
    assert message.endswith("e.g. /var/www/.limpeza-quarantine for rule undo."), message
