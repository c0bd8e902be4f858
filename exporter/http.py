"""The exporter's HTTP server: ``/metrics``, a landing page at ``/``, 404 for anything else.

One thread per connection (a slow or silent client holds only its own thread, and only
until the socket timeout), optional TLS and basic auth from the exporter-toolkit web config.
The TLS handshake happens in the connection's thread, never in the accept loop.
"""

from __future__ import annotations

import html
import logging
import socket
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

#: Seconds a connection may stay silent (handshake, request line, headers) before it is closed.
CLIENT_TIMEOUT = 30.0

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


class MetricsHandler(BaseHTTPRequestHandler):
    server: ExporterServer
    timeout = CLIENT_TIMEOUT
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a kept-alive connection
    # waits for the client's delayed ACK (40 ms) before sending the body.
    disable_nagle_algorithm = True
    server_version = "limpeza-exporter"

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
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
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encoder(self.server.registry)
            except Exception:
                # The collector turns every partial fault into a metric; this is a bug.
                log.exception("scrape failed")
                self._reply(500, b"scrape failed\n", "text/plain; charset=utf-8", head=head)
                return
            self._reply(200, body, content_type, head=head)
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

    def _reply(
        self,
        code: int,
        body: bytes,
        content_type: str,
        *,
        head: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("client %s: %s", self.address_string(), format % args)


class ExporterServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one address, serving one registry."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        web: WebConfig | None = None,
        *,
        version: str = "",
    ) -> None:
        self.registry = registry
        self.web = web or WebConfig()
        self.version = version
        self._tls = self.web.tls.context() if self.web.tls is not None else None
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, MetricsHandler)

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: the TLS handshake, then the request."""
        if self._tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(CLIENT_TIMEOUT)
        try:
            tls_request = self._tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(tls_request, client_address)
        finally:
            tls_request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)
