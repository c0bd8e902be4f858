"""The repository is the source of the limpeza.ops collection.

``ansible-galaxy collection build`` makes an artifact of the roles, the playbooks and the
Python sources the roles build their wheel from, without the tests, the benchmarks or a
checkout's leftovers; installed into a separate "infra" directory, its roles and playbooks
are used by their fully qualified names, as an operator's repository uses them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

import cleaner
from tools.lock import parse as parse_lock

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text(encoding="utf-8"))
FQCN = f"{GALAXY['namespace']}.{GALAXY['name']}"
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists())
PLAYBOOKS = sorted(p.stem for p in (REPO / "playbooks").glob("*.yml"))


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", **(env or {})},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(BIN / "ansible-galaxy", "collection", "build", "--output-path", out, REPO, cwd=out)
    (tarball,) = out.glob("*.tar.gz")
    return tarball


@pytest.fixture(scope="module")
def infra(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """An operator's repository with the built collection installed in it, and its settings."""
    infra = tmp_path_factory.mktemp("infra")
    (infra / "ansible.cfg").write_text(
        "[defaults]\ncollections_path = ./collections\n", encoding="utf-8"
    )
    (infra / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "limpeza": {"hosts": {"app1": None}},
                        "prometheus": {"hosts": {"prom1": None}},
                    }
                }
            }
        ),
        encoding="utf-8",
    )
    env = {"ANSIBLE_CONFIG": str(infra / "ansible.cfg")}
    _run(
        BIN / "ansible-galaxy", "collection", "install", "-p", "collections", artifact,
        cwd=infra, env=env,
    )  # fmt: skip
    return infra, env


def test_galaxy_yml_says_what_the_collection_is() -> None:
    assert (GALAXY["namespace"], GALAXY["name"]) == ("limpeza", "ops")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    # One version for the collection and the wheel it deploys.
    assert GALAXY["version"] == pyproject["project"]["version"] == cleaner.__version__


def test_the_artifact_holds_roles_playbooks_and_sources_only(artifact: Path) -> None:
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    assert manifest["collection_info"]["version"] == GALAXY["version"]
    tops = {name.split("/", 1)[0] for name in names}
    for wanted in (
        "roles",
        "playbooks",
        "meta",
        "cleaner",
        "exporter",
        "pyproject.toml",
        "requirements.lock",
    ):
        assert wanted in tops, f"{wanted} missing from {artifact.name}"
    for role in ROLES:
        assert f"roles/{role}/tasks/main.yml" in names
    for unwanted in ("tests", "bench", "devtools", "tools", ".venv", "build", "dist", ".git"):
        assert unwanted not in tops, f"{unwanted} is in {artifact.name}"
    assert not [n for n in names if n.endswith(".egg-info") or "__pycache__" in n]
    assert not [n for n in names if n.startswith("alerts/tests")]


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_installed_playbooks_run_by_their_fqcn(
    infra: tuple[Path, dict[str, str]], playbook: str
) -> None:
    directory, env = infra
    out = _run(
        BIN / "ansible-playbook", "-i", "hosts.yml", f"{FQCN}.{playbook}", "--list-tasks",
        cwd=directory, env=env,
    )  # fmt: skip
    assert "ERROR" not in out
    if playbook == "deploy":
        for role in ("limpeza_cleaner", "limpeza_exporter", "limpeza_alerts", "limpeza_prometheus"):
            assert f"{FQCN}.{role} : " in out, out


@pytest.mark.parametrize("role", ROLES)
def test_installed_roles_have_their_argument_specs(
    infra: tuple[Path, dict[str, str]], role: str
) -> None:
    directory, env = infra
    out = _run(
        BIN / "ansible-doc", "-t", "role", "--json", f"{FQCN}.{role}", cwd=directory, env=env
    )
    assert json.loads(out)[f"{FQCN}.{role}"]["entry_points"]["main"]["options"]


# --------------------------------------------------------------------------- the artifact


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    text = (REPO / "requirements.lock").read_text(encoding="utf-8")
    return {name: version for name, (_, version, _) in parse_lock(text).items()}


def test_the_roles_deploy_the_collections_version_by_default() -> None:
    defaults = yaml.safe_load((REPO / "roles/limpeza/defaults/main.yml").read_text())
    assert str(defaults["limpeza_version"]) == GALAXY["version"]


def test_the_lock_file_pins_the_dependency_closure_and_nothing_else() -> None:
    pins = _lock()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    closure: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        name = _canonical(requirement.name)
        assert name in pins, f"{name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} does not satisfy {requirement}"
        )
        if name in closure:
            continue
        closure.add(name)
        for text in metadata.requires(name) or []:
            dependency = Requirement(text)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                wanted.append(dependency)
    assert set(pins) == closure, f"pinned but not needed: {sorted(set(pins) - closure)}"


def test_the_example_inventory_needs_the_vault_password_only_for_the_dsn(tmp_path: Path) -> None:
    """The DSN is vaulted inline: reading any other variable asks for no vault password."""
    inventory = REPO / "inventories" / "example"
    env = {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_LOCAL_TEMP": str(tmp_path)}
    command = [str(BIN / "ansible"), "-i", str(inventory), "limpeza", "-c", "local", "-m"]
    plain = subprocess.run(
        [*command, "ansible.builtin.debug", "-a", "var=limpeza_jobs_database"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=120,
        check=False,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stdout + plain.stderr
    secret = subprocess.run(
        [*command, "ansible.builtin.debug", "-a", "msg={{ limpeza_database_url | length }}"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=120,
        check=False,
    )  # fmt: skip
    assert secret.returncode != 0
    assert "vault" in (secret.stdout + secret.stderr).lower(), secret.stdout + secret.stderr
