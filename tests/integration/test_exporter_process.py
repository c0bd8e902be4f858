"""The limpeza-exporter process: HTTP paths, promtool, faults, TLS and basic auth, signals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml

from cleaner.state import DirectoryUsage, State, StateStore
from tests.fixtures.exporter import (
    Site,
    StartExporter,
    write_site,
)
from tests.fixtures.exposition import sample
from tests.fixtures.postgres import JobsDatabase
from tests.fixtures.prometheus import PrometheusFactory

pytestmark = pytest.mark.integration


def save_state(site: Site) -> State:
    state = State(
        files_removed={"sessions": 6},
        bytes_removed={"sessions": 600},
        sweeps=3,
        last_sweep_end=time.time(),
        last_success=time.time(),
        last_sweep_duration=0.25,
        directories={str(site.uploads): DirectoryUsage(files=4, bytes=40)},
    )
    StateStore(site.state_file).save(state)
    return state


def test_promtool_accepts_the_real_output(
    start_exporter: StartExporter, jobs_db: JobsDatabase, tmp_path: Path
) -> None:
    site = write_site(tmp_path, jobs_db)
    save_state(site)
    jobs_db.insert_many([("a", "running", 10), ("b", "queued", 500), ("c", "done", 5)])
    exporter = start_exporter(site.config, env=site.env)
    response = exporter.get()
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert sample(response.text, "limpeza_database_up") == 1
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs Debian's prometheus package"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=response.content, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert check.stdout.decode().strip() == "", check.stdout.decode()


def test_landing_page_metrics_and_404(start_exporter: StartExporter, tmp_path: Path) -> None:
    site = write_site(tmp_path)
    exporter = start_exporter(site.config)
    landing = exporter.get("/")
    assert landing.status_code == 200
    assert landing.headers["Content-Type"].startswith("text/html")
    assert 'href="/metrics"' in landing.text
    assert exporter.get("/metrics?x=1").status_code == 200
    assert requests.head(exporter.url(), timeout=10).status_code == 200
    for path in ("/favicon.ico", "/metrics/", "/metricsx", "/-/healthy", "/index.html"):
        assert exporter.get(path).status_code == 404, path
    assert exporter.stop() == 0


def test_openmetrics_when_asked(start_exporter: StartExporter, tmp_path: Path) -> None:
    site = write_site(tmp_path)
    exporter = start_exporter(site.config)
    response = exporter.get(headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_sigterm_exits_zero_and_frees_the_port(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    exporter = start_exporter(site.config)
    assert exporter.get().status_code == 200
    assert exporter.stop() == 0
    assert "SIGTERM received" in exporter.log()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", exporter.port)) != 0


def test_sighup_rereads_the_config(start_exporter: StartExporter, tmp_path: Path) -> None:
    site = write_site(tmp_path)
    save_state(site)
    exporter = start_exporter(site.config)
    assert 'limpeza_files_removed_total{rule="thumbnails"}' not in exporter.get().text
    raw = yaml.safe_load(site.config.read_text())
    raw["files"]["rules"].append({"name": "thumbnails", "pattern": "t_*.png", "max_age": "1h"})
    site.config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    exporter.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while 'limpeza_files_removed_total{rule="thumbnails"} 0.0' not in exporter.get().text:
        assert time.monotonic() < deadline, exporter.log()
        time.sleep(0.1)
    assert exporter.process.poll() is None
    assert exporter.stop() == 0


def test_a_silent_client_does_not_block_others(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    exporter = start_exporter(site.config)
    with socket.create_connection(("127.0.0.1", exporter.port)) as silent:
        silent.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        for _ in range(3):
            assert exporter.get(timeout=10).status_code == 200
    assert exporter.stop() == 0


def test_partial_faults_still_answer_200(
    start_exporter: StartExporter, jobs_db: JobsDatabase, tmp_path: Path
) -> None:
    site = write_site(tmp_path, jobs_db)
    save_state(site)
    jobs_db.insert_many([("a", "running", 10), ("b", "running", 900), ("c", "queued", 30)])
    exporter = start_exporter(site.config, env=site.env)
    uploads = f'limpeza_filesystem_size_bytes{{directory="{site.uploads}"}}'
    renders = f'limpeza_filesystem_size_bytes{{directory="{site.renders}"}}'

    text = exporter.get().text
    assert sample(text, "limpeza_database_up") == 1
    assert sample(text, "limpeza_state_up") == 1
    assert sample(text, "limpeza_jobs_active") == 3
    assert sample(text, 'limpeza_jobs_stale{status="running"}') == 1
    assert sample(text, uploads) is not None and sample(text, renders) is not None

    # The database goes away in the middle of the test.
    jobs_db.server.stop()
    try:
        response = exporter.get()
        assert response.status_code == 200
        assert sample(response.text, "limpeza_database_up") == 0
        assert sample(response.text, "limpeza_jobs_active") is None
        assert sample(response.text, "limpeza_state_up") == 1
        assert sample(response.text, 'limpeza_files_removed_total{rule="sessions"}') == 6

        # The state file is corrupt too (a half-written copy, a disk error).
        site.state_file.write_text('{"version": 1, "files_rem', encoding="utf-8")
        response = exporter.get()
        assert response.status_code == 200
        assert sample(response.text, "limpeza_state_up") == 0
        assert sample(response.text, 'limpeza_files_removed_total{rule="sessions"}') is None
        assert sample(response.text, "limpeza_database_up") == 0

        # A monitored directory cannot be looked at any more.
        shutil.rmtree(site.renders)
        if os.geteuid() != 0:  # root passes any permission check, so only the removal counts
            site.uploads.parent.chmod(0)
        try:
            response = exporter.get()
        finally:
            site.uploads.parent.chmod(0o755)
        assert response.status_code == 200
        # A directory that is gone says so, and its disk is still measured at its nearest
        # ancestor that can be, so the disk alerts keep working for it.
        renders_error = f'limpeza_filesystem_error{{directory="{site.renders}"}}'
        assert sample(response.text, renders_error) == 1
        assert sample(response.text, renders) is not None
        uploads_error = f'limpeza_filesystem_error{{directory="{site.uploads}"}}'
        assert sample(response.text, uploads_error) == (0 if os.geteuid() == 0 else 1)
        assert sample(response.text, "limpeza_exporter_scrape_duration_seconds") is not None
    finally:
        jobs_db.server.start()

    # Everything comes back without a restart.
    site.renders.mkdir()
    save_state(site)
    text = exporter.get().text
    assert sample(text, "limpeza_database_up") == 1
    assert sample(text, "limpeza_state_up") == 1
    assert sample(text, "limpeza_jobs_active") == 3
    assert sample(text, renders) is not None
    assert sample(text, f'limpeza_filesystem_error{{directory="{site.renders}"}}') == 0
    log = exporter.log()
    assert log.count("WARNING exporter.collector: database:") == 1, log
    assert "INFO exporter.collector: database: readable again" in log
    assert jobs_db.password not in log
    assert "readable again" in log
    assert exporter.stop() == 0


def make_cert(base: Path) -> tuple[Path, Path]:
    cert, key = base / "server.crt", base / "server.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_and_basic_auth(
    start_exporter: StartExporter, prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    save_state(site)
    cert, key = make_cert(tmp_path)
    password = "scrape-Secret-42"
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": cert.name, "key_file": key.name},
                "basic_auth_users": {
                    "prometheus": bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()
                },
            }
        ),
        encoding="utf-8",
    )
    exporter = start_exporter(
        site.config, args=["--web.config.file", str(web)], scheme="https", verify=str(cert)
    )

    nobody = exporter.get()
    assert nobody.status_code == 401
    assert nobody.headers["WWW-Authenticate"].startswith("Basic")
    assert "limpeza_" not in nobody.text
    wrong = exporter.get(auth=("prometheus", "not-the-password"))
    assert wrong.status_code == 401
    assert exporter.get(auth=("intruder", password)).status_code == 401
    right = exporter.get(auth=("prometheus", password))
    assert right.status_code == 200
    assert sample(right.text, "limpeza_state_up") == 1
    assert exporter.get("/", auth=("prometheus", password)).status_code == 200

    # Plain HTTP on the TLS port gets no metrics, and the server goes on.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=10)
    assert exporter.get(auth=("prometheus", password)).status_code == 200

    # A real Prometheus scrapes it over TLS with basic auth.
    prom = prometheus_factory(
        [
            {
                "job_name": "limpeza_tls",
                "scheme": "https",
                "tls_config": {"ca_file": str(cert)},
                "basic_auth": {"username": "prometheus", "password": password},
                "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
            }
        ]
    )
    assert prom.value('limpeza_files_removed_total{rule="sessions"}') == 6
    assert password not in exporter.log()
    assert exporter.stop() == 0


def test_invalid_configs_exit_2_with_key_paths(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("interval: soon\nexporter:\n  database_timeout: never\n", encoding="utf-8")
    exporter = start_exporter(bad, wait=False)
    assert exporter.process.wait(timeout=30) == 2
    assert "interval:" in exporter.log()
    assert "exporter.database_timeout:" in exporter.log()

    site = write_site(tmp_path / "site")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  admin: hunter2\n", encoding="utf-8")
    exporter = start_exporter(site.config, args=["--web.config.file", str(web)], wait=False)
    assert exporter.process.wait(timeout=30) == 2
    assert "basic_auth_users.admin: expected a bcrypt hash" in exporter.log()


def test_address_in_use_exits_1(start_exporter: StartExporter, tmp_path: Path) -> None:
    site = write_site(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exporter = start_exporter(
            site.config, args=["--web.listen-address", f"127.0.0.1:{port}"], wait=False
        )
        assert exporter.process.wait(timeout=30) == 1
    assert "cannot listen on" in exporter.log()
