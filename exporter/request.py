"""One HTTP/1.x request head, parsed from bytes: the method, the path, the headers.

The exporter reads a request's head (everything up to the blank line) within its deadline
and a size cap, then hands the bytes here. Parsing is pure, so the rules are tested without
a socket: a head that is not HTTP/1.x is a 400, an oversized one a 431, and the connection
is kept alive only when HTTP/1.1 allows it and no request body would have to be skipped
(a body nobody reads must not be parsed as the next request).

``http.server`` parses the headers with the e-mail package, which cost about a tenth of the
exporter's CPU under a hundred concurrent scrapers; a scrape's head is a handful of lines.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The most a request's head may take, request line and headers together (as Go's
#: net/http's default MaxHeaderBytes is 1 MiB, http.server's a 64 KiB line and 100 headers;
#: a scraper sends a few hundred bytes).
MAX_HEAD = 64 * 1024
MAX_HEADERS = 100


class BadRequestError(Exception):
    """The head is not a request this server can answer; ``status`` says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    #: The target without its query string.
    path: str
    version: str
    #: Header names in lower case; a repeated header keeps its first value.
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this one's answer."""
        if self.version != "HTTP/1.1":
            return False
        if "close" in _tokens(self.headers.get("connection")):
            return False
        return not self.has_body

    @property
    def has_body(self) -> bool:
        length = self.headers.get("content-length", "0").strip()
        return length != "0" or "transfer-encoding" in self.headers


def _tokens(value: str | None) -> set[str]:
    return {token.strip().lower() for token in (value or "").split(",")}


def parse(head: bytes) -> Request:
    """The request in ``head`` (which ends with its blank line); raises BadRequestError."""
    if len(head) > MAX_HEAD:
        raise BadRequestError(431, "request head too large")
    lines = head.decode("latin-1").split("\r\n")  # latin-1: any byte, as HTTP/1.1 allows
    request_line = lines[0]
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise BadRequestError(400, f"bad request line {request_line[:100]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        status = 505 if version.startswith("HTTP/") else 400
        raise BadRequestError(status, f"unsupported version {version[:20]!r}")
    if not method.isalpha() or not method.isupper():
        raise BadRequestError(400, f"bad method {method[:20]!r}")
    if not target.startswith("/"):
        raise BadRequestError(400, "the target must be a path")
    headers: dict[str, str] = {}
    count = 0
    for line in lines[1:]:
        if not line:
            continue  # the blank line that ends the head
        count += 1
        if count > MAX_HEADERS:
            raise BadRequestError(431, "too many headers")
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            raise BadRequestError(400, f"bad header line {line[:100]!r}")
        headers.setdefault(name.lower(), value.strip())
    return Request(method, target.split("?", 1)[0], version, headers)
