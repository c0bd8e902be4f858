"""validate_state: every reader of the state file refuses the same wrong-typed files.

Pure logic on parsed JSON; the daemon's handling of such a file (moved aside, counting
starts fresh) is tested with the real process in tests/integration/test_cleaner_state_file.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cleaner.config import build
from cleaner.state import ApiHealth, DirectoryUsage, State, StateStore, read_state
from cleaner.state_schema import MAX_COUNT, validate_state
from exporter.collector import LimpezaCollector


def full_state() -> State:
    return State(
        files_removed={"sessions": 3},
        bytes_removed={"sessions": 300},
        skipped={"symlink": 1},
        errors={"files": 2},
        jobs_reaped={"cache": {"running": 1}},
        force_cleans=1,
        reaps_skipped=2,
        sweeps=9,
        last_sweep_start=1_800_000_000.0,
        last_sweep_end=1_800_000_001.5,
        last_sweep_duration=1.5,
        last_success=1_800_000_001.5,
        directories={"/srv/uploads": DirectoryUsage(4, 4096)},
        missing_directories=["/srv/typo"],
        api=ApiHealth(True, 2, 1_800_000_000.0),
        database_up=False,
        jobs_active=3,
    )


def test_what_the_cleaner_writes_is_valid_and_reads_back_the_same() -> None:
    written = full_state().to_dict()
    assert validate_state(json.loads(json.dumps(written))) == []
    assert State.from_dict(json.loads(json.dumps(written))).to_dict() == written
    assert validate_state(State().to_dict()) == []


def test_a_file_of_an_older_version_without_newer_keys_is_valid() -> None:
    assert validate_state({"version": 1, "sweeps": 2}) == []
    assert State.from_dict({"version": 1, "sweeps": 2}).sweeps == 2


def _with(**changes: object) -> dict[str, object]:
    return {**full_state().to_dict(), **changes}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (_with(sweeps=[1]), "sweeps: expected a count"),
        (_with(sweeps=float("inf")), "sweeps: expected a count"),
        (_with(sweeps=None), "sweeps: expected a count"),
        (_with(sweeps=-1), "sweeps: expected a count"),
        (_with(sweeps=True), "sweeps: expected a count"),
        (_with(sweeps=1.0), "sweeps: expected a count"),
        (_with(sweeps=MAX_COUNT + 1), "sweeps: expected a count"),
        (_with(force_cleans="2"), "force_cleans: expected a count"),
        (_with(files_removed=[1]), "files_removed: expected an object, got [1]"),
        (_with(files_removed={"sessions": None}), 'files_removed["sessions"]: expected a count'),
        (_with(jobs_reaped={"cache": {"running": -1}}), 'jobs_reaped["cache"]["running"]'),
        (_with(jobs_reaped={"cache": 3}), 'jobs_reaped["cache"]: expected an object'),
        (_with(last_success=float("inf")), "last_success: expected a finite number"),
        (_with(last_success=float("nan")), "last_success: expected a finite number"),
        (_with(last_sweep_duration=-1), "last_sweep_duration: expected a finite number"),
        (_with(last_sweep_end="yesterday"), "last_sweep_end: expected a finite number"),
        (
            _with(directories={"/srv/uploads": {"files": [1], "bytes": 0}}),
            'directories["/srv/uploads"].files: expected a count',
        ),
        (
            _with(directories={"/srv/uploads": {"files": 1}}),
            'directories["/srv/uploads"].bytes: missing',
        ),
        (_with(directories={"/srv/uploads": [1]}), 'directories["/srv/uploads"]: expected an'),
        (_with(missing_directories="/srv/typo"), "missing_directories: expected a list"),
        (_with(missing_directories=[None]), "missing_directories[0]: expected a path"),
        (_with(api=None), "api: expected an object"),
        (_with(api={"up": 1}), "api.up: expected true, false or null, got 1"),
        (_with(api={"jobs_active": -3}), "api.jobs_active: expected a count"),
        (_with(database_up="yes"), "database_up: expected true, false or null"),
        (_with(jobs_active=2.5), "jobs_active: expected a count"),
        (_with(version=True), "version: expected 1, got true"),
        (_with(version=2), "version: expected 1, got 2"),
        ([full_state().to_dict()], "(top): expected an object"),
        (None, "(top): expected an object, got null"),
    ],
)
def test_a_wrong_type_or_range_is_a_problem_named_by_its_key_path(
    raw: object, problem: str
) -> None:
    problems = validate_state(raw)
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    with pytest.raises(ValueError, match="not a limpeza state file"):
        State.from_dict(raw)


def test_every_problem_is_found_and_the_message_names_the_first_three() -> None:
    raw = _with(sweeps=-1, force_cleans=None, errors={"files": "x"}, jobs_active=[], api={})
    assert len(validate_state(raw)) == 4
    with pytest.raises(ValueError, match=r"\(and 1 more\)$"):
        State.from_dict(raw)


def test_a_long_value_is_shown_cut_short() -> None:
    [problem] = validate_state(_with(sweeps="x" * 500))
    assert problem.endswith("xxx...") and len(problem) < 120


@pytest.mark.parametrize(
    "text",
    [
        b'{"version": 1, "sweeps": 1e999}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"version": 1, "sweeps": NaN}',
    ],
    ids=["overflow", "deep", "nan"],
)
def test_read_state_raises_value_error_only(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(text)
    with pytest.raises(ValueError):
        read_state(path)


def test_the_exporter_exports_no_counters_from_a_wrong_typed_file(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    config = build(
        {"state_file": str(state_file), "files": {"directories": [str(tmp_path)]}}, env={}
    )
    StateStore(state_file).save(full_state())
    state_file.write_text(state_file.read_text().replace('"sweeps": 9', '"sweeps": [9]'))
    registry = CollectorRegistry()
    registry.register(LimpezaCollector(config, version="0"))
    assert registry.get_sample_value("limpeza_state_up") == 0
    assert registry.get_sample_value("limpeza_sweeps_total") is None
