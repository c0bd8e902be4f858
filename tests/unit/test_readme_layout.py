"""The README's Layout section names every module of cleaner/ and exporter/, and only those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cleaner", "exporter")


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def _named_modules(block: str) -> set[str]:
    """``package/module.py`` for each module line, nesting read from the indentation."""
    named: set[str] = set()
    parents: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = re.match(r"^( *)([A-Za-z_][\w]*/|[\w]+\.py)\s", line + " ")
        if match is None:
            continue
        indent, name = len(match.group(1)), match.group(2)
        while parents and parents[-1][0] >= indent:
            parents.pop()
        if name.endswith("/"):
            parents.append((indent, name))
            continue
        if parents:
            named.add("".join(p for _, p in parents) + name)
    return named


def _modules_on_disk() -> set[str]:
    found: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name not in ("__init__.py", "__main__.py"):
                found.add(path.relative_to(ROOT).as_posix())
    return found


def test_every_module_is_in_the_readme_layout() -> None:
    named = {m for m in _named_modules(_layout_block()) if m.split("/")[0] in PACKAGES}
    on_disk = _modules_on_disk()
    assert sorted(on_disk - named) == [], "modules missing from the README's Layout section"
    assert sorted(named - on_disk) == [], "README's Layout names modules that do not exist"
