"""The audit log: one JSON line per file removed (time, rule, path, size, freed, age).

A file moved to a quarantine has ``"action": "quarantine"`` and its ``id``; one that leaves
the quarantine has ``"action": "expire"`` (and its ``reason``) or ``"restore"``.

Each line is written with one ``write`` to a descriptor opened with ``O_APPEND``, right
after the unlink it records (``cleaner.files.sweep`` calls it first), so a crash loses at
most the line of the file being removed, and never leaves half a line. The path is the
exact name, not UTF-8 bytes included (as JSON surrogate escapes, ``\\udcff``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from cleaner.sweep_result import Removal

log = logging.getLogger(__name__)

#: One encoder for every line (json.dumps with these options builds one per call): the
#: same bytes, a sweep writes one line per file. ensure_ascii keeps names that are not
#: UTF-8 (surrogate escapes) valid JSON.
_ENCODER = json.JSONEncoder(ensure_ascii=True, sort_keys=True)


class AuditLog:
    """Appends one JSON object per line; a write that fails is logged, never fatal."""

    def __init__(self, path: Path | None, clock: Callable[[], float]) -> None:
        self.path = path
        self._clock = clock
        self._fd: int | None = None
        self._failed = False

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> int | None:
        if self.path is None:
            return None
        if self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(
                    self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
                )
                self._failed = False
            except OSError as exc:
                if not self._failed:
                    log.error("cannot open audit log %s: %s", self.path, exc.strerror or exc)
                self._failed = True
                return None
        return self._fd

    def write(self, removal: Removal) -> None:
        fd = self._open()
        if fd is None:
            return
        record = {
            "time": round(self._clock(), 3),
            "rule": removal.rule,
            "path": removal.path,
            "size": removal.size,
            "age": round(removal.age, 3),
        }
        if removal.freed is not None:
            record["freed"] = removal.freed
        if removal.what != "remove":  # a removal's line keeps the format it always had
            record["action"] = removal.what
        if removal.quarantine_id is not None:
            record["id"] = removal.quarantine_id
        if removal.reason is not None:
            record["reason"] = removal.reason
        line = _ENCODER.encode(record) + "\n"
        try:
            os.write(fd, line.encode("ascii"))
        except OSError as exc:
            log.error("cannot write audit log %s: %s", self.path, exc.strerror or exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
