"""The body of one ``/metrics`` answer: the format asked for, gzip when the client accepts it,
and one collection shared by the scrapes that arrive while it runs.

The format is chosen from ``Accept`` by client_python's ``choose_encoder`` (OpenMetrics or
the text format); the body is gzipped when ``Accept-Encoding`` names gzip with a non-zero
weight, as client_python and Go's promhttp do (Prometheus always asks for it).

A collection reads the state file, the job source and statvfs. When scrapes overlap (several
Prometheus servers, a burst of scrapers), the ones that arrive while a collection of the
same format runs wait for it and answer with its body: it began at most one collection
before they arrived, and they never queue behind each other's database queries. A waiter
gives up after ``wait`` seconds (the collection's own deadlines are the collector's).
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field

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


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    body: Body | None = None
    error: BaseException | None = None


class SharedScrapes:
    """Encodes ``registry`` for a scrape; overlapping scrapes of one format share the work."""

    def __init__(self, registry: CollectorRegistry, wait: float) -> None:
        self._registry = registry
        self._wait = wait
        self._lock = threading.Lock()
        self._flights: dict[tuple[str, bool], _Flight] = {}

    def body(self, accept: str | None, accept_encoding: str | None) -> Body:
        """The answer for these request headers; raises what the collection raised."""
        encoder, content_type = choose_encoder(accept or "")
        gzipped = gzip_accepted(accept_encoding)
        key = (content_type, gzipped)
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            return self._follow(flight)
        try:
            data = encoder(self._registry)
            if gzipped:
                data = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
            flight.body = Body(data, content_type, gzipped)
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.body

    def _follow(self, flight: _Flight) -> Body:
        if not flight.done.wait(self._wait):
            raise ScrapeWaitError(
                f"the collection this scrape joined did not end within {self._wait:g}s"
            )
        if flight.body is None:
            raise RuntimeError("the collection this scrape joined failed") from flight.error
        return flight.body
