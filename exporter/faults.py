"""Each source's current fault, logged once when it starts and once when it ends.

A scrape every 15 s must not write a warning every 15 s: the first failure of a source is
a warning, a different failure of the same source a debug line, the recovery an info line.
"""

from __future__ import annotations

import logging
import threading


class Faults:
    """Remembers the current problem of each source and logs only when it changes."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._current: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def report(self, source: str, problem: str | None) -> None:
        """A warning when a source fails, an info line when it recovers, nothing between."""
        with self._lock:
            before = self._current.get(source)
            self._current[source] = problem
        if problem is not None and before is None:
            self._log.warning("%s: %s", source, problem)
        elif problem is not None and problem != before:
            self._log.debug("%s: still failing: %s", source, problem)
        elif problem is None and before is not None:
            self._log.info("%s: readable again", source)
