"""The API's health endpoint: is it up, and how many jobs does it say are active.

The API answers ``GET /health`` with ``{"status": "healthy", "jobs_active": 9}``. The
cleaner asks once per cycle and returns the answer (the daemon keeps it in the state for the
exporter); an unreachable API is logged once per change of state, not every cycle.

The whole exchange (name lookup, connect, TLS, request, headers, body) has one deadline,
``jobs.health_timeout``: before each read the socket's timeout is set to what is left of it,
so a peer that sends one byte just before each read would time out is still cut at the
deadline, and a cycle (and SIGTERM with it) waits for the API at most that long. The body is
read in pieces and refused past ``MAX_BODY`` (1 MiB) without reading the rest. A bad answer
says why in one line: ``timed out after 2s``, ``HTTP 503``, ``the answer is over 1 MiB``,
``the answer is not JSON``, ``no jobs_active count in the answer``...
"""

from __future__ import annotations

import base64
import http.client
import io
import ipaddress
import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlsplit

from cleaner.dsn import mask_url

log = logging.getLogger(__name__)

#: The largest answer read; a longer one is refused unread past this.
MAX_BODY = 1024 * 1024
_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class HealthResult:
    """One answer of the health endpoint (or why there was none)."""

    up: bool
    jobs_active: int | None = None
    status: str | None = None
    error: str | None = None
    #: When the answer came (epoch seconds); None for a one-off check.
    checked_at: float | None = None


class _Deadline:
    """A point in monotonic time; ``left()`` raises TimeoutError once it has passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        remaining = self._end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        return remaining


class _DeadlineReader(io.RawIOBase):
    """A socket read with its timeout set to what is left of the deadline before each read."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._sock.recv_into(buffer)


class _DeadlineSocket:
    """What http.client uses of a socket, every operation under the deadline.

    ``close`` leaves the socket open: http.client closes its side as soon as it knows the
    server will close, while the body is still to be read; ``check_health`` closes the
    socket itself at the end.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.left())
        self._sock.sendall(data)

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        pass


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection on a socket opened under the deadline."""

    def __init__(self, sock: socket.socket, host: str, port: int, deadline: _Deadline) -> None:
        super().__init__(host, port, timeout=deadline.seconds)
        self.sock = _DeadlineSocket(sock, deadline)

    def connect(self) -> None:  # the socket is already connected
        pass


class _BodyTooLargeError(Exception):
    pass


def check_health(url: str, timeout: float) -> HealthResult:
    """GETs ``url`` within ``timeout`` seconds in all; up means a 2xx answer.

    ``jobs_active`` is read when the answer is a JSON object with a count.
    """
    deadline = _Deadline(timeout)
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    except ValueError:
        return HealthResult(up=False, error="the health URL is not a valid URL")
    if scheme not in ("http", "https") or not host:
        return HealthResult(up=False, error="the health URL is not an http(s) URL")
    port = port or (443 if scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Accept": "application/json", "Connection": "close"}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    sock: socket.socket | None = None
    try:
        sock = _open(host, port, scheme == "https", deadline)
        connection = _Connection(sock, host, port, deadline)
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        if not 200 <= response.status < 300:
            return HealthResult(up=False, error=f"HTTP {response.status}")
        body = _read_body(response, deadline)
    except _BodyTooLargeError:
        return HealthResult(up=True, error=f"the answer is over {MAX_BODY // 1024 // 1024} MiB")
    except (OSError, http.client.HTTPException) as exc:
        return HealthResult(up=False, error=_describe(exc, timeout, host))
    finally:
        if sock is not None:
            sock.close()
    return _judge(body)


def _open(host: str, port: int, tls: bool, deadline: _Deadline) -> socket.socket:
    """A connected socket (TLS done when ``tls``), all within the deadline."""
    error: OSError | None = None
    for family, kind, proto, _name, address in _resolve(host, port, deadline):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(address)
            if tls:
                return _handshake(sock, host, deadline)
            return sock
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise
            error = exc
    raise error or OSError(f"no address for {host}")


def _resolve(host: str, port: int, deadline: _Deadline) -> list[Any]:
    """getaddrinfo, given up at the deadline (a name lookup has no timeout of its own)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[Any] = []
    failed: list[OSError] = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            failed.append(exc)

    # A lookup that outlives the deadline ends on its own in the background.
    thread = threading.Thread(target=lookup, name="health-lookup", daemon=True)
    thread.start()
    thread.join(deadline.left())
    if thread.is_alive():
        raise TimeoutError("name lookup")
    if failed:
        raise failed[0]
    return found


def _handshake(sock: socket.socket, host: str, deadline: _Deadline) -> socket.socket:
    """The TLS handshake, stepped without blocking so that the deadline holds for all of it."""
    context = ssl.create_default_context()
    tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    tls.setblocking(False)
    while True:
        try:
            tls.do_handshake()
            return tls
        except ssl.SSLWantReadError:
            ready = select.select([tls], [], [], deadline.left())[0]
        except ssl.SSLWantWriteError:
            ready = select.select([], [tls], [], deadline.left())[1]
        if not ready:
            raise TimeoutError("TLS handshake")


def _read_body(response: http.client.HTTPResponse, deadline: _Deadline) -> bytes:
    """The body, read in pieces within the deadline; refused past ``MAX_BODY``."""
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY:
        raise _BodyTooLargeError
    body = bytearray()
    while True:
        deadline.left()
        piece = response.read(min(_READ_SIZE, MAX_BODY + 1 - len(body)))
        if not piece:
            return bytes(body)
        body += piece
        if len(body) > MAX_BODY:
            raise _BodyTooLargeError


def _judge(body: bytes) -> HealthResult:
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return HealthResult(up=True, error="the answer is not JSON")
    if not isinstance(answer, dict):
        return HealthResult(up=True, error="the answer is not a JSON object")
    raw = answer.get("jobs_active")
    active = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None
    status = answer.get("status")
    return HealthResult(
        up=True,
        jobs_active=active,
        status=status if isinstance(status, str) else None,
        error=None if active is not None else "no jobs_active count in the answer",
    )


def _describe(exc: OSError | http.client.HTTPException, timeout: float, host: str) -> str:
    """Why there was no answer, in one line."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate refused: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or type(exc).__name__}"
    if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
        return "the API closed the connection before answering"
    if isinstance(exc, http.client.IncompleteRead):
        return "the answer ended before its announced length"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__})"
    text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    return f"connection failed: {text}"


class HealthMonitor:
    """Checks the endpoint each cycle and returns the answer; logs changes only.

    Log lines show the URL with its user info masked (``http://***@host/health``).
    """

    def __init__(
        self,
        url: str,
        timeout: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.shown_url = mask_url(url)
        self.timeout = timeout
        self._clock = clock
        self._was_up: bool | None = None

    def check(self) -> HealthResult:
        result = replace(check_health(self.url, self.timeout), checked_at=self._clock())
        if not result.up:
            if self._was_up is not False:
                log.warning("API health %s unreachable: %s", self.shown_url, result.error)
        elif self._was_up is False:
            log.info(
                "API health %s reachable again: %s jobs active",
                self.shown_url,
                result.jobs_active,
            )
        elif self._was_up is None:
            log.info("API health %s: %s jobs active", self.shown_url, result.jobs_active)
        else:
            log.debug("API health %s: %s jobs active", self.shown_url, result.jobs_active)
        self._was_up = result.up
        return result

    def close(self) -> None:
        """Nothing is kept open between checks; kept for the reaper's shutdown."""
