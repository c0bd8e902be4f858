"""Reading untyped YAML values into typed ones, collecting every problem by its key path.

The configuration's schema (which keys exist, their defaults, what each must be) lives in
cleaner.config; this module only knows the value types the schema is made of: durations,
paths, identifiers, booleans, numbers, lists of strings. A reader never raises on bad input:
it records ``key.path: what was expected, got what`` and returns a placeholder, so that
a configuration's problems are all reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


#: The longest duration any key takes: 10 years (3650d). NaN, infinities and anything
#: longer are refused, whatever the key: a NaN age would make every file expired, and a
#: wait that long overflows the clocks the daemon waits on.
MAX_DURATION = 3650 * 86400.0
#: The longest interval between sweeps: 1 day.
MAX_INTERVAL = 86400.0
#: The longest timeout of one wait (the API's health, the database): 1 hour.
MAX_TIMEOUT = 3600.0


def parse_duration(value: object, maximum: float = MAX_DURATION) -> float:
    """Seconds from ``90s``, ``3m``, ``24h``, ``7d``, ``1w``, ``250ms`` or a bare number.

    Raises ValueError for anything else, and for a duration that is not finite, is
    negative or is longer than ``maximum`` (at most MAX_DURATION).
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else None  # a huge int: no float
    elif isinstance(value, str):
        match = DURATION_RE.match(value)
        if match:
            seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2) or "s"]
    if seconds is None or seconds < 0:
        raise ValueError(value)
    # "not x <= max" rather than "x > max": NaN fails every comparison.
    if not seconds <= min(maximum, MAX_DURATION):
        raise DurationRangeError(value)
    return seconds


class DurationRangeError(ValueError):
    """A duration that is NaN, infinite or longer than the key's maximum."""


def _bound(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds / 3600:g}h"


def show(value: object) -> str:
    """A value as a problem message quotes it: strings in double quotes, None as nothing."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if value is None:
        return "nothing"
    return repr(value)


class Reader:
    """Walks a raw mapping, converting values and collecting problems by key path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, raw: object, path: str, known: Iterable[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(path or "(top)", f"expected a mapping, got {show(raw)}")
            return {}
        allowed = set(known)
        for key in raw:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                self.fail(where, f"unknown key (known: {', '.join(sorted(allowed))})")
        return {k: v for k, v in raw.items() if k in allowed}

    def duration(self, raw: object, path: str, maximum: float = MAX_DURATION) -> float:
        try:
            return parse_duration(raw, maximum)
        except DurationRangeError:
            self.fail(path, f"expected a duration from 0s to {_bound(maximum)}, got {show(raw)}")
        except ValueError:
            self.fail(path, f"expected a duration such as 24h, got {show(raw)}")
        return 0.0

    def boolean(self, raw: object, path: str) -> bool:
        if isinstance(raw, bool):
            return raw
        self.fail(path, f"expected true or false, got {show(raw)}")
        return False

    def integer(self, raw: object, path: str, minimum: int, maximum: int) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.fail(path, f"expected a whole number, got {show(raw)}")
            return minimum
        if not minimum <= raw <= maximum:
            self.fail(path, f"expected a number from {minimum} to {maximum}, got {raw}")
            return minimum
        return raw

    def string(self, raw: object, path: str, *, allow_empty: bool = False) -> str:
        if not isinstance(raw, str) or (not raw and not allow_empty):
            self.fail(path, f"expected a non-empty string, got {show(raw)}")
            return ""
        if "\x00" in raw:
            self.fail(path, "must not contain a NUL byte")
            return ""
        return raw

    def abs_path(self, raw: object, path: str) -> Path:
        text = self.string(raw, path)
        if text and not text.startswith("/"):
            self.fail(path, f"expected an absolute path, got {show(raw)}")
        if text and ".." in PurePosixPath(text).parts:
            self.fail(path, f"must not contain '..', got {show(raw)}")
        return Path(text) if text else Path("/")

    def optional_path(self, raw: object, path: str) -> Path | None:
        return None if raw is None or raw == "" else self.abs_path(raw, path)

    def string_list(self, raw: object, path: str) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.fail(path, f"expected a list of strings, got {show(raw)}")
            return ()
        return tuple(self.string(item, f"{path}[{i}]") for i, item in enumerate(raw))

    def path_list(self, raw: object, path: str) -> tuple[Path, ...]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.fail(path, f"expected a list of absolute paths, got {show(raw)}")
            return ()
        return tuple(self.abs_path(item, f"{path}[{i}]") for i, item in enumerate(raw))

    def identifier(self, raw: object, path: str, *, qualified: bool = False) -> str:
        text = self.string(raw, path)
        parts = text.split(".") if qualified else [text]
        if text and (len(parts) > 2 or not all(IDENT_RE.match(p) for p in parts)):
            kind = "an identifier or schema.identifier" if qualified else "an identifier"
            self.fail(
                path,
                f"expected {kind} (letters, digits, _ and $, starting with a letter or _), "
                f"got {show(raw)}",
            )
        return text
