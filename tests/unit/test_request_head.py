"""A request head parsed from bytes: what is answered, refused, and kept alive."""

from __future__ import annotations

import pytest

from exporter.request import MAX_HEAD, MAX_HEADERS, BadRequestError, parse


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_a_scrape_is_parsed() -> None:
    request = parse(
        head(
            "GET /metrics?x=1 HTTP/1.1",
            "Host: 127.0.0.1",
            "Accept-Encoding:  gzip ",
            "ACCEPT: text/plain",
            "Accept: application/json",
        )
    )
    assert (request.method, request.path, request.version) == ("GET", "/metrics", "HTTP/1.1")
    assert request.header("accept-encoding") == "gzip"
    assert request.header("accept") == "text/plain"  # the first of a repeated header
    assert request.header("authorization") is None
    assert request.keep_alive


@pytest.mark.parametrize(
    ("lines", "keep_alive"),
    [
        (["GET / HTTP/1.1"], True),
        (["GET / HTTP/1.1", "Connection: close"], False),
        (["GET / HTTP/1.1", "Connection: Keep-Alive, Close"], False),
        (["GET / HTTP/1.0"], False),
        (["GET / HTTP/1.0", "Connection: keep-alive"], False),
        # A body nobody reads must not be taken for the next request.
        (["GET / HTTP/1.1", "Content-Length: 5"], False),
        (["GET / HTTP/1.1", "Content-Length: 0"], True),
        (["POST / HTTP/1.1", "Transfer-Encoding: chunked"], False),
    ],
)
def test_when_a_connection_is_kept_alive(lines: list[str], keep_alive: bool) -> None:
    assert parse(head(*lines)).keep_alive is keep_alive


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (head("GET /metrics"), 400),
        (head("GET  /metrics HTTP/1.1"), 400),
        (head("GET /metrics HTTP/2.0"), 505),
        (head("GET /metrics SPDY/3"), 400),
        (head("get /metrics HTTP/1.1"), 400),
        (head("GET http://example.org/metrics HTTP/1.1"), 400),
        (head("GET / HTTP/1.1", "no colon here"), 400),
        (head("GET / HTTP/1.1", "Bad Name: x"), 400),
        (head("GET / HTTP/1.1", " folded: x"), 400),
        (head("GET / HTTP/1.1", *(f"X-{i}: y" for i in range(MAX_HEADERS + 1))), 431),
        (head("GET / HTTP/1.1", "X-Padding: " + "a" * MAX_HEAD), 431),
    ],
)
def test_what_is_refused(raw: bytes, status: int) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse(raw)
    assert caught.value.status == status


def test_the_header_limit_is_inclusive() -> None:
    lines = ("GET / HTTP/1.1", *(f"X-{i}: y" for i in range(MAX_HEADERS)))
    assert len(parse(head(*lines)).headers) == MAX_HEADERS
