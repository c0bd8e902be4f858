"""A real PgBouncer in front of a test PostgreSQL, started from Debian's ``pgbouncer``.

``start_pgbouncer(server, pool_mode="transaction", pool_size=1)`` writes a config directory
of its own (pgbouncer.ini and an auth_file), listens on 127.0.0.1 on a free port and
returns once the port accepts connections; the caller stops it (``stop()``) and removes
``base``. Every database of the server is reachable through it (``* = host=... port=...``).

Clients authenticate with SCRAM against the auth_file, which holds the test role's
password in clear so PgBouncer can answer the server's own SCRAM challenge in turn: the
password is checked on both sides, as on a hosted pooler. Like Supabase's pooler it
ignores the ``extra_float_digits`` and ``options`` startup parameters, and in transaction
mode it runs no reset query, so whatever a client leaves set on a server connection is
seen by the next client that gets it: exactly what the tests look for.

``start_pgbouncer(server, tls=certificate)`` (``devtools.tls``) makes clients speak TLS to
it (``client_tls_sslmode = require``), as Supabase's pooler does; it reaches the server as
the server allows.

PgBouncer refuses to run as root; as root it runs as the cluster's unprivileged owner.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from devtools.postgres import ROLE, ROLE_PASSWORD, PostgresServer, cluster_owner
from devtools.process import MissingRequirementError, ServerProcess, free_port
from devtools.tls import ServerCertificate

POOL_MODES = ("session", "transaction", "statement")


class PgBouncerError(AssertionError):
    """PgBouncer exited or never listened; carries its log tail."""


def pgbouncer_bin() -> str:
    """The installed ``pgbouncer`` program."""
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        raise MissingRequirementError(
            "no pgbouncer program found; `make test` installs the pgbouncer package"
        )
    return found


def _quote(value: str) -> str:
    """A value for the auth_file: double quotes doubled."""
    return '"' + value.replace('"', '""') + '"'


@dataclass
class PgBouncer(ServerProcess):
    """One running PgBouncer; ``dsn(dbname)`` connects through it as the test role."""

    pool_mode: str = "transaction"
    pool_size: int = 1

    NAME: ClassVar[str] = "pgbouncer"
    ERROR: ClassVar[type[AssertionError]] = PgBouncerError

    def dsn(self, dbname: str, user: str = ROLE, password: str = ROLE_PASSWORD) -> str:
        """A libpq URL for ``dbname`` through the pooler."""
        return f"postgresql://{user}:{password}@{self.address}/{dbname}"

    def listening(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port or 0), timeout=1),
        ):
            return True
        return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_until(self.listening, "pgbouncer not listening", timeout, step=0.1)


def write_config(
    base: Path,
    *,
    server: PostgresServer,
    port: int,
    pool_mode: str,
    pool_size: int,
    users: Mapping[str, str],
    settings: str = "",
    tls: ServerCertificate | None = None,
) -> Path:
    """pgbouncer.ini and userlist.txt in ``base`` (and the TLS certificate and key when
    ``tls``); the path of the ini file."""
    if pool_mode not in POOL_MODES:
        raise ValueError(f"pool_mode must be one of {POOL_MODES}, not {pool_mode!r}")
    userlist = base / "userlist.txt"
    userlist.write_text(
        "".join(f"{_quote(user)} {_quote(password)}\n" for user, password in users.items()),
        encoding="utf-8",
    )
    client_tls = ""
    if tls is not None:
        cert, key = base / "client_tls.crt", base / "client_tls.key"
        shutil.copyfile(tls.cert, cert)
        shutil.copyfile(tls.key, key)
        key.chmod(0o600)
        client_tls = (
            "client_tls_sslmode = require\n"
            f"client_tls_cert_file = {cert}\n"
            f"client_tls_key_file = {key}\n"
        )
    ini = base / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host=127.0.0.1 port={server.port}\n"
        "\n[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = scram-sha-256\n"
        f"auth_file = {userlist}\n"
        f"pool_mode = {pool_mode}\n"
        f"default_pool_size = {pool_size}\n"
        "min_pool_size = 0\n"
        "reserve_pool_size = 0\n"
        "max_client_conn = 200\n"
        "max_db_connections = 0\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        "query_wait_timeout = 60\n"
        "server_connect_timeout = 10\n"
        "server_login_retry = 1\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        "log_pooler_errors = 1\n" + client_tls + settings,
        encoding="utf-8",
    )
    return ini


def start_pgbouncer(
    server: PostgresServer,
    *,
    pool_mode: str = "transaction",
    pool_size: int = 1,
    parent: Path | None = None,
    users: Mapping[str, str] | None = None,
    settings: str = "",
    tls: ServerCertificate | None = None,
) -> PgBouncer:
    """A PgBouncer in a new directory (under ``parent``) in front of ``server``.

    ``users`` (default: the test role) may log in with these passwords; ``settings`` is
    appended to the ``[pgbouncer]`` section; with ``tls`` clients must use TLS and are
    shown that certificate. The caller stops it and removes ``base``.
    """
    program = pgbouncer_bin()
    owner = cluster_owner()
    base = Path(tempfile.mkdtemp(prefix="limpeza-pgbouncer-", dir=parent))
    port = free_port()
    ini = write_config(
        base,
        server=server,
        port=port,
        pool_mode=pool_mode,
        pool_size=pool_size,
        users=users if users is not None else {ROLE: ROLE_PASSWORD},
        settings=settings,
        tls=tls,
    )
    argv = [program, str(ini)]
    if owner is not None:
        base.chmod(0o700)
        for path in (base, *base.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        argv = [
            "setpriv",
            f"--reuid={owner.pw_uid}",
            f"--regid={owner.pw_gid}",
            "--clear-groups",
            "--",
            *argv,
        ]
    try:
        return PgBouncer.launch(base, port, argv, pool_mode=pool_mode, pool_size=pool_size)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
