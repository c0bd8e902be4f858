"""The one configuration object: YAML (plus environment overrides) -> frozen typed objects.

Every problem is collected with its key path and reported at once, e.g.
``files.rules[1].max_age: expected a duration such as 24h, got "abc"``.
Nothing here reads the environment or the disk on its own: callers pass both in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_CONFIG_PATH = Path("/etc/limpeza/limpeza.yml")
ENV_PREFIX = "LIMPEZA_"
#: Variables with a meaning of their own, never treated as key overrides.
ENV_RESERVED = frozenset({"LIMPEZA_CONFIG", "LIMPEZA_DATABASE_URL"})
DEFAULT_EXPORTER_ADDRESS = "127.0.0.1:9817"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_RULE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_STATUS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ConfigError(Exception):
    """Raised with every problem of a configuration, each prefixed by its key path."""

    def __init__(self, problems: Iterable[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "invalid configuration:\n  " + "\n  ".join(self.problems))


def parse_duration(value: object) -> float:
    """Seconds from ``90s``, ``3m``, ``24h``, ``7d``, ``1w``, ``250ms`` or a bare number."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(value)
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    raise ValueError(value)


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration in the units parse_duration accepts."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Rule:
    """A named kind of expiring file: a base-name glob and the age past which it goes."""

    name: str
    pattern: str
    max_age: float
    directories: tuple[Path, ...]
    recursive: bool = False


@dataclass(frozen=True)
class FilesConfig:
    directories: tuple[Path, ...]
    protect: tuple[str, ...]
    rules: tuple[Rule, ...]
    session_files: tuple[str, ...]
    final_files: tuple[str, ...] = ()

    def all_directories(self) -> tuple[Path, ...]:
        """Every directory some rule sweeps, each once, in configuration order."""
        seen: dict[Path, None] = dict.fromkeys(self.directories)
        for rule in self.rules:
            seen.update(dict.fromkeys(rule.directories))
        return tuple(seen)


@dataclass(frozen=True)
class DatabaseConfig:
    table: str
    id_column: str
    status_column: str
    timestamp_column: str
    active_statuses: tuple[str, ...]
    error_status: str
    error_message_column: str | None
    batch_size: int
    lock_timeout: float
    statement_timeout: float
    connect_timeout: float
    #: From $LIMPEZA_DATABASE_URL only; never from the YAML file.
    dsn: str | None = field(default=None, repr=False)

    @property
    def table_parts(self) -> tuple[str, ...]:
        return tuple(self.table.split("."))


@dataclass(frozen=True)
class ForceCleanConfig:
    threshold: int
    auto: bool
    confirm_cycles: int
    min_age: float


@dataclass(frozen=True)
class JobsConfig:
    stale_after: Mapping[str, float]
    cache_file: Path | None
    database: DatabaseConfig | None
    health_url: str | None
    health_timeout: float
    force_clean: ForceCleanConfig

    @property
    def active_statuses(self) -> tuple[str, ...]:
        if self.database is not None:
            return self.database.active_statuses
        return tuple(self.stale_after)


@dataclass(frozen=True)
class ExporterConfig:
    listen_address: str
    web_config_file: Path | None
    database_timeout: float


@dataclass(frozen=True)
class Config:
    interval: float
    state_file: Path
    audit_log: Path | None
    log_level: str
    files: FilesConfig
    jobs: JobsConfig
    exporter: ExporterConfig
    source: str = ""


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
    },
    "jobs": {
        "stale_after": {"running": "3m", "queued": "2m"},
        "cache_file": None,
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
    "table": "jobs",
    "id_column": "id",
    "status_column": "status",
    "timestamp_column": "updated_at",
    "active_statuses": ["queued", "running"],
    "error_status": "error",
    "error_message_column": None,
    "batch_size": 1000,
    "lock_timeout": "2s",
    "statement_timeout": "5s",
    "connect_timeout": "3s",
}

_LOG_LEVELS = ("debug", "info", "warning", "error")


# --------------------------------------------------------------------------- the reader


class _Reader:
    """Walks a raw mapping, converting values and collecting problems by key path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, raw: object, path: str, known: Iterable[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(path or "(top)", f"expected a mapping, got {_show(raw)}")
            return {}
        allowed = set(known)
        for key in raw:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                self.fail(where, f"unknown key (known: {', '.join(sorted(allowed))})")
        return {k: v for k, v in raw.items() if k in allowed}

    def duration(self, raw: object, path: str) -> float:
        try:
            return parse_duration(raw)
        except ValueError:
            self.fail(path, f"expected a duration such as 24h, got {_show(raw)}")
            return 0.0

    def boolean(self, raw: object, path: str) -> bool:
        if isinstance(raw, bool):
            return raw
        self.fail(path, f"expected true or false, got {_show(raw)}")
        return False

    def integer(self, raw: object, path: str, minimum: int, maximum: int) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.fail(path, f"expected a whole number, got {_show(raw)}")
            return minimum
        if not minimum <= raw <= maximum:
            self.fail(path, f"expected a number from {minimum} to {maximum}, got {raw}")
            return minimum
        return raw

    def string(self, raw: object, path: str, *, allow_empty: bool = False) -> str:
        if not isinstance(raw, str) or (not raw and not allow_empty):
            self.fail(path, f"expected a non-empty string, got {_show(raw)}")
            return ""
        if "\x00" in raw:
            self.fail(path, "must not contain a NUL byte")
            return ""
        return raw

    def abs_path(self, raw: object, path: str) -> Path:
        text = self.string(raw, path)
        if text and not text.startswith("/"):
            self.fail(path, f"expected an absolute path, got {_show(raw)}")
        if text and ".." in PurePosixPath(text).parts:
            self.fail(path, f"must not contain '..', got {_show(raw)}")
        return Path(text) if text else Path("/")

    def optional_path(self, raw: object, path: str) -> Path | None:
        return None if raw is None or raw == "" else self.abs_path(raw, path)

    def string_list(self, raw: object, path: str) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.fail(path, f"expected a list of strings, got {_show(raw)}")
            return ()
        return tuple(self.string(item, f"{path}[{i}]") for i, item in enumerate(raw))

    def path_list(self, raw: object, path: str) -> tuple[Path, ...]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.fail(path, f"expected a list of absolute paths, got {_show(raw)}")
            return ()
        return tuple(self.abs_path(item, f"{path}[{i}]") for i, item in enumerate(raw))

    def identifier(self, raw: object, path: str, *, qualified: bool = False) -> str:
        text = self.string(raw, path)
        parts = text.split(".") if qualified else [text]
        if text and (len(parts) > 2 or not all(_IDENT_RE.match(p) for p in parts)):
            kind = "an identifier or schema.identifier" if qualified else "an identifier"
            self.fail(
                path,
                f"expected {kind} (letters, digits, _ and $, starting with a letter or _), "
                f"got {_show(raw)}",
            )
        return text


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if value is None:
        return "nothing"
    return repr(value)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Nested overrides from ``LIMPEZA_*`` variables.

    ``LIMPEZA_INTERVAL=10s`` sets ``interval``; a double underscore descends:
    ``LIMPEZA_JOBS__HEALTH_URL=...`` sets ``jobs.health_url``. Values are read as YAML,
    so ``[a, b]`` is a list and ``true`` a boolean.
    """
    overrides: dict[str, Any] = {}
    problems: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        if not all(keys):
            problems.append(f"${name}: cannot tell which key it sets")
            continue
        try:
            value = yaml.safe_load(env[name]) if env[name] else ""
        except yaml.YAMLError:
            value = env[name]
        node = overrides
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                problems.append(f"${name}: conflicts with another override")
                break
        else:
            node[keys[-1]] = value
    return overrides, problems


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
    return load_text(text, env=merged_env, source=str(path))


def read_dotenv(path: Path) -> dict[str, str]:
    """Variables from a ``.env`` file (python-dotenv's syntax); nothing if there is none."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def build(raw: object, *, env: Mapping[str, str], source: str = "") -> Config:
    """Validates a raw mapping (as parsed from YAML) into a Config, or raises ConfigError."""
    reader = _Reader()
    overrides, env_problems = env_overrides(env)
    reader.problems.extend(env_problems)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"(top): expected a mapping of keys, got {_show(raw)}"], source)
    raw = _merge(raw, overrides)
    top = reader.mapping(raw, "", DEFAULTS.keys())
    top = _merge(DEFAULTS, top)

    interval = reader.duration(top["interval"], "interval")
    if interval and interval < 1:
        reader.fail("interval", "must be at least 1s")
    log_level = str(top["log_level"]).lower()
    if log_level not in _LOG_LEVELS:
        reader.fail(
            "log_level", f"expected one of {', '.join(_LOG_LEVELS)}, got {_show(log_level)}"
        )

    config = Config(
        interval=interval,
        state_file=reader.abs_path(top["state_file"], "state_file"),
        audit_log=reader.optional_path(top["audit_log"], "audit_log"),
        log_level=log_level,
        files=_files(reader, top["files"]),
        jobs=_jobs(reader, top["jobs"], env),
        exporter=_exporter(reader, top["exporter"]),
        source=source,
    )
    if reader.problems:
        raise ConfigError(reader.problems, source)
    return config


def _files(reader: _Reader, raw: object) -> FilesConfig:
    section = reader.mapping(raw, "files", DEFAULTS["files"].keys())
    section = {**DEFAULTS["files"], **section}
    directories = reader.path_list(section["directories"], "files.directories")
    protect = reader.string_list(section["protect"], "files.protect")
    rules: list[Rule] = []
    raw_rules = section["rules"]
    if not isinstance(raw_rules, list):
        reader.fail("files.rules", f"expected a list of rules, got {_show(raw_rules)}")
        raw_rules = []
    names: set[str] = set()
    for i, raw_rule in enumerate(raw_rules):
        path = f"files.rules[{i}]"
        entry = reader.mapping(
            raw_rule, path, ("name", "pattern", "max_age", "directories", "recursive")
        )
        for key in ("name", "pattern", "max_age"):
            if key not in entry and isinstance(raw_rule, dict):
                reader.fail(f"{path}.{key}", "is required")
        name = reader.string(entry.get("name", "x"), f"{path}.name")
        if name and not _RULE_NAME_RE.match(name):
            reader.fail(
                f"{path}.name", f"expected lower_snake_case (a metric label), got {_show(name)}"
            )
        if name in names:
            reader.fail(f"{path}.name", f"duplicate rule name {_show(name)}")
        names.add(name)
        pattern = reader.string(entry.get("pattern", "x"), f"{path}.pattern")
        if "/" in pattern:
            reader.fail(
                f"{path}.pattern", f"matches base names only; no '/' allowed, got {_show(pattern)}"
            )
        rule_dirs = (
            reader.path_list(entry["directories"], f"{path}.directories")
            if "directories" in entry
            else directories
        )
        if not rule_dirs:
            reader.fail(f"{path}.directories", "no directory to sweep (set files.directories)")
        rules.append(
            Rule(
                name=name,
                pattern=pattern,
                max_age=reader.duration(entry.get("max_age", 0), f"{path}.max_age"),
                directories=rule_dirs,
                recursive=reader.boolean(entry.get("recursive", False), f"{path}.recursive"),
            )
        )
    templates: dict[str, tuple[str, ...]] = {}
    for key in ("session_files", "final_files"):
        templates[key] = reader.string_list(section[key], f"files.{key}")
        for i, template in enumerate(templates[key]):
            if template and ("{id}" not in template or "/" in template):
                reader.fail(
                    f"files.{key}[{i}]",
                    f"expected a base name containing {{id}}, got {_show(template)}",
                )
    return FilesConfig(
        directories, protect, tuple(rules), templates["session_files"], templates["final_files"]
    )


def _jobs(reader: _Reader, raw: object, env: Mapping[str, str]) -> JobsConfig:
    section = reader.mapping(raw, "jobs", DEFAULTS["jobs"].keys())
    section = _merge(DEFAULTS["jobs"], section)
    stale_raw = section["stale_after"]
    stale: dict[str, float] = {}
    if not isinstance(stale_raw, dict) or not stale_raw:
        reader.fail(
            "jobs.stale_after", f"expected a mapping of status to duration, got {_show(stale_raw)}"
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
                    f"has no threshold for active status {_show(status)} "
                    "(see jobs.database.active_statuses)",
                )

    health_url = section["health_url"]
    if health_url is not None:
        health_url = reader.string(health_url, "jobs.health_url")
        parts = urlsplit(health_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            reader.fail("jobs.health_url", f"expected an http(s) URL, got {_show(health_url)}")

    force = reader.mapping(
        section["force_clean"], "jobs.force_clean", DEFAULTS["jobs"]["force_clean"]
    )
    force = {**DEFAULTS["jobs"]["force_clean"], **force}
    return JobsConfig(
        stale_after=stale,
        cache_file=reader.optional_path(section["cache_file"], "jobs.cache_file"),
        database=database,
        health_url=health_url or None,
        health_timeout=reader.duration(section["health_timeout"], "jobs.health_timeout"),
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


def _database(reader: _Reader, raw: object, env: Mapping[str, str]) -> DatabaseConfig:
    section = reader.mapping(raw, "jobs.database", DATABASE_DEFAULTS.keys())
    section = {**DATABASE_DEFAULTS, **section}
    p = "jobs.database"
    message_column = section["error_message_column"]
    statuses = reader.string_list(section["active_statuses"], f"{p}.active_statuses")
    if not statuses:
        reader.fail(f"{p}.active_statuses", "must name at least one status")
    for i, status in enumerate(statuses):
        if status and not _STATUS_RE.match(status):
            reader.fail(f"{p}.active_statuses[{i}]", f"expected a status name, got {_show(status)}")
    error_status = reader.string(section["error_status"], f"{p}.error_status")
    if error_status in statuses:
        reader.fail(f"{p}.error_status", "must not be one of the active statuses")
    return DatabaseConfig(
        table=reader.identifier(section["table"], f"{p}.table", qualified=True),
        id_column=reader.identifier(section["id_column"], f"{p}.id_column"),
        status_column=reader.identifier(section["status_column"], f"{p}.status_column"),
        timestamp_column=reader.identifier(section["timestamp_column"], f"{p}.timestamp_column"),
        active_statuses=statuses,
        error_status=error_status,
        error_message_column=(
            None
            if message_column is None
            else reader.identifier(message_column, f"{p}.error_message_column")
        ),
        batch_size=reader.integer(section["batch_size"], f"{p}.batch_size", 1, 1_000_000),
        lock_timeout=reader.duration(section["lock_timeout"], f"{p}.lock_timeout"),
        statement_timeout=reader.duration(section["statement_timeout"], f"{p}.statement_timeout"),
        connect_timeout=reader.duration(section["connect_timeout"], f"{p}.connect_timeout"),
        dsn=env.get("LIMPEZA_DATABASE_URL") or None,
    )


def _exporter(reader: _Reader, raw: object) -> ExporterConfig:
    section = reader.mapping(raw, "exporter", DEFAULTS["exporter"].keys())
    section = {**DEFAULTS["exporter"], **section}
    address = reader.string(section["listen_address"], "exporter.listen_address")
    host, _, port = address.rpartition(":")
    if address and (not host or not port.isdigit() or not 0 < int(port) < 65536):
        reader.fail("exporter.listen_address", f"expected HOST:PORT, got {_show(address)}")
    return ExporterConfig(
        listen_address=address,
        web_config_file=reader.optional_path(
            section["web_config_file"], "exporter.web_config_file"
        ),
        database_timeout=reader.duration(section["database_timeout"], "exporter.database_timeout"),
    )


def resolve_path(cli_value: str | None, env: Mapping[str, str]) -> Path:
    """``--config FILE``, else ``$LIMPEZA_CONFIG``, else /etc/limpeza/limpeza.yml."""
    if cli_value:
        return Path(cli_value)
    if env.get("LIMPEZA_CONFIG"):
        return Path(env["LIMPEZA_CONFIG"])
    return DEFAULT_CONFIG_PATH


def mask_dsn(dsn: str) -> str:
    """A DSN fit for a log line: any password replaced by ``***``."""
    masked = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", masked, flags=re.I)
