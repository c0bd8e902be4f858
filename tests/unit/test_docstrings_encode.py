"""Every docstring of the wheel's modules is valid UTF-8, as Python 3.13 requires.

Python 3.13 (Debian 13's) dedents docstrings when it compiles them and fails the import with
UnicodeEncodeError on a lone surrogate such as the escape ``\\udcff`` in a non-raw docstring;
3.11 accepts it. The wheel runs on both.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p for package in ("cleaner", "exporter") for p in (REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_docstrings_are_valid_utf8(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [
        tree,
        *(
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ),
    ]
    for node in nodes:
        docstring = ast.get_docstring(node, clean=False)
        if docstring is not None:
            docstring.encode("utf-8")  # raises on a surrogate
