"""Every configuration check-config accepts is safe to run; what it refuses, it names.

Each refusal is exit 2 from ``limpeza-cleaner check-config FILE`` with the key path, every
problem at once, and the same configuration never starts a sweep.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cleaner import cli
from cleaner.config import ConfigError, build, parse_duration
from tests.fixtures.trees import DAY, Tree


def _check(tmp_path: Path, raw: dict[str, object], capsys: pytest.CaptureFixture[str]) -> str:
    """check-config on a file holding ``raw``: asserts exit 2, returns what it printed."""
    path = tmp_path / "limpeza.yml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["check-config", str(path)], env={}) == 2
    return capsys.readouterr().err


def _base(tmp_path: Path, **overrides: object) -> dict[str, object]:
    uploads = tmp_path / "uploads"
    uploads.mkdir(exist_ok=True)
    raw: dict[str, object] = {
        "state_file": str(tmp_path / "state.json"),
        "files": {"directories": [str(uploads)]},
    }
    raw.update(overrides)
    return raw


# -- 1. durations: finite, not negative, and within a documented maximum -----------------

DURATION_KEYS = {
    "interval": ("interval",),
    "files.full_read_every": ("files", "full_read_every"),
    "files.rules[0].max_age": ("files", "rules", 0, "max_age"),
    "jobs.stale_after.running": ("jobs", "stale_after", "running"),
    "jobs.force_clean.min_age": ("jobs", "force_clean", "min_age"),
    "jobs.health_timeout": ("jobs", "health_timeout"),
    "jobs.database.lock_timeout": ("jobs", "database", "lock_timeout"),
    "jobs.database.statement_timeout": ("jobs", "database", "statement_timeout"),
    "jobs.database.connect_timeout": ("jobs", "database", "connect_timeout"),
    "exporter.database_timeout": ("exporter", "database_timeout"),
}


def _with_duration(
    tmp_path: Path, where: tuple[str | int, ...], value: object
) -> dict[str, object]:
    raw = _base(
        tmp_path,
        jobs={"stale_after": {"running": "3m", "queued": "2m"}, "database": {}},
    )
    files = raw["files"]
    assert isinstance(files, dict)
    files["rules"] = [{"name": "sessions", "pattern": "session_*.json", "max_age": "24h"}]
    node: object = raw
    for key in where[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]  # type: ignore[index]
    assert isinstance(node, dict)
    node[where[-1]] = value
    return raw


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e300, "20000w"])
@pytest.mark.parametrize("key", sorted(DURATION_KEYS))
def test_every_duration_key_refuses_nan_infinity_and_absurd_lengths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: object
) -> None:
    err = _check(tmp_path, _with_duration(tmp_path, DURATION_KEYS[key], value), capsys)
    assert f"  {key}: expected a duration " in err


def test_the_bounds_are_ten_years_for_ages_one_day_for_interval_one_hour_for_waits(
    tmp_path: Path,
) -> None:
    def problems(where: tuple[str | int, ...], value: object) -> list[str]:
        try:
            build(_with_duration(tmp_path, where, value), env={})
        except ConfigError as exc:
            return exc.problems
        return []

    assert problems(DURATION_KEYS["files.rules[0].max_age"], "3650d") == []
    assert problems(DURATION_KEYS["files.rules[0].max_age"], "3651d") == [
        'files.rules[0].max_age: expected a duration from 0s to 3650d, got "3651d"'
    ]
    assert problems(DURATION_KEYS["interval"], "1d") == []
    assert problems(DURATION_KEYS["interval"], "25h") == [
        'interval: expected a duration from 0s to 1d, got "25h"'
    ]
    assert problems(DURATION_KEYS["jobs.health_timeout"], "1h") == []
    assert problems(DURATION_KEYS["jobs.health_timeout"], "61m") != []


def test_all_duration_problems_are_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _with_duration(tmp_path, ("interval",), float("nan"))
    raw["exporter"] = {"database_timeout": float("inf")}
    err = _check(tmp_path, raw, capsys)
    assert "  interval: " in err
    assert "  exporter.database_timeout: " in err


def test_a_nan_max_age_never_sweeps(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    young = tree.file("session_young.json", age=60)
    path = tree.write_config(
        files={
            "directories": [str(tree.uploads)],
            "rules": [{"name": "sessions", "pattern": "session_*.json", "max_age": float("nan")}],
        }
    )
    assert cli.main(["--config", str(path), "once"], env={}) == 2
    assert "files.rules[0].max_age" in capsys.readouterr().err
    assert young.exists()


@pytest.mark.parametrize("text", ["nan", "inf", "3651d", "20000w", "-1s"])
def test_the_cli_max_age_has_the_same_bounds(
    tree: Tree, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    tree.file("session_old.json", age=2 * DAY)
    path = tree.write_config()
    with pytest.raises(SystemExit) as exited:
        cli.main(["--config", str(path), "once", f"--max-age={text}"], env={})
    assert exited.value.code == 2
    assert "at most 3650d" in capsys.readouterr().err
    assert tree.names() == {"session_old.json"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 10**400, "1" * 400 + "w"])
def test_parse_duration_refuses_what_no_clock_can_wait(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


# -- 2. patterns fnmatch(3) would take otherwise than meant ------------------------------


@pytest.mark.parametrize(
    ("glob", "problem"),
    [
        ("session_\\", "ends with a lone '\\'"),
        ("session_[a.json", "has a '[' that no ']' closes"),
        ("session_[[:digit].json", "has a '[:' that no ':]' closes"),
        ("session_[[:digits:]].json", "has an unknown class [:digits:]"),
        ("session_[[=a=]].json", "has [= =] or [. .]"),
    ],
)
def test_a_pattern_fnmatch_would_misread_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], glob: str, problem: str
) -> None:
    raw = _base(tmp_path, files={"rules": [{"name": "s", "pattern": glob, "max_age": "1d"}]})
    raw["files"]["directories"] = [str(tmp_path / "uploads")]  # type: ignore[index]
    raw["files"]["protect"] = ["original_*", glob]  # type: ignore[index]
    err = _check(tmp_path, raw, capsys)
    assert f"  files.rules[0].pattern: {problem}" in err
    assert f"  files.protect[1]: {problem}" in err


# -- 3. protect globs with '/' protect nothing: refused --------------------------------


def test_a_protect_glob_with_a_slash_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _base(tmp_path)
    raw["files"]["protect"] = ["original_*", "originals/*", "*/keep.json"]  # type: ignore[index]
    err = _check(tmp_path, raw, capsys)
    assert "  files.protect[1]: protects base names only" in err
    assert "  files.protect[2]: protects base names only" in err
    assert "files.protect[0]" not in err


# -- 4. system directories and catch-all patterns need allow_dangerous -------------------

SYSTEM = ["/", "/etc", "/usr", "/bin", "/boot", "/home", "/root", "/var/lib", "/proc", "/sys"]
SYSTEM += ["/dev", "/etc/ssl", "/usr/lib", "/home/alice", "/var/lib/postgresql", "//etc/./"]


@pytest.mark.parametrize("directory", SYSTEM)
def test_a_system_directory_is_refused_without_allow_dangerous(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], directory: str
) -> None:
    rule = {"name": "logs", "pattern": "*.log", "max_age": "7d", "directories": [directory]}
    err = _check(tmp_path, _base(tmp_path, files={"rules": [rule]}), capsys)
    assert "  files.rules[0].directories[0]: " in err
    assert "is a system directory" in err
    assert build(_base(tmp_path, files={"rules": [{**rule, "allow_dangerous": True}]}), env={})


def test_a_system_directory_in_files_directories_names_that_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _base(tmp_path, files={"directories": [str(tmp_path), "/usr/lib"]})
    err = _check(tmp_path, raw, capsys)
    assert '  files.directories[1]: "/usr/lib" is a system directory' in err
    assert "files.directories[0]" not in err


@pytest.mark.parametrize("directory", ["/var/tmp", "/srv/app/uploads", "/tmp", "/var/log/app"])
def test_application_directories_are_not_system_directories(tmp_path: Path, directory: str) -> None:
    rule = {"name": "logs", "pattern": "*.log", "max_age": "7d", "directories": [directory]}
    assert build(_base(tmp_path, files={"rules": [rule]}), env={})


@pytest.mark.parametrize("glob", ["*", "?*", ".*", "**", "*.*", "[a-z]*", "*.?*", "[!.]*"])
def test_a_catch_all_pattern_is_refused_without_allow_dangerous(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], glob: str
) -> None:
    rule = {"name": "everything", "pattern": glob, "max_age": "1d"}
    err = _check(tmp_path, _base(tmp_path, files={"rules": [rule]}), capsys)
    assert "  files.rules[0].pattern: " in err
    assert "selects every name" in err
    assert build(_base(tmp_path, files={"rules": [{**rule, "allow_dangerous": True}]}), env={})


@pytest.mark.parametrize("glob", ["*.json", "session_*", "*_a*", "x?", "\\*"])
def test_a_pattern_with_a_literal_is_not_a_catch_all(tmp_path: Path, glob: str) -> None:
    rule = {"name": "some", "pattern": glob, "max_age": "1d"}
    assert build(_base(tmp_path, files={"rules": [rule]}), env={})


def test_sweeping_etc_with_star_is_refused_and_its_dry_run_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _base(
        tmp_path,
        files={
            "rules": [
                {
                    "name": "etc",
                    "pattern": "*",
                    "max_age": 0,
                    "recursive": True,
                    "directories": ["/etc"],
                }
            ]
        },
    )
    err = _check(tmp_path, raw, capsys)
    assert "  files.rules[0].pattern: " in err
    assert '  files.rules[0].directories[0]: "/etc" is a system directory' in err
    path = tmp_path / "limpeza.yml"
    assert cli.main(["--config", str(path), "once", "--dry-run"], env={}) == 2
    out = capsys.readouterr()
    assert "passwd" not in out.out
    assert "would be removed" not in out.out
