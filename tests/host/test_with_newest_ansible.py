"""The fleet deployed as users deploy it: the built collection, the newest ansible-core.

ansible-core 2.20 and newer need Python 3.12 on the controller. The Debian 13 target has
Python 3.13, so it is the controller here: the newest ansible-core from the package index goes
into a virtualenv on it, the collection built from this repository is installed into an
"infra" directory there, and ``ansible-playbook limpeza.ops.deploy`` deploys the whole mixed
fleet (itself included, over ssh) with the roles' defaults for the sources and the cache.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.host.conftest import (
    _RECAP_RE,
    REPO,
    SUITES,
    TEST_VARS,
    VAULT_PASSWORD_FILE,
    Deployment,
)

pytestmark = pytest.mark.host

CONTROLLER = next(name for name, suite in SUITES.items() if suite == "trixie")
INFRA = "/root/infra"
CA = f"SSL_CERT_FILE={INFRA}/ca.pem PIP_CERT={INFRA}/ca.pem"


def _recap(output: str) -> dict[str, int]:
    return {
        host: int(re.search(r"changed=(\d+)", counts).group(1))  # type: ignore[union-attr]
        for host, counts in _RECAP_RE.findall(output.split("PLAY RECAP", 1)[-1])
    }


def test_the_collection_deploys_the_mixed_fleet_with_the_newest_ansible_core(
    deployed: Deployment, tmp_path: Path
) -> None:
    controller = deployed.targets[CONTROLLER]
    subprocess.run(
        [str(REPO / ".venv/bin/ansible-galaxy"), "collection", "build", "-v", "--output-path",
         str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (artifact,) = tmp_path.glob("limpeza-ops-*.tar.gz")
    infra = controller.root / INFRA.lstrip("/")
    infra.mkdir()
    shutil.copy2(artifact, infra / artifact.name)
    shutil.copy2(controller.key, infra / "id_ed25519")
    # The controller fetches from the package index as this machine does: with its CAs.
    verify = ssl.get_default_verify_paths()
    shutil.copy2(verify.cafile or verify.openssl_cafile, infra / "ca.pem")
    (infra / "ansible.cfg").write_text(
        "[defaults]\ncollections_path = ./collections\nhost_key_checking = false\n",
        encoding="utf-8",
    )
    shutil.copytree(deployed.inventory, infra / "inventory")
    # Step 3's vaulted DSN: the deploy asks for the vault password (here from a file).
    shutil.copy2(deployed.workdir / VAULT_PASSWORD_FILE, infra / VAULT_PASSWORD_FILE)
    hosts = infra / "inventory" / "hosts.yml"
    inventory = yaml.safe_load(hosts.read_text(encoding="utf-8"))
    for child in inventory["all"]["children"].values():
        for host in child["hosts"].values():
            host["ansible_ssh_private_key_file"] = f"{INFRA}/id_ed25519"
    hosts.write_text(yaml.safe_dump(inventory), encoding="utf-8")
    # The roles' own defaults: the collection's sources, the controller's ~/.cache/limpeza.
    test_vars = infra / "inventory" / TEST_VARS
    application = yaml.safe_load(test_vars.read_text(encoding="utf-8"))
    del application["limpeza_source_dir"], application["limpeza_cache_dir"]
    test_vars.write_text(yaml.safe_dump(application), encoding="utf-8")

    setup = controller.ssh(
        f"cd {INFRA} && export {CA} && python3 -m venv /root/controller"
        " && /root/controller/bin/pip install --quiet --disable-pip-version-check ansible-core"
        f" && /root/controller/bin/ansible-galaxy collection install -p collections {artifact.name}"
        " && /root/controller/bin/ansible --version",
        timeout=900,
        check=False,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    version = re.search(r"core ([\d.]+)", setup.stdout)
    assert version, setup.stdout
    print(f"controller {CONTROLLER}: ansible-core {version.group(1)}")

    deploy = (
        f"cd {INFRA} && export {CA} && ANSIBLE_NOCOLOR=1 /root/controller/bin/ansible-playbook"
        f" -i inventory --vault-password-file {VAULT_PASSWORD_FILE} limpeza.ops.deploy"
    )
    first = controller.ssh(deploy, timeout=1200, check=False)
    assert first.returncode == 0, first.stdout[-8000:] + first.stderr[-3000:]
    second = controller.ssh(deploy, timeout=1200, check=False)
    assert second.returncode == 0, second.stdout[-8000:] + second.stderr[-3000:]
    assert _recap(second.stdout) == dict.fromkeys(deployed.hosts, 0), second.stdout[-8000:]
