"""The oldest ansible-core the collection supports (meta/runtime.yml) sees the fleet converged.

The deployment was made with the newest ansible-core of the ``.venv``; ansible-core 2.16, in
a virtualenv of its own kept in the image cache, runs the same playbook on it: nothing to
change, in check mode and for real.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.nspawn import cache_dir
from tests.host.conftest import REPO, Deployment

pytestmark = pytest.mark.host


def _oldest() -> str:
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text(encoding="utf-8"))
    return str(runtime["requires_ansible"]).removeprefix(">=").rsplit(".", 1)[0]


@pytest.fixture(scope="module")
def oldest_ansible() -> Path:
    """bin/ of a virtualenv holding the oldest supported ansible-core, made once."""
    version = _oldest()
    venv = cache_dir() / f"ansible-core-{version}"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
             f"ansible-core=={version}.*"],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        (venv / ".complete").touch()
    return venv / "bin"


def test_the_oldest_ansible_core_finds_nothing_to_change(
    deployed: Deployment, oldest_ansible: Path
) -> None:
    version = subprocess.run(
        [str(oldest_ansible / "ansible"), "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    assert f"core {_oldest()}." in version, version
    print(version)
    for extra in (("--check",), ()):
        run = deployed.playbook("deploy.yml", *extra, bin_dir=oldest_ansible)
        assert run.returncode == 0, run.explain()
        assert run.changed() == dict.fromkeys(deployed.hosts, 0), run.explain()
