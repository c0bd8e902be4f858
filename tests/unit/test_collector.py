"""The collector against a known state file and a known JSON job cache (a fresh registry each).

These need no server: jobs come from the JSON cache, statvfs is the real one on the test's
directories (or a stand-in raising the error under test). The database path is tested
against a real PostgreSQL in tests/integration/test_exporter_database.py.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cleaner.config import Config, build
from cleaner.state import ERROR_STAGES, SKIP_REASONS, ApiHealth, DirectoryUsage, State, StateStore
from exporter.collector import LimpezaCollector

NOW = 1_700_000_000.0


def make_config(tmp_path: Path, **jobs: Any) -> Config:
    uploads = tmp_path / "uploads"
    renders = tmp_path / "renders"
    uploads.mkdir(exist_ok=True)
    renders.mkdir(exist_ok=True)
    raw = {
        "state_file": str(tmp_path / "state.json"),
        "files": {
            "directories": [str(uploads)],
            "rules": [
                {"name": "sessions", "pattern": "session_*.json", "max_age": "24h"},
                {"name": "temp_audio", "pattern": "temp_audio_*.wav", "max_age": "1h"},
                {
                    "name": "final_videos",
                    "pattern": "final_*.mp4",
                    "max_age": "7d",
                    "directories": [str(renders)],
                },
            ],
        },
        "jobs": {"cache_file": str(tmp_path / "jobs.json"), **jobs},
    }
    return build(raw, env={})


def known_state() -> State:
    return State(
        files_removed={"sessions": 12, "temp_audio": 3, "retired_rule": 4},
        bytes_removed={"sessions": 4096, "temp_audio": 3_000_000, "retired_rule": 10},
        skipped={"protected": 2, "symlink": 1},
        errors={"files": 1, "database": 5},
        jobs_reaped={"database": {"running": 7, "queued": 2}, "cache": {"running": 1}},
        force_cleans=1,
        sweeps=42,
        clock_jumps=2,
        last_sweep_start=NOW - 30,
        last_sweep_end=NOW - 29.5,
        last_sweep_duration=0.5,
        last_success=NOW - 60,
        directories={"/srv/uploads": DirectoryUsage(files=120, bytes=987_654)},
        api=ApiHealth(up=True, jobs_active=9, checked_at=NOW - 29),
        database_up=True,
        jobs_active=3,
    )


def write_cache(path: Path, records: dict[str, dict[str, object]]) -> None:
    path.write_text(json.dumps(records), encoding="utf-8")


KNOWN_CACHE: dict[str, dict[str, object]] = {
    "a": {"status": "running", "updated_at": NOW - 500},  # stale (> 3m)
    "b": {"status": "running", "updated_at": NOW - 10},
    "c": {"status": "queued", "created_at": NOW - 300},  # stale (> 2m)
    "d": {"status": "queued", "started_at": NOW - 60},
    "e": {"status": "queued", "updated_at": NOW - 1},
    "f": {"status": "done", "updated_at": NOW - 10_000},
    "g": {"status": "error", "updated_at": NOW - 10_000},
}


def scrape(
    config: Config, statvfs: Callable[[Path], os.statvfs_result] | None = None
) -> tuple[CollectorRegistry, LimpezaCollector]:
    registry = CollectorRegistry()
    kwargs: dict[str, Any] = {"version": "9.9.9", "clock": lambda: NOW}
    if statvfs is not None:
        kwargs["statvfs"] = statvfs
    collector = LimpezaCollector(config, **kwargs)
    registry.register(collector)
    return registry, collector


def test_known_state_file_gives_exact_counters(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    StateStore(config.state_file).save(known_state())
    registry, _ = scrape(config)
    v = registry.get_sample_value

    assert v("limpeza_state_up") == 1
    assert v("limpeza_files_removed_total", {"rule": "sessions"}) == 12
    assert v("limpeza_files_removed_total", {"rule": "temp_audio"}) == 3
    assert v("limpeza_files_removed_total", {"rule": "final_videos"}) == 0  # known, initialised
    assert v("limpeza_files_removed_total", {"rule": "retired_rule"}) == 4  # kept, not lost
    assert v("limpeza_bytes_removed_total", {"rule": "sessions"}) == 4096
    assert v("limpeza_bytes_removed_total", {"rule": "temp_audio"}) == 3_000_000
    assert v("limpeza_bytes_removed_total", {"rule": "final_videos"}) == 0
    assert v("limpeza_files_skipped_total", {"reason": "protected"}) == 2
    assert v("limpeza_files_skipped_total", {"reason": "symlink"}) == 1
    for reason in SKIP_REASONS:
        assert v("limpeza_files_skipped_total", {"reason": reason}) is not None
    assert v("limpeza_cleanup_errors_total", {"stage": "files"}) == 1
    assert v("limpeza_cleanup_errors_total", {"stage": "database"}) == 5
    for stage in ERROR_STAGES:
        assert v("limpeza_cleanup_errors_total", {"stage": stage}) is not None
    assert v("limpeza_cleanup_errors_total", {"stage": "cache"}) == 0
    assert v("limpeza_jobs_reaped_total", {"source": "database", "status": "running"}) == 7
    assert v("limpeza_jobs_reaped_total", {"source": "database", "status": "queued"}) == 2
    assert v("limpeza_jobs_reaped_total", {"source": "cache", "status": "running"}) == 1
    assert v("limpeza_jobs_reaped_total", {"source": "cache", "status": "queued"}) == 0
    assert v("limpeza_force_cleans_total") == 1
    assert v("limpeza_sweeps_total") == 42
    assert v("limpeza_clock_jumps_total") == 2
    assert v("limpeza_last_sweep_timestamp_seconds") == NOW - 29.5
    assert v("limpeza_last_success_timestamp_seconds") == NOW - 60
    assert v("limpeza_sweep_duration_seconds") == 0.5
    assert v("limpeza_directory_files", {"directory": "/srv/uploads"}) == 120
    assert v("limpeza_directory_bytes", {"directory": "/srv/uploads"}) == 987_654
    assert v("limpeza_exporter_build_info", {"version": "9.9.9"}) == 1
    assert v("limpeza_jobs_stale_after_seconds", {"status": "running"}) == 180
    assert v("limpeza_jobs_stale_after_seconds", {"status": "queued"}) == 120
    assert v("limpeza_rule_max_age_seconds", {"rule": "temp_audio"}) == 3600
    assert v("limpeza_rule_max_age_seconds", {"rule": "final_videos"}) == 7 * 86400
    duration = v("limpeza_exporter_scrape_duration_seconds")
    assert duration is not None and duration >= 0


def test_known_cache_gives_exact_job_counts(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.jobs.cache_file is not None
    write_cache(config.jobs.cache_file, KNOWN_CACHE)
    registry, _ = scrape(config)
    v = registry.get_sample_value

    assert v("limpeza_cache_up") == 1
    assert v("limpeza_jobs", {"status": "running"}) == 2
    assert v("limpeza_jobs", {"status": "queued"}) == 3
    assert v("limpeza_jobs", {"status": "done"}) is None  # not a configured status
    assert v("limpeza_jobs", {"status": "other"}) == 1
    assert v("limpeza_jobs", {"status": "error"}) == 1  # the status the reaper writes
    assert v("limpeza_jobs_active") == 5
    assert v("limpeza_jobs_stale", {"status": "running"}) == 1
    assert v("limpeza_jobs_stale", {"status": "queued"}) == 1
    assert v("limpeza_database_up") is None  # no database configured


def test_missing_cache_counts_zero_for_each_active_status(tmp_path: Path) -> None:
    registry, _ = scrape(make_config(tmp_path))
    v = registry.get_sample_value
    assert v("limpeza_cache_up") == 1
    assert v("limpeza_jobs_active") == 0
    for status in ("running", "queued"):
        assert v("limpeza_jobs", {"status": status}) == 0
        assert v("limpeza_jobs_stale", {"status": status}) == 0


def test_corrupt_cache_reports_cache_down_and_no_job_counts(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.jobs.cache_file is not None
    config.jobs.cache_file.write_text("{not json", encoding="utf-8")
    StateStore(config.state_file).save(known_state())
    registry, _ = scrape(config)
    v = registry.get_sample_value
    assert v("limpeza_cache_up") == 0
    assert v("limpeza_jobs_active") is None
    assert v("limpeza_jobs", {"status": "running"}) is None
    assert v("limpeza_state_up") == 1  # the rest still comes
    assert v("limpeza_sweeps_total") == 42


def test_no_job_source_exports_no_job_counts(tmp_path: Path) -> None:
    config = make_config(tmp_path, cache_file=None)
    registry, _ = scrape(config)
    v = registry.get_sample_value
    assert v("limpeza_jobs_active") is None
    assert v("limpeza_cache_up") is None
    assert v("limpeza_database_up") is None


def test_missing_state_file_gives_no_counters(tmp_path: Path) -> None:
    registry, _ = scrape(make_config(tmp_path))
    v = registry.get_sample_value
    assert v("limpeza_state_up") == 0
    assert v("limpeza_files_removed_total", {"rule": "sessions"}) is None
    assert v("limpeza_sweeps_total") is None
    assert v("limpeza_last_sweep_timestamp_seconds") is None
    assert v("limpeza_jobs_active") == 0  # the jobs still come


@pytest.mark.parametrize(
    "content",
    [b"{half a file", b'{"version": 99}', b"[]", b"\xff\xfe not utf-8"],
    ids=["truncated", "other-version", "not-an-object", "binary"],
)
def test_corrupt_state_file_gives_no_counters_and_no_error(tmp_path: Path, content: bytes) -> None:
    config = make_config(tmp_path)
    config.state_file.write_bytes(content)
    registry, _ = scrape(config)
    v = registry.get_sample_value
    assert v("limpeza_state_up") == 0
    assert v("limpeza_files_removed_total", {"rule": "sessions"}) is None
    assert b"limpeza_state_up 0.0" in generate_latest(registry)


def test_state_file_problem_logged_once_per_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    registry, _ = scrape(config)
    caplog.set_level(logging.INFO, logger="exporter.collector")

    def state_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "state file" in r.getMessage()]

    config.state_file.write_text("{corrupt", encoding="utf-8")
    for _ in range(3):
        generate_latest(registry)
    lines = state_lines()
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert str(config.state_file) in lines[0].getMessage()
    assert "not valid JSON" in lines[0].getMessage()

    StateStore(config.state_file).save(known_state())
    for _ in range(3):
        generate_latest(registry)
    lines = state_lines()
    assert len(lines) == 2
    assert lines[1].levelno == logging.INFO
    assert registry.get_sample_value("limpeza_state_up") == 1


def test_api_metrics_only_when_health_url_is_set(tmp_path: Path) -> None:
    without = make_config(tmp_path)
    StateStore(without.state_file).save(known_state())
    registry, _ = scrape(without)
    assert registry.get_sample_value("limpeza_api_up") is None
    assert registry.get_sample_value("limpeza_api_jobs_active") is None

    with_url = make_config(tmp_path, health_url="http://127.0.0.1:8000/health")
    registry, _ = scrape(with_url)
    v = registry.get_sample_value
    assert v("limpeza_api_up") == 1
    assert v("limpeza_api_jobs_active") == 9
    assert v("limpeza_api_last_check_timestamp_seconds") == NOW - 29


def test_api_down_is_zero_and_unchecked_api_is_absent(tmp_path: Path) -> None:
    config = make_config(tmp_path, health_url="http://127.0.0.1:8000/health")
    state = known_state()
    state.api = ApiHealth(up=False, jobs_active=None, checked_at=NOW - 5)
    StateStore(config.state_file).save(state)
    registry, _ = scrape(config)
    assert registry.get_sample_value("limpeza_api_up") == 0
    assert registry.get_sample_value("limpeza_api_jobs_active") is None

    state.api = ApiHealth()
    StateStore(config.state_file).save(state)
    registry, _ = scrape(config)
    assert registry.get_sample_value("limpeza_api_up") is None


def test_filesystem_series_per_monitored_directory(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    registry, _ = scrape(config)
    v = registry.get_sample_value
    for directory in (tmp_path / "uploads", tmp_path / "renders"):
        st = os.statvfs(directory)
        labels = {"directory": str(directory)}
        assert v("limpeza_filesystem_size_bytes", labels) == st.f_blocks * st.f_frsize
        avail = v("limpeza_filesystem_avail_bytes", labels)
        assert avail is not None and 0 <= avail <= st.f_blocks * st.f_frsize
        assert v("limpeza_filesystem_files", labels) == st.f_files


def test_unreadable_or_missing_directory_has_an_error_series_and_its_ancestors_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    denied = tmp_path / "renders"

    def statvfs(path: Path) -> os.statvfs_result:
        if path == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return os.statvfs(path)

    (tmp_path / "uploads").rmdir()
    registry, _ = scrape(config, statvfs)
    caplog.set_level(logging.WARNING, logger="exporter.collector")
    generate_latest(registry)
    generate_latest(registry)
    v = registry.get_sample_value
    parent = os.statvfs(tmp_path)
    for directory in (denied, tmp_path / "uploads"):
        labels = {"directory": str(directory)}
        assert v("limpeza_filesystem_error", labels) == 1
        # Measured where its files would be, so the disk alerts still watch it.
        assert v("limpeza_filesystem_size_bytes", labels) == parent.f_blocks * parent.f_frsize
    assert v("limpeza_state_up") == 0
    messages = [r.getMessage() for r in caplog.records if "statvfs" in r.getMessage()]
    assert len(messages) == 2  # one per directory, not one per scrape
    assert any("Permission denied" in m for m in messages)

    (tmp_path / "uploads").mkdir()
    assert v("limpeza_filesystem_error", {"directory": str(tmp_path / "uploads")}) == 0
    size = v("limpeza_filesystem_size_bytes", {"directory": str(tmp_path / "uploads")})
    assert size is not None and size > 0


def test_a_directory_nothing_can_measure_has_only_its_error_series(tmp_path: Path) -> None:
    def statvfs(path: Path) -> os.statvfs_result:
        raise OSError(5, "Input/output error", str(path))

    registry, _ = scrape(make_config(tmp_path), statvfs)
    labels = {"directory": str(tmp_path / "uploads")}
    assert registry.get_sample_value("limpeza_filesystem_error", labels) == 1
    assert registry.get_sample_value("limpeza_filesystem_size_bytes", labels) is None


def test_statuses_outside_the_configured_ones_are_one_other_series(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.jobs.cache_file is not None
    records: dict[str, dict[str, object]] = {
        f"job{i}": {"status": f"weird-{i}", "updated_at": NOW} for i in range(500)
    }
    records.update(KNOWN_CACHE)
    write_cache(config.jobs.cache_file, records)
    state = known_state()
    state.jobs_reaped = {"cache": {f"weird-{i}": 1 for i in range(300)} | {"running": 2}}
    StateStore(config.state_file).save(state)
    registry, _ = scrape(config)
    v = registry.get_sample_value
    jobs = [s for f in registry.collect() if f.name == "limpeza_jobs" for s in f.samples]
    assert {s.labels["status"] for s in jobs} == {"running", "queued", "error", "other"}
    assert v("limpeza_jobs", {"status": "other"}) == 501  # 500 weird ones and one done
    assert v("limpeza_jobs_active") == 5
    reaped = [s for f in registry.collect() if f.name == "limpeza_jobs_reaped" for s in f.samples]
    assert {s.labels["status"] for s in reaped if s.name.endswith("_total")} == {
        "running",
        "queued",
        "other",
    }
    assert v("limpeza_jobs_reaped_total", {"source": "cache", "status": "other"}) == 300
    assert v("limpeza_jobs_reaped_total", {"source": "cache", "status": "running"}) == 2


def test_oldest_active_job_age_per_status_from_the_cache(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.jobs.cache_file is not None
    write_cache(config.jobs.cache_file, KNOWN_CACHE)
    registry, _ = scrape(config)
    v = registry.get_sample_value
    assert v("limpeza_jobs_oldest_age_seconds", {"status": "running"}) == 500
    assert v("limpeza_jobs_oldest_age_seconds", {"status": "queued"}) == 300
    assert v("limpeza_jobs_oldest_age_seconds", {"status": "done"}) is None

    write_cache(config.jobs.cache_file, {})
    assert v("limpeza_jobs_oldest_age_seconds", {"status": "running"}) == 0


def test_process_metrics_of_the_exporter_itself(tmp_path: Path) -> None:
    registry, _ = scrape(make_config(tmp_path))
    v = registry.get_sample_value
    resident = v("process_resident_memory_bytes")
    assert resident is not None and resident > 0
    fds = v("process_open_fds")
    assert fds is not None and fds > 0
    start = v("process_start_time_seconds")
    assert start is not None and start > 0


def test_reload_takes_the_new_rules(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    StateStore(config.state_file).save(known_state())
    registry, collector = scrape(config)
    raw = {
        "state_file": str(config.state_file),
        "files": {
            "directories": [str(tmp_path / "uploads")],
            "rules": [{"name": "thumbnails", "pattern": "thumb_*.png", "max_age": "1h"}],
        },
    }
    collector.reload(build(raw, env={}))
    v = registry.get_sample_value
    assert v("limpeza_files_removed_total", {"rule": "thumbnails"}) == 0
    assert v("limpeza_files_removed_total", {"rule": "final_videos"}) is None
    assert v("limpeza_cache_up") is None


def test_counters_have_total_suffix_and_help_in_the_text_format(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    StateStore(config.state_file).save(known_state())
    registry, _ = scrape(config)
    text = generate_latest(registry).decode()
    for family in registry.collect():
        assert family.documentation, family.name
        if family.type == "counter":
            assert f"# TYPE {family.name}_total counter" in text or (
                f"# TYPE {family.name} counter" in text
            )
            for sample in family.samples:
                assert sample.name.endswith(("_total", "_created")), sample.name
    assert "limpeza_files_removed_total{rule=" in text
