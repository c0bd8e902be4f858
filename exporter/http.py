"""The exporter's HTTP server: ``/metrics``, a landing page at ``/``, 404 for anything else.

One thread per connection, optional TLS and basic auth from the exporter-toolkit web config.
The accept loop only accepts; the TLS handshake happens in the connection's thread.

Every wait has a deadline, not a per-read timeout (a client trickling one byte every few
seconds defeats those):

* the TLS handshake and the first request's line and headers: ``header_timeout`` from the
  accept, in total;
* on a kept-alive connection, the next request must start within ``idle_timeout``, and its
  headers must be complete ``header_timeout`` after its first byte;
* writing an answer: ``write_timeout``.

At most ``max_connections`` connections are served at once; further clients wait in the
listen backlog (``LISTEN_BACKLOG``), and when every slot is taken while one waits, the
connection idle the longest is closed to make room. When ``accept`` fails for want of file
descriptors (EMFILE, ENFILE) or memory, the loop backs off (5 ms doubling to 1 s, as Go's
net/http does) instead of spinning, and logs once when it starts and once when it ends.
"""

from __future__ import annotations

import contextlib
import errno
import html
import io
import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from exporter.scrape import ScrapeWaitError, SharedScrapes
from exporter.webconfig import WebConfig

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

log = logging.getLogger(__name__)

#: The listen backlog (the kernel caps it at net.core.somaxconn): a burst of scrapers waits
#: there instead of overflowing it and retrying its SYN after 1 s, then 3 s.
LISTEN_BACKLOG = 1024

#: accept() failures that mean "no resources now": back off, do not spin.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BACKOFF_MIN = 0.005
_BACKOFF_MAX = 1.0


@dataclass(frozen=True)
class Limits:
    """How long a client may take and how many may be served at once."""

    header_timeout: float = 10.0
    idle_timeout: float = 120.0
    write_timeout: float = 30.0
    max_connections: int = 128
    #: How long a scrape waits for a collection another scrape started.
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


class _DeadlineReader(io.RawIOBase):
    """Reads a socket; each read may take only what is left of the handler's deadline."""

    def __init__(self, sock: socket.socket, handler: MetricsHandler) -> None:
        super().__init__()
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        remaining = self._handler.read_deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client did not send its request in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _SocketWriter(io.BufferedIOBase):
    """Writes whole buffers with ``sendall`` (bounded by the socket's timeout, in total)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class MetricsHandler(BaseHTTPRequestHandler):
    server: ExporterServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a kept-alive connection
    # waits for the client's delayed ACK (40 ms) before sending the body.
    disable_nagle_algorithm = True
    server_version = "limpeza-exporter"
    #: When the current wait for the client ends (time.monotonic()).
    read_deadline: float

    def setup(self) -> None:
        limits = self.server.limits
        self.read_deadline = time.monotonic() + limits.header_timeout
        self.connection = self.server.secure(self.request, self.read_deadline)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self._reader = io.BufferedReader(_DeadlineReader(self.connection, self))
        self.rfile = self._reader
        self.wfile = _SocketWriter(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.connection is not self.request:  # the TLS socket
                self.connection.close()

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection and self._next_request_started():
            self.handle_one_request()

    def _next_request_started(self) -> bool:
        """Waits up to ``idle_timeout`` for the next request on a kept-alive connection."""
        self.read_deadline = time.monotonic() + self.server.limits.idle_timeout
        self.server.set_idle(self.connection, idle=True)
        try:
            started = bool(self._reader.peek(1))
        except OSError:  # the idle timeout, a reset, or closed to make room
            started = False
        finally:
            self.server.set_idle(self.connection, idle=False)
        self.read_deadline = time.monotonic() + self.server.limits.header_timeout
        return started

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        if self.headers.get("Content-Length", "0").strip() != "0" or self.headers.get(
            "Transfer-Encoding"
        ):
            self.close_connection = True  # a body nobody reads: do not parse it as a request
        auth = self.server.web.basic_auth
        if auth is not None and not auth.check_header(self.headers.get("Authorization")):
            self._reply(
                401,
                b"Unauthorized\n",
                "text/plain; charset=utf-8",
                head=head,
                extra={"WWW-Authenticate": 'Basic realm="limpeza-exporter"'},
            )
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics(head=head)
        elif path == "/":
            page = LANDING_PAGE.format(
                version=f" (version {html.escape(self.server.version)})"
                if self.server.version
                else "",
                metrics="/metrics",
            )
            self._reply(200, page.encode("utf-8"), "text/html; charset=utf-8", head=head)
        else:
            self._reply(404, b"Not Found\n", "text/plain; charset=utf-8", head=head)

    def _metrics(self, *, head: bool) -> None:
        try:
            body = self.server.scrapes.body(
                self.headers.get("Accept"), self.headers.get("Accept-Encoding")
            )
        except ScrapeWaitError as exc:
            log.warning("scrape not answered: %s", exc)
            self._reply(503, b"scrape timed out\n", "text/plain; charset=utf-8", head=head)
            return
        except Exception:
            # The collector turns every partial fault into a metric; this is a bug.
            log.exception("scrape failed")
            self._reply(500, b"scrape failed\n", "text/plain; charset=utf-8", head=head)
            return
        extra = {"Vary": "Accept, Accept-Encoding"}
        if body.gzipped:
            extra["Content-Encoding"] = "gzip"
        self._reply(200, body.data, body.content_type, head=head, extra=extra)

    def _reply(
        self,
        code: int,
        body: bytes,
        content_type: str,
        *,
        head: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.connection.settimeout(self.server.limits.write_timeout)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("client %s: %s", self.address_string(), format % args)


class ExporterServer(HTTPServer):
    """Serves one registry on one address, each connection in its own thread, bounded."""

    request_queue_size = LISTEN_BACKLOG
    allow_reuse_address = True

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
        self.scrapes = SharedScrapes(registry, self.limits.scrape_wait)
        self._tls = self.web.tls.context() if self.web.tls is not None else None
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._idle: dict[socket.socket, None] = {}
        self._idle_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._starved_since: float | None = None
        self._starved_tries = 0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, MetricsHandler)
        self.socket.setblocking(False)

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    # ------------------------------------------------------------------ the accept loop

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accepts connections until ``shutdown()``; each one is served in its own thread."""
        self._stop.clear()
        self._stopped.clear()
        backoff = 0.0
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ)
                while not self._stop.is_set():
                    if not self._slots.acquire(timeout=min(poll_interval, 0.1)):
                        self._make_room(selector)
                        continue
                    accepted = None
                    try:
                        if selector.select(poll_interval):
                            accepted, backoff = self._accept(backoff)
                        if accepted is not None:
                            self._start(*accepted)
                    finally:
                        if accepted is None:
                            self._slots.release()
        finally:
            self._stopped.set()

    def _accept(self, backoff: float) -> tuple[tuple[socket.socket, Any] | None, float]:
        try:
            accepted = self.socket.accept()
        except (BlockingIOError, InterruptedError):
            return None, backoff
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                log.debug("accept failed: %s", exc)  # a client that gave up meanwhile
                return None, backoff
            backoff = min(max(backoff * 2, _BACKOFF_MIN), _BACKOFF_MAX)
            if self._starved_since is None:
                self._starved_since = time.monotonic()
                log.warning(
                    "cannot accept connections: %s; retrying every %g s at most until "
                    "resources are free (clients wait in the listen backlog)",
                    exc.strerror or exc,
                    _BACKOFF_MAX,
                )
            self._starved_tries += 1
            self._stop.wait(backoff)
            return None, backoff
        if self._starved_since is not None:
            log.info(
                "accepting connections again after %.1f s (%d accept attempts failed)",
                time.monotonic() - self._starved_since,
                self._starved_tries,
            )
            self._starved_since, self._starved_tries = None, 0
        return accepted, 0.0

    def _start(self, conn: socket.socket, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(conn, client_address),
            name=f"client {client_address[0]}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: like running out of descriptors
            conn.close()
            self._slots.release()
            log.warning("cannot start a thread for a connection: %s", exc)
            self._stop.wait(_BACKOFF_MAX)

    def _serve_connection(self, conn: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(conn, client_address)
        except Exception:
            self.handle_error(conn, client_address)
        finally:
            self.shutdown_request(conn)
            self._slots.release()

    def _make_room(self, selector: selectors.BaseSelector) -> None:
        """Every slot is taken: if a client waits, close the connection idle the longest."""
        if not selector.select(0):
            return
        with self._idle_lock:  # held until shut down, so the socket cannot close meanwhile
            if not self._idle:
                return
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also under TLS: it only wakes the reader.
                socket.socket.shutdown(oldest, socket.SHUT_RDWR)

    def set_idle(self, conn: socket.socket, *, idle: bool) -> None:
        """Marks a kept-alive connection as waiting for its next request, or not any more."""
        with self._idle_lock:
            if idle:
                self._idle[conn] = None
            else:
                self._idle.pop(conn, None)

    def shutdown(self) -> None:
        """Stops the accept loop (within its poll interval) and waits until it returned."""
        self._stop.set()
        self._stopped.wait()

    # ------------------------------------------------------------------ connections

    def secure(self, conn: socket.socket, deadline: float) -> socket.socket:
        """The TLS handshake, done by ``deadline`` in total, or ``conn`` itself without TLS."""
        if self._tls is None:
            return conn
        tls = self._tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no time left for the TLS handshake")
            tls.settimeout(remaining)  # one deadline for the whole handshake, not per read
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        return tls

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)
