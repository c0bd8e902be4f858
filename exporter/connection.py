"""One client connection as an asyncio protocol: read a head, answer it, keep alive or close.

Callbacks, not a task per connection: under a hundred concurrent scrapers on new
connections, asyncio's streams (a reader, a writer, a task, a timeout context per wait)
cost about as much CPU per connection as the thread per connection they replaced. Here a
connection is its transport, this object and one timer, and a task exists only while an
answer has to wait (a collection, a bcrypt check).

Every wait has a deadline, not a per-read timeout (a client trickling one byte every few
seconds defeats those), and one timer holds the current one:

* the TLS handshake and the first request's head: ``header_timeout`` from the accept, in
  total (the handshake's share is enforced where the connection is opened);
* on a kept-alive connection, the next request must start within ``idle_timeout``, and its
  head must be complete ``header_timeout`` after its first byte;
* writing an answer: ``write_timeout`` until the kernel took the last byte (the write buffer
  limit is 0, so the transport says when that is).

A kept-alive connection that waits for its next request tells the listener so (``idle``):
it is the first to be closed when room is needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from exporter.request import MAX_HEAD, BadRequestError, Request, parse
from exporter.response import Answer, render

log = logging.getLogger(__name__)

#: The answer to a request, or what will hold it (a future, or a coroutine run as a task).
Respond = Callable[[Request], "Answer | Awaitable[Answer]"]


class Idleness(Protocol):
    """Where a connection says it waits for its next request (see ``Listener``)."""

    def idle(self, key: object, close: Callable[[], None]) -> None: ...

    def busy(self, key: object) -> None: ...


class Timing(Protocol):
    @property
    def header_timeout(self) -> float: ...

    @property
    def idle_timeout(self) -> float: ...

    @property
    def write_timeout(self) -> float: ...


class Connection(asyncio.Protocol):
    """Serves requests on one transport until it closes, idles out or misses a deadline."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limits: Timing,
        respond: Respond,
        date: Callable[[], str],
        idleness: Idleness,
        done: Callable[[Connection], None],
        deadline: float,
    ) -> None:
        self._loop = loop
        self._limits = limits
        self._respond = respond
        self._date = date
        self._idleness = idleness
        self._done = done
        self._deadline = deadline
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._buffer = bytearray()
        #: head (reading one), answer (answering one), idle (between two), closed.
        self._state = "head"
        self._keep_alive = False
        self._writing = False
        self._eof = False
        self._pending: asyncio.Future[Answer] | None = None
        self._ended = False
        #: The task opening the transport (a TLS handshake), held until it is done.
        self.opening: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the transport's calls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        # Drained means handed to the kernel in full: resume_writing() says when.
        transport.set_write_buffer_limits(high=0)
        self._arm_at(self._deadline, "did not send its request in time")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._state == "idle":
            self._idleness.busy(self)
            self._state = "head"
            self._arm(self._limits.header_timeout, "did not send its request in time")
        if self._state == "head":
            self._next_request()
        elif len(self._buffer) > MAX_HEAD and self._transport is not None:
            self._transport.pause_reading()  # pipelined faster than answered: wait

    def eof_received(self) -> bool:
        self._eof = True
        self._keep_alive = False
        # Half closed while its answer is being made: keep the transport to write it (not
        # possible under TLS, whose transport closes whatever this returns).
        tls = self._transport is not None and self._transport.get_extra_info("sslcontext")
        return self._state == "answer" and not tls

    def pause_writing(self) -> None:
        pass  # _send() looks at the buffer itself (TLS pauses during its handshake too)

    def resume_writing(self) -> None:
        if self._writing:  # an answer was waiting to be taken in full
            self._writing = False
            self._written()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = "closed"
        self._disarm()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._idleness.busy(self)
        self._end()

    def abandon(self) -> None:
        """The connection could not be opened (handshake failed or late): free its slot."""
        if self._transport is None:
            self._state = "closed"
            self._disarm()
            self._end()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._done(self)

    # ------------------------------------------------------------------ requests and answers

    def _next_request(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._state = "answer"
                self._send(Answer(431, b"Request head too large\n"), keep_alive=False)
            return
        head = bytes(self._buffer[: end + 4])
        del self._buffer[: end + 4]
        self._disarm()
        self._state = "answer"
        try:
            request = parse(head)
        except BadRequestError as exc:
            log.debug("bad request: %s", exc)
            self._send(Answer(exc.status, f"{exc}\n".encode()), keep_alive=False)
            return
        keep_alive = request.keep_alive and not self._eof
        head_only = request.method == "HEAD"
        answer = self._respond(request)
        if isinstance(answer, Answer):
            self._send(answer, keep_alive=keep_alive, head_only=head_only)
            return
        self._pending = asyncio.ensure_future(answer, loop=self._loop)
        self._pending.add_done_callback(
            lambda task: self._answered(task, keep_alive=keep_alive, head_only=head_only)
        )

    def _answered(self, task: asyncio.Future[Answer], *, keep_alive: bool, head_only: bool) -> None:
        if task is not self._pending:
            return  # the connection was lost meanwhile
        self._pending = None
        if task.cancelled() or task.exception() is not None:
            log.debug("no answer made", exc_info=None if task.cancelled() else task.exception())
            self.abort()
            return
        self._send(task.result(), keep_alive=keep_alive and not self._eof, head_only=head_only)

    def _send(self, answer: Answer, *, keep_alive: bool, head_only: bool = False) -> None:
        transport = self._transport
        assert transport is not None
        self._keep_alive = keep_alive
        transport.write(
            render(answer, date=self._date(), head_only=head_only, keep_alive=keep_alive)
        )
        if transport.get_write_buffer_size() == 0:
            self._writing = False
            self._written()
        else:
            self._writing = True
            self._arm(self._limits.write_timeout, "did not take its answer in time")

    def _written(self) -> None:
        transport = self._transport
        if transport is None or self._state == "closed":
            return
        self._disarm()
        if not self._keep_alive:
            self._state = "closed"
            transport.close()  # the buffer is empty: closed at once (TLS: close_notify)
            return
        self._state = "idle"
        self._arm(self._limits.idle_timeout, "idle for too long")
        self._idleness.idle(self, transport.abort)
        transport.resume_reading()
        if self._buffer:  # the next request arrived with the last one
            self.data_received(b"")

    # ------------------------------------------------------------------ the deadline

    def _arm(self, seconds: float, why: str) -> None:
        self._arm_at(self._loop.time() + seconds, why)

    def _arm_at(self, when: float, why: str) -> None:
        self._disarm()
        self._timer = self._loop.call_at(when, self._expired, why)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, why: str) -> None:
        self._timer = None
        log.debug("closing a connection: the client %s", why)
        self.abort()
