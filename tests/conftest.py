"""Shared fixtures. Each module in tests/fixtures/ is a pytest plugin (real servers, trees).

The servers themselves are started by ``devtools``, which the demo and the benchmarks use too.
"""

from pathlib import Path

import pytest

# Fixture modules import each other; have their asserts rewritten whichever loads first.
pytest.register_assert_rewrite("tests.fixtures")

pytest_plugins = sorted(
    f"tests.fixtures.{module.stem}"
    for module in (Path(__file__).parent / "fixtures").glob("*.py")
    if module.stem != "__init__"
)
