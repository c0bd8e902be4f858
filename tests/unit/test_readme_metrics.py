"""The README's metrics table lists every family the exporter defines, with its labels."""

from __future__ import annotations

import re
from pathlib import Path

from cleaner.state import ApiHealth, StateStore
from tests.unit.test_collector import NOW, known_state, make_config, scrape, write_cache

ROOT = Path(__file__).resolve().parents[2]


def _readme_table() -> dict[str, tuple[set[str], set[str]]]:
    """family name (no ``_total``) -> (labels always there, labels in brackets: there only
    for the jobs table), from the table under "The exporter"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The exporter", 1)[1].split("\n## ", 1)[0]
    table: dict[str, tuple[set[str], set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        labels = [label.strip() for label in cells[1].split(",") if label.strip()]
        always = {label for label in labels if not label.startswith("[")}
        sometimes = {label.strip("[]") for label in labels if label.startswith("[")}
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            table[name.removesuffix("_total")] = (always, sometimes)
    return table


def _defined_families() -> set[str]:
    """Every ``limpeza_*`` family name written in the exporter's code."""
    names: set[str] = set()
    for path in (ROOT / "exporter").glob("*.py"):
        names.update(re.findall(r'"(limpeza_[a-z_]+)"', path.read_text(encoding="utf-8")))
    return names


def test_every_family_the_exporter_defines_is_in_the_readme_and_back() -> None:
    documented = {n for n in _readme_table() if n.startswith("limpeza_")}
    defined = _defined_families()
    assert sorted(defined - documented) == [], "families missing from the README's table"
    assert sorted(documented - defined) == [], "README documents families nobody exports"


def test_the_readme_labels_are_the_labels_a_scrape_gives(tmp_path: Path) -> None:
    config = make_config(tmp_path, health_url="http://127.0.0.1:1/health")
    state = known_state()
    state.api = ApiHealth(up=True, jobs_active=2, checked_at=NOW - 5)
    StateStore(config.state_file).save(state)
    write_cache(config.jobs.cache_file or tmp_path / "jobs.json", {"a": {"status": "running"}})
    registry, _ = scrape(config)
    table = _readme_table()
    seen = 0
    for family in registry.collect():
        if family.name not in table:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            always, sometimes = table[family.name]
            assert always <= set(sample.labels) <= always | sometimes, (family.name, sample.labels)
            seen += 1
    assert seen > 20
