"""The one configuration object: YAML (plus environment overrides) -> frozen typed objects.

Every problem is collected with its key path and reported at once, e.g.
``files.rules[1].max_age: expected a duration such as 24h, got "abc"``.

This module is the schema: DEFAULTS (every key with its default: the example file, the
Ansible roles and the READMEs are tested against it), its SECTIONS and KEYS, and build(),
which checks a raw mapping key by key and makes the typed objects of cleaner.config_types
(import them from here). The value readers are in cleaner.config_reader, the ``files``
section's rules and safety checks in cleaner.config_files, what the environment may set in
cleaner.config_env.

build() and load_text() read neither the environment nor the disk: callers pass the
environment in. load() reads the file it is given and the ``.env`` file beside it (never
the process environment, which is the caller's to pass).
"""

from __future__ import annotations

import logging
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cleaner import dsn as dsn_mod
from cleaner.config_env import (
    CONFIG_VARIABLE,
    DSN_VARIABLE,
    KeyPath,
    apply_overrides,
    env_overrides,
    read_dotenv,
)
from cleaner.config_files import read_files
from cleaner.config_reader import MAX_INTERVAL, MAX_TIMEOUT, Reader, show
from cleaner.config_reader import parse_duration as parse_duration
from cleaner.config_types import Config as Config
from cleaner.config_types import DatabaseConfig as DatabaseConfig
from cleaner.config_types import ExporterConfig as ExporterConfig
from cleaner.config_types import FilesConfig as FilesConfig
from cleaner.config_types import ForceCleanConfig as ForceCleanConfig
from cleaner.config_types import JobsConfig as JobsConfig
from cleaner.config_types import Rule as Rule
from cleaner.quarantine_placement import placement_problems

DEFAULT_CONFIG_PATH = Path("/etc/limpeza/limpeza.yml")
DEFAULT_EXPORTER_ADDRESS = "127.0.0.1:9817"

_PORT_RE = re.compile(r"^[0-9]{1,5}$")
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?\]|[A-Za-z0-9_.-]+)$")
_STATUS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ConfigError(Exception):
    """Raised with every problem of a configuration, each prefixed by its key path."""

    def __init__(self, problems: Iterable[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "invalid configuration:\n  " + "\n  ".join(self.problems))


# --------------------------------------------------------------------------- defaults

DEFAULTS: dict[str, Any] = {
    "interval": "30s",
    "state_file": "/var/lib/limpeza/state.json",
    "audit_log": "/var/log/limpeza/audit.jsonl",
    "log_level": "info",
    "files": {
        "directories": ["/srv/app/backend/app/uploads", "/srv/app/uploads"],
        "protect": ["original_*"],
        "rules": [
            {"name": "sessions", "pattern": "session_*.json", "max_age": "24h"},
            {"name": "temp_audio", "pattern": "temp_audio_*.wav", "max_age": "24h"},
            {"name": "final_videos", "pattern": "final_*.mp4", "max_age": "24h"},
        ],
        "session_files": ["session_{id}.json", "temp_audio_{id}.wav"],
        "final_files": ["final_{id}.mp4"],
        "full_read_every": "5m",
        "quarantine": None,
    },
    "jobs": {
        "stale_after": {"running": "3m", "queued": "2m"},
        "cache_file": None,
        "cache_timezone": "local",
        "database": None,
        "health_url": None,
        "health_timeout": "2s",
        "force_clean": {"threshold": 5, "auto": False, "confirm_cycles": 2, "min_age": "0s"},
    },
    "exporter": {
        "listen_address": DEFAULT_EXPORTER_ADDRESS,
        "web_config_file": None,
        "database_timeout": "3s",
    },
}

DATABASE_DEFAULTS: dict[str, Any] = {
    "name": None,
    "table": "jobs",
    "id_column": "id",
    "status_column": "status",
    "timestamp_columns": ["updated_at"],
    "timestamp_column": None,
    "timestamp_timezone": "UTC",
    "active_statuses": ["queued", "running"],
    "error_status": "error",
    "error_message_column": None,
    "batch_size": 1000,
    "lock_timeout": "2s",
    "statement_timeout": "5s",
    "connect_timeout": "3s",
}

#: Every mapping of keys in the schema, by key path, with its defaults. Any other key is a
#: leaf, even one whose value is a mapping: jobs.stale_after (status -> duration) is replaced
#: as a whole by the file or the environment, never merged with its default.
SECTIONS: dict[KeyPath, Mapping[str, Any]] = {
    (): DEFAULTS,
    ("files",): DEFAULTS["files"],
    ("jobs",): DEFAULTS["jobs"],
    ("jobs", "database"): DATABASE_DEFAULTS,
    ("jobs", "force_clean"): DEFAULTS["jobs"]["force_clean"],
    ("exporter",): DEFAULTS["exporter"],
}
#: Every key path of the schema, sections included: the keys a LIMPEZA_* variable may set.
KEYS: frozenset[KeyPath] = frozenset(
    (*path, key) for path, section in SECTIONS.items() for key in section
)

_LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_listen_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port), port 1 to 65535; raises ValueError.

    The one definition of a listen address: exporter.listen_address, the exporter's
    ``--web.listen-address`` and the exporter role's preflight all use it. A host is a name,
    an IPv4 address or an IPv6 address in brackets (``[::1]:9817``). Port 0 (any free port)
    is refused: Prometheus must know where to scrape.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not _PORT_RE.match(port) or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port from 1 to 65535, got {show(address)}")
    if not host:
        raise ValueError(f"expected HOST:PORT with a host, got {show(address)}")
    if not _HOST_RE.match(host):
        raise ValueError(
            "expected a host name, an IPv4 address or an IPv6 address in brackets "
            f"before :PORT, got {show(address)}"
        )
    return host.strip("[]"), int(port)


def load_text(
    text: str, *, env: Mapping[str, str] | None = None, source: str = "<string>"
) -> Config:
    """Parses YAML text (with environment overrides applied) into a Config."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"(yaml) {where}: {problem}"], source) from None
    return build(raw, env=env or {}, source=source)


def load(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Reads a config file; ``env`` (for overrides and the DSN) is the caller's to give.

    A ``.env`` file beside the config supplies variables that ``env`` does not set.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"(file) cannot read: {exc.strerror or exc}"], str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(["(file) is not UTF-8 text"], str(path)) from None
    merged_env = dict(read_dotenv(path.parent / ".env"))
    merged_env.update(env or {})
    config = load_text(text, env=merged_env, source=str(path))
    # Where a quarantine lies needs the disk (cleaner.quarantine): judged here, not in build.
    problems = placement_problems(config.files)
    if problems:
        raise ConfigError(problems, str(path))
    return config


def build(raw: object, *, env: Mapping[str, str], source: str = "") -> Config:
    """Validates a raw mapping (as parsed from YAML) into a Config, or raises ConfigError."""
    reader = Reader()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top): expected a mapping of keys, got {show(raw)}"], source)
    overrides, unused = env_overrides(env, KEYS)
    raw, env_problems = apply_overrides(raw, overrides)
    reader.problems.extend(env_problems)
    # Each section fills in its missing keys from its own defaults, one level at a time: a
    # value given for a key (jobs.stale_after, files.rules) replaces its default whole.
    top = {**DEFAULTS, **reader.mapping(raw, "", DEFAULTS.keys())}

    interval = reader.duration(top["interval"], "interval", MAX_INTERVAL)
    if interval and interval < 1:
        reader.fail("interval", "must be at least 1s")
    log_level = str(top["log_level"]).lower()
    if log_level not in _LOG_LEVELS:
        reader.fail("log_level", f"expected one of {', '.join(_LOG_LEVELS)}, got {show(log_level)}")

    config = Config(
        interval=interval,
        state_file=reader.abs_path(top["state_file"], "state_file"),
        audit_log=reader.optional_path(top["audit_log"], "audit_log"),
        log_level=log_level,
        files=read_files(reader, top["files"], DEFAULTS["files"]),
        jobs=_jobs(reader, top["jobs"], env),
        exporter=_exporter(reader, top["exporter"]),
        source=source,
        unused_environment=unused,
    )
    if reader.problems:
        raise ConfigError(reader.problems, source)
    return config


def _jobs(reader: Reader, raw: object, env: Mapping[str, str]) -> JobsConfig:
    section = reader.mapping(raw, "jobs", DEFAULTS["jobs"].keys())
    section = {**DEFAULTS["jobs"], **section}
    stale_raw = section["stale_after"]
    stale: dict[str, float] = {}
    if not isinstance(stale_raw, dict) or not stale_raw:
        reader.fail(
            "jobs.stale_after", f"expected a mapping of status to duration, got {show(stale_raw)}"
        )
    else:
        for status, value in stale_raw.items():
            if not isinstance(status, str) or not _STATUS_RE.match(status):
                reader.fail(f"jobs.stale_after.{status}", "expected a status name")
                continue
            stale[status] = reader.duration(value, f"jobs.stale_after.{status}")
            if stale[status] <= 0:
                reader.fail(f"jobs.stale_after.{status}", "must be longer than 0s")

    database = None
    if section["database"] is not None:
        database = _database(reader, section["database"], env)
        for status in database.active_statuses:
            if status not in stale:
                reader.fail(
                    "jobs.stale_after",
                    f"has no threshold for active status {show(status)} "
                    "(see jobs.database.active_statuses)",
                )

    health_url = section["health_url"]
    if health_url is not None:
        health_url = reader.string(health_url, "jobs.health_url")
        try:
            parts = urlsplit(health_url)
            good = parts.scheme in ("http", "https") and bool(parts.netloc)
        except ValueError:  # a '[' or ']' that is not an IPv6 address
            good = False
        if not good:
            reader.fail(
                "jobs.health_url",
                f"expected an http(s) URL, got {show(dsn_mod.mask_url(health_url))}",
            )

    force = reader.mapping(
        section["force_clean"], "jobs.force_clean", DEFAULTS["jobs"]["force_clean"]
    )
    force = {**DEFAULTS["jobs"]["force_clean"], **force}
    return JobsConfig(
        stale_after=stale,
        cache_file=reader.optional_path(section["cache_file"], "jobs.cache_file"),
        cache_timezone=_cache_timezone(reader, section["cache_timezone"]),
        database=database,
        health_url=health_url or None,
        health_timeout=reader.duration(
            section["health_timeout"], "jobs.health_timeout", MAX_TIMEOUT
        ),
        force_clean=ForceCleanConfig(
            threshold=reader.integer(
                force["threshold"], "jobs.force_clean.threshold", 0, 1_000_000
            ),
            auto=reader.boolean(force["auto"], "jobs.force_clean.auto"),
            confirm_cycles=reader.integer(
                force["confirm_cycles"], "jobs.force_clean.confirm_cycles", 1, 1000
            ),
            min_age=reader.duration(force["min_age"], "jobs.force_clean.min_age"),
        ),
    )


def _timestamp_columns(reader: Reader, given: Mapping[str, Any], p: str) -> tuple[str, ...]:
    """``timestamp_columns``, or ``timestamp_column`` as a one-element shorthand."""
    if given.get("timestamp_column") is not None:
        if given.get("timestamp_columns") is not None:
            reader.fail(f"{p}.timestamp_column", "set timestamp_columns or this, not both")
        return (reader.identifier(given["timestamp_column"], f"{p}.timestamp_column"),)
    raw = given.get("timestamp_columns", DATABASE_DEFAULTS["timestamp_columns"])
    names = reader.string_list(raw, f"{p}.timestamp_columns")
    if not names:
        reader.fail(f"{p}.timestamp_columns", "must name at least one column")
    return tuple(
        reader.identifier(name, f"{p}.timestamp_columns[{i}]") for i, name in enumerate(names)
    )


def _timezone(reader: Reader, raw: object, path: str) -> str:
    name = reader.string(raw, path)
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        reader.fail(
            path, f"expected a time zone name such as UTC or Europe/Lisbon, got {show(raw)}"
        )
    return name


def _cache_timezone(reader: Reader, raw: object) -> str:
    """``local`` (the host's local time, which the API shares) or an IANA zone name."""
    name = reader.string(raw, "jobs.cache_timezone")
    if name == "local":
        return name
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        reader.fail(
            "jobs.cache_timezone",
            f"expected local or a time zone name such as UTC or America/Sao_Paulo, got {show(raw)}",
        )
        return "local"
    return name


#: A table name is a Prometheus label value: printable, short.
_NAME_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?")


def _table_name(reader: Reader, raw: object, dsn: str | None, table: str) -> str:
    """``jobs.database.name``, else where the DSN points and the table: never a credential.

    Every exporter reading one table must give the same name, so that the alerts and the
    dashboard count it once; set it when the hosts reach the database by different DSNs
    (a local pooler on one, the server on another).
    """
    if raw is None:
        where = dsn_mod.location(dsn)
        return f"{where}/{table}" if where else table
    name = reader.string(raw, "jobs.database.name")
    if name and not _NAME_RE.fullmatch(name):
        reader.fail(
            "jobs.database.name",
            f"expected 1 to 128 printable ASCII characters, not starting or ending with a "
            f"space, got {show(name)}",
        )
    return name


def _database(reader: Reader, raw: object, env: Mapping[str, str]) -> DatabaseConfig:
    given = reader.mapping(raw, "jobs.database", DATABASE_DEFAULTS.keys())
    section = {**DATABASE_DEFAULTS, **given}
    p = "jobs.database"
    message_column = section["error_message_column"]
    statuses = reader.string_list(section["active_statuses"], f"{p}.active_statuses")
    if not statuses:
        reader.fail(f"{p}.active_statuses", "must name at least one status")
    for i, status in enumerate(statuses):
        if status and not _STATUS_RE.match(status):
            reader.fail(f"{p}.active_statuses[{i}]", f"expected a status name, got {show(status)}")
    error_status = reader.string(section["error_status"], f"{p}.error_status")
    if error_status in statuses:
        reader.fail(f"{p}.error_status", "must not be one of the active statuses")
    dsn = env.get(DSN_VARIABLE) or None
    dsn_problem = dsn_mod.problem(dsn) if dsn else None
    if dsn_problem:
        reader.fail(DSN_VARIABLE, dsn_problem)
    table = reader.identifier(section["table"], f"{p}.table", qualified=True)
    return DatabaseConfig(
        name=_table_name(reader, section["name"], dsn, table),
        table=table,
        id_column=reader.identifier(section["id_column"], f"{p}.id_column"),
        status_column=reader.identifier(section["status_column"], f"{p}.status_column"),
        timestamp_columns=_timestamp_columns(reader, given, p),
        timestamp_timezone=_timezone(
            reader, section["timestamp_timezone"], f"{p}.timestamp_timezone"
        ),
        active_statuses=statuses,
        error_status=error_status,
        error_message_column=(
            None
            if message_column is None
            else reader.identifier(message_column, f"{p}.error_message_column")
        ),
        batch_size=reader.integer(section["batch_size"], f"{p}.batch_size", 1, 1_000_000),
        lock_timeout=reader.duration(section["lock_timeout"], f"{p}.lock_timeout", MAX_TIMEOUT),
        statement_timeout=reader.duration(
            section["statement_timeout"], f"{p}.statement_timeout", MAX_TIMEOUT
        ),
        connect_timeout=reader.duration(
            section["connect_timeout"], f"{p}.connect_timeout", MAX_TIMEOUT
        ),
        dsn=dsn,
    )


def _exporter(reader: Reader, raw: object) -> ExporterConfig:
    section = reader.mapping(raw, "exporter", DEFAULTS["exporter"].keys())
    section = {**DEFAULTS["exporter"], **section}
    address = reader.string(section["listen_address"], "exporter.listen_address")
    if address:
        try:
            parse_listen_address(address)
        except ValueError as exc:
            reader.fail("exporter.listen_address", str(exc))
    return ExporterConfig(
        listen_address=address,
        web_config_file=reader.optional_path(
            section["web_config_file"], "exporter.web_config_file"
        ),
        database_timeout=reader.duration(
            section["database_timeout"], "exporter.database_timeout", MAX_TIMEOUT
        ),
    )


def resolve_path(cli_value: str | None, env: Mapping[str, str]) -> Path:
    """``--config FILE``, else ``$LIMPEZA_CONFIG``, else /etc/limpeza/limpeza.yml."""
    if cli_value:
        return Path(cli_value)
    if env.get(CONFIG_VARIABLE):
        return Path(env[CONFIG_VARIABLE])
    return DEFAULT_CONFIG_PATH


def warn_unused_environment(config: Config, logger: logging.Logger) -> None:
    """One warning naming the ``LIMPEZA_*`` variables that were not read, never their values."""
    if config.unused_environment:
        logger.warning(
            "environment variables not read, no configuration key has their name: %s "
            "(LIMPEZA_JOBS__HEALTH_URL sets jobs.health_url)",
            ", ".join(config.unused_environment),
        )


def mask_dsn(dsn: str) -> str:
    """A DSN fit for a log line: a URL's whole user info and any password as ``***``."""
    return dsn_mod.mask(dsn)
