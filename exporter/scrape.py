"""The body of one ``/metrics`` answer: the format asked for, gzip when the client accepts it,
and one collection shared by the scrapes that arrive while it runs.

The format is chosen from ``Accept`` by client_python's ``choose_encoder`` (OpenMetrics or
the text format); the body is gzipped when ``Accept-Encoding`` names gzip with a non-zero
weight, as client_python and Go's promhttp do (Prometheus always asks for it).

A collection reads the state file, the job source and statvfs, in a worker thread (the
database has its own deadline there; the event loop never waits on it). When scrapes overlap
(several Prometheus servers, a burst of scrapers), the ones that arrive while a collection
of the same format runs wait for it and answer with its body, already rendered and, when
asked, gzipped: it began at most one collection before they arrived, and they never queue
behind each other's database queries. Every scrape gives up after ``wait`` seconds (the
collection itself goes on and ends at its own deadlines).

The scrapes run in the exporter's event loop, so the flights need no lock.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

#: zlib's default: a 10 kB body shrinks to about a tenth in well under a millisecond.
GZIP_LEVEL = 6


class ScrapeWaitError(TimeoutError):
    """A scrape waited longer than allowed for a collection another scrape started."""


def gzip_accepted(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (``gzip;q=0`` refuses it)."""
    for item in (accept_encoding or "").split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() != "gzip":
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str
    gzipped: bool


class SharedScrapes:
    """Encodes ``registry`` for a scrape; overlapping scrapes of one format share the work."""

    def __init__(self, registry: CollectorRegistry, wait: float, executor: Executor) -> None:
        self._registry = registry
        self._wait = wait
        self._executor = executor
        self._flights: dict[tuple[str, bool], asyncio.Future[Body]] = {}

    def body(self, accept: str | None, accept_encoding: str | None) -> asyncio.Future[Body]:
        """The answer for these request headers, as a future (call it in the event loop).

        It holds the body, or what the collection raised: a scrape that joined a collection
        which failed gets a RuntimeError from that failure, so a bug is logged once, by the
        scrape that started the collection. After ``wait`` seconds it holds ScrapeWaitError.
        Callbacks and a timer, not a task per scrape: a hundred scrapes joining one
        collection cost a hundred callbacks.
        """
        loop = asyncio.get_running_loop()
        encoder, content_type = choose_encoder(accept or "")
        gzipped = gzip_accepted(accept_encoding)
        key = (content_type, gzipped)
        flight = self._flights.get(key)
        leader = flight is None or flight.done()
        if flight is None or flight.done():
            flight = loop.run_in_executor(self._executor, _render, self._registry, encoder, key)
            self._flights[key] = flight
            flight.add_done_callback(functools.partial(self._landed, key))
        answer: asyncio.Future[Body] = loop.create_future()
        timer = loop.call_later(self._wait, _give_up, answer, self._wait)
        flight.add_done_callback(functools.partial(_deliver, answer, timer, leader))
        return answer

    def _landed(self, key: tuple[str, bool], flight: asyncio.Future[Body]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]


def _give_up(answer: asyncio.Future[Body], wait: float) -> None:
    if not answer.done():
        answer.set_exception(
            ScrapeWaitError(f"the collection this scrape joined did not end within {wait:g}s")
        )


def _deliver(
    answer: asyncio.Future[Body],
    timer: asyncio.TimerHandle,
    leader: bool,
    flight: asyncio.Future[Body],
) -> None:
    timer.cancel()
    if flight.cancelled():
        answer.cancel()
        return
    error = flight.exception()
    if answer.done():
        return  # given up, or its connection is gone
    if error is None:
        answer.set_result(flight.result())
    elif leader:
        answer.set_exception(error)
    else:
        joined = RuntimeError("the collection this scrape joined failed")
        joined.__cause__ = error
        answer.set_exception(joined)


def _render(
    registry: CollectorRegistry,
    encoder: Callable[[CollectorRegistry], bytes],
    key: tuple[str, bool],
) -> Body:
    """One collection, encoded (and gzipped when asked): the body every waiter gets."""
    content_type, gzipped = key
    data = encoder(registry)
    if gzipped:
        data = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
    return Body(data, content_type, gzipped)
