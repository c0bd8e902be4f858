"""limpeza_prometheus' files, rendered by Ansible itself from an inventory of a fleet.

prometheus.yml as the role writes it over Debian's stock one (and over its own output: a
second deploy changes nothing), the targets file, the opt-out check and its message, and
the Alertmanager configuration, each validated by promtool or amtool as the role does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "limpeza_prometheus"
PLAYBOOK_BIN = REPO / ".venv" / "bin" / "ansible-playbook"

#: Debian 12's /etc/prometheus/prometheus.yml as the package installs it (comments cut).
DEBIAN_STOCK = """\
global:
  scrape_interval:     15s
  evaluation_interval: 15s
  external_labels:
      monitor: 'example'
alerting:
  alertmanagers:
  - static_configs:
    - targets: ['localhost:9093']
rule_files:
scrape_configs:
  - job_name: 'prometheus'
    scrape_interval: 5s
    scrape_timeout: 5s
    static_configs:
      - targets: ['localhost:9090']
  - job_name: node
    static_configs:
      - targets: ['localhost:9100']
"""

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"

#: What the role renders, each to a file of the output directory (vars as YAML).
RENDER = """\
- name: Render limpeza_prometheus' files
  hosts: prometheus
  gather_facts: false
  vars_files:
    - {role}/vars/main.yml
  vars:
    role_path: {role}
  tasks:
    - name: Read the current prometheus.yml
      ansible.builtin.set_fact:
        __limpeza_prometheus_current: >-
          {{{{ lookup('ansible.builtin.file', current) | from_yaml }}}}
    - name: Render the templates
      ansible.builtin.template:
        src: "{{{{ item }}}}.j2"
        dest: "{{{{ out }}}}/{{{{ item }}}}"
        mode: "0644"
      loop: [prometheus.yml, targets.yml, alertmanager.yml]
    - name: Write what the preflight computes
      ansible.builtin.copy:
        content: "{{{{ {{'missing': _limpeza_prometheus_config_missing,
                        'lines': _limpeza_prometheus_config_lines,
                        'rule_groups': _limpeza_prometheus_rule_groups}} | to_json }}}}"
        dest: "{{{{ out }}}}/computed.json"
        mode: "0644"
"""


def _inventory(app_vars: dict[str, Any], prometheus_vars: dict[str, Any]) -> dict[str, Any]:
    # The role's defaults as the least of the inventory's variables, as role defaults are.
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
    return {
        "all": {
            "vars": defaults,
            "children": {
                "limpeza": {
                    "hosts": {
                        "app1.example.com": {"ansible_host": "192.0.2.11"},
                        "app2.example.com": {
                            "ansible_host": "192.0.2.12",
                            "limpeza_exporter_listen_address": "192.0.2.12:19817",
                        },
                    },
                    "vars": app_vars,
                },
                "prometheus": {
                    "hosts": {
                        "prometheus.example.com": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                        }
                    },
                    "vars": prometheus_vars,
                },
            },
        }
    }


def _render(
    tmp_path: Path,
    current: str,
    app_vars: dict[str, Any] | None = None,
    prometheus_vars: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if not PLAYBOOK_BIN.exists():
        pytest.fail(f"{PLAYBOOK_BIN} is missing: `make setup` installs ansible-core")
    work = tmp_path / f"render-{len(list(tmp_path.glob('render-*')))}"
    out = work / "out"
    out.mkdir(parents=True)
    # The role's templates, where a playbook's template lookups find them.
    (work / "templates").symlink_to(ROLE / "templates")
    (work / "current.yml").write_text(current, encoding="utf-8")
    (work / "render.yml").write_text(RENDER.format(role=ROLE), encoding="utf-8")
    inventory = _inventory(app_vars or {}, prometheus_vars or {})
    (work / "hosts.yml").write_text(yaml.safe_dump(inventory), encoding="utf-8")
    # One per test, as /etc/prometheus/limpeza is one per host.
    scrape_dir = tmp_path / "etc-prometheus-limpeza"
    result = subprocess.run(
        [
            str(PLAYBOOK_BIN),
            "-i",
            str(work / "hosts.yml"),
            str(work / "render.yml"),
            "-e",
            f"out={out} current={work / 'current.yml'} _limpeza_prometheus_dir={scrape_dir}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        cwd=work,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    computed = yaml.safe_load((out / "computed.json").read_text(encoding="utf-8"))
    return {
        "dir": out,
        "scrape_dir": scrape_dir,
        "prometheus": (out / "prometheus.yml").read_text(encoding="utf-8"),
        "targets": yaml.safe_load((out / "targets.yml").read_text(encoding="utf-8")),
        "alertmanager": (out / "alertmanager.yml").read_text(encoding="utf-8"),
        **computed,
    }


#: The exporters of the fleet as the README's Deploy steps set them up: TLS and a user.
SECURED = {
    "limpeza_exporter_tls_cert": CA,
    "limpeza_exporter_basic_auth_users": {"prometheus": "s3cret"},
}


#: The Prometheus host's variable: the CA of the exporters' certificates.
CA_VARS = {"limpeza_prometheus_scrape_ca": CA}


def _job(config: dict[str, Any], name: str = "limpeza") -> dict[str, Any]:
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == name]
    assert len(jobs) == 1, config["scrape_configs"]
    job: dict[str, Any] = jobs[0]
    return job


def _promtool_check(rendered: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """promtool check config on the rendered file, with the files it names in place."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make packages` installs prometheus")
    scrape_dir: Path = rendered["scrape_dir"]
    scrape_dir.mkdir(exist_ok=True)
    (scrape_dir / "targets.yml").write_text(
        (rendered["dir"] / "targets.yml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (scrape_dir / "scrape-password").write_text("s3cret", encoding="utf-8")
    (scrape_dir / "ca.crt").write_text(CA, encoding="utf-8")
    return subprocess.run(
        [promtool, "check", "config", str(rendered["dir"] / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_targets_are_each_application_hosts_listen_address(tmp_path: Path) -> None:
    rendered = _render(tmp_path, DEBIAN_STOCK)
    # app1 has no listen address in the inventory: its address on the exporter's port.
    assert rendered["targets"] == [{"targets": ["192.0.2.11:9817", "192.0.2.12:19817"]}]


def test_debian_stock_config_gains_the_rules_and_the_secured_job(tmp_path: Path) -> None:
    rendered = _render(tmp_path, DEBIAN_STOCK, SECURED, CA_VARS)
    config = yaml.safe_load(rendered["prometheus"])
    stock = yaml.safe_load(DEBIAN_STOCK)
    # The operator's parts are kept as they were.
    assert config["global"] == stock["global"]
    assert config["alerting"] == stock["alerting"]
    assert _job(config, "prometheus") == _job(stock, "prometheus")
    assert _job(config, "node") == _job(stock, "node")
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    scrape_dir = rendered["scrape_dir"]
    assert _job(config) == {
        "job_name": "limpeza",
        "scheme": "https",
        "tls_config": {"ca_file": f"{scrape_dir}/ca.crt"},
        "basic_auth": {"username": "prometheus", "password_file": f"{scrape_dir}/scrape-password"},
        "file_sd_configs": [{"files": [f"{scrape_dir}/targets.yml"]}],
    }
    # No secret in prometheus.yml itself (it is world-readable).
    assert "s3cret" not in rendered["prometheus"]
    check = _promtool_check(rendered)
    assert check.returncode == 0, check.stdout + check.stderr


def test_plain_exporters_are_scraped_over_http_without_auth(tmp_path: Path) -> None:
    rendered = _render(tmp_path, DEBIAN_STOCK)
    job = _job(yaml.safe_load(rendered["prometheus"]))
    assert job["scheme"] == "http"
    assert "basic_auth" not in job and "tls_config" not in job


def test_a_second_render_over_its_own_output_changes_nothing(tmp_path: Path) -> None:
    first = _render(tmp_path, DEBIAN_STOCK, SECURED, CA_VARS)
    second = _render(tmp_path, first["prometheus"], SECURED, CA_VARS)
    assert second["prometheus"] == first["prometheus"]
    assert second["missing"] == []


def test_an_operators_old_limpeza_job_is_replaced_and_rule_files_kept(tmp_path: Path) -> None:
    current = yaml.safe_load(DEBIAN_STOCK)
    current["rule_files"] = ["/srv/rules/*.yml", "/etc/prometheus/rules/*.yml"]
    current["scrape_configs"].append(
        {"job_name": "limpeza", "static_configs": [{"targets": ["127.0.0.1:9817"]}]}
    )
    rendered = _render(tmp_path, yaml.safe_dump(current), {}, {"limpeza_prometheus_job": "limpeza"})
    config = yaml.safe_load(rendered["prometheus"])
    assert config["rule_files"] == ["/srv/rules/*.yml", "/etc/prometheus/rules/*.yml"]
    assert "static_configs" not in _job(config)
    assert [job["job_name"] for job in config["scrape_configs"]] == [
        "prometheus",
        "node",
        "limpeza",
    ]


def test_opt_out_check_names_what_is_missing_and_the_lines_to_add(tmp_path: Path) -> None:
    rendered = _render(tmp_path, DEBIAN_STOCK, SECURED, CA_VARS)
    assert rendered["missing"] == ["rule_files", "scrape_configs"]
    lines = yaml.safe_load(rendered["lines"])
    assert lines["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert lines["scrape_configs"] == [_job(yaml.safe_load(rendered["prometheus"]))]
    # Those lines added by hand to the stock file satisfy the check and promtool.
    edited = yaml.safe_load(DEBIAN_STOCK)
    edited["rule_files"] = lines["rule_files"]
    edited["scrape_configs"] += lines["scrape_configs"]
    again = _render(tmp_path, yaml.safe_dump(edited), SECURED, CA_VARS)
    assert again["missing"] == []
    # A job of that name lacking one of our settings (here the password) is still missing.
    del edited["scrape_configs"][-1]["basic_auth"]
    lacking = _render(
        tmp_path, yaml.safe_dump(edited), SECURED, {"limpeza_prometheus_scrape_ca": CA}
    )
    assert lacking["missing"] == ["scrape_configs"]


ALERTMANAGER = {
    "limpeza_prometheus_alertmanager_enabled": True,
    "limpeza_prometheus_alertmanager_pager": {
        "webhook_configs": [{"url": "https://pager.example.com/hook", "send_resolved": True}]
    },
    "limpeza_prometheus_alertmanager_ticket": {
        "email_configs": [{"to": "ops@example.com", "from": "am@example.com", "smarthost": "mx:25"}]
    },
    "limpeza_prometheus_alertmanager_route": {"group_wait": "1s"},
}


def test_alertmanager_routing_is_the_example_with_the_receivers_given(tmp_path: Path) -> None:
    rendered = _render(tmp_path, DEBIAN_STOCK, {}, ALERTMANAGER)
    config = yaml.safe_load(rendered["alertmanager"])
    example = yaml.safe_load((REPO / "alerts" / "alertmanager.example.yml").read_text())
    assert config["route"] == {**example["route"], "group_wait": "1s"}
    assert config["inhibit_rules"] == example["inhibit_rules"]
    assert config["receivers"] == [
        {"name": "pager", **ALERTMANAGER["limpeza_prometheus_alertmanager_pager"]},
        {"name": "ticket", **ALERTMANAGER["limpeza_prometheus_alertmanager_ticket"]},
    ]
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool is missing: `make packages` installs prometheus-alertmanager")
    check = subprocess.run(
        [amtool, "check-config", str(rendered["dir"] / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_alertmanager_target_is_added_once(tmp_path: Path) -> None:
    # Debian's stock file already sends to localhost:9093: nothing to add.
    stock = _render(tmp_path, DEBIAN_STOCK, {}, ALERTMANAGER)
    assert (
        yaml.safe_load(stock["prometheus"])["alerting"] == yaml.safe_load(DEBIAN_STOCK)["alerting"]
    )
    without = yaml.safe_load(DEBIAN_STOCK)
    del without["alerting"]
    added = _render(tmp_path, yaml.safe_dump(without), {}, ALERTMANAGER)
    assert yaml.safe_load(added["prometheus"])["alerting"] == {
        "alertmanagers": [{"static_configs": [{"targets": ["localhost:9093"]}]}]
    }
    assert "alerting" in added["missing"]
    check = _promtool_check(added)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_rule_groups_verified_are_those_of_the_rule_file(tmp_path: Path) -> None:
    rendered = _render(tmp_path, DEBIAN_STOCK)
    rules = yaml.safe_load((REPO / "alerts" / "limpeza.rules.yml").read_text())
    assert rendered["rule_groups"] == [group["name"] for group in rules["groups"]]
    assert rendered["rule_groups"]
