"""The API health check against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cleaner.config import build
from cleaner.health import check_health
from cleaner.state import State
from tests.integration.recording import RecordingReaper

pytestmark = pytest.mark.integration


class FakeApi:
    """A real HTTP server answering /health with whatever ``body`` and ``code`` say."""

    def __init__(self) -> None:
        self.body: Any = {"status": "healthy", "jobs_active": 0}
        self.code = 200
        self.delay = 0.0
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if api.delay:
                    time.sleep(api.delay)
                payload = (
                    api.body.encode()
                    if isinstance(api.body, str)
                    else json.dumps(api.body).encode()
                )
                try:
                    self.send_response(api.code if self.path == "/health" else 404)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
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
    assert result.error == "timed out"


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
