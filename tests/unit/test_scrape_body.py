"""The body of a /metrics answer: gzip negotiation and collections shared by overlapping scrapes."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.scrape import ScrapeWaitError, SharedScrapes, gzip_accepted


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


def test_overlapping_scrapes_share_one_collection() -> None:
    release = threading.Event()
    collector = SlowCollector(0.0, release)
    scrapes = SharedScrapes(_registry(collector), wait=10)
    bodies: list[bytes] = []
    lock = threading.Lock()

    def scrape() -> None:
        data = scrapes.body(None, None).data
        with lock:
            bodies.append(data)

    threads = [threading.Thread(target=scrape) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # every scrape has arrived while the first collection waits
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(bodies) == 20
    assert collector.collections == 1
    assert all(b"collection_number 1.0" in body for body in bodies)
    # A scrape after the shared one collects afresh.
    assert b"collection_number 2.0" in scrapes.body(None, None).data


def test_each_format_has_its_own_collection_and_gzip_is_done_once() -> None:
    scrapes = SharedScrapes(_registry(SlowCollector(0.0)), wait=10)
    plain = scrapes.body("text/plain", None)
    zipped = scrapes.body("text/plain", "gzip")
    open_metrics = scrapes.body("application/openmetrics-text; version=1.0.0", "identity")
    assert not plain.gzipped and zipped.gzipped and not open_metrics.gzipped
    assert b"collection_number 2.0" in gzip.decompress(zipped.data)
    assert open_metrics.content_type.startswith("application/openmetrics-text")
    assert open_metrics.data.endswith(b"# EOF\n")


def test_a_waiting_scrape_gives_up_at_its_deadline() -> None:
    release = threading.Event()
    scrapes = SharedScrapes(_registry(SlowCollector(0.0, release)), wait=0.2)
    leader = threading.Thread(target=scrapes.body, args=(None, None))
    leader.start()
    time.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(ScrapeWaitError):
        scrapes.body(None, None)
    assert time.monotonic() - started < 1.0
    release.set()
    leader.join(10)


def test_a_failed_collection_fails_its_waiters_too() -> None:
    class Broken(Collector):
        def collect(self) -> Iterator[Metric]:
            time.sleep(0.2)
            raise ValueError("a bug")
            yield  # pragma: no cover

    scrapes = SharedScrapes(_registry(Broken()), wait=5)
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            scrapes.body(None, None)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=scrape) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 3
    assert sum(isinstance(e, ValueError) for e in errors) == 1
