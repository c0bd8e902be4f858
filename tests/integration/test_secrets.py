"""Hostile DSNs through the real programs: no piece of the password in any byte they write.

The same for a password in the API's health URL (``http://user:password@host/health``).

Each DSN goes, in ``$LIMPEZA_DATABASE_URL``, to the real ``limpeza-cleaner`` (check-config,
once, status --json, the daemon) and the real ``limpeza-exporter`` (scraped), on a real
PostgreSQL; every byte of their stdout, stderr and logs, and every file they leave, is
searched for every 3 characters in a row of the password. A malformed DSN is refused
saying what is wrong; a well-formed one with a wrong password fails with libpq's reason; a
hostile password written correctly just works.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pytest
import requests
import yaml
from psycopg2 import sql

from devtools.limpeza import CleanerProcess, ExporterProcess, LimpezaProcessError, start_exporter
from devtools.process import free_port
from tests.fixtures.exposition import sample
from tests.fixtures.postgres import JobsDatabase

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
USER = "limpeza_test"
#: Every 3 characters in a row hold an upper-case Q, Z, X, J, V or K or a non-ASCII
#: letter: no fragment of them occurs in ordinary output.
EVERYTHING = "QZ @/:%'\"\\?#&=ßXJ漢KV"


def fragments(secret: str) -> set[str]:
    return {secret[i : i + 3] for i in range(len(secret) - 2)}


def kv_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Case:
    password: str
    #: Builds the DSN from the server's port and the database's name.
    dsn: Callable[[int, str], str]
    #: What the refusal says (a malformed DSN), or None (well-formed, wrong password).
    problem: str | None


CASES = {
    "url-raw-at": Case(
        "QZ@XJ9-KV7",
        lambda port, db: f"postgresql://{USER}:QZ@XJ9-KV7@127.0.0.1:{port}/{db}",
        "holds an unencoded '@'; percent-encode it as %40",
    ),
    "url-raw-slash": Case(
        "QZ/XJ9-KV7",
        lambda port, db: f"postgresql://{USER}:QZ/XJ9-KV7@127.0.0.1:{port}/{db}",
        "holds an unencoded '/'; percent-encode it as %2F",
    ),
    "url-raw-everything": Case(
        EVERYTHING,
        lambda port, db: f"postgresql://{USER}:{EVERYTHING}@127.0.0.1:{port}/{db}",
        "holds an unencoded '@' and '/'",
    ),
    "url-raw-percent": Case(
        "QZ%XJ9%KV7",
        lambda port, db: f"postgresql://{USER}:QZ%XJ9%KV7@127.0.0.1:{port}/{db}",
        "percent-encode '%' itself as %25",
    ),
    "kv-unquoted-space": Case(
        "QZ XJ9 KV7",
        lambda port, db: f"host=127.0.0.1 port={port} dbname={db} user={USER} password=QZ XJ9 KV7",
        "if the password holds a space, quote it",
    ),
    "kv-unclosed-quote": Case(
        EVERYTHING,
        lambda port, db: (
            f"host=127.0.0.1 port={port} dbname={db} user={USER} password='{EVERYTHING}"
        ),
        "right after a password's value",
    ),
    "url-encoded-wrong": Case(
        EVERYTHING,
        lambda port, db: f"postgresql://{USER}:{quote(EVERYTHING, safe='')}@127.0.0.1:{port}/{db}",
        None,
    ),
    "url-raw-space-wrong": Case(
        "QZ XJ9?KV#7ß",  # libpq reads a space, '?' and '#' in the user info as meant
        lambda port, db: f"postgresql://{USER}:QZ XJ9?KV#7ß@127.0.0.1:{port}/{db}",
        None,
    ),
    "url-query-wrong": Case(
        EVERYTHING,
        lambda port, db: (
            f"postgresql://{USER}@127.0.0.1:{port}/{db}?password={quote(EVERYTHING, safe='')}"
        ),
        None,
    ),
    "kv-quoted-wrong": Case(
        EVERYTHING,
        lambda port, db: (
            f"host=127.0.0.1 port={port} dbname={db} user={USER} password={kv_quote(EVERYTHING)}"
        ),
        None,
    ),
}


@dataclass
class Run:
    """What one program wrote: its name, stdout and stderr (or log) together, exit code."""

    what: str
    output: str
    code: int | None


class Programs:
    """Runs the real cleaner and exporter with one DSN (and ``health_url``, if given); every
    process is stopped by it."""

    def __init__(self, base: Path, dsn: str, health_url: str | None = None) -> None:
        self.base = base
        (base / "uploads").mkdir(parents=True, exist_ok=True)
        raw = {
            "interval": "1s",
            "state_file": str(base / "state" / "state.json"),
            "audit_log": str(base / "audit.jsonl"),
            "log_level": "debug",
            "files": {"directories": [str(base / "uploads")]},
            "jobs": {
                "database": {"table": "jobs"},
                "force_clean": {"auto": False},
                "health_url": health_url,
            },
        }
        self.config = base / "limpeza.yml"
        self.config.write_text(yaml.safe_dump(raw), encoding="utf-8")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),
            "LC_ALL": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO),  # this checkout's code, whatever is installed
            "LIMPEZA_DATABASE_URL": dsn,
        }
        self.runs: list[Run] = []
        self._started: list[CleanerProcess | ExporterProcess] = []

    def command(self, *args: str) -> Run:
        """``limpeza-cleaner ARGS`` run to completion (at most 120 s)."""
        if args == ("check-config",):
            argv = ["check-config", str(self.config)]
        else:
            argv = ["--config", str(self.config), *args]
        done = subprocess.run(
            [sys.executable, "-m", "cleaner", *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=self.env,
            timeout=120,
            check=False,
        )
        run = Run(" ".join(args), done.stdout + done.stderr, done.returncode)
        self.runs.append(run)
        return run

    def daemon(self, *until: str) -> Run:
        """``limpeza-cleaner run`` until it exits or its log shows one of ``until``; SIGTERM."""
        cleaner = CleanerProcess.spawn(
            [sys.executable, "-m", "cleaner", "--config", str(self.config), "run"],
            base=self.base,
            cwd=REPO,
            env=self.env,
        )
        self._started.append(cleaner)
        deadline = time.monotonic() + 30
        while cleaner.process.poll() is None and not any(u in cleaner.log() for u in until):
            assert time.monotonic() < deadline, f"no {until!r} in 30s:\n{cleaner.log_tail()}"
            time.sleep(0.1)
        if cleaner.process.poll() is None:
            time.sleep(1.5)  # another cycle or two: the "still down" lines too
            cleaner.process.send_signal(signal.SIGTERM)
        code = cleaner.process.wait(timeout=20)
        run = Run("run", cleaner.log(), code)
        self.runs.append(run)
        return run

    def exporter(self) -> tuple[Run, list[str]]:
        """``limpeza-exporter``, scraped twice if it starts; returns the scraped texts."""
        exporter = start_exporter(self.config, base=self.base, env=self.env, wait=False)
        self._started.append(exporter)
        scrapes: list[str] = []
        deadline = time.monotonic() + 30
        while exporter.process.poll() is None and not exporter.listening():
            assert time.monotonic() < deadline, f"exporter neither up nor gone:\n{exporter.log()}"
            time.sleep(0.1)
        if exporter.process.poll() is None:
            for _ in range(2):
                response = requests.get(exporter.url(), timeout=15)
                assert response.status_code == 200
                scrapes.append(response.text)
            code: int | None = exporter.stop()
        else:
            code = exporter.process.returncode
        run = Run("exporter", exporter.log() + "".join(scrapes), code)
        self.runs.append(run)
        return run, scrapes

    def files(self) -> Iterator[tuple[Path, str]]:
        """Every file the programs left under ``base`` (logs, state, audit), as text."""
        for path in sorted(self.base.rglob("*")):
            if path.is_file() and path != self.config:
                yield path, path.read_bytes().decode("utf-8", "replace")

    def stop(self) -> None:
        for started in reversed(self._started):
            with contextlib.suppress(LimpezaProcessError, OSError):
                if started.process.poll() is None:
                    started.stop()

    def assert_no_fragment(self, password: str) -> None:
        texts = [(f"{run.what} output", run.output) for run in self.runs]
        texts += [(str(path), text) for path, text in self.files()]
        leaks = {what: sorted(f for f in fragments(password) if f in text) for what, text in texts}
        leaks = {what: found for what, found in leaks.items() if found}
        assert not leaks, f"pieces of the password written: {leaks}"


@pytest.fixture
def programs(tmp_path: Path) -> Iterator[Callable[..., Programs]]:
    made: list[Programs] = []

    def make(dsn: str, health_url: str | None = None) -> Programs:
        made.append(Programs(tmp_path / f"run-{len(made)}", dsn, health_url))
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            each.stop()


@pytest.mark.parametrize("name", CASES)
def test_a_hostile_dsn_leaves_no_piece_of_its_password_anywhere(
    name: str, jobs_db: JobsDatabase, programs: Callable[[str], Programs]
) -> None:
    case = CASES[name]
    dsn = case.dsn(jobs_db.server.port, jobs_db.name)
    run = programs(dsn)
    check = run.command("check-config")
    once = run.command("once")
    status = run.command("status", "--json")
    daemon = run.daemon("invalid configuration", "database down")
    exporter, scrapes = run.exporter()
    run.assert_no_fragment(case.password)
    if case.problem is not None:
        # Refused by every program as it reads its configuration, saying what is wrong.
        for each in (check, once, status, daemon, exporter):
            assert each.code == 2, f"{each.what}: {each.output}"
            assert "LIMPEZA_DATABASE_URL: " in each.output, each.output
            assert case.problem in each.output, each.output
    else:
        assert check.code == 0, check.output
        assert [sample(s, "limpeza_database_up") for s in scrapes] == [0.0, 0.0]
        for each in (once, status, daemon, exporter):
            assert "password authentication failed" in each.output, f"{each.what}: {each.output}"


@pytest.fixture
def hostile_role(jobs_db: JobsDatabase) -> Iterator[str]:
    """A login role whose password is ``EVERYTHING``, allowed on the jobs table."""
    role = f"limpeza_hostile_{uuid.uuid4().hex[:8]}"
    jobs_db.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role)), (EVERYTHING,)
    )
    try:
        jobs_db.execute(sql.SQL("GRANT SELECT, UPDATE ON jobs TO {}").format(sql.Identifier(role)))
        yield role
    finally:
        with contextlib.suppress(psycopg2.Error):
            jobs_db.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        jobs_db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("form", ["url-encoded", "kv-quoted", "url-query"])
def test_a_hostile_password_written_correctly_just_works(
    form: str,
    jobs_db: JobsDatabase,
    hostile_role: str,
    programs: Callable[[str], Programs],
) -> None:
    port, db, encoded = jobs_db.server.port, jobs_db.name, quote(EVERYTHING, safe="")
    dsn = {
        "url-encoded": f"postgresql://{hostile_role}:{encoded}@127.0.0.1:{port}/{db}",
        "kv-quoted": (
            f"host=127.0.0.1 port={port} dbname={db} user={hostile_role} "
            f"password={kv_quote(EVERYTHING)}"
        ),
        "url-query": f"postgresql://{hostile_role}@127.0.0.1:{port}/{db}?password={encoded}",
    }[form]
    jobs_db.insert_many([("stale", "running", 900), ("fresh", "running", 5)])
    run = programs(dsn)
    assert run.command("check-config").code == 0
    once = run.command("once")
    assert once.code == 0, once.output
    assert jobs_db.statuses() == {"stale": "error", "fresh": "running"}
    status = run.command("status", "--json")
    assert '"up": true' in status.output, status.output
    run.daemon("cleanup done")
    _, scrapes = run.exporter()
    assert [sample(s, "limpeza_database_up") for s in scrapes] == [1.0, 1.0]
    run.assert_no_fragment(EVERYTHING)


# -- a password in the API's health URL ----------------------------------------------------

#: The health endpoint's password: URL-safe as it is, so it is written raw in every URL.
API_PASSWORD = "QZ9XJ-KV7Vq"
API_USER = "limpeza-monitor"


class AuthApi:
    """A real HTTP server on 127.0.0.1 whose /health wants HTTP basic authentication."""

    def __init__(self) -> None:
        expected = "Basic " + base64.b64encode(f"{API_USER}:{API_PASSWORD}".encode()).decode()
        self.authorized = 0

        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="api"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                api.authorized += 1
                body = b'{"status": "healthy", "jobs_active": 2}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def auth_api() -> Iterator[AuthApi]:
    api = AuthApi()
    try:
        yield api
    finally:
        api.stop()


#: name -> (health URL from the API's port and a free port, what the programs must say).
HEALTH_CASES: dict[str, tuple[Callable[[int, int], str], str]] = {
    "answers": (
        lambda port, _: f"http://{API_USER}:{API_PASSWORD}@127.0.0.1:{port}/health",
        "2 jobs active",
    ),
    "wrong-password": (
        lambda port, _: f"http://{API_USER}:{API_PASSWORD}-wrong@127.0.0.1:{port}/health",
        "HTTP 401",
    ),
    "refused": (
        lambda _, free: f"http://{API_USER}:{API_PASSWORD}@127.0.0.1:{free}/health",
        "connection refused",
    ),
    # An unencoded '/' ends the user info for every URL parser: the rest of the password
    # reads as a path.
    "raw-slash": (
        lambda port, _: f"http://{API_USER}:QZ9/XJ-KV7Vq@127.0.0.1:{port}/health",
        "the health URL is not a valid URL",
    ),
}


@pytest.mark.parametrize("name", HEALTH_CASES)
def test_a_password_in_the_health_url_is_never_written(
    name: str,
    jobs_db: JobsDatabase,
    auth_api: AuthApi,
    programs: Callable[..., Programs],
) -> None:
    make_url, says = HEALTH_CASES[name]
    url = make_url(auth_api.port, free_port())
    run = programs(jobs_db.dsn, url)
    assert run.command("check-config").code == 0
    once = run.command("once")
    human = run.command("status")
    status = run.command("status", "--json")
    daemon = run.daemon("API health")
    run.exporter()
    run.assert_no_fragment(API_PASSWORD)
    assert "limpeza-monitor" not in "".join(r.output for r in run.runs)
    for each in (human, daemon):
        assert "http://***@127.0.0.1:" in each.output, f"{each.what}: {each.output}"
        assert says in each.output, f"{each.what}: {each.output}"
    assert json.loads(status.output)["jobs"]["api"]["url"].startswith("http://***@127.0.0.1:")
    assert once.code == 0, once.output  # the API's health never fails a sweep
    assert (auth_api.authorized > 0) == (name == "answers")


def test_a_health_url_that_is_not_http_is_refused_without_its_password(
    jobs_db: JobsDatabase, programs: Callable[..., Programs]
) -> None:
    run = programs(jobs_db.dsn, f"ftp://{API_USER}:{API_PASSWORD}@127.0.0.1/health")
    runs = [run.command("check-config"), run.command("once"), run.daemon("invalid")]
    run.assert_no_fragment(API_PASSWORD)
    for each in runs:
        assert each.code == 2, f"{each.what}: {each.output}"
        assert 'expected an http(s) URL, got "ftp://***@127.0.0.1/health"' in each.output
