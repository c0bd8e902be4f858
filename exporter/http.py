"""The exporter's HTTP server: ``/metrics``, a landing page at ``/``, 404 for anything else.

One event loop in one thread serves every connection (asyncio, TLS by an ``ssl`` context),
with basic auth from the exporter-toolkit web config. A thread per connection cost more
than the answer itself: under a hundred concurrent scrapers on new connections, starting
threads, handing the GIL between them and parsing headers with the e-mail package took
most of the exporter's CPU. The collection, which may wait on the database, runs in a
worker thread (``exporter.scrape``), and every scrape that arrives meanwhile gets its
already rendered, already gzipped body.

The parts, one module each: the accept loop and its bounds (``exporter.listener``), one
connection and its deadlines (``exporter.connection``), a request head
(``exporter.request``), an answer's bytes (``exporter.response``). This module opens
connections (the TLS handshake within the header deadline) and routes requests. A bcrypt
check costs tens of milliseconds, so it runs in a worker thread, never in the loop;
credentials that passed once are remembered (``BasicAuth.remembered``) and cost nothing
more.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from exporter.connection import Connection
from exporter.listener import LISTEN_BACKLOG, Listener, listening_socket
from exporter.request import Request
from exporter.response import Answer, HttpDate
from exporter.scrape import Body, ScrapeWaitError, SharedScrapes
from exporter.webconfig import WebConfig

__all__ = ["LISTEN_BACKLOG", "ExporterServer", "Limits"]

log = logging.getLogger(__name__)

#: Threads for collections: one per format at most runs at a time (text, OpenMetrics,
#: each plain or gzipped), so a few are plenty.
COLLECTION_THREADS = 4
#: Threads for bcrypt checks of credentials not seen before: a flood of wrong passwords
#: waits for these, never the event loop or the collections.
PASSWORD_THREADS = 2


@dataclass(frozen=True)
class Limits:
    """How long a client may take and how many may be served at once."""

    header_timeout: float = 10.0
    idle_timeout: float = 120.0
    write_timeout: float = 30.0
    max_connections: int = 128
    #: How long a scrape waits for its collection, its own or one it joined.
    scrape_wait: float = 60.0


LANDING_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>limpeza exporter</title></head>
<body>
<h1>limpeza exporter</h1>
<p>Jobs, stale jobs, removed files and disk usage of the limpeza cleaner{version}.</p>
<ul><li><a href="{metrics}">Metrics</a></li></ul>
</body>
</html>
"""


class ExporterServer:
    """Serves one registry on one address from one event loop, bounded.

    The socket listens from construction (so a taken address fails at once);
    ``serve_forever()`` runs the loop in the calling thread until ``shutdown()``.
    """

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        web: WebConfig | None = None,
        *,
        version: str = "",
        limits: Limits | None = None,
    ) -> None:
        self.registry = registry
        self.web = web or WebConfig()
        self.version = version
        self.limits = limits or Limits()
        self._tls = self.web.tls.context() if self.web.tls is not None else None
        self.socket = listening_socket(address)
        self._collections = ThreadPoolExecutor(COLLECTION_THREADS, "collection")
        self._password_checks = ThreadPoolExecutor(PASSWORD_THREADS, "password-check")
        self.scrapes = SharedScrapes(registry, self.limits.scrape_wait, self._collections)
        self._date = HttpDate()
        self._connections: set[Connection] = set()
        self._landing = LANDING_PAGE.format(
            version=f" (version {html.escape(version)})" if version else "",
            metrics="/metrics",
        ).encode("utf-8")
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._listener: Listener | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    # ------------------------------------------------------------------ the loop

    def serve_forever(self) -> None:
        """Serves until ``shutdown()``, in the calling thread."""
        self._stopped.clear()
        try:
            asyncio.run(self._serve())
        finally:
            self._stopped.set()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        with self._lock:
            if self._stop_requested:
                return
            self._loop, self._stopping = loop, stopping
        listener = self._listener = Listener(
            loop, self.socket, self._open, self.limits.max_connections
        )
        listener.start()
        try:
            await stopping.wait()
        finally:
            listener.close()
            for connection in list(self._connections):
                connection.abort()

    def shutdown(self) -> None:
        """Stops serving (any thread) and waits until ``serve_forever`` returned."""
        with self._lock:
            self._stop_requested = True
            loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
        self._collections.shutdown(wait=False, cancel_futures=True)
        self._password_checks.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ one connection

    def _open(self, sock: socket.socket, release: Callable[[], None]) -> None:
        """Starts serving an accepted socket; ``release`` frees its slot once it ended."""
        loop = asyncio.get_running_loop()
        listener = self._listener
        assert listener is not None

        def done(connection: Connection) -> None:
            self._connections.discard(connection)
            release()

        connection = Connection(
            loop,
            self.limits,
            self._respond,
            self._date,
            listener,
            done,
            deadline=loop.time() + self.limits.header_timeout,
        )
        self._connections.add(connection)
        connection.opening = loop.create_task(self._handshake(loop, sock, connection))

    async def _handshake(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, connection: Connection
    ) -> None:
        """Opens the transport (TLS: the handshake) within the connection's header deadline."""
        limits = self.limits
        try:
            async with asyncio.timeout(limits.header_timeout):
                await loop.connect_accepted_socket(
                    lambda: connection,
                    sock,
                    ssl=self._tls,
                    ssl_handshake_timeout=limits.header_timeout if self._tls else None,
                    ssl_shutdown_timeout=limits.write_timeout if self._tls else None,
                )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            log.debug("connection not opened: %s", exc)
            sock.close()
            connection.abandon()

    # ------------------------------------------------------------------ routing

    def _respond(self, request: Request) -> Answer | Awaitable[Answer]:
        """The answer, or a coroutine making it when it must wait (a collection, bcrypt)."""
        auth = self.web.basic_auth
        if auth is not None and not auth.remembered(request.header("authorization")):
            return self._check_then_route(request)
        return self._route(request)

    async def _check_then_route(self, request: Request) -> Answer:
        auth = self.web.basic_auth
        assert auth is not None
        loop = asyncio.get_running_loop()
        header = request.header("authorization")
        if not await loop.run_in_executor(self._password_checks, auth.check_header, header):
            return Answer(
                401,
                b"Unauthorized\n",
                headers=(("WWW-Authenticate", 'Basic realm="limpeza-exporter"'),),
            )
        answer = self._route(request)
        return answer if isinstance(answer, Answer) else await answer

    def _route(self, request: Request) -> Answer | asyncio.Future[Answer]:
        if request.method not in ("GET", "HEAD"):
            return Answer(405, b"Method Not Allowed\n", headers=(("Allow", "GET, HEAD"),))
        if request.path == "/metrics":
            return self._metrics(request)
        if request.path == "/":
            return Answer(200, self._landing, "text/html; charset=utf-8")
        return Answer(404, b"Not Found\n")

    def _metrics(self, request: Request) -> asyncio.Future[Answer]:
        body = self.scrapes.body(request.header("accept"), request.header("accept-encoding"))
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        body.add_done_callback(functools.partial(_metrics_answer, answer))
        return answer


def _metrics_answer(answer: asyncio.Future[Answer], body: asyncio.Future[Body]) -> None:
    if answer.done():
        return  # the connection is gone
    if body.cancelled():
        answer.cancel()
        return
    error = body.exception()
    if isinstance(error, ScrapeWaitError):
        log.warning("scrape not answered: %s", error)
        answer.set_result(Answer(503, b"scrape timed out\n"))
    elif error is not None:
        # The collector turns every partial fault into a metric; this is a bug.
        log.error("scrape failed", exc_info=error)
        answer.set_result(Answer(500, b"scrape failed\n"))
    else:
        data = body.result()
        headers = [("Vary", "Accept, Accept-Encoding")]
        if data.gzipped:
            headers.append(("Content-Encoding", "gzip"))
        answer.set_result(Answer(200, data.data, data.content_type, tuple(headers)))
