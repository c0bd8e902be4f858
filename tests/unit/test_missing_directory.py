"""A configured directory that does not exist is not success: counted, logged, exported."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cleaner import cli
from cleaner.config import build
from cleaner.daemon import Daemon
from cleaner.files import sweep
from exporter.collector import LimpezaCollector
from tests.fixtures.trees import DAY, NOW, Tree


def _raw(tree: Tree, typo: Path) -> dict[str, object]:
    return tree.raw_config(files={"directories": [str(tree.uploads), str(typo)]})


def test_a_missing_directory_or_a_file_in_its_place_is_missing(tree: Tree) -> None:
    typo = tree.root / "upolads"
    a_file = tree.root / "not-a-dir"
    a_file.write_bytes(b"x")
    config = build(
        tree.raw_config(files={"directories": [str(tree.uploads), str(typo), str(a_file)]}),
        env={},
    )
    result = sweep(config.files, now=NOW)
    assert result.missing == [str(typo), str(a_file)]
    assert result.errors == 0


def test_once_exits_1_and_the_state_file_says_which(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    tree.file("session_old.json", age=2 * DAY, now=time.time())  # once uses the real clock
    typo = tree.root / "upolads"
    path = tree.write_config(files={"directories": [str(tree.uploads), str(typo)]})
    assert cli.main(["--config", str(path), "once"], env={}) == 1
    assert tree.names() == set()  # the directory that exists is still swept
    state = json.loads((tree.var / "state.json").read_text(encoding="utf-8"))
    assert state["missing_directories"] == [str(typo)]

    typo.mkdir()
    assert cli.main(["--config", str(path), "once"], env={}) == 0
    state = json.loads((tree.var / "state.json").read_text(encoding="utf-8"))
    assert state["missing_directories"] == []


def test_the_exporter_publishes_1_for_the_missing_directory_and_0_for_the_others(
    tree: Tree,
) -> None:
    typo = tree.root / "upolads"
    path = tree.write_config(files={"directories": [str(tree.uploads), str(typo)]})
    assert cli.main(["--config", str(path), "once"], env={}) == 1
    registry = CollectorRegistry()
    registry.register(LimpezaCollector(build(_raw(tree, typo), env={}), version="0"))
    text = generate_latest(registry).decode()
    assert f'limpeza_directory_missing{{directory="{typo}"}} 1.0' in text
    assert f'limpeza_directory_missing{{directory="{tree.uploads}"}} 0.0' in text


def test_the_daemon_logs_a_missing_directory_once_per_change(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    typo = tree.root / "upolads"
    path = tree.write_config(files={"directories": [str(tree.uploads), str(typo)]})
    daemon = Daemon(build(_raw(tree, typo), env={}), path, {})
    daemon._open_parts()
    try:
        with caplog.at_level(logging.INFO, logger="cleaner.daemon"):
            for _ in range(3):
                daemon.cycle()
            typo.mkdir()
            for _ in range(2):
                daemon.cycle()
    finally:
        daemon._close_parts()
    lines = [r.getMessage() for r in caplog.records if str(typo) in r.getMessage()]
    assert len(lines) == 2
    assert "does not exist" in lines[0]
    assert "exists again" in lines[1]
    state = json.loads((tree.var / "state.json").read_text(encoding="utf-8"))
    assert state["missing_directories"] == []
    assert state["sweeps"] == 5
