"""A real PostgreSQL server, started from the installed server binaries.

``cluster()`` runs ``initdb`` and ``pg_ctl`` on a temporary directory and a free 127.0.0.1
port, and always stops and removes the cluster afterwards. The server can be stopped and
started again (``stop()``/``start()``), so a test can take the database away from a running
reaper. PostgreSQL refuses to run as root, so when this runs as root the cluster belongs to
an unprivileged user (``postgres`` when the server package created it, else ``nobody``).

``cluster(tls=certificate)`` turns TLS on with a server certificate (``devtools.tls``):
the server then accepts the password-protected roles over TLS only (``hostssl``), so a
client that connects at all went through TLS.

``fresh_jobs_database()`` makes a database with a ``jobs`` table like the API's, owned by a
password-protected login role (``create_test_role()``), with helpers to insert jobs of given
ages and read them back.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from cleaner.config import Config, build
from devtools.process import MissingRequirementError, free_port
from devtools.tls import ServerCertificate

SUPERUSER = "postgres"
ROLE = "limpeza_test"
ROLE_PASSWORD = "s3cret-Pa55word-never-logged"  # noqa: S105 - a throwaway test role


def bin_dir() -> Path:
    """The directory of the newest installed ``initdb`` and ``pg_ctl``."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise MissingRequirementError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found; `make test` installs the "
        "postgresql package"
    )


def cluster_owner() -> pwd.struct_passwd | None:
    """Who owns the cluster: None (this user) unless running as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise MissingRequirementError("running as root and no unprivileged user to own the cluster")


@dataclass
class PostgresServer:
    """A throwaway cluster; ``dsn()`` connects as the superuser (trust on loopback)."""

    bin_dir: Path
    base: Path
    port: int
    owner: pwd.struct_passwd | None
    running: bool = False
    _log: Path = field(init=False)

    def __post_init__(self) -> None:
        self._log = self.base / "postgres.log"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.owner is not None:
            command = [
                "setpriv",
                f"--reuid={self.owner.pw_uid}",
                f"--regid={self.owner.pw_gid}",
                "--clear-groups",
                "--",
                *command,
            ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        if self.owner is not None:
            env["HOME"] = str(self.base)
        return subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=self.base, check=False
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log_tail = self._log.read_text(errors="replace")[-3000:] if self._log.exists() else ""
            raise RuntimeError(
                f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"server log:\n{log_tail}"
            )

    def init(self, settings: str = "", tls: ServerCertificate | None = None) -> None:
        """``initdb`` with settings for a throwaway cluster; ``settings`` is appended to
        postgresql.conf after them (and so wins). With ``tls`` the server speaks TLS with
        that certificate and takes every role but the superuser over TLS only."""
        self.data_dir.mkdir(mode=0o700)
        self._log.touch()
        if self.owner is not None:
            for path in (self.base, self.data_dir, self._log):
                os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        result = self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        self._check(result, "initdb")
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                "\n# test cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                "unix_socket_directories = ''\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "max_connections = 100\n"
                "log_min_messages = warning\n"
            )
            if tls is not None:
                conf.write(self._install_tls(tls))
            if settings:
                conf.write(settings)
        others = "hostssl" if tls is not None else "host"
        (self.data_dir / "pg_hba.conf").write_text(
            f"host all {SUPERUSER} 127.0.0.1/32 trust\n"
            f"{others} all all 127.0.0.1/32 scram-sha-256\n",
            encoding="utf-8",
        )

    def _install_tls(self, tls: ServerCertificate) -> str:
        """Copies the certificate and key into the data directory, owned by the server's
        user with the key 0600 as PostgreSQL demands; the settings that use them."""
        for source, name in ((tls.cert, "server.crt"), (tls.key, "server.key")):
            target = self.data_dir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if self.owner is not None:
                os.chown(target, self.owner.pw_uid, self.owner.pw_gid)
        return "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"

    def start(self) -> None:
        """Starts the server and waits (at most 60 s) until it accepts connections."""
        result = self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self._log),
            "-w",
            "-t",
            "60",
            "start",
        )
        self._check(result, "pg_ctl start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (``fast`` ends open sessions, as a crash or restart would)."""
        result = self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "stop",
        )
        self._check(result, "pg_ctl stop")
        self.running = False

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str = "") -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{dbname}"

    def pid(self) -> int:
        """The postmaster's process id (from ``postmaster.pid``)."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def connect(self, dbname: str = "postgres") -> psycopg2.extensions.connection:
        conn = psycopg2.connect(self.dsn(dbname), connect_timeout=10)
        conn.autocommit = True
        return conn


@contextlib.contextmanager
def cluster(
    prefix: str = "limpeza-pg-",
    *,
    parent: Path | None = None,
    settings: str = "",
    stop_mode: str = "immediate",
    tls: ServerCertificate | None = None,
) -> Iterator[PostgresServer]:
    """A running cluster in a new directory (under ``parent``), always stopped and removed.

    ``settings`` goes into postgresql.conf after the throwaway defaults (fsync off...);
    ``tls`` turns TLS on with that certificate (see ``PostgresServer.init``).
    """
    binaries, owner = bin_dir(), cluster_owner()
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    # The cluster's owner may be unprivileged: it must reach its directory.
    base.chmod(0o755)
    server = PostgresServer(binaries, base, free_port(), owner)
    try:
        server.init(settings, tls)
        server.start()
        yield server
    finally:
        if server.running:
            with contextlib.suppress(RuntimeError):
                server.stop(stop_mode)
        shutil.rmtree(base, ignore_errors=True)


def create_test_role(server: PostgresServer) -> None:
    """The password-protected login role (``ROLE``) that owns the jobs databases."""
    with contextlib.closing(server.connect()) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(ROLE)),
            (ROLE_PASSWORD,),
        )


@dataclass
class JobsDatabase:
    """A fresh database with a jobs table; ``dsn`` logs in as a password-protected role."""

    server: PostgresServer
    name: str
    table: str = "jobs"

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name, ROLE, ROLE_PASSWORD)

    @property
    def password(self) -> str:
        return ROLE_PASSWORD

    def config(self, jobs: dict[str, Any] | None = None, **top: Any) -> Config:
        """A validated Config whose ``jobs.database`` points here (DSN in the environment).

        ``jobs`` is merged into ``{"database": {"table": ...}}``; ``top`` sets other keys.
        """
        section: dict[str, Any] = {"database": {"table": self.table}}
        for key, value in (jobs or {}).items():
            if key == "database" and isinstance(value, dict):
                section["database"] = {**section["database"], **value}
            else:
                section[key] = value
        raw = {"state_file": "/nonexistent/state.json", "audit_log": None, **top, "jobs": section}
        return build(raw, env={"LIMPEZA_DATABASE_URL": self.dsn})

    def connect(self) -> psycopg2.extensions.connection:
        """A superuser connection in autocommit mode (the caller closes it)."""
        return self.server.connect(self.name)

    def execute(self, query: str | sql.Composable, params: Sequence[Any] = ()) -> list[Any]:
        """Runs one statement as the superuser; returns its rows (none for commands)."""
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def create_table(self, table: str = "jobs", *, id_type: str = "text") -> None:
        """Creates a jobs table like the API's (``table`` may be ``schema.name``)."""
        parts = table.split(".")
        ident = sql.Identifier(*parts)
        statements: list[sql.Composable] = []
        if len(parts) == 2:
            statements.append(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(parts[0]))
            )
        statements.append(
            sql.SQL(
                "CREATE TABLE {} (id {} PRIMARY KEY, status text NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now(), started_at timestamptz, "
                "updated_at timestamptz, error_message text)"
            ).format(ident, sql.SQL(id_type))
        )
        statements.append(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(parts[0] if len(parts) == 2 else "public"), sql.Identifier(ROLE)
            )
        )
        statements.append(
            sql.SQL("GRANT SELECT, UPDATE, INSERT, DELETE ON {} TO {}").format(
                ident, sql.Identifier(ROLE)
            )
        )
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)

    def insert(
        self,
        job_id: str | int,
        status: str,
        age: float | None,
        *,
        started_age: float | None = None,
        table: str | None = None,
    ) -> None:
        """One job whose ``updated_at`` is ``age`` seconds ago (None: no timestamp)."""
        self.insert_many([(job_id, status, age)], started_age=started_age, table=table)

    def insert_many(
        self,
        jobs: Sequence[tuple[str | int, str, float | None]],
        *,
        started_age: float | None = None,
        table: str | None = None,
    ) -> None:
        """Many jobs at once: (id, status, age of updated_at in seconds or None)."""
        ident = sql.Identifier(*(table or self.table).split("."))
        query = sql.SQL(
            "INSERT INTO {} (id, status, created_at, started_at, updated_at) "
            "SELECT i, s, now() - make_interval(secs => greatest(coalesce(a, 0), "
            "coalesce(%s, 0))), "
            "now() - make_interval(secs => coalesce(%s, a)), "
            "now() - make_interval(secs => a) "
            "FROM unnest(%s::text[], %s::text[], %s::float8[]) AS t(i, s, a)"
        ).format(ident)
        ids = [str(j[0]) for j in jobs]
        statuses = [j[1] for j in jobs]
        ages = [j[2] for j in jobs]
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(query, (started_age, started_age, ids, statuses, ages))

    def statuses(self, table: str | None = None) -> dict[str, str]:
        """Job id -> status, for every row."""
        ident = sql.Identifier(*(table or self.table).split("."))
        rows = self.execute(sql.SQL("SELECT id::text, status FROM {}").format(ident))
        return {str(r[0]): str(r[1]) for r in rows}

    def rows(self, table: str | None = None) -> dict[str, dict[str, Any]]:
        """Job id -> the whole row as a dict."""
        ident = sql.Identifier(*(table or self.table).split("."))
        with contextlib.closing(self.connect()) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT * FROM {}").format(ident))
            names = [d.name for d in cur.description or ()]
            return {str(r[0]): dict(zip(names, r, strict=True)) for r in cur.fetchall()}


@contextlib.contextmanager
def fresh_jobs_database(server: PostgresServer, prefix: str = "limpeza") -> Iterator[JobsDatabase]:
    """A new database with an empty ``jobs`` table, owned by the test role; dropped after."""
    if not server.running:
        server.start()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with contextlib.closing(server.connect()) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(ROLE)
            )
        )
    database = JobsDatabase(server, name)
    database.create_table()
    try:
        yield database
    finally:
        if not server.running:
            server.start()
        with contextlib.closing(server.connect()) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
