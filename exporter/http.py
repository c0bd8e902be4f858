"""The exporter's HTTP server: ``/metrics``, a landing page at ``/``, 404 for anything else.

One event loop in one thread serves every connection (asyncio streams from the standard
library, TLS by an ``ssl`` context), with basic auth from the exporter-toolkit web config.
A thread per connection cost more than the answer itself: under a hundred concurrent
scrapers, starting the threads, handing the GIL between them and parsing headers with the
e-mail package took most of the exporter's CPU. Here a connection is a task; the
collection, which may wait on the database, runs in a worker thread (``exporter.scrape``),
and every scrape that arrives meanwhile gets its already rendered, already gzipped body.

Every wait has a deadline, not a per-read timeout (a client trickling one byte every few
seconds defeats those):

* the TLS handshake and the first request's line and headers: ``header_timeout`` from the
  accept, in total;
* on a kept-alive connection, the next request must start within ``idle_timeout``, and its
  head must be complete ``header_timeout`` after its first byte;
* writing an answer, and closing the connection: ``write_timeout``.

How many connections are served at once, how room is made from idle ones and how the accept
loop backs off when descriptors run out is ``exporter.listener``'s. A bcrypt check costs
tens of milliseconds, so it runs in a worker thread, never in the loop; credentials that
passed once are remembered (``BasicAuth.remembered``) and cost nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from prometheus_client import CollectorRegistry

from exporter.listener import LISTEN_BACKLOG, Listener, listening_socket
from exporter.request import MAX_HEAD, BadRequestError, Request, parse
from exporter.scrape import ScrapeWaitError, SharedScrapes
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

_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()


class _Date:
    """The ``Date`` header, formatted once a second rather than once an answer."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, formatdate(now, usegmt=True)
        return self._text


def render(answer: Answer, *, date: str, head_only: bool, keep_alive: bool) -> bytes:
    """The whole response, status line to body, for one write."""
    lines = [
        f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}",
        "Server: limpeza-exporter",
        f"Date: {date}",
        f"Content-Type: {answer.content_type}",
        f"Content-Length: {len(answer.body)}",
        *(f"{name}: {value}" for name, value in answer.headers),
    ]
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + answer.body


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
        self._date = _Date()
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
            loop, self.socket, self._connection, self.limits.max_connections
        )
        listener.start()
        try:
            await stopping.wait()
        finally:
            await listener.close()

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

    async def _connection(self, sock: socket.socket) -> None:
        """Serves one accepted socket until it closes, idles out or breaks a deadline."""
        loop = asyncio.get_running_loop()
        limits = self.limits
        deadline = loop.time() + limits.header_timeout
        reader = asyncio.StreamReader(limit=MAX_HEAD, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            async with asyncio.timeout_at(deadline):  # the TLS handshake counts in it
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol,
                    sock,
                    ssl=self._tls,
                    ssl_handshake_timeout=limits.header_timeout if self._tls else None,
                    ssl_shutdown_timeout=limits.write_timeout if self._tls else None,
                )
        except (OSError, TimeoutError) as exc:
            log.debug("connection not opened: %s", exc)
            sock.close()
            return
        # Drained means handed to the kernel in full: the write deadline covers it all.
        transport.set_write_buffer_limits(high=0)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            await self._exchange(reader, writer, deadline)
        except asyncio.CancelledError:
            transport.abort()
            raise
        finally:
            assert self._listener is not None
            self._listener.busy(writer)
        writer.close()
        try:
            async with asyncio.timeout(limits.write_timeout):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            transport.abort()

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float
    ) -> None:
        """Requests and answers on one connection, each within its deadlines."""
        loop = asyncio.get_running_loop()
        limits = self.limits
        listener = self._listener
        assert listener is not None
        start = b""
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    head = start + await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                log.debug("a client did not send its request in time")
                return
            except asyncio.IncompleteReadError:
                return  # closed before a whole request
            except asyncio.LimitOverrunError:
                await self._send(writer, Answer(431, b"Request head too large\n"), False)
                return
            try:
                request = parse(head)
            except BadRequestError as exc:
                log.debug("bad request: %s", exc)
                await self._send(writer, Answer(exc.status, f"{exc}\n".encode()), False)
                return
            keep_alive = request.keep_alive
            answer = await self._answer(request)
            if not await self._send(writer, answer, keep_alive, request.method == "HEAD"):
                return
            if not keep_alive:
                return
            # Kept alive: the next request must start within the idle timeout, and while it
            # has not, this connection is the first to go when room is needed.
            listener.idle(writer, writer.transport.abort)
            try:
                async with asyncio.timeout(limits.idle_timeout):
                    start = await reader.read(1)
            except (OSError, TimeoutError):
                return
            finally:
                listener.busy(writer)
            if not start:
                return  # closed by the client, or to make room
            deadline = loop.time() + limits.header_timeout

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        answer: Answer,
        keep_alive: bool,
        head_only: bool = False,
    ) -> bool:
        """Writes an answer within the write deadline; False when the connection is lost."""
        writer.write(render(answer, date=self._date(), head_only=head_only, keep_alive=keep_alive))
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            log.debug("answer not delivered: %s", exc)
            writer.transport.abort()
            return False
        return True

    # ------------------------------------------------------------------ routing

    async def _answer(self, request: Request) -> Answer:
        auth = self.web.basic_auth
        if auth is not None:
            header = request.header("authorization")
            if not auth.remembered(header):
                loop = asyncio.get_running_loop()
                if not await loop.run_in_executor(self._password_checks, auth.check_header, header):
                    return Answer(
                        401,
                        b"Unauthorized\n",
                        headers=(("WWW-Authenticate", 'Basic realm="limpeza-exporter"'),),
                    )
        if request.method not in ("GET", "HEAD"):
            return Answer(405, b"Method Not Allowed\n", headers=(("Allow", "GET, HEAD"),))
        if request.path == "/metrics":
            return await self._metrics(request)
        if request.path == "/":
            return Answer(200, self._landing, "text/html; charset=utf-8")
        return Answer(404, b"Not Found\n")

    async def _metrics(self, request: Request) -> Answer:
        try:
            body = await self.scrapes.body(
                request.header("accept"), request.header("accept-encoding")
            )
        except ScrapeWaitError as exc:
            log.warning("scrape not answered: %s", exc)
            return Answer(503, b"scrape timed out\n")
        except Exception:
            # The collector turns every partial fault into a metric; this is a bug.
            log.exception("scrape failed")
            return Answer(500, b"scrape failed\n")
        headers = [("Vary", "Accept, Accept-Encoding")]
        if body.gzipped:
            headers.append(("Content-Encoding", "gzip"))
        return Answer(200, body.data, body.content_type, tuple(headers))
