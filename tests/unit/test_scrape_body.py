"""The body of a /metrics answer: gzip negotiation and collections shared by overlapping scrapes."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.scrape import Body, ScrapeWaitError, SharedScrapes, gzip_accepted


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (None, False),
        ("", False),
        ("identity", False),
        ("gzip", True),
        ("GZip", True),
        ("deflate, gzip", True),
        ("gzip;q=0.5, identity", True),
        ("gzip; q=1.0", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("gzip;q=x", False),
        ("x-gzip", False),
        ("br, zstd", False),
    ],
)
def test_gzip_is_used_when_the_client_accepts_it(header: str | None, accepted: bool) -> None:
    assert gzip_accepted(header) is accepted


class SlowCollector(Collector):
    """Counts its collections; each one takes ``seconds`` (or waits for ``release``)."""

    def __init__(self, seconds: float, release: threading.Event | None = None) -> None:
        self.seconds = seconds
        self.release = release
        self.collections = 0
        self.lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            self.collections += 1
            number = self.collections
        if self.release is not None:
            self.release.wait(10)
        time.sleep(self.seconds)
        yield GaugeMetricFamily("collection_number", "Which collection this is.", value=number)


def _registry(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def test_overlapping_scrapes_share_one_collection(pool: ThreadPoolExecutor) -> None:
    release = threading.Event()
    collector = SlowCollector(0.0, release)
    scrapes = SharedScrapes(_registry(collector), wait=10, executor=pool)

    async def scenario() -> tuple[list[bytes], int, bytes]:
        tasks = [scrapes.body(None, None) for _ in range(20)]
        await asyncio.sleep(0.3)  # every scrape has arrived while the first collection waits
        release.set()
        bodies = [body.data for body in await asyncio.gather(*tasks)]
        collections = collector.collections
        # A scrape after the shared one collects afresh.
        return bodies, collections, (await scrapes.body(None, None)).data

    bodies, collections, later = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert len(bodies) == 20
    assert collections == 1
    assert all(b"collection_number 1.0" in body for body in bodies)
    assert b"collection_number 2.0" in later


def test_each_format_has_its_own_collection_and_gzip_is_done_once(
    pool: ThreadPoolExecutor,
) -> None:
    scrapes = SharedScrapes(_registry(SlowCollector(0.0)), wait=10, executor=pool)

    async def scenario() -> list[Body]:
        return [
            await scrapes.body("text/plain", None),
            await scrapes.body("text/plain", "gzip"),
            await scrapes.body("application/openmetrics-text; version=1.0.0", "identity"),
        ]

    plain, zipped, open_metrics = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert not plain.gzipped and zipped.gzipped and not open_metrics.gzipped
    assert b"collection_number 2.0" in gzip.decompress(zipped.data)
    assert open_metrics.content_type.startswith("application/openmetrics-text")
    assert open_metrics.data.endswith(b"# EOF\n")


def test_a_waiting_scrape_gives_up_at_its_deadline(pool: ThreadPoolExecutor) -> None:
    release = threading.Event()
    scrapes = SharedScrapes(_registry(SlowCollector(0.0, release)), wait=0.2, executor=pool)

    async def scenario() -> float:
        leader = scrapes.body(None, None)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        try:
            with pytest.raises(ScrapeWaitError):
                await scrapes.body(None, None)
            with pytest.raises(ScrapeWaitError):
                await leader  # the one that started it has the same bound
            return time.monotonic() - started
        finally:
            release.set()

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) < 1.0


def test_the_event_loop_goes_on_while_a_collection_runs(pool: ThreadPoolExecutor) -> None:
    """The collection waits in a worker thread: other work in the loop is not held up."""
    release = threading.Event()
    scrapes = SharedScrapes(_registry(SlowCollector(0.0, release)), wait=10, executor=pool)

    async def scenario() -> float:
        scrape = scrapes.body(None, None)
        started = time.monotonic()
        await asyncio.sleep(0.05)
        ticked = time.monotonic() - started
        release.set()
        await scrape
        return ticked

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) < 1.0


def test_a_failed_collection_fails_its_waiters_too(pool: ThreadPoolExecutor) -> None:
    class Broken(Collector):
        def collect(self) -> Iterator[Metric]:
            time.sleep(0.2)
            raise ValueError("a bug")
            yield  # pragma: no cover

    scrapes = SharedScrapes(_registry(Broken()), wait=5, executor=pool)

    async def scenario() -> list[BaseException | Body]:
        return await asyncio.gather(
            *(scrapes.body(None, None) for _ in range(3)), return_exceptions=True
        )

    errors = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert all(isinstance(e, Exception) for e in errors)
    # The one that started the collection raises the bug itself, the others say they joined.
    assert sum(isinstance(e, ValueError) for e in errors) == 1
    assert sum(isinstance(e, RuntimeError) for e in errors) == 2
