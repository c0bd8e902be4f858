"""An answer and its bytes on the wire: status line, headers and body in one write.

One write per answer: headers and body in separate writes would, with Nagle's algorithm,
wait for the client's delayed ACK on a kept-alive connection. The ``Date`` header is
formatted once a second, not once an answer (``http.server`` spent a noticeable part of
the exporter's CPU on it under a hundred concurrent scrapers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()


class HttpDate:
    """The ``Date`` header's value for now, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, formatdate(now, usegmt=True)
        return self._text


def render(answer: Answer, *, date: str, head_only: bool, keep_alive: bool) -> bytes:
    """The whole response, status line to body (no body for HEAD)."""
    lines = [
        f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}",
        "Server: limpeza-exporter",
        f"Date: {date}",
        f"Content-Type: {answer.content_type}",
        f"Content-Length: {len(answer.body)}",
        *(f"{name}: {value}" for name, value in answer.headers),
    ]
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + answer.body
