"""The API's health endpoint: is it up, and how many jobs does it say are active.

The API answers ``GET /health`` with ``{"status": "healthy", "jobs_active": 9}``. The
cleaner asks once per cycle with a short timeout and returns the answer (the daemon keeps
it in the state for the exporter); an unreachable API is logged once per change of state,
not every cycle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthResult:
    """One answer of the health endpoint (or why there was none)."""

    up: bool
    jobs_active: int | None = None
    status: str | None = None
    error: str | None = None
    #: When the answer came (epoch seconds); None for a one-off check.
    checked_at: float | None = None


def check_health(url: str, timeout: float, session: requests.Session | None = None) -> HealthResult:
    """GETs ``url``; up means a 2xx answer. ``jobs_active`` is read when it is a count."""
    getter = session or requests
    try:
        response = getter.get(
            url,
            timeout=(timeout, timeout),
            allow_redirects=False,
            headers={"Accept": "application/json"},
        )
    except requests.RequestException as exc:
        return HealthResult(up=False, error=_describe(exc))
    if not 200 <= response.status_code < 300:
        return HealthResult(up=False, error=f"HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        return HealthResult(up=True, error="the answer is not JSON")
    if not isinstance(body, dict):
        return HealthResult(up=True, error="the answer is not a JSON object")
    raw = body.get("jobs_active")
    active = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None
    status = body.get("status")
    return HealthResult(
        up=True,
        jobs_active=active,
        status=status if isinstance(status, str) else None,
        error=None if active is not None else "no jobs_active count in the answer",
    )


def _describe(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return type(exc).__name__


class HealthMonitor:
    """Checks the endpoint each cycle and returns the answer; logs changes only."""

    def __init__(
        self,
        url: str,
        timeout: float,
        *,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._clock = clock
        self._session = session or requests.Session()
        self._owns_session = session is None
        self._was_up: bool | None = None

    def check(self) -> HealthResult:
        result = replace(
            check_health(self.url, self.timeout, self._session), checked_at=self._clock()
        )
        if not result.up:
            if self._was_up is not False:
                log.warning("API health %s unreachable: %s", self.url, result.error)
        elif self._was_up is False:
            log.info("API health %s reachable again: %s jobs active", self.url, result.jobs_active)
        elif self._was_up is None:
            log.info("API health %s: %s jobs active", self.url, result.jobs_active)
        else:
            log.debug("API health %s: %s jobs active", self.url, result.jobs_active)
        self._was_up = result.up
        return result

    def close(self) -> None:
        if self._owns_session:
            self._session.close()
