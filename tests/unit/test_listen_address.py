"""One listen-address parser: the config, the exporter's flag and the role agree on a table.

cleaner.config.parse_listen_address is the definition. exporter.listen_address in a config
file, ``limpeza-exporter --web.listen-address`` and the Ansible preflight (which checks the
rendered limpeza.yml on the controller) must accept exactly what it accepts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cleaner.config import ConfigError, build, parse_listen_address

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"

VALID = {
    "127.0.0.1:9817": ("127.0.0.1", 9817),
    "0.0.0.0:1": ("0.0.0.0", 1),
    "[::1]:9817": ("::1", 9817),
    "[::]:65535": ("::", 65535),
    "[fe80::1%eth0]:9817": ("fe80::1%eth0", 9817),
    "localhost:9817": ("localhost", 9817),
    "metrics.example.com:9817": ("metrics.example.com", 9817),
}
INVALID = [
    "127.0.0.1:0",  # any free port: Prometheus could not know where to scrape
    "127.0.0.1:99999",
    "127.0.0.1:65536",
    ":9817",  # no host
    "[]:9817",
    "127.0.0.1",  # no port
    "127.0.0.1:",
    "::1:9817",  # IPv6 without brackets
    "[::1:9817",
    "127.0.0.1:+80",
    "127.0.0.1:٣٣",  # digits, but not ASCII ones
    "local host:9817",
    "",
]


@pytest.mark.parametrize(("address", "parsed"), VALID.items())
def test_parser_accepts(address: str, parsed: tuple[str, int]) -> None:
    assert parse_listen_address(address) == parsed


@pytest.mark.parametrize("address", INVALID)
def test_parser_refuses(address: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_listen_address(address)


@pytest.mark.parametrize("address", [*VALID, *INVALID])
def test_config_agrees_with_the_parser(address: str) -> None:
    raw = {"exporter": {"listen_address": address}}
    if address in VALID:
        assert build(raw, env={}).exporter.listen_address == address
    else:
        with pytest.raises(ConfigError) as caught:
            build(raw, env={})
        assert all(p.startswith("exporter.listen_address:") for p in caught.value.problems)


@pytest.mark.parametrize("address", [a for a in INVALID if a])
def test_exporter_flag_agrees_with_the_parser(address: str, tmp_path: Path) -> None:
    """An address the parser refuses stops the exporter with exit 2 before it listens."""
    config = tmp_path / "limpeza.yml"
    config.write_text(f"state_file: {tmp_path}/state.json\n", encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config",
            str(config),
            "--web.listen-address",
            address,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "--web.listen-address: expected" in result.stderr


def test_role_preflight_agrees_with_the_parser(tmp_path: Path) -> None:
    """The limpeza role's preflight refuses exactly the addresses the parser refuses.

    One ansible-playbook run in check mode, one local host per address of a sample of the
    table, each with its own limpeza_exporter_listen_address; plus a host with a bad
    duration, refused the same way.
    """
    cases = ["127.0.0.1:9817", "[::1]:9817", "127.0.0.1:0", "127.0.0.1:99999", ":9817", "::1:9817"]
    assert set(cases) <= {*VALID, *INVALID}
    hosts: dict[str, dict[str, object]] = {
        f"case{i}": {"limpeza_exporter_listen_address": address} for i, address in enumerate(cases)
    }
    hosts["bad_interval"] = {"limpeza_interval": "soon"}
    for host_vars in hosts.values():
        host_vars.update(ansible_connection="local", ansible_python_interpreter=sys.executable)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}), encoding="utf-8")
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "The limpeza role's check of limpeza.yml",
                    "hosts": "all",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Check limpeza.yml",
                            "ansible.builtin.include_role": {
                                "name": "limpeza",
                                "tasks_from": "validate",
                            },
                        }
                    ],
                }
            ]
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            *("-i", str(inventory), str(playbook), "--check", "--forks", "20"),
            *("-e", f"limpeza_source_dir={REPO}"),
        ],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_NOCOLOR": "1",
        },
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    recap = {}
    for line in result.stdout.split("PLAY RECAP", 1)[-1].splitlines():
        name, sep, counts = line.partition(" : ")
        if sep:
            recap[name.strip()] = "failed=0" not in counts
    assert set(recap) == set(hosts), result.stdout + result.stderr
    failed = {name for name, did_fail in recap.items() if did_fail}
    expected = {f"case{i}" for i, address in enumerate(cases) if address not in VALID}
    assert failed == expected | {"bad_interval"}, result.stdout
    assert "expected HOST:PORT with a port from 1 to 65535" in result.stdout
    assert 'interval: expected a duration such as 24h, got "soon"' in result.stdout
