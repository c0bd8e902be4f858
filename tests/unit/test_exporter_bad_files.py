"""A scrape never fails and never blocks on the files it reads (a fresh registry each).

A state file with wrong value types, or a FIFO at the state or the cache path (the cache's
default is in world-writable /tmp), costs that source's series only: the scrape answers at
once with ``limpeza_state_up 0`` or ``limpeza_cache_up 0`` and every other family.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cleaner.config import Config, build
from cleaner.state import State, StateStore
from exporter.collector import LimpezaCollector
from tests.fixtures.exposition import sample

#: Families that come from the state file: the only ones an unusable one may take away.
STATE_FAMILIES = {
    "limpeza_files_removed",
    "limpeza_bytes_removed",
    "limpeza_files_skipped",
    "limpeza_jobs_reaped",
    "limpeza_jobs_reap_skipped",
    "limpeza_cleanup_errors",
    "limpeza_force_cleans",
    "limpeza_clock_jumps",
    "limpeza_sweeps",
    "limpeza_last_sweep_timestamp_seconds",
    "limpeza_last_success_timestamp_seconds",
    "limpeza_sweep_duration_seconds",
    "limpeza_directory_files",
    "limpeza_directory_bytes",
    "limpeza_directory_missing",
}


def make_config(tmp_path: Path) -> Config:
    (tmp_path / "uploads").mkdir(exist_ok=True)
    raw = {
        "state_file": str(tmp_path / "state.json"),
        "files": {"directories": [str(tmp_path / "uploads")]},
        "jobs": {"cache_file": str(tmp_path / "jobs.json")},
    }
    return build(raw, env={})


def good_state() -> State:
    return State(
        files_removed={"sessions": 2},
        sweeps=3,
        last_sweep_end=1_700_000_000.0,
        last_success=1_700_000_000.0,
        last_sweep_duration=0.1,
    )


def scrape_text(config: Config, timeout: float = 5.0) -> str:
    """The text exposition of one scrape, or a failure if it takes longer than ``timeout``."""
    registry = CollectorRegistry()
    registry.register(LimpezaCollector(config, version="0"))
    result: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(generate_latest(registry).decode())
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"the scrape is still blocked after {timeout:g}s")
    if errors:
        raise errors[0]
    return result[0]


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        f.name: [(s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("force_cleans", [1]),
        ("sweeps", None),
        ("files_removed", {"sessions": None}),
        ("last_success", "yesterday"),
        ("directories", {"/srv/uploads": {"files": "many", "bytes": 0}}),
    ],
)
def test_a_wrong_typed_field_marks_the_state_unreadable_and_the_rest_is_served(
    tmp_path: Path, field: str, bad: object
) -> None:
    config = make_config(tmp_path)
    StateStore(config.state_file).save(good_state())
    healthy = families(scrape_text(config))
    assert sample(scrape_text(config), "limpeza_state_up") == 1

    raw = json.loads(config.state_file.read_text(encoding="utf-8"))
    raw[field] = bad
    config.state_file.write_text(json.dumps(raw), encoding="utf-8")
    text = scrape_text(config)
    assert sample(text, "limpeza_state_up") == 0
    got = families(text)
    assert set(got) == set(healthy) - STATE_FAMILIES
    assert sample(text, "limpeza_cache_up") == 1
    assert sample(text, "limpeza_jobs_active") == 0


def test_a_fifo_at_the_state_path_does_not_block_a_scrape(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    os.mkfifo(config.state_file)
    text = scrape_text(config)
    assert sample(text, "limpeza_state_up") == 0
    assert sample(text, "limpeza_cache_up") == 1


def test_a_fifo_at_the_cache_path_does_not_block_a_scrape(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.jobs.cache_file is not None
    StateStore(config.state_file).save(good_state())
    os.mkfifo(config.jobs.cache_file)
    text = scrape_text(config)
    assert sample(text, "limpeza_cache_up") == 0
    assert sample(text, "limpeza_state_up") == 1
    assert "limpeza_jobs_active" not in families(text)


@pytest.mark.parametrize("kind", ["directory", "oversized"])
def test_a_state_path_that_is_no_state_file_is_unreadable(tmp_path: Path, kind: str) -> None:
    config = make_config(tmp_path)
    if kind == "directory":
        config.state_file.mkdir()
    else:
        StateStore(config.state_file).save(good_state())
        with config.state_file.open("ab") as handle:
            handle.truncate(32 << 20)  # a sparse tail of NULs past the reader's cap
    text = scrape_text(config)
    assert sample(text, "limpeza_state_up") == 0
    assert sample(text, "limpeza_cache_up") == 1
