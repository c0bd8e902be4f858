"""Shared fixtures. Each module in tests/fixtures/ is a pytest plugin (real servers, trees)."""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{module.stem}"
    for module in (Path(__file__).parent / "fixtures").glob("*.py")
    if module.stem != "__init__"
)
