"""The controller's cache keeps the last versions, the deployed one and a rollback's."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from tools.lock import WHEELHOUSE


def _wheelhouse() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheelhouse", WHEELHOUSE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheelhouse = _wheelhouse()


def _make(path: Path, age: int, directory: bool = False) -> Path:
    if directory:
        path.mkdir(parents=True)
        (path / "cp313-x86_64-glibc2.41").mkdir()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"wheel")
    when = 1_700_000_000 - age * 3600
    os.utime(path, (when, when))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    # Versions 0.5 (built last) down to 0.1 (built first); lock files d4 (last) to d1.
    for age, version in enumerate(["0.5", "0.4", "0.3", "0.2", "0.1"]):
        _make(tmp_path / "wheels" / f"limpeza-{version}-py3-none-any.whl", age)
    for age, digest in enumerate(["d4", "d3", "d2", "d1"]):
        _make(tmp_path / "dependencies" / digest, age, directory=True)
    _make(tmp_path / "wheels" / "someone-else-1.0-py3-none-any.whl", 99)
    _make(tmp_path / "dependencies" / ".fetch-abc", 99, directory=True)
    return tmp_path


def _left(cache: Path) -> list[str]:
    return sorted(
        str(path.relative_to(cache))
        for path in [*(cache / "wheels").iterdir(), *(cache / "dependencies").iterdir()]
    )


def test_the_last_versions_stay_and_the_older_go(cache: Path) -> None:
    removed = wheelhouse.prune(cache, 3, "d4", {"0.5"})
    assert sorted(p.name for p in removed) == [
        "d1",
        "limpeza-0.1-py3-none-any.whl",
        "limpeza-0.2-py3-none-any.whl",
    ]
    assert _left(cache) == [
        "dependencies/.fetch-abc",
        "dependencies/d2",
        "dependencies/d3",
        "dependencies/d4",
        "wheels/limpeza-0.3-py3-none-any.whl",
        "wheels/limpeza-0.4-py3-none-any.whl",
        "wheels/limpeza-0.5-py3-none-any.whl",
        "wheels/someone-else-1.0-py3-none-any.whl",
    ]


def test_the_deployed_version_and_a_rollbacks_always_stay(cache: Path) -> None:
    # Deploying 0.1 (an old wheel, not rebuilt) while the targets run 0.2, with an old lock.
    wheelhouse.prune(cache, 1, "d1", {"0.1", "0.2"})
    assert _left(cache) == [
        "dependencies/.fetch-abc",
        "dependencies/d1",
        "dependencies/d4",
        "wheels/limpeza-0.1-py3-none-any.whl",
        "wheels/limpeza-0.2-py3-none-any.whl",
        "wheels/limpeza-0.5-py3-none-any.whl",
        "wheels/someone-else-1.0-py3-none-any.whl",
    ]


def test_pruning_twice_removes_nothing_more(cache: Path) -> None:
    wheelhouse.prune(cache, 2, "d4", set())
    assert wheelhouse.prune(cache, 2, "d4", set()) == []


def test_an_empty_cache_is_fine(tmp_path: Path) -> None:
    assert wheelhouse.prune(tmp_path / "cache", 3, "d1", {"0.1"}) == []


@pytest.mark.parametrize("keep", ["0", "-1", "three"])
def test_keeping_nothing_is_refused(tmp_path: Path, keep: str) -> None:
    assert wheelhouse.main(["wheelhouse.py", "prune", str(tmp_path), keep, "d1"]) == 2


def test_the_command_names_what_it_removed(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert wheelhouse.main(["wheelhouse.py", "prune", str(cache), "4", "d4", "0.5"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"removed {cache}/wheels/limpeza-0.1-py3-none-any.whl"
    ]
