"""The configuration: durations, key-path errors all at once, overrides, the example file."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cleaner import config as config_mod
from cleaner import config_env
from cleaner.config import ConfigError, build, load, load_text, parse_duration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("3m", 180),
        ("24h", 86400),
        ("7d", 604800),
        ("1w", 604800),
        (45, 45),
        ("0", 0),
        (0, 0),
        ("250ms", 0.25),
        ("1.5h", 5400),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["abc", "-1", -5, "5 years", "", True, None, [1], "3mm"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults_match_the_issue() -> None:
    config = build({}, env={})
    assert config.interval == 30
    assert config.state_file == Path("/var/lib/limpeza/state.json")
    assert [r.name for r in config.files.rules] == ["sessions", "temp_audio", "final_videos"]
    assert all(r.max_age == 86400 and not r.recursive for r in config.files.rules)
    assert config.files.protect == ("original_*",)
    assert config.jobs.stale_after == {"running": 180, "queued": 120}
    assert config.jobs.database is None
    assert config.jobs.force_clean.threshold == 5
    assert config.jobs.force_clean.auto is False
    assert config.exporter.listen_address == "127.0.0.1:9817"


def test_example_file_reproduces_the_defaults() -> None:
    example = load(REPO / "examples" / "limpeza.yml", env={})
    defaults = build({}, env={})
    for name in ("interval", "state_file", "audit_log", "log_level", "files", "jobs", "exporter"):
        assert getattr(example, name) == getattr(defaults, name), name


def test_every_problem_reported_at_once_with_its_key_path() -> None:
    text = """
interval: abc
bogus: 1
files:
  directories: [relative/dir]
  rules:
    - {name: sessions, pattern: "session_*.json", max_age: 24h}
    - {name: temp_audio, pattern: "temp_audio_*.wav", max_age: abc}
    - {name: Bad-Name, pattern: "a/b", max_age: 1h, recursive: "yes"}
    - {pattern: "x"}
jobs:
  database: {table: "jobs; DROP TABLE x", batch_size: 0}
"""
    with pytest.raises(ConfigError) as caught:
        load_text(text, env={}, source="limpeza.yml")
    problems = caught.value.problems
    assert 'interval: expected a duration such as 24h, got "abc"' in problems
    assert 'files.rules[1].max_age: expected a duration such as 24h, got "abc"' in problems
    assert any(p.startswith("bogus: unknown key") for p in problems)
    assert any(p.startswith("files.directories[0]: expected an absolute path") for p in problems)
    assert any(p.startswith("files.rules[2].name:") for p in problems)
    assert any(p.startswith("files.rules[2].pattern:") for p in problems)
    assert any(p.startswith("files.rules[2].recursive:") for p in problems)
    assert "files.rules[3].name: is required" in problems
    assert "files.rules[3].max_age: is required" in problems
    assert any(p.startswith("jobs.database.table: expected an identifier") for p in problems)
    assert any(p.startswith("jobs.database.batch_size:") for p in problems)
    assert str(caught.value).startswith("limpeza.yml: invalid configuration:")


@pytest.mark.parametrize(
    "table",
    ["jobs; DROP TABLE x", 'jobs"', "a.b.c", "1jobs", "jobs--", "", "job s", "public.jobs;"],
)
def test_hostile_table_names_refused(table: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build({"jobs": {"database": {"table": table}}}, env={})
    assert any(p.startswith("jobs.database.table:") for p in caught.value.problems)


@pytest.mark.parametrize(
    "column", ["id_column", "status_column", "timestamp_column", "error_message_column"]
)
def test_hostile_column_names_refused(column: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build({"jobs": {"database": {column: "x); DELETE FROM jobs; --"}}}, env={})
    assert any(p.startswith(f"jobs.database.{column}:") for p in caught.value.problems)


def test_schema_qualified_table_accepted() -> None:
    config = build({"jobs": {"database": {"table": "public.jobs"}}}, env={})
    assert config.jobs.database is not None
    assert config.jobs.database.table_parts == ("public", "jobs")


def test_broken_yaml_names_the_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text("interval: 30s\nfiles: [unclosed\n", env={})
    assert "line" in caught.value.problems[0]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    with pytest.raises(ConfigError):
        load_text(text, env={})


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yml", env={})
    bad = tmp_path / "latin1.yml"
    bad.write_bytes(b"interval: \xff\xfe\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load(bad, env={})


def test_environment_overrides_keys() -> None:
    env = {
        "LIMPEZA_INTERVAL": "10s",
        "LIMPEZA_JOBS__HEALTH_URL": "http://127.0.0.1:8000/health",
        "LIMPEZA_FILES__PROTECT": "[original_*, keep_*]",
        "LIMPEZA_JOBS__FORCE_CLEAN__AUTO": "true",
        "UNRELATED": "x",
    }
    config = build({"interval": "30s"}, env=env)
    assert config.interval == 10
    assert config.jobs.health_url == "http://127.0.0.1:8000/health"
    assert config.files.protect == ("original_*", "keep_*")
    assert config.jobs.force_clean.auto is True


def test_environment_override_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        build({}, env={"LIMPEZA_INTERVAL": "soon"})
    assert caught.value.problems == ['interval: expected a duration such as 24h, got "soon"']


def test_dsn_comes_from_the_environment_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"jobs\.database\.dsn: unknown key"):
        build({"jobs": {"database": {"dsn": "postgresql://u:p@h/db"}}}, env={})
    config = build(
        {"jobs": {"database": {}}}, env={"LIMPEZA_DATABASE_URL": "postgresql://u:s3cret@h/db"}
    )
    assert config.jobs.database is not None
    assert config.jobs.database.dsn == "postgresql://u:s3cret@h/db"
    assert "s3cret" not in repr(config)


def test_dotenv_beside_the_config_is_read_and_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "limpeza.yml"
    path.write_text("jobs:\n  database: {}\n", encoding="utf-8")
    (tmp_path / ".env").write_text(
        "LIMPEZA_DATABASE_URL=postgresql://from-dotenv/db\nLIMPEZA_INTERVAL=5s\n",
        encoding="utf-8",
    )
    config = load(path, env={"LIMPEZA_INTERVAL": "7s"})
    assert config.interval == 7
    assert config.jobs.database is not None
    assert config.jobs.database.dsn == "postgresql://from-dotenv/db"


def test_config_path_resolution() -> None:
    assert config_mod.resolve_path("a.yml", {"LIMPEZA_CONFIG": "b.yml"}) == Path("a.yml")
    assert config_mod.resolve_path(None, {"LIMPEZA_CONFIG": "b.yml"}) == Path("b.yml")
    assert config_mod.resolve_path(None, {}) == Path("/etc/limpeza/limpeza.yml")


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("postgresql://app:hunter2@db.example:5432/app", "hunter2"),
        ("host=db user=app password=hunter2 dbname=app", "hunter2"),
        ("host=db password='hunter 2' dbname=app", "hunter 2"),
    ],
)
def test_mask_dsn(dsn: str, secret: str) -> None:
    masked = config_mod.mask_dsn(dsn)
    assert secret not in masked
    assert "***" in masked


def test_rule_directories_and_all_directories() -> None:
    config = build(
        {
            "files": {
                "directories": ["/a", "/b"],
                "rules": [
                    {"name": "r1", "pattern": "x*", "max_age": "1h"},
                    {"name": "r2", "pattern": "y*", "max_age": 0, "directories": ["/c", "/a"]},
                ],
            }
        },
        env={},
    )
    assert config.files.rules[1].directories == (Path("/c"), Path("/a"))
    assert config.files.all_directories() == (Path("/a"), Path("/b"), Path("/c"))


def test_active_status_needs_a_threshold() -> None:
    with pytest.raises(ConfigError, match="no threshold for active status"):
        build({"jobs": {"database": {"active_statuses": ["queued", "running", "paused"]}}}, env={})


# --------------------------------------------------------------------------- one source


def _key_tree(value: object) -> object:
    """The nested keys of a mapping (lists and scalars are leaves)."""
    if isinstance(value, dict):
        return {key: _key_tree(child) for key, child in value.items()}
    return None


def _commented_database_block(text: str) -> dict[str, object]:
    """The commented-out ``# database:`` example of examples/limpeza.yml, parsed."""
    lines = text.splitlines()
    start = lines.index("  # database:") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("  #   "):
            break
        block.append(line[len("  #") :])
    return yaml.safe_load("\n".join(block))


def test_example_file_is_defaults_key_for_key() -> None:
    text = (REPO / "examples" / "limpeza.yml").read_text(encoding="utf-8")
    example = yaml.safe_load(text)
    assert _key_tree(example) == _key_tree(config_mod.DEFAULTS)
    assert example == config_mod.DEFAULTS
    assert _commented_database_block(text) == config_mod.DATABASE_DEFAULTS


def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _walk(value: dict[str, object], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, child in value.items():
        yield (*path, key)
        if isinstance(child, dict) and (*path, key) in config_mod.SECTIONS:
            yield from _walk(child, (*path, key))


def _at(mapping: object, path: tuple[str, ...]) -> object:
    for key in path:
        assert isinstance(mapping, dict)
        mapping = mapping[key]
    return mapping


def test_readme_configuration_block_shows_the_defaults() -> None:
    section = _readme_section("Configuration")
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    shown = yaml.safe_load(block)
    for path in _walk(shown):
        assert path in config_mod.KEYS, ".".join(path)
        if (*path,) not in config_mod.SECTIONS:
            assert _at(shown, path) == _at(config_mod.DEFAULTS, path), ".".join(path)


def test_readme_names_only_variables_that_are_read() -> None:
    section = _readme_section("Configuration")
    names = set(re.findall(r"\bLIMPEZA_[A-Z0-9_]*[A-Z0-9]\b", section))
    readable = {config_env.variable_name(path) for path in config_mod.KEYS}
    assert names - config_env.ENV_RESERVED <= readable, names - readable
    assert names >= config_env.ENV_RESERVED
    assert "LIMPEZA_JOBS__STALE_AFTER" in names


# --------------------------------------------------------------------------- overrides


def test_every_key_has_its_own_variable() -> None:
    names = [config_env.variable_name(path) for path in config_mod.KEYS]
    assert len(names) == len(set(names))
    assert not set(names) & config_env.ENV_RESERVED
    assert {"LIMPEZA_INTERVAL", "LIMPEZA_JOBS__HEALTH_URL", "LIMPEZA_JOBS__DATABASE__TABLE"} <= set(
        names
    )


def test_unknown_limpeza_variables_are_not_read_and_never_fail() -> None:
    env = {
        "LIMPEZA_SKIP_HOST_TESTS": "1",
        "LIMPEZA_TOKEN": "s3cret",
        "LIMPEZA_JOBS__STALE_AFTER__RUNNING": "1s",
        "LIMPEZA_JOBS__": "x",
        "LIMPEZA_CONFIG": "/elsewhere.yml",
        "LIMPEZA_INTERVAL": "10s",
    }
    config = build({}, env=env)
    assert config.interval == 10
    assert config.jobs.stale_after == {"running": 180, "queued": 120}
    assert config.unused_environment == (
        "LIMPEZA_JOBS__",
        "LIMPEZA_JOBS__STALE_AFTER__RUNNING",
        "LIMPEZA_SKIP_HOST_TESTS",
        "LIMPEZA_TOKEN",
    )


def test_unused_variables_are_named_once_never_their_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = build({}, env={"LIMPEZA_TOKEN": "s3cret", "LIMPEZA_OTHER": "hunter2"})
    logger = logging.getLogger("limpeza.test")
    with caplog.at_level(logging.WARNING, logger="limpeza.test"):
        config_mod.warn_unused_environment(config, logger)
        config_mod.warn_unused_environment(build({}, env={}), logger)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "LIMPEZA_OTHER, LIMPEZA_TOKEN" in message
    assert "s3cret" not in message and "hunter2" not in message


def test_overrides_set_whole_sections_and_keys_inside_them() -> None:
    config = build(
        {"jobs": {"health_url": "http://file/health", "health_timeout": "9s"}},
        env={
            "LIMPEZA_JOBS": "{health_timeout: 4s}",
            "LIMPEZA_JOBS__FORCE_CLEAN__AUTO": "true",
            "LIMPEZA_JOBS__DATABASE__TABLE": "public.jobs",
        },
    )
    assert config.jobs.health_url is None  # the section replaced the file's
    assert config.jobs.health_timeout == 4
    assert config.jobs.force_clean.auto is True
    assert config.jobs.database is not None
    assert config.jobs.database.table == "public.jobs"


def test_override_below_a_scalar_is_a_problem_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        build({}, env={"LIMPEZA_JOBS": "5", "LIMPEZA_JOBS__HEALTH_URL": "http://x/health"})
    assert any(p.startswith("$LIMPEZA_JOBS__HEALTH_URL:") for p in caught.value.problems)


def test_overrides_never_change_the_callers_mapping() -> None:
    raw = {"jobs": {"health_url": "http://file/health"}}
    build(raw, env={"LIMPEZA_JOBS__HEALTH_URL": "http://env/health"})
    assert raw == {"jobs": {"health_url": "http://file/health"}}


def test_build_never_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMPEZA_INTERVAL", "5s")
    assert build({}, env={}).interval == 30
    assert load_text("", env={}).interval == 30


# --------------------------------------------------------------------------- stale_after


def test_stale_after_in_the_file_replaces_the_defaults() -> None:
    config = build({"jobs": {"stale_after": {"running": "10m"}}}, env={})
    assert config.jobs.stale_after == {"running": 600}
    assert config.jobs.active_statuses == ("running",)


def test_stale_after_from_the_environment_replaces_the_files() -> None:
    config = build(
        {"jobs": {"stale_after": {"running": "10m", "queued": "5m"}}},
        env={"LIMPEZA_JOBS__STALE_AFTER": "{processing: 1m}"},
    )
    assert config.jobs.stale_after == {"processing": 60}


def test_stale_after_must_cover_the_databases_active_statuses() -> None:
    with pytest.raises(ConfigError, match='no threshold for active status "queued"'):
        build({"jobs": {"stale_after": {"running": "10m"}, "database": {}}}, env={})


@pytest.mark.parametrize(
    "command",
    [
        ["cleaner", "once", "--dry-run"],
        # An address refused at start: the exporter exits right after its start-up warnings.
        ["exporter", "--web.listen-address", "127.0.0.1:0"],
    ],
)
def test_both_programs_name_unused_variables_at_start(command: list[str], tmp_path: Path) -> None:
    config = tmp_path / "limpeza.yml"
    config.write_text(
        f"state_file: {tmp_path}/state.json\naudit_log: null\n"
        f"files: {{directories: [{tmp_path}]}}\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMPEZA")}
    env.update(LIMPEZA_TOKEN="s3cret", LIMPEZA_JOBS__STALE_AFTER__RUNNING="1m")
    module, *args = command
    result = subprocess.run(
        [sys.executable, "-m", module, "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    warnings = [line for line in result.stderr.splitlines() if "not read" in line]
    assert len(warnings) == 1, result.stderr
    assert "LIMPEZA_JOBS__STALE_AFTER__RUNNING, LIMPEZA_TOKEN" in warnings[0]
    assert "s3cret" not in result.stdout + result.stderr
