"""The exporter's serving side as a real process: web config checks, reloads, compression,
deadlines and bounds against hostile or unlucky clients."""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import resource
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml

from devtools.limpeza import ExporterProcess
from tests.fixtures.exporter import StartExporter, write_site
from tests.fixtures.exposition import sample

pytestmark = pytest.mark.integration


def wait_for_sample(
    exporter: ExporterProcess, name: str, value: float, timeout: float = 20.0
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = exporter.get().text
        if sample(text, name) == value:
            return text
        assert time.monotonic() < deadline, f"{name} is not {value}:\n{exporter.log_tail()}"
        time.sleep(0.1)


# --------------------------------------------------------------------------- web config


def test_a_malformed_bcrypt_hash_is_refused_at_start(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    good = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    # One character lost in a copy and paste: bcrypt says "wrong password", never "bad hash".
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": good[:-1]}}))
    exporter = start_exporter(site.config, args=["--web.config.file", str(web)], wait=False)
    try:
        code = exporter.process.wait(timeout=30)
    except Exception:
        pytest.fail(f"the exporter started with a malformed hash:\n{exporter.log_tail()}")
    assert code == 2, exporter.log()
    assert "basic_auth_users.prometheus: expected a bcrypt hash" in exporter.log()
    assert good[7:-1] not in exporter.log()


# --------------------------------------------------------------------------- reloads


def test_a_refused_reload_shows_in_the_metrics(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    started = time.time()
    exporter = start_exporter(site.config)
    successful = "limpeza_exporter_config_last_reload_successful"
    stamp = "limpeza_exporter_config_last_reload_success_timestamp_seconds"
    text = exporter.get().text
    assert sample(text, successful) == 1, text
    loaded_at = sample(text, stamp)
    assert loaded_at is not None and started - 1 <= loaded_at <= time.time()

    good = site.config.read_text()
    site.config.write_text(good.replace("max_age: 24h", "max_age: soon", 1))
    exporter.process.send_signal(signal.SIGHUP)
    text = wait_for_sample(exporter, successful, 0)
    assert sample(text, stamp) == loaded_at, "a refused reload moved the success time"
    assert "SIGHUP: keeping the old configuration" in exporter.log()
    assert sample(text, 'limpeza_rule_max_age_seconds{rule="sessions"}') == 86400

    time.sleep(0.01)
    site.config.write_text(good.replace("max_age: 24h", "max_age: 12h", 1))
    exporter.process.send_signal(signal.SIGHUP)
    text = wait_for_sample(exporter, successful, 1)
    reloaded_at = sample(text, stamp)
    assert reloaded_at is not None and reloaded_at > loaded_at
    assert sample(text, 'limpeza_rule_max_age_seconds{rule="sessions"}') == 43200
    assert exporter.stop() == 0


# --------------------------------------------------------------------------- compression


def _raw_get(exporter: ExporterProcess, accept_encoding: str) -> requests.Response:
    response = requests.get(
        exporter.url(), headers={"Accept-Encoding": accept_encoding}, stream=True, timeout=15
    )
    response.raw.decode_content = False
    return response


def test_gzip_when_the_client_asks_for_it(start_exporter: StartExporter, tmp_path: Path) -> None:
    site = write_site(tmp_path)
    exporter = start_exporter(site.config)
    plain = _raw_get(exporter, "identity")
    assert "Content-Encoding" not in plain.headers
    assert b"limpeza_state_up" in plain.raw.read()
    for header in ("gzip", "deflate, gzip;q=0.5", "GZIP"):
        zipped = _raw_get(exporter, header)
        assert zipped.headers.get("Content-Encoding") == "gzip", header
        body = zipped.raw.read()
        assert int(zipped.headers["Content-Length"]) == len(body)
        assert b"limpeza_state_up" in gzip.decompress(body), header
    assert "Content-Encoding" not in _raw_get(exporter, "gzip;q=0").headers
    assert exporter.stop() == 0


# --------------------------------------------------------------------------- deadlines


def _closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """Waits up to ``wait`` seconds for the peer to close (EOF or reset)."""
    sock.settimeout(wait)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_a_client_trickling_its_headers_is_cut_off(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    """One byte every 2 s never trips a per-read timeout; the 10 s header deadline cuts it."""
    site = write_site(tmp_path)
    exporter = start_exporter(site.config)
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 100
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=5) as slow:
        started = time.monotonic()
        closed = False
        for byte in request:
            try:
                slow.sendall(bytes([byte]))
            except ConnectionError:
                closed = True
            if closed or _closed_by_peer(slow, 2.0):
                closed = True
                break
            assert exporter.get(timeout=5).status_code == 200  # the others are served
            if time.monotonic() - started > 25:
                break
        elapsed = time.monotonic() - started
    assert closed, f"a client trickling its headers still connected after {elapsed:.0f}s"
    assert 9 <= elapsed <= 14, elapsed
    assert exporter.stop() == 0


def _sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_connections_are_bounded_and_idle_ones_make_room(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    exporter = start_exporter(site.config, args=["--web.max-connections", "4"])
    pid = exporter.process.pid
    baseline = _sockets_of(pid)
    with contextlib.ExitStack() as stack:
        # Kept-alive clients that scraped once and stay idle hold every slot: a new scraper
        # takes the slot of the one idle the longest, it does not wait for the idle timeout.
        for _ in range(4):
            session = stack.enter_context(requests.Session())
            assert session.get(exporter.url(), timeout=5).status_code == 200
        started = time.monotonic()
        assert exporter.get(timeout=30).status_code == 200
        assert time.monotonic() - started < 2
        # Clients that connect and send nothing are served at most 4 at a time; the rest
        # wait in the listen backlog.
        silent = [
            stack.enter_context(socket.create_connection(("127.0.0.1", exporter.port)))
            for _ in range(12)
        ]
        time.sleep(1.0)
        served = _sockets_of(pid) - baseline
        assert served <= 4, f"{served} connections served at once, the limit is 4"
        assert len(silent) == 12
    # Gone, they free their slots at once.
    started = time.monotonic()
    assert exporter.get(timeout=30).status_code == 200
    assert time.monotonic() - started < 5
    assert exporter.stop() == 0


def test_the_listen_backlog_takes_a_burst_of_scrapers(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    exporter = start_exporter(site.config)
    listening = subprocess.run(
        ["ss", "-Hltn", f"sport = :{exporter.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    # LISTEN, Recv-Q, Send-Q (the backlog for a listening socket), local, peer.
    assert listening[0] == "LISTEN", listening
    assert int(listening[2]) >= 128, f"listen backlog {listening[2]}"
    assert exporter.stop() == 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_file_descriptors_the_accept_loop_backs_off(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    exporter = start_exporter(site.config)
    pid = exporter.process.pid
    assert exporter.get().status_code == 200
    in_use = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 4, hard))
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(socket.create_connection(("127.0.0.1", exporter.port)))
            for _ in range(20)
        ]
        time.sleep(1.0)  # 4 accepted, then EMFILE with 16 clients waiting
        before = _cpu_seconds(pid)
        time.sleep(3.0)
        spent = _cpu_seconds(pid) - before
        assert spent < 0.3, f"the exporter used {spent:.2f} CPU-s in 3 s out of descriptors"
        assert "cannot accept connections: Too many open files" in exporter.log()
        assert len(clients) == 20
    # The clients are gone: their descriptors come back and scrapes are served again.
    deadline = time.monotonic() + 15
    while not exporter.answers("/metrics", timeout=5):
        assert time.monotonic() < deadline, exporter.log_tail()
        time.sleep(0.2)
    log = exporter.log()
    assert log.count("cannot accept connections") == 1, log
    assert "accepting connections again" in log
    assert exporter.stop() == 0


# --------------------------------------------------------------------------- requests


def _exchange(exporter: ExporterProcess, raw: bytes, *, half_close: bool = False) -> bytes:
    """Sends ``raw`` on a new connection and reads until the exporter closes it."""
    with socket.create_connection(("127.0.0.1", exporter.port), timeout=15) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_methods_bad_heads_and_pipelined_requests(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    exporter = start_exporter(site.config)
    posted = requests.post(exporter.url(), data=b"x", timeout=15)
    assert posted.status_code == 405
    assert posted.headers["Allow"] == "GET, HEAD"
    assert _exchange(exporter, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _exchange(exporter, b"GET / HTTP/1.1\r\nX: " + b"a" * 70000).startswith(b"HTTP/1.1 431 ")
    # Three requests in one write on a kept-alive connection: three answers, in order; the
    # last asks to close, so the exporter closes after it.
    answers = _exchange(
        exporter,
        b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)
    assert statuses == [b"404", b"200", b"200"], answers
    assert answers.endswith(b"</html>\n")
    assert b"limpeza_" not in answers  # HEAD: headers only
    # A client that half-closes after its request (shutdown(SHUT_WR)) still gets its answer.
    answer = _exchange(exporter, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"Connection: close" in head
    assert b"limpeza_state_up" in body
    assert exporter.stop() == 0


def test_password_checks_never_hold_up_remembered_clients(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    """Wrong passwords each cost a slow bcrypt check; a known client is answered meanwhile."""
    site = write_site(tmp_path)
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=12)).decode()  # ~0.3-1 s a check
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
    exporter = start_exporter(site.config, args=["--web.config.file", str(web)])
    assert exporter.get(auth=("prometheus", "secret"), timeout=60).status_code == 200

    finished: list[tuple[str, float, int]] = []
    lock = threading.Lock()

    def scrape(name: str, password: str) -> None:
        code = exporter.get(auth=("prometheus", password), timeout=120).status_code
        with lock:
            finished.append((name, time.monotonic(), code))

    wrong = [threading.Thread(target=scrape, args=("wrong", f"guess{i}")) for i in range(6)]
    for thread in wrong:
        thread.start()
    time.sleep(0.5)  # the guesses are being checked
    scrape("known", "secret")
    for thread in wrong:
        thread.join(180)
    assert len(finished) == 7
    assert {(name, code) for name, _, code in finished} == {("wrong", 401), ("known", 200)}
    order = [name for name, _, _ in sorted(finished, key=lambda item: item[1])]
    # Six slow checks, at most two at a time: the known client's answer
    # comes before most of them are done.
    assert order.index("known") < 3, order
    assert exporter.stop() == 0
