"""The exporter's quarantine families, from a real quarantine's summary (a fresh registry)."""

from __future__ import annotations

import os
from pathlib import Path

from cleaner import config as config_mod
from cleaner.files import sweep
from cleaner.quarantine import Quarantines
from tests.fixtures.trees import DAY, NOW, Tree
from tests.unit.test_collector import scrape


def _config(tree: Tree) -> config_mod.Config:
    quarantine = {"directory": str(tree.root / "q"), "retention": "7d", "max_bytes": "1MB"}
    rules = [
        {
            "name": "sessions",
            "pattern": "session_*.json",
            "max_age": "1h",
            "quarantine": quarantine,
        },
        {"name": "temp_audio", "pattern": "temp_audio_*.wav", "max_age": "1h"},
    ]
    return tree.config(files={"directories": [str(tree.uploads)], "rules": rules})


def test_files_bytes_limit_and_totals_per_rule(tree: Tree) -> None:
    config = _config(tree)
    for i in range(3):
        tree.file(f"session_{i}.json", age=2 * DAY)
    quarantines = Quarantines(config.files, lambda: NOW)
    sweep(config.files, now=NOW, quarantines=quarantines)
    [store] = quarantines.all()
    store.write_summary(restored={"sessions": 2}, expired={"sessions": 1})
    allocated = sum(e.allocated for e in store.entries().values())
    quarantines.close()
    registry, _ = scrape(config)
    labels = {"rule": "sessions"}
    assert registry.get_sample_value("limpeza_quarantine_up", labels) == 1
    assert registry.get_sample_value("limpeza_quarantine_files", labels) == 3
    assert registry.get_sample_value("limpeza_quarantine_bytes", labels) == allocated
    assert registry.get_sample_value("limpeza_quarantine_max_bytes", labels) == 1_000_000
    assert registry.get_sample_value("limpeza_quarantine_restored_total", labels) == 2
    assert registry.get_sample_value("limpeza_quarantine_expired_total", labels) == 1
    assert registry.get_sample_value("limpeza_quarantine_files", {"rule": "temp_audio"}) is None


def test_an_unreadable_summary_is_up_0(tree: Tree) -> None:
    config = _config(tree)
    (tree.root / "q").mkdir()
    os.mkfifo(tree.root / "q" / "summary.json")
    registry, _ = scrape(config)
    assert registry.get_sample_value("limpeza_quarantine_up", {"rule": "sessions"}) == 0
    assert registry.get_sample_value("limpeza_quarantine_files", {"rule": "sessions"}) is None


def test_no_summary_yet_is_an_empty_quarantine(tree: Tree, tmp_path: Path) -> None:
    registry, _ = scrape(_config(tree))
    assert registry.get_sample_value("limpeza_quarantine_up", {"rule": "sessions"}) == 1
    assert registry.get_sample_value("limpeza_quarantine_files", {"rule": "sessions"}) == 0
