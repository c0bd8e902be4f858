"""The typed objects a valid configuration is made of: frozen, and nothing but data.

cleaner.config builds them from a file (and re-exports them: import them from there);
nothing here parses or validates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class QuarantineConfig:
    """Where a rule moves its expired files instead of unlinking them, and for how long."""

    directory: Path
    #: Seconds an entry stays before it is unlinked.
    retention: float
    #: The most allocated bytes the rule may hold there (oldest go first); 0: no limit.
    max_bytes: int = 0


@dataclass(frozen=True)
class Rule:
    """A named kind of expiring file: a base-name glob and the age past which it goes."""

    name: str
    pattern: str
    max_age: float
    directories: tuple[Path, ...]
    recursive: bool = False
    #: Set: expired files go to this quarantine (cleaner.quarantine) instead of unlink.
    quarantine: QuarantineConfig | None = None


@dataclass(frozen=True)
class FilesConfig:
    directories: tuple[Path, ...]
    protect: tuple[str, ...]
    rules: tuple[Rule, ...]
    session_files: tuple[str, ...]
    final_files: tuple[str, ...] = ()
    #: Seconds between two sweeps that read every directory (see cleaner.memory).
    full_read_every: float = 300.0
    #: ``files.quarantine``: the quarantine of every rule without a ``quarantine`` key.
    quarantine: QuarantineConfig | None = None

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
    #: The job's last sign of life, first non-NULL wins (``COALESCE``), e.g. heartbeat_at,
    #: updated_at, created_at.
    timestamp_columns: tuple[str, ...]
    active_statuses: tuple[str, ...]
    error_status: str
    error_message_column: str | None
    batch_size: int
    lock_timeout: float
    statement_timeout: float
    connect_timeout: float
    #: The zone ``timestamp without time zone`` columns are written in (an IANA name).
    timestamp_timezone: str = "UTC"
    #: From $LIMPEZA_DATABASE_URL only; never from the YAML file.
    dsn: str | None = field(default=None, repr=False)
    #: The table's identity across hosts (the ``table`` label of the job metrics):
    #: ``jobs.database.name``, else ``host:port/dbname/table`` from the DSN, never a secret.
    name: str = ""

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
    #: How naive ISO times in the cache are read: ``local`` (the host's) or an IANA name.
    cache_timezone: str = "local"

    @property
    def cache_zone(self) -> tzinfo | None:
        """The zone of ``cache_timezone``; None for the host's local time (see staleness)."""
        return None if self.cache_timezone == "local" else ZoneInfo(self.cache_timezone)

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
    #: ``LIMPEZA_*`` variables of the environment that were not read: no key has their name.
    unused_environment: tuple[str, ...] = field(default=(), compare=False)
