"""The wheel the roles deploy carries every module of cleaner/ and exporter/, and no tests,
and builds without a deprecation from the build backend: the deploy builds it on the
operator's machine with the newest setuptools, and a deprecated form there is a build that
stops working on a date (``project.license`` as a table did)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_every_module_of_both_programs(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = built.stdout + built.stderr
    for warning in ("BuildBackendWarning", "SetuptoolsDeprecationWarning"):
        assert warning not in output, output
    (wheel,) = tmp_path.glob("limpeza-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(ROOT).as_posix()
        for package in ("cleaner", "exporter")
        for path in (ROOT / package).rglob("*.py")
    }
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert not any(n.startswith(("tests/", "devtools/", "bench/")) for n in names)
