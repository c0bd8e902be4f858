"""The accept loop: a bounded number of connections, room made from idle ones, back-off.

It runs in the exporter's event loop and only accepts; each accepted socket goes to the
``serve`` callable it was given, with the ``release`` to call once that connection ended
(its slot is taken until then).

* At most ``max_connections`` connections are served at once. When every slot is taken, the
  listening socket is no longer watched and further clients wait in the listen backlog
  (``LISTEN_BACKLOG``), not in the exporter's memory or descriptors.
* When every slot is taken and a client waits, the connection idle the longest (a
  kept-alive one waiting for its next request, see ``idle()``) is closed to make room.
* When ``accept`` fails for want of file descriptors (EMFILE, ENFILE) or memory, the loop
  backs off (5 ms doubling to 1 s, as Go's net/http does) instead of spinning, and logs once
  when it starts and once when it ends (when every waiting client has been accepted).

Watching the socket again is driven by events (a slot freed, a connection turned idle), so
a full server spends no CPU polling.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The listen backlog (the kernel caps it at net.core.somaxconn): a burst of scrapers waits
#: there instead of overflowing it and retrying its SYN after 1 s, then 3 s.
LISTEN_BACKLOG = 1024

#: accept() failures that mean "no resources now": back off, do not spin.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BACKOFF_MIN = 0.005
_BACKOFF_MAX = 1.0


def listening_socket(address: tuple[str, int]) -> socket.socket:
    """A non-blocking socket listening on ``address``; raises OSError (address in use...)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


Serve = Callable[[socket.socket, Callable[[], None]], None]


class Listener:
    """Accepts on ``sock`` in ``loop`` and serves each connection with ``serve``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        serve: Serve,
        max_connections: int,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._serve = serve
        self._max = max_connections
        self._active = 0
        #: Kept-alive connections waiting for their next request, the longest idle first;
        #: each maps to what closes it.
        self._idle: dict[object, Callable[[], None]] = {}
        self._watching = False
        self._closed = False
        self._backoff = 0.0
        self._retry: asyncio.TimerHandle | None = None
        self._starved_since: float | None = None
        self._starved_tries = 0

    def start(self) -> None:
        self._watch()

    @property
    def connections(self) -> int:
        return self._active

    # ------------------------------------------------------------------ watching the socket

    def _watch(self) -> None:
        if not self._watching and not self._closed and self._retry is None:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._sock.fileno())
            self._watching = False

    def _on_readable(self) -> None:
        """Clients wait: accept as many as there are free slots (one wakeup, many accepts)."""
        if self._active >= self._max:
            # Every slot is taken and a client waits: stop watching until a slot frees, and
            # free one now if a kept-alive connection only waits for its next request.
            self._unwatch()
            if self._idle:
                oldest = next(iter(self._idle))
                self._idle.pop(oldest)()
            return
        while self._active < self._max:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                self._caught_up()
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._starve(exc)
                    return
                log.debug("accept failed: %s", exc)  # a client that gave up meanwhile
                continue
            self._backoff = 0.0
            self._spawn(conn)

    def _spawn(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self._active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._active -= 1
                self._watch()

        try:
            self._serve(conn, release)
        except Exception:
            log.exception("cannot serve a connection")
            conn.close()
            release()

    # ------------------------------------------------------------------ idle connections

    def idle(self, key: object, close: Callable[[], None]) -> None:
        """``key`` waits for its next request; ``close`` ends it if room must be made."""
        self._idle[key] = close
        if self._active >= self._max:
            self._watch()  # a client may be waiting for this room already

    def busy(self, key: object) -> None:
        """``key`` is no longer idle (its next request started, or it ended)."""
        self._idle.pop(key, None)

    # ------------------------------------------------------------------ out of resources

    def _starve(self, exc: OSError) -> None:
        self._unwatch()
        self._backoff = min(max(self._backoff * 2, _BACKOFF_MIN), _BACKOFF_MAX)
        if self._starved_since is None:
            self._starved_since = time.monotonic()
            log.warning(
                "cannot accept connections: %s; retrying every %g s at most until "
                "resources are free (clients wait in the listen backlog)",
                exc.strerror or exc,
                _BACKOFF_MAX,
            )
        self._starved_tries += 1
        self._retry = self._loop.call_later(self._backoff, self._retry_accept)

    def _retry_accept(self) -> None:
        self._retry = None
        self._watch()

    def _caught_up(self) -> None:
        """No client waits any more: a shortage, if there was one, is over.

        Not at the first accept that works again: clients that gave up while the exporter was
        short still wait in the backlog, a batch of them takes the descriptors just freed,
        and the next accept fails again. One shortage, one warning, one recovery line.
        """
        if self._starved_since is not None:
            log.info(
                "accepting connections again after %.1f s (%d accept attempts failed)",
                time.monotonic() - self._starved_since,
                self._starved_tries,
            )
            self._starved_since, self._starved_tries = None, 0

    # ------------------------------------------------------------------ the end

    def close(self) -> None:
        """Stops accepting (the connections being served are their owner's to end)."""
        self._closed = True
        self._unwatch()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
