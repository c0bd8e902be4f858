"""Force-clean and status per job source: the fleet's database once, each host's cache apart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cleaner.config import JobsConfig, build
from cleaner.jobs.connection import KeptConnection
from cleaner.jobs.force_clean import JOB_SOURCES, force_clean
from cleaner.jobs.status import jobs_status
from cleaner.report import format_force_clean, format_jobs_status

#: Nothing listens there: a connection attempt fails at once (and would be an error).
UNREACHABLE = {"LIMPEZA_DATABASE_URL": "postgresql://u:p@127.0.0.1:9/jobs?connect_timeout=1"}


def _jobs(tmp_path: Path, *, database: bool = True, cache: bool = True) -> JobsConfig:
    section: dict[str, object] = {"cache_file": str(tmp_path / "jobs.json") if cache else None}
    if database:
        section["database"] = {"table": "jobs"}
    return build({"jobs": section}, env=UNREACHABLE if database else {}).jobs


def _cache(path: Path) -> bytes:
    now = time.time()
    records = {
        "r": {"status": "running", "updated_at": now},
        "q": {"status": "queued", "updated_at": now},
        "d": {"status": "done", "updated_at": now},
    }
    path.write_text(json.dumps(records), encoding="utf-8")
    return path.read_bytes()


def _kept(config: JobsConfig) -> KeptConnection:
    assert config.database is not None
    return KeptConnection(config.database, application_name="test")


def test_cache_only_clears_the_cache_and_never_connects(tmp_path: Path) -> None:
    config = _jobs(tmp_path)
    assert config.cache_file is not None
    _cache(config.cache_file)
    database = _kept(config)
    report = force_clean(config, database, now=time.time(), dry_run=False, sources=["cache"])
    assert report.cache == {"running": 1, "queued": 1}
    assert report.database is None
    assert database.up is None  # no connection was even attempted
    assert report.errors.messages == []
    assert report.to_dict()["sources"] == ["cache"]
    left = json.loads(config.cache_file.read_text(encoding="utf-8"))
    assert set(left) == {"d"}


def test_database_only_leaves_the_cache_byte_for_byte(tmp_path: Path) -> None:
    config = _jobs(tmp_path)
    assert config.cache_file is not None
    before = _cache(config.cache_file)
    database = _kept(config)
    report = force_clean(config, database, now=time.time(), dry_run=False, sources=["database"])
    assert config.cache_file.read_bytes() == before
    assert report.cache is None
    # The database was tried (and is down here): its failure is the report's only error,
    # and it is reported as failed (None), not as having nothing to end ({}).
    assert database.up is False
    assert report.errors.messages == ["database: down"]
    assert report.database is None
    assert report.sources == ("database",)


def test_sources_keep_their_order_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    config = _jobs(tmp_path, database=False)
    report = force_clean(config, None, now=0.0, dry_run=True, sources=["cache", "database"])
    assert report.sources == JOB_SOURCES
    for bad in (["files"], []):
        with pytest.raises(ValueError, match="sources"):
            force_clean(config, None, now=0.0, dry_run=True, sources=bad)


def test_a_cache_only_report_says_nothing_of_the_database(tmp_path: Path) -> None:
    config = _jobs(tmp_path)
    report = {
        "dry_run": True,
        "database": None,
        "cache": {"running": 2},
        "total": 2,
        "errors": [],
        "sources": ["cache"],
    }
    lines = format_force_clean(report, config)
    assert lines[0] == "force-clean (dry run): would end 2 active jobs in the cache"
    assert not any("database" in line for line in lines), lines
    assert lines[1].endswith("would remove 2 entries (running: 2)")
    everything = format_force_clean({**report, "sources": list(JOB_SOURCES)}, config)
    assert everything[0] == "force-clean (dry run): would end 2 active jobs"


def test_a_cache_only_report_on_a_host_without_a_cache_says_so(tmp_path: Path) -> None:
    config = _jobs(tmp_path, cache=False)
    report = {"dry_run": False, "database": None, "cache": None, "total": 0, "errors": []}
    only_cache = format_force_clean({**report, "sources": ["cache"]}, config)
    assert only_cache[1:] == ["  cache: not configured"]


def test_status_reads_only_the_sources_asked_for(tmp_path: Path) -> None:
    config = _jobs(tmp_path)
    assert config.cache_file is not None
    _cache(config.cache_file)
    # The database is unreachable: asked for, it would be reported down.
    cache_only = jobs_status(config, now=time.time(), application_name="t", sources=["cache"])
    assert set(cache_only) == {"cache"}
    assert cache_only["cache"]["active"] == 2
    lines = format_jobs_status(cache_only)
    assert not any("database" in line for line in lines), lines
    both = jobs_status(config, now=time.time(), application_name="t")
    assert set(both) == {"database", "cache", "api"}
    assert both["database"]["up"] is False
    with pytest.raises(ValueError, match="sources"):
        jobs_status(config, now=0.0, application_name="t", sources=["files"])


def test_status_of_an_unconfigured_source_names_only_what_was_asked(tmp_path: Path) -> None:
    config = _jobs(tmp_path, database=False, cache=False)
    only_cache = jobs_status(config, now=0.0, application_name="t", sources=["cache"])
    assert format_jobs_status(only_cache)[1:] == ["  no jobs.cache_file configured"]
    both = jobs_status(config, now=0.0, application_name="t")
    assert format_jobs_status(both)[1:] == ["  no jobs.database and no jobs.cache_file configured"]
