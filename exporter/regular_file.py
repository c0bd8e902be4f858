"""Reading a file the exporter does not own without ever blocking a scrape on it.

A FIFO, a device or a socket at a configured path (the state file, the job cache; the
cache's default lives in world-writable /tmp) would block an ordinary ``open`` or ``read``
forever, one stuck scrape thread each. Opened with ``O_NONBLOCK`` and refused unless
``fstat`` says it is a regular file, it costs a scrape nothing; a read past ``limit``
bytes is refused too, so a runaway file cannot exhaust the exporter's memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotRegularFileError(OSError):
    """The path names something other than a regular file (a FIFO, a directory...)."""


class TooLargeError(ValueError):
    """The file is larger than the reader allows."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    Raises FileNotFoundError when it is missing, NotRegularFileError (an OSError) when it
    is anything but a regular file, TooLargeError (a ValueError) past ``limit`` bytes, and
    other OSErrors as ``open`` and ``read`` do. Never blocks on what it opens.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{_kind(mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise TooLargeError(f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)
