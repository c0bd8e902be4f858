"""The host tier: a mixed fleet of booted targets, deployed with playbooks/deploy.yml.

``limpeza-a`` (Debian 12) and ``limpeza-b`` (Debian 13) are application hosts sharing one jobs
database (the suite's PostgreSQL on 127.0.0.1), deployed in one play. ``limpeza-prometheus``
(Debian 12) is the Prometheus host, in a network namespace of its own joined by a veth pair:
the application hosts' 127.0.0.1 is out of its reach, their exporters listen on the machine's
end of the pair (their inventory address) and a webhook receiver of the suite listens there
for its Alertmanager. The deployment is done once per session: first in check mode on the
fresh hosts, then for real; nothing on the Prometheus host is written by hand.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.alertmanager import WebhookServer, serve_webhook
from devtools.nspawn import Target, boot_targets
from devtools.postgres import JobsDatabase, PostgresServer, fresh_jobs_database
from devtools.process import free_port
from devtools.tls import CertificateAuthority, ServerCertificate, certificate_authority

REPO = Path(__file__).resolve().parents[2]
NAMES = ["limpeza-a", "limpeza-b"]
PROMETHEUS_HOST = "limpeza-prometheus"
#: Each target's Debian release: one play deploys both, each with its own Python.
SUITES = {"limpeza-a": "bookworm", "limpeza-b": "trixie", PROMETHEUS_HOST: "bookworm"}
#: Prometheus' own port, in its own network namespace.
PROMETHEUS_PORT = 9090
UPLOADS = "/srv/app/uploads"
BACKEND_UPLOADS = "/srv/app/backend/app/uploads"
#: The backend's group owning the upload directory; the cleaner gets it as a supplementary group.
APP_GROUP = "www-data"
#: The exporters serve TLS with a certificate of the suite's CA and ask for this user.
SCRAPE_USER = "prometheus"
SCRAPE_PASSWORD = "scrape-s3cret"
#: A rule of the deployment keeps what it takes here (outside the swept directories, on
#: their filesystem), to be restored; the role creates the directory.
QUARANTINE = "/srv/app/.limpeza-quarantine"
QUARANTINE_RULE = {
    "name": "undo",
    "pattern": "undo_*.dat",
    "max_age": "1h",
    "quarantine": {"directory": QUARANTINE, "retention": "7d", "max_bytes": "1GB"},
}
#: The role's default rules, and the quarantine rule.
RULES = [
    {"name": "sessions", "pattern": "session_*.json", "max_age": "24h"},
    {"name": "temp_audio", "pattern": "temp_audio_*.wav", "max_age": "24h"},
    {"name": "final_videos", "pattern": "final_*.mp4", "max_age": "24h"},
    QUARANTINE_RULE,
]

pytestmark = pytest.mark.host


@dataclass
class PlaybookRun:
    """One ansible-playbook run: its exit code, output, and the recap per host."""

    args: list[str]
    returncode: int
    output: str
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap.items()}

    def changed_tasks(self) -> dict[str, list[str]]:
        """Per host, the tasks and handlers (``role : name``) that reported changed, in order."""
        seen: dict[str, list[tuple[int, str]]] = {host: [] for host in self.recap}
        current = (0, "")
        for line in self.output.splitlines():
            if header := _TASK_RE.match(line):
                current = (current[0] + 1, header.group(1))
            elif (change := _CHANGED_RE.match(line)) and current not in (
                changed := seen.setdefault(change.group(1), [])
            ):
                changed.append(current)  # once per task, whatever its loop items
        return {host: [name for _, name in changed] for host, changed in seen.items()}

    def explain(self) -> str:
        return f"ansible-playbook {' '.join(self.args)} exited {self.returncode}:\n{self.output}"


_RECAP_RE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.M)
_TASK_RE = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.*)\] \**$")
#: ``changed: [host]``, ``changed: [host -> localhost]``, with or without ``=> (item=...)``.
_CHANGED_RE = re.compile(r"^changed: \[([^\]\s]+)")


@dataclass
class Deployment:
    """The targets, their inventory, the shared database, and how to run playbooks on them."""

    #: The application hosts, by name.
    targets: dict[str, Target]
    prometheus: Target
    inventory: Path
    workdir: Path
    database: JobsDatabase
    exporter_ports: dict[str, int]
    ca: CertificateAuthority
    #: Where the Prometheus host's Alertmanager sends the pager and the ticket receivers.
    webhook: WebhookServer
    fresh_check: PlaybookRun | None = None
    first_deploy: PlaybookRun | None = None
    #: What the controller had after the fresh check: files in the cache directory, and
    #: whether a file under the sources' build/ survived it (and then the first deploy).
    cache_after_check: list[str] = field(default_factory=list)
    sentinel_after_check: bool = False
    sentinel_after_deploy: bool = False

    @property
    def hosts(self) -> list[str]:
        """Every host of the inventory: what a deploy's recap lists."""
        return [*self.targets, self.prometheus.name]

    @property
    def exporter_host(self) -> str:
        """Where the application hosts' exporters listen: the machine's end of the veth pair."""
        assert self.prometheus.network is not None
        return self.prometheus.network.host_address

    def exporter_address(self, name: str) -> str:
        return f"{self.exporter_host}:{self.exporter_ports[name]}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.prometheus.address}:{PROMETHEUS_PORT}"

    def prometheus_api(self, path: str) -> Any:
        """GET an endpoint of Prometheus' HTTP API, from this machine; its ``data``."""
        with urllib.request.urlopen(f"{self.prometheus_url}{path}", timeout=10) as response:
            return json.load(response)["data"]

    def playbook(
        self, name: str, *extra: str, timeout: float = 900, bin_dir: Path = REPO / ".venv" / "bin"
    ) -> PlaybookRun:
        """Runs a playbook of the checkout, with the ansible-core of ``bin_dir``; the deploy
        gets the vault password, the on-call playbooks do without (the README's promise)."""
        args = ["-i", str(self.inventory), str(REPO / "playbooks" / name), *extra]
        if name in VAULTED_PLAYBOOKS:
            args += ["--vault-password-file", str(self.workdir / VAULT_PASSWORD_FILE)]
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.workdir / "cp"),
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=30s",
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        result = subprocess.run(
            [str(bin_dir / "ansible-playbook"), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=timeout,
            check=False,
        )
        output = result.stdout + result.stderr
        recap = {
            host: {k: int(v) for k, v in (pair.split("=") for pair in counts.split())}
            for host, counts in _RECAP_RE.findall(output.split("PLAY RECAP", 1)[-1])
        }
        return PlaybookRun(args, result.returncode, output, recap)

    def scrape(self, name: str, password: str = SCRAPE_PASSWORD) -> str:
        """GET /metrics of a target's exporter over TLS (the suite's CA) with basic auth."""
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        request = urllib.request.Request(f"https://{self.exporter_address(name)}/metrics")
        token = base64.b64encode(f"{SCRAPE_USER}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return str(response.read().decode())

    def state(self, name: str) -> dict[str, Any]:
        text = self.targets[name].ssh("cat /var/lib/limpeza/state.json").stdout
        return dict(json.loads(text))


def _prepare() -> Callable[[Target], None]:
    """Files a target has before the deploy: the backend's upload directories.

    The images hold Prometheus and Alertmanager for the Prometheus host: on the application
    hosts, which share the machine's network, they are masked.
    """

    def prepare(target: Target) -> None:
        root = target.root
        for directory in (BACKEND_UPLOADS, UPLOADS):  # the two directories swept by default
            uploads = root / directory.lstrip("/")
            uploads.mkdir(parents=True)
            # www-data is uid/gid 33 in Debian's base-passwd.
            os.chown(uploads, 33, 33)
            uploads.chmod(0o2775)
        if target.name != PROMETHEUS_HOST:
            units = root / "etc" / "systemd" / "system"
            for unit in ("prometheus.service", "prometheus-alertmanager.service"):
                (units / unit).symlink_to("/dev/null")

    return prepare


#: The variables of the application hosts the README's Deploy steps 3 to 6 have you set,
#: in a file of their own beside the example's group_vars/limpeza/main.yml.
TEST_VARS = Path("group_vars") / "limpeza" / "test.yml"
#: Their secrets (the DSN, the exporters' TLS key and scrape password), encrypted inline
#: with ansible-vault as steps 3 and 6 say; only the deploy is given the vault password.
VAULT_VARS = Path("group_vars") / "limpeza" / "vault.yml"
#: The vault password's file, in the deployment's working directory.
VAULT_PASSWORD_FILE = "vault-password"
#: The playbooks that read the secrets (uninstall too: the roles validate their arguments,
#: the secrets among them); the on-call ones run without the vault password.
VAULTED_PLAYBOOKS = ("deploy.yml", "uninstall.yml")


def encrypt_string(secret: str, password_file: Path) -> str:
    """``ansible-vault encrypt_string``'s ``!vault |`` block for ``secret``, unindented."""
    result = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "ansible-vault"),
            "encrypt_string",
            "--vault-password-file",
            str(password_file),
            "--stdin-name",
            "secret",
        ],
        input=secret,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    block = result.stdout.split("secret: ", 1)[1]
    assert block.startswith("!vault |"), result.stdout
    return block.rstrip("\n")


def _vaulted(name: str, block: str, indent: int) -> str:
    """``name: !vault |`` and its ciphertext lines, indented for a YAML mapping."""
    head, _, body = block.partition("\n")
    lines = [" " * indent + line.strip() for line in body.splitlines()]
    return " " * (indent - 2) + f"{name}: {head}\n" + "\n".join(lines) + "\n"


def _write_vault(path: Path, password_file: Path, dsn: str, tls_key: str) -> None:
    """group_vars/limpeza/vault.yml: each secret encrypted inline."""
    path.write_text(
        "---\n"
        + _vaulted("limpeza_database_url", encrypt_string(dsn, password_file), 2)
        + _vaulted("limpeza_exporter_tls_key", encrypt_string(tls_key, password_file), 2)
        + "limpeza_exporter_basic_auth_users:\n"
        + _vaulted(SCRAPE_USER, encrypt_string(SCRAPE_PASSWORD, password_file), 4),
        encoding="utf-8",
    )


def _write_inventory(
    path: Path,
    targets: dict[str, Target],
    prometheus: Target,
    key: Path,
    database: JobsDatabase,
    exporter_ports: dict[str, int],
    workdir: Path,
    tls: ServerCertificate,
    ca: CertificateAuthority,
    webhook: WebhookServer,
) -> None:
    """The README's Deploy steps: a copy of inventories/example with these hosts.

    Only the connection variables, the addresses and ports, the test-sized timings and what
    the steps ask for (the database, TLS and users, the CA, Alertmanager's receivers) are set.
    """
    shutil.copytree(REPO / "inventories" / "example", path)

    def connection(target: Target) -> dict[str, Any]:
        return {
            "ansible_host": target.address,
            "ansible_port": target.ssh_port,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null",
        }

    assert prometheus.network is not None
    hosts = {
        name: {
            **connection(target),
            # All application hosts share the machine's network: one address, a port each.
            "limpeza_exporter_listen_address": (
                f"{prometheus.network.host_address}:{exporter_ports[name]}"
            ),
        }
        for name, target in targets.items()
    }
    prometheus_vars = {
        **connection(prometheus),
        # The CA of the exporters' certificates; the scrape user and its password are the
        # exporters' own (limpeza_exporter_basic_auth_users).
        "limpeza_prometheus_scrape_ca": ca.cert.read_text(encoding="ascii"),
        "limpeza_prometheus_alertmanager_enabled": True,
        "limpeza_prometheus_alertmanager_pager": {
            "webhook_configs": [{"url": webhook.url("pager"), "send_resolved": True}]
        },
        "limpeza_prometheus_alertmanager_ticket": {
            "webhook_configs": [{"url": webhook.url("ticket"), "send_resolved": True}]
        },
        # Test-sized timings.
        "limpeza_prometheus_scrape_interval": "2s",
        "limpeza_prometheus_alertmanager_route": {"group_wait": "1s", "group_interval": "2s"},
        "limpeza_alerts_jobs_active_for": "20s",
    }
    inventory = {
        "all": {
            "children": {
                "limpeza": {"hosts": hosts},
                "prometheus": {"hosts": {prometheus.name: prometheus_vars}},
            }
        }
    }
    (path / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False), encoding="utf-8")
    application = {
        "limpeza_interval": "2s",
        "limpeza_jobs_database": {
            "table": "jobs",
            "timestamp_column": "updated_at",
            "error_message_column": "error_message",
        },
        "limpeza_cleaner_supplementary_groups": [APP_GROUP],
        "limpeza_files_rules": RULES,
        # TLS and basic auth from the role's variables (the key and the password are in the
        # vault file).
        "limpeza_exporter_tls_cert": tls.cert.read_text(encoding="ascii"),
        # A snapshot of the sources, taken when the session starts: what is deployed does
        # not change under the tests while the checkout does.
        "limpeza_source_dir": str(workdir / "src"),
        # Everything the controller builds or fetches goes to the cache.
        "limpeza_cache_dir": str(workdir / "cache"),
    }
    (path / TEST_VARS).write_text(
        "---\n" + yaml.safe_dump(application, sort_keys=False), encoding="utf-8"
    )
    password_file = workdir / VAULT_PASSWORD_FILE
    password_file.write_text("vault-" + secrets.token_hex(16) + "\n", encoding="ascii")
    password_file.chmod(0o600)
    _write_vault(
        path / VAULT_VARS, password_file, database.dsn, tls.key.read_text(encoding="ascii")
    )


#: What the roles build the limpeza wheel from.
SOURCES = ("pyproject.toml", "README.md", "requirements.lock", "cleaner", "exporter")


def snapshot_sources(dest: Path, version: str | None = None) -> Path:
    """Copies the sources the wheel is built from; with ``version``, as that version."""
    dest.mkdir(parents=True)
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, dest / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, dest / name)
    if version is not None:
        for path, name in (
            (dest / "pyproject.toml", "version"),
            (dest / "cleaner" / "__init__.py", "__version__"),
        ):
            text = path.read_text(encoding="utf-8")
            text, count = re.subn(f'(?m)^{name} = "[^"]+"', f'{name} = "{version}"', text)
            assert count == 1, path
            path.write_text(text, encoding="utf-8")
    return dest


@pytest.fixture(scope="session")
def shared_jobs_db(postgres_server: PostgresServer) -> Iterator[JobsDatabase]:
    """One jobs database for the whole host tier, shared by both targets."""
    with fresh_jobs_database(postgres_server, "limpeza_host") as database:
        yield database


@pytest.fixture(scope="session")
def deployment(
    host_ssh_key: Path,
    nspawn_workdir: Path,
    shared_jobs_db: JobsDatabase,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """Three booted targets, checked in check mode while fresh, then deployed for real."""
    exporter_ports = {name: free_port() for name in NAMES}
    workdir = tmp_path_factory.mktemp("deploy")
    ca = certificate_authority(workdir / "ca")
    booted = boot_targets(
        [*NAMES, PROMETHEUS_HOST],
        host_ssh_key,
        nspawn_workdir,
        _prepare(),
        SUITES,
        private_network=frozenset({PROMETHEUS_HOST}),
    )
    by_name = {t.name: t for t in booted}
    prometheus = by_name.pop(PROMETHEUS_HOST)
    assert prometheus.network is not None
    try:
        with serve_webhook(prometheus.network.host_address) as webhook:
            tls = ca.issue(workdir / "exporter-tls", (prometheus.network.host_address,))
            (workdir / "cp").mkdir()
            (workdir / "ansible-tmp").mkdir()
            inventory = workdir / "inventory"
            _write_inventory(
                inventory,
                by_name,
                prometheus,
                host_ssh_key,
                shared_jobs_db,
                exporter_ports,
                workdir,
                tls,
                ca,
                webhook,
            )
            deployment = Deployment(
                by_name,
                prometheus,
                inventory,
                workdir,
                shared_jobs_db,
                exporter_ports,
                ca,
                webhook,
            )
            yield from _deploy(deployment)
    finally:
        for target in booted:
            target.shutdown()


def _deploy(deployment: Deployment) -> Iterator[Deployment]:
    """The check on the fresh hosts, then the deploy; yields the deployment."""
    workdir = deployment.workdir
    snapshot_sources(workdir / "src")
    # A file of the user's under the sources' build/: no run may touch it.
    sentinel = workdir / "src" / "build" / "important.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("keep me\n", encoding="utf-8")
    cache = workdir / "cache"
    deployment.fresh_check = deployment.playbook("deploy.yml", "--check", "--diff")
    deployment.cache_after_check = sorted(str(p.relative_to(workdir)) for p in cache.rglob("*")) + (
        [str(cache)] if cache.exists() else []
    )
    deployment.sentinel_after_check = sentinel.exists()
    deployment.first_deploy = deployment.playbook("deploy.yml")
    deployment.sentinel_after_deploy = sentinel.exists()
    yield deployment


@pytest.fixture(scope="session")
def deployed(deployment: Deployment) -> Deployment:
    """The deployment, failing every test that needs it if the first deploy failed."""
    assert deployment.first_deploy is not None
    if deployment.first_deploy.returncode != 0:
        pytest.fail(deployment.first_deploy.explain()[-8000:], pytrace=False)
    return deployment


@pytest.fixture(params=NAMES)
def target(request: pytest.FixtureRequest, deployed: Deployment) -> Target:
    return deployed.targets[request.param]


@pytest.fixture
def host(target: Target) -> Any:
    """A testinfra host for the target."""
    return target.testinfra()


def wait_for(predicate: Callable[[], bool], timeout: float = 60, step: float = 0.5) -> bool:
    """Polls until ``predicate`` holds or ``timeout`` passes; returns the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
