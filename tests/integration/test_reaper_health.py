"""The API health check against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cleaner.config import build
from cleaner.health import HealthResult, check_health
from cleaner.state import State
from tests.fixtures.limpeza_processes import LimpezaProcesses
from tests.integration.recording import RecordingReaper

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
#: The largest answer the check reads (README: the health check).
MAX_BODY = 1024 * 1024


class FakeApi:
    """A real HTTP server on 127.0.0.1 answering /health as ``mode`` says.

    ``json`` (the default) answers ``body`` with ``code`` after ``delay``; ``trickle_body``
    sends a 200 and its headers, then one byte of body every ``interval`` forever;
    ``trickle_headers`` sends the status line, then one byte of a header every
    ``interval`` forever; ``big`` streams ``size`` bytes of JSON-looking body, with a
    Content-Length when ``declare_length``, else ``chunked`` or until the connection
    closes. Every loop ends when the client goes away or the server stops.
    """

    def __init__(self) -> None:
        self.body: Any = {"status": "healthy", "jobs_active": 0}
        self.code = 200
        self.delay = 0.0
        self.mode = "json"
        self.interval = 0.5
        self.size = 0
        self.declare_length = False
        self.chunked = False
        #: What a ``big`` body starts with; the rest is spaces (still valid JSON).
        self.prefix = b'{"status": "healthy", "jobs_active": 4}'
        #: Body bytes written by the last ``big`` answer, and whether it has ended.
        self.sent = 0
        self.big_done = threading.Event()
        #: Set when a request comes in.
        self.requested = threading.Event()
        #: How long after its request each connection the client closed had lasted, as
        #: seen when the server's next write failed.
        self.given_up_after: list[float] = []
        self.port = 0
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        api = self
        self._stopping.clear()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requested.set()
                start = time.monotonic()
                try:
                    getattr(self, f"answer_{api.mode}")()
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (the timeout and size tests).
                    api.given_up_after.append(time.monotonic() - start)

            def answer_json(self) -> None:
                if api.delay:
                    api._stopping.wait(api.delay)
                payload = (
                    api.body.encode()
                    if isinstance(api.body, str)
                    else json.dumps(api.body).encode()
                )
                self.send_response(api.code if self.path == "/health" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def answer_trickle_body(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.flush()
                self.trickle(b" ")

            def answer_trickle_headers(self) -> None:
                self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
                self.wfile.flush()
                self.trickle(b"a")

            def trickle(self, byte: bytes) -> None:
                while not api._stopping.wait(api.interval):
                    self.wfile.write(byte)
                    self.wfile.flush()

            def answer_big(self) -> None:
                self.close_connection = True
                head = [b"HTTP/1.1 200 OK", b"Content-Type: application/json"]
                if api.declare_length:
                    head.append(b"Content-Length: %d" % api.size)
                elif api.chunked:
                    head.append(b"Transfer-Encoding: chunked")
                head.append(b"Connection: close")
                api.sent = 0
                api.big_done.clear()
                try:
                    self.wfile.write(b"\r\n".join(head) + b"\r\n\r\n")
                    piece = api.prefix + b" " * (65536 - len(api.prefix))
                    while api.sent < api.size and not api._stopping.is_set():
                        data = piece[: api.size - api.sent]
                        if api.chunked:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        else:
                            self.wfile.write(data)
                        api.sent += len(data)
                        piece = b" " * 65536
                    if api.chunked:
                        self.wfile.write(b"0\r\n\r\n")
                finally:
                    api.big_done.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


@pytest.fixture
def api() -> Iterator[FakeApi]:
    server = FakeApi()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_check_health_reads_jobs_active(api: FakeApi) -> None:
    api.body = {"status": "healthy", "jobs_active": 9}
    result = check_health(api.url, 2.0)
    assert (result.up, result.jobs_active, result.status, result.error) == (
        True,
        9,
        "healthy",
        None,
    )


@pytest.mark.parametrize(
    ("code", "body", "up", "active"),
    [
        (500, {"status": "broken"}, False, None),
        (200, "not json", True, None),
        (200, [1, 2], True, None),
        (200, {"status": "healthy", "jobs_active": "9"}, True, None),
        (200, {"status": "healthy", "jobs_active": True}, True, None),
    ],
)
def test_check_health_on_odd_answers(
    api: FakeApi, code: int, body: Any, up: bool, active: int | None
) -> None:
    api.code, api.body = code, body
    result = check_health(api.url, 2.0)
    assert (result.up, result.jobs_active) == (up, active)
    assert result.error


def test_a_slow_api_times_out(api: FakeApi) -> None:
    api.delay = 2.0
    result = check_health(api.url, 0.3)
    assert result.up is False
    assert result.error == "timed out after 0.3s"


def test_an_unreachable_api_is_logged_once_per_change_of_state(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cleaner")
    api.body = {"status": "healthy", "jobs_active": 3}
    config = build({"jobs": {"health_url": api.url, "health_timeout": "1s"}}, env={})
    state = State()
    reaper = RecordingReaper(config.jobs, state)
    try:
        first = reaper.cycle()
        assert first.api is not None and first.api.jobs_active == 3
        assert (state.api.up, state.api.jobs_active) == (True, 3)
        assert state.api.checked_at is not None
        api.stop()
        for _ in range(4):
            assert reaper.cycle().api is not None
        assert state.api.up is False
        assert state.api.jobs_active is None
        assert state.errors["health"] == 4
        api.start()  # same port again
        api.body = {"status": "healthy", "jobs_active": 1}
        reaper.cycle()
        reaper.cycle()
        assert (state.api.up, state.api.jobs_active) == (True, 1)
    finally:
        reaper.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


def test_automatic_force_clean_from_the_apis_count(api: FakeApi, tmp_path: Path) -> None:
    cache = tmp_path / "jobs.json"
    now = time.time()
    cache.write_text(
        json.dumps(
            {
                "young": {"status": "running", "updated_at": now - 5},
                "older": {"status": "running", "updated_at": now - 100},
                "done": {"status": "done", "updated_at": now - 100},
            }
        )
    )
    api.body = {"status": "healthy", "jobs_active": 9}
    config = build(
        {
            "jobs": {
                "cache_file": str(cache),
                "health_url": api.url,
                "force_clean": {"auto": True, "threshold": 5, "confirm_cycles": 2, "min_age": "1m"},
            }
        },
        env={},
    )
    state = State()
    reaper = RecordingReaper(config.jobs, state)
    try:
        assert reaper.cycle().force_clean is None
        report = reaper.cycle().force_clean
    finally:
        reaper.close()
    assert report is not None and report.cache == {"running": 1}
    assert set(json.loads(cache.read_text())) == {"young", "done"}  # min_age spares the young
    assert state.force_cleans == 1


def timed_check(url: str, timeout: float, limit: float) -> tuple[HealthResult, float]:
    """check_health and how long it took, run in a thread that the test waits for at most
    ``limit`` seconds (a check that hangs fails the test instead of hanging it)."""
    done: list[tuple[HealthResult, float]] = []

    def run() -> None:
        start = time.monotonic()
        result = check_health(url, timeout)
        done.append((result, time.monotonic() - start))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert done, f"check_health(timeout={timeout}) still running after {limit}s"
    return done[0]


@pytest.mark.parametrize(
    ("mode", "interval", "timeout"),
    [
        ("trickle_body", 0.5, 1.5),
        ("trickle_headers", 0.5, 1.5),
        # One byte just before each read would time out: only a total deadline cuts it.
        ("trickle_body", 0.8, 1.0),
        ("trickle_headers", 0.8, 1.0),
    ],
)
def test_a_trickling_answer_is_cut_at_the_total_deadline(
    api: FakeApi, mode: str, interval: float, timeout: float
) -> None:
    api.mode, api.interval = mode, interval
    result, elapsed = timed_check(api.url, timeout, limit=timeout + 10)
    assert (result.up, result.jobs_active) == (False, None)
    assert result.error == f"timed out after {timeout:g}s"
    assert timeout - 0.05 <= elapsed < timeout + 0.5, elapsed


def test_a_peer_that_never_answers_is_cut_at_the_deadline(api: FakeApi) -> None:
    api.delay = 30.0
    result, elapsed = timed_check(api.url, 0.5, limit=10)
    assert result.error == "timed out after 0.5s"
    assert elapsed < 1.0, elapsed


@pytest.mark.parametrize(
    ("size", "up", "active", "error"),
    [
        (MAX_BODY, True, 4, None),
        (MAX_BODY + 1, True, None, "the answer is over 1 MiB"),
    ],
)
def test_the_body_cap_is_exactly_1_mib(
    api: FakeApi, size: int, up: bool, active: int | None, error: str | None
) -> None:
    head = '{"status": "healthy", "jobs_active": 4}'
    api.body = head + " " * (size - len(head))  # trailing spaces are still JSON
    result, _ = timed_check(api.url, 5.0, limit=20)
    assert (result.up, result.jobs_active, result.error) == (up, active, error)


@pytest.mark.parametrize("chunked", [False, True], ids=["until-close", "chunked"])
def test_a_large_good_answer_streamed_in_pieces_is_read(api: FakeApi, chunked: bool) -> None:
    api.mode, api.size, api.chunked = "big", 512 * 1024, chunked
    result, _ = timed_check(api.url, 5.0, limit=20)
    assert (result.up, result.jobs_active, result.status, result.error) == (
        True,
        4,
        "healthy",
        None,
    )


_MEASURE = """
import json, resource, sys, time
from cleaner.health import check_health

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.monotonic()
result = check_health(sys.argv[1], float(sys.argv[2]))
elapsed = time.monotonic() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"up": result.up, "error": result.error, "elapsed": elapsed,
                  "maxrss_before_kib": before, "maxrss_after_kib": after}))
"""


@pytest.mark.parametrize(
    ("declare_length", "chunked"),
    [(False, False), (False, True), (True, False)],
    ids=["until-close", "chunked", "content-length"],
)
def test_a_50_mb_answer_is_refused_unread_in_little_memory(
    api: FakeApi, declare_length: bool, chunked: bool, record_property: Any
) -> None:
    """The check runs in a fresh process, whose peak RSS before and after it is compared."""
    api.mode, api.size = "big", 50 * 1000 * 1000
    api.declare_length, api.chunked = declare_length, chunked
    measured = subprocess.run(
        [sys.executable, "-c", _MEASURE, api.url, "20"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert measured.returncode == 0, measured.stderr
    figures = json.loads(measured.stdout)
    growth_kib = figures["maxrss_after_kib"] - figures["maxrss_before_kib"]
    record_property("maxrss_growth_kib", growth_kib)
    record_property("elapsed_s", round(figures["elapsed"], 3))
    print(f"peak RSS growth {growth_kib} KiB in {figures['elapsed']:.3f}s: {figures}")
    assert figures["error"] == "the answer is over 1 MiB", figures
    assert figures["up"] is True
    assert growth_kib < 8 * 1024, figures
    assert figures["elapsed"] < 5, figures
    # The server was not made to send the rest: the client closed after 1 MiB.
    assert api.big_done.wait(10)
    assert api.sent < api.size / 2, api.sent


def test_the_daemon_gives_a_trickling_api_health_timeout_and_no_more(
    api: FakeApi, limpeza_processes: LimpezaProcesses
) -> None:
    """The real daemon against an API that trickles forever: every check is cut at
    jobs.health_timeout (seen from the server: the client closes), logged, and SIGTERM
    during a check stops the daemon at once."""
    api.mode, api.interval = "trickle_body", 0.5
    procs = limpeza_processes
    config = procs.write_config(
        interval="1s", extra={"jobs": {"health_url": api.url, "health_timeout": "2s"}}
    )
    cleaner = procs.start_cleaner(config)
    cleaner.wait_until(
        lambda: "unreachable: timed out after 2s" in cleaner.log(),
        "no health time-out logged",
        15,
        0.1,
    )
    cleaner.wait_until(lambda: len(api.given_up_after) >= 2, "no two checks cut", 20, 0.1)
    print(f"checks cut after {[round(t, 2) for t in api.given_up_after]}s (server side)")
    # The server sees the close at its first or second write after it: within 2 intervals.
    assert all(2.0 <= t < 2.0 + 2 * api.interval + 0.3 for t in api.given_up_after)
    api.requested.clear()
    cleaner.wait_until(api.requested.is_set, "no next health check", 15, 0.05)
    time.sleep(0.5)  # well into that check, which the API never answers
    start = time.monotonic()
    cleaner.process.send_signal(signal.SIGTERM)
    try:
        code = cleaner.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon ignored SIGTERM for 15s:\n{cleaner.log_tail()}")
    stopped_after = time.monotonic() - start
    print(f"stopped {stopped_after:.2f}s after SIGTERM")
    assert code == 0, cleaner.log_tail()
    assert stopped_after < 2 - 0.5 + 1.0, stopped_after
