"""The exporter's address and web config as the roles make them.

The listen address: loopback, unless the inventory has a Prometheus host, then the host's
inventory address. The web config (TLS and basic auth) generated from the role's variables
must be one limpeza-exporter accepts, and the bcrypt hashes of the passwords stay the same
from one deploy to the next while they verify (roles/limpeza_exporter/files/web_users.py).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import bcrypt
import pytest
import yaml

from cleaner.config import ConfigError, parse_listen_address
from devtools.tls import certificate_authority
from exporter import webconfig

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
ANSIBLE = REPO / ".venv" / "bin" / "ansible"
SCRIPT = ROLES / "limpeza_exporter" / "files" / "web_users.py"


def _ansible(inventory: Path, host: str, module: str, args: str, *var_files: Path) -> str:
    if not ANSIBLE.exists():
        pytest.fail(f"{ANSIBLE} is missing: `make setup` installs ansible-core")
    role_files = [
        ROLES / role / kind / "main.yml"
        for role in ("limpeza", "limpeza_exporter")
        for kind in ("defaults", "vars")
    ]
    extra = [arg for path in (*role_files, *var_files) for arg in ("-e", f"@{path}")]
    result = subprocess.run(
        [str(ANSIBLE), "-i", str(inventory), host, "-c", "local", "-m", module, "-a", args, *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _inventory(tmp_path: Path, address: str, prometheus: bool) -> Path:
    groups: dict[str, object] = {
        "limpeza": {
            "hosts": {
                "app1": {"ansible_host": address, "ansible_python_interpreter": sys.executable}
            }
        },
    }
    if prometheus:
        groups["prometheus"] = {"hosts": {"mon1": {"ansible_host": "192.0.2.9"}}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"children": groups}}), encoding="utf-8")
    return path


def _listen_address(tmp_path: Path, address: str, prometheus: bool) -> str:
    inventory = _inventory(tmp_path, address, prometheus)
    out = _ansible(
        inventory, "app1", "ansible.builtin.debug", "var=limpeza_exporter_listen_address"
    )
    value = yaml.safe_load(out.split("=>", 1)[1])["limpeza_exporter_listen_address"]
    assert isinstance(value, str)
    parse_listen_address(value)  # what the exporter accepts
    return value


@pytest.mark.parametrize(
    ("address", "prometheus", "expected"),
    [
        ("198.51.100.7", False, "127.0.0.1:9817"),
        ("198.51.100.7", True, "198.51.100.7:9817"),
        ("2001:db8::7", True, "[2001:db8::7]:9817"),
        ("app1.example.com", True, "app1.example.com:9817"),
    ],
)
def test_listen_address_is_loopback_unless_the_inventory_has_a_prometheus_host(
    tmp_path: Path, address: str, prometheus: bool, expected: str
) -> None:
    assert _listen_address(tmp_path, address, prometheus) == expected


# --------------------------------------------------------------------------- web_users.py


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("web_users", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_script(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """As the role runs it: `python -c CODE ARGS...` with the virtualenv's Python."""
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.read_text(encoding="utf-8"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_hashes_are_kept_while_they_verify_and_replaced_when_the_password_changes(
    tmp_path: Path,
) -> None:
    web = tmp_path / "web.yml"
    passwords = {"prometheus": "s3cret", "grafana": "other"}
    first = _run_script("hash", str(web), "4", stdin=json.dumps(passwords))
    assert first.returncode == 0, first.stderr
    hashes = json.loads(first.stdout)
    assert set(hashes) == set(passwords)
    for user, hashed in hashes.items():
        assert webconfig.bcrypt_problem(hashed) is None
        assert bcrypt.checkpw(passwords[user].encode(), hashed.encode())
    web.write_text(yaml.safe_dump({"basic_auth_users": hashes}), encoding="utf-8")

    again = _run_script("hash", str(web), "4", stdin=json.dumps(passwords))
    assert json.loads(again.stdout) == hashes, "a second deploy must change nothing"

    changed = json.loads(
        _run_script("hash", str(web), "4", stdin=json.dumps({"prometheus": "new"})).stdout
    )
    assert set(changed) == {"prometheus"}, "a removed user is dropped"
    assert changed["prometheus"] != hashes["prometheus"]
    assert bcrypt.checkpw(b"new", changed["prometheus"].encode())


def test_a_broken_existing_file_or_hash_is_replaced_not_kept(tmp_path: Path) -> None:
    module = _script()
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: [not, a, mapping\n", encoding="utf-8")
    assert module.existing_hashes(web) == {}
    assert module.existing_hashes(tmp_path / "missing.yml") == {}
    fresh = module.hash_users({"u": "p"}, {"u": "$2y$10$broken"}, 4)
    assert bcrypt.checkpw(b"p", fresh["u"].encode())


def test_bad_input_is_refused() -> None:
    result = _run_script("hash", "/nonexistent", "4", stdin=json.dumps({"u": 1}))
    assert result.returncode == 2
    assert "user name to password" in result.stderr


def test_check_refuses_what_the_exporter_refuses(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prometheus: $2y$10$short\n", encoding="utf-8")
    result = _run_script("check", str(web))
    assert result.returncode == 1
    assert "basic_auth_users.prometheus" in result.stderr
    with pytest.raises(ConfigError):
        webconfig.load(web)


# --------------------------------------------------------------------------- web.yml.j2


def _web_yml(tmp_path: Path, variables: dict[str, object]) -> tuple[str, Path]:
    inventory = _inventory(tmp_path, "198.51.100.7", True)
    var_file = tmp_path / "vars.yml"
    var_file.write_text(yaml.safe_dump(variables), encoding="utf-8")
    dest = tmp_path / "web.yml"
    src = ROLES / "limpeza_exporter" / "templates" / "web.yml.j2"
    _ansible(inventory, "app1", "ansible.builtin.template", f"src={src} dest={dest}", var_file)
    return dest.read_text(encoding="utf-8"), dest


def test_web_config_from_variables_is_one_the_exporter_loads(tmp_path: Path) -> None:
    ca = certificate_authority(tmp_path / "ca")
    server = ca.issue(tmp_path / "server", ("198.51.100.7",))
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    text, path = _web_yml(
        tmp_path,
        {
            "limpeza_config_dir": str(tmp_path / "etc"),
            "limpeza_exporter_tls_cert": server.cert.read_text(),
            "limpeza_exporter_tls_key": server.key.read_text(),
            "limpeza_exporter_tls_server_config": {"min_version": "TLS13"},
            "limpeza_exporter_basic_auth_users": {"prometheus": "s3cret"},
            "__limpeza_exporter_web_hashes": {"prometheus": hashed},
        },
    )
    assert text.startswith("#"), "the ansible_managed comment"
    assert "s3cret" not in text, "only the hash lands"
    raw = yaml.safe_load(text)
    tls_dir = tmp_path / "etc" / "tls"
    assert raw == {
        "tls_server_config": {
            "cert_file": f"{tls_dir}/exporter.crt",
            "key_file": f"{tls_dir}/exporter.key",
            "min_version": "TLS13",
        },
        "basic_auth_users": {"prometheus": hashed},
    }
    # The role writes the certificate and key where cert_file and key_file point.
    tls_dir.mkdir(parents=True)
    (tls_dir / "exporter.crt").write_bytes(server.cert.read_bytes())
    (tls_dir / "exporter.key").write_bytes(server.key.read_bytes())
    loaded = webconfig.load(path)
    assert loaded.tls is not None and loaded.basic_auth is not None
    assert _run_script("check", str(path)).returncode == 0


def test_web_config_with_users_only_is_plain_http_with_basic_auth(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    text, path = _web_yml(
        tmp_path,
        {
            "limpeza_exporter_basic_auth_users": {"prometheus": "pw"},
            "__limpeza_exporter_web_hashes": {"prometheus": hashed},
        },
    )
    assert yaml.safe_load(text) == {"basic_auth_users": {"prometheus": hashed}}
    loaded = webconfig.load(path)
    assert loaded.tls is None and loaded.basic_auth is not None


def _exec_start(tmp_path: Path, variables: dict[str, object]) -> str:
    inventory = _inventory(tmp_path, "198.51.100.7", False)
    var_file = tmp_path / "vars.yml"
    var_file.write_text(yaml.safe_dump(variables), encoding="utf-8")
    dest = tmp_path / "unit"
    src = ROLES / "limpeza_exporter" / "templates" / "limpeza-exporter.service.j2"
    _ansible(inventory, "app1", "ansible.builtin.template", f"src={src} dest={dest}", var_file)
    text = dest.read_text(encoding="utf-8")
    [line] = [line for line in io.StringIO(text) if line.startswith("ExecStart=")]
    return line.strip()


def test_the_unit_starts_the_exporter_with_the_generated_web_config(tmp_path: Path) -> None:
    assert "--web.config.file" not in _exec_start(tmp_path, {})
    start = _exec_start(tmp_path, {"limpeza_exporter_basic_auth_users": {"prometheus": "pw"}})
    assert start.endswith(
        "--web.listen-address 127.0.0.1:9817 --web.config.file /etc/limpeza/web.yml"
    )
