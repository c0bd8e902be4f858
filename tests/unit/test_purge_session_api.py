"""cleaner.purge_session, the web application's call, goes the CLI's way: audited, counted,
with the environment's overrides.

It used to remove the files with no audit line and no counters, and read the configuration
file without ``$LIMPEZA_CONFIG`` nor any ``LIMPEZA_*`` override.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cleaner
from cleaner import cli
from cleaner.state import read_state
from tests.fixtures.trees import Tree


def _session(tree: Tree, session_id: str) -> None:
    for name in (f"session_{session_id}.json", f"temp_audio_{session_id}.wav"):
        tree.file(name, age=10, data=b"12345")


def _audit(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_api_audits_and_counts_each_removal_as_the_cli_does(tree: Tree) -> None:
    _session(tree, "api")
    _session(tree, "cli")
    path = tree.write_config()
    result = cleaner.purge_session("api", config_file=path, env={})
    assert result.files_removed == 2
    assert cli.main(["--config", str(path), "purge-session", "cli"], env={}) == 0
    assert tree.names() == set()

    audit = _audit(tree.var / "audit.jsonl")
    assert [(a["rule"], Path(str(a["path"])).name) for a in audit] == [
        ("sessions", "session_api.json"),
        ("temp_audio", "temp_audio_api.wav"),
        ("sessions", "session_cli.json"),
        ("temp_audio", "temp_audio_cli.wav"),
    ]
    assert {frozenset(a) for a in audit} == {
        frozenset({"time", "rule", "path", "size", "freed", "age"})
    }
    state = read_state(tree.var / "state.json")
    assert state.files_removed == {"sessions": 2, "temp_audio": 2}
    # Bytes freed (allocated blocks of a last link), as a sweep counts them.
    freed = sum(int(str(a["freed"])) for a in audit if a["rule"] == "sessions")
    assert freed > 0
    assert state.bytes_removed["sessions"] == freed
    assert state.sweeps == 0  # a purge is not a sweep
    assert state.directories == {}  # nor a measure of the directories


def test_a_dry_run_through_the_api_writes_nothing(tree: Tree) -> None:
    _session(tree, "dry")
    result = cleaner.purge_session("dry", config_file=tree.write_config(), dry_run=True, env={})
    assert result.files_removed == 2
    assert len(tree.names()) == 2
    assert not (tree.var / "audit.jsonl").exists()
    assert not (tree.var / "state.json").exists()


def test_the_api_reads_the_environment_as_the_cli_does(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$LIMPEZA_CONFIG finds the file; LIMPEZA_* keys and the .env beside it override it."""
    _session(tree, "env")
    tree.file("other_env.txt", age=10)
    path = tree.write_config()
    elsewhere = tree.root / "elsewhere"
    monkeypatch.setenv("LIMPEZA_CONFIG", str(path))
    monkeypatch.setenv("LIMPEZA_FILES__SESSION_FILES", '["session_{id}.json", "other_{id}.txt"]')
    monkeypatch.setenv("LIMPEZA_AUDIT_LOG", str(elsewhere / "audit.jsonl"))
    (tree.root / ".env").write_text(f"LIMPEZA_STATE_FILE={elsewhere / 'state.json'}\n")

    result = cleaner.purge_session("env")
    assert result.files_removed == 2
    assert tree.names() == {"temp_audio_env.wav"}  # not in the overridden session_files
    names = [Path(str(a["path"])).name for a in _audit(elsewhere / "audit.jsonl")]
    assert names == ["session_env.json", "other_env.txt"]
    state = read_state(elsewhere / "state.json")
    assert state.files_removed == {"sessions": 1, "session_purge": 1}
    assert not (tree.var / "audit.jsonl").exists() and not (tree.var / "state.json").exists()


def test_an_explicit_environment_replaces_the_process_one(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    _session(tree, "x1")
    monkeypatch.setenv("LIMPEZA_AUDIT_LOG", str(tree.root / "not-this.jsonl"))
    path = tree.write_config()
    cleaner.purge_session("x1", env={"LIMPEZA_CONFIG": str(path)})
    assert len(_audit(tree.var / "audit.jsonl")) == 2
    assert not (tree.root / "not-this.jsonl").exists()
