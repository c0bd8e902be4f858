"""TLS with ``sslmode=verify-full``: the real cleaner reaps through a server whose
certificate a CA of the test's own signed, directly and through a TLS PgBouncer in
transaction mode (Supabase's pooler on port 6543); a CA that did not sign it fails in one
line that names the server without its password.

The server takes the test role over TLS only (``hostssl``) and the pooler requires TLS
from its clients, so a connection that works at all went through TLS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest

from devtools.limpeza import LimpezaProcesses
from devtools.pgbouncer import PgBouncer
from devtools.postgres import JobsDatabase, PostgresServer
from devtools.postgres import fresh_jobs_database as _fresh
from devtools.tls import CertificateAuthority, ServerCertificate, certificate_authority
from tests.fixtures.postgres import own_cluster
from tests.fixtures.processes import required

pytestmark = pytest.mark.integration

HOSTS = ("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def tls_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def authority(tls_base: Path) -> CertificateAuthority:
    """The CA that signs the server's certificate."""
    with required():
        return certificate_authority(tls_base / "ca")


@pytest.fixture(scope="module")
def server_certificate(authority: CertificateAuthority, tls_base: Path) -> ServerCertificate:
    return authority.issue(tls_base / "server", HOSTS)


@pytest.fixture(scope="module")
def tls_server(server_certificate: ServerCertificate) -> Iterator[PostgresServer]:
    """A cluster of this module's own with ``ssl = on``; always stopped and removed."""
    with own_cluster("limpeza-tls-pg-", tls=server_certificate) as server:
        yield server


@pytest.fixture
def tls_db(tls_server: PostgresServer) -> Iterator[JobsDatabase]:
    with _fresh(tls_server) as database:
        yield database


def verify_full(dsn: str, ca: Path, host: str = "127.0.0.1") -> str:
    """``dsn`` asking for a certificate signed by ``ca`` and naming ``host``."""
    return dsn.replace("@127.0.0.1:", f"@{host}:", 1) + f"?sslmode=verify-full&sslrootcert={ca}"


def reap_once(
    procs: LimpezaProcesses, db: JobsDatabase, dsn: str
) -> tuple[int, str, dict[str, str]]:
    """Seeds a stale and a fresh job, runs ``limpeza-cleaner once`` with ``dsn``; returns
    the exit code, everything it wrote and the statuses afterwards."""
    db.insert_many([("stale", "running", 3600), ("fresh", "running", 5)])
    config = procs.write_config(db)
    procs.env["LIMPEZA_DATABASE_URL"] = dsn
    done = procs.cleaner_command(config, "once")
    return done.returncode, done.stdout + done.stderr, db.statuses()


@pytest.mark.parametrize("host", HOSTS)
def test_reaps_with_verify_full(
    host: str,
    tls_db: JobsDatabase,
    authority: CertificateAuthority,
    limpeza_processes: LimpezaProcesses,
) -> None:
    code, output, statuses = reap_once(
        limpeza_processes, tls_db, verify_full(tls_db.dsn, authority.cert, host)
    )
    assert code == 0, output
    assert statuses == {"stale": "error", "fresh": "running"}
    assert tls_db.password not in output


def test_the_server_takes_the_role_over_tls_only(tls_db: JobsDatabase) -> None:
    with pytest.raises(psycopg2.OperationalError, match="no encryption"):
        psycopg2.connect(tls_db.dsn + "?sslmode=disable", connect_timeout=10).close()


def one_line_about(output: str, words: str) -> str:
    """The one line of ``output`` that holds ``words`` (no traceback, no repeats)."""
    lines = [line for line in output.splitlines() if words in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    return lines[0]


def test_a_wrong_ca_fails_in_one_line_without_the_password(
    tls_db: JobsDatabase, tmp_path: Path, limpeza_processes: LimpezaProcesses
) -> None:
    stranger = certificate_authority(tmp_path / "stranger-ca", "not the server's CA")
    dsn = verify_full(tls_db.dsn, stranger.cert)
    code, output, statuses = reap_once(limpeza_processes, tls_db, dsn)
    assert code == 1, output
    assert statuses == {"stale": "running", "fresh": "running"}
    line = one_line_about(output, "certificate verify failed")
    assert f"postgresql://***@127.0.0.1:{tls_db.server.port}/{tls_db.name}" in line, line
    assert tls_db.password not in output
    assert "limpeza_test" not in output  # the whole user info is masked


@pytest.fixture
def tls_pgbouncer(
    pgbouncer_factory: Callable[..., PgBouncer], server_certificate: ServerCertificate
) -> PgBouncer:
    """PgBouncer in transaction mode, one server connection, TLS required of clients."""
    return pgbouncer_factory("transaction", 1, tls=server_certificate)


def test_reaps_through_a_tls_pooler_in_transaction_mode(
    jobs_db: JobsDatabase,
    tls_pgbouncer: PgBouncer,
    authority: CertificateAuthority,
    limpeza_processes: LimpezaProcesses,
) -> None:
    pooled = verify_full(tls_pgbouncer.dsn(jobs_db.name), authority.cert, "localhost")
    code, output, statuses = reap_once(limpeza_processes, jobs_db, pooled)
    assert code == 0, output
    assert statuses == {"stale": "error", "fresh": "running"}
    assert jobs_db.password not in output
    with pytest.raises(psycopg2.OperationalError, match="SSL required"):
        psycopg2.connect(
            tls_pgbouncer.dsn(jobs_db.name) + "?sslmode=disable", connect_timeout=10
        ).close()


def test_a_wrong_ca_fails_at_the_pooler_too(
    jobs_db: JobsDatabase,
    tls_pgbouncer: PgBouncer,
    tmp_path: Path,
    limpeza_processes: LimpezaProcesses,
) -> None:
    stranger = certificate_authority(tmp_path / "stranger-ca", "not the pooler's CA")
    pooled = verify_full(tls_pgbouncer.dsn(jobs_db.name), stranger.cert)
    code, output, statuses = reap_once(limpeza_processes, jobs_db, pooled)
    assert code == 1, output
    assert statuses == {"stale": "running", "fresh": "running"}
    line = one_line_about(output, "certificate verify failed")
    assert f"postgresql://***@{tls_pgbouncer.address}/{jobs_db.name}" in line, line
    assert jobs_db.password not in output
