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
                        'rule_groups': _limpeza_prometheus_rule_groups,
                        'added': _limpeza_prometheus_added}} | to_json }}}}"
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


#: The role's removal (limpeza_state: absent, tasks/absent.yml) on a prometheus.yml of the
#: test's own; the reload handler, which would reload this machine's Prometheus, only counted.
REMOVE = """\
- name: Remove limpeza_prometheus' parts
  hosts: prometheus
  gather_facts: false
  vars_files:
    - {role}/vars/main.yml
  vars:
    role_path: {role}
  tasks:
    - name: Remove
      ansible.builtin.include_tasks: {role}/tasks/absent.yml
  handlers:
    - name: Count the reload
      ansible.builtin.shell: echo reload >> {{{{ out }}}}/reloads
      changed_when: false
      listen: Reload Prometheus for limpeza
"""


def _land(rendered: dict[str, Any], config: Path) -> None:
    """What the deploy leaves on the host: prometheus.yml, the scrape files, the record."""
    promtool_check = _promtool_check(rendered)
    assert promtool_check.returncode == 0, promtool_check.stdout + promtool_check.stderr
    config.write_text(rendered["prometheus"], encoding="utf-8")
    added = yaml.safe_dump(rendered["added"])
    (rendered["scrape_dir"] / "added-to-prometheus.yml").write_text(added, encoding="utf-8")


def _remove(
    tmp_path: Path, config: Path, prometheus_vars: dict[str, Any] | None = None, *extra: str
) -> dict[str, Any]:
    """Runs the removal; its recap's changed count, reloads and output."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make packages` installs prometheus")
    work = tmp_path / f"remove-{len(list(tmp_path.glob('remove-*')))}"
    work.mkdir()
    (work / "remove.yml").write_text(REMOVE.format(role=ROLE), encoding="utf-8")
    host_vars = {
        "limpeza_prometheus_config_file": str(config),
        "limpeza_prometheus_promtool": promtool,
        **(prometheus_vars or {}),
    }
    (work / "hosts.yml").write_text(yaml.safe_dump(_inventory({}, host_vars)), encoding="utf-8")
    scrape_dir = tmp_path / "etc-prometheus-limpeza"
    result = subprocess.run(
        [
            str(PLAYBOOK_BIN),
            "-i",
            str(work / "hosts.yml"),
            str(work / "remove.yml"),
            # This machine has no Prometheus to ask whether it dropped the job.
            "--skip-tags",
            "limpeza_prometheus_run",
            "-e",
            f"out={work} _limpeza_prometheus_dir={scrape_dir}",
            *extra,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        cwd=work,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    recap = output.split("PLAY RECAP", 1)[1]
    changed = int(recap.split("changed=", 1)[1].split()[0])
    reloads = work / "reloads"
    count = len(reloads.read_text().split()) if reloads.exists() else 0
    return {"changed": changed, "reloads": count, "output": output}


def test_removal_takes_out_the_job_and_rule_files_and_keeps_the_rest(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    rendered = _render(tmp_path, DEBIAN_STOCK, SECURED, CA_VARS)
    _land(rendered, config)
    # The deploy found no rule_files entry (the stock file has none) and the stock
    # Alertmanager target: it added the one, not the other.
    assert rendered["added"] == {
        "rule_files": ["/etc/prometheus/rules/*.yml"],
        "alerting_targets": [],
    }
    removed = _remove(tmp_path, config)
    assert removed["changed"] == 2 and removed["reloads"] == 1, removed["output"]
    after = yaml.safe_load(config.read_text(encoding="utf-8"))
    stock = yaml.safe_load(DEBIAN_STOCK)
    assert after["global"] == stock["global"]
    assert after["alerting"] == stock["alerting"]
    assert after["scrape_configs"] == stock["scrape_configs"]
    assert after["rule_files"] == []
    assert not rendered["scrape_dir"].exists()
    promtool = shutil.which("promtool")
    assert promtool is not None
    check = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # Again: nothing to remove, the file not even rewritten, no reload.
    before = config.read_bytes()
    again = _remove(tmp_path, config)
    assert again["changed"] == 0 and again["reloads"] == 0, again["output"]
    assert config.read_bytes() == before


def test_removal_in_check_mode_reports_the_run_and_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    rendered = _render(tmp_path, DEBIAN_STOCK, SECURED, CA_VARS)
    _land(rendered, config)
    before = config.read_bytes()
    checked = _remove(tmp_path, config, None, "--check")
    assert checked["changed"] == 2 and checked["reloads"] == 0, checked["output"]
    assert config.read_bytes() == before
    assert (rendered["scrape_dir"] / "targets.yml").exists()
    assert _remove(tmp_path, config)["changed"] == 2


def test_removal_keeps_what_the_operator_had_before_the_deploy(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    # The operator's rule_files already loaded the rules directory: the deploy added nothing
    # there, and the removal keeps it.
    theirs = yaml.safe_load(DEBIAN_STOCK)
    theirs["rule_files"] = ["/etc/prometheus/rules/*.yml"]
    rendered = _render(tmp_path, yaml.safe_dump(theirs), SECURED, {**CA_VARS, **ALERTMANAGER})
    assert rendered["added"] == {"rule_files": [], "alerting_targets": []}
    _land(rendered, config)
    assert _remove(tmp_path, config)["changed"] == 2
    after = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert after == theirs


def test_removal_takes_out_the_alertmanager_the_deploy_added(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    without = yaml.safe_load(DEBIAN_STOCK)
    del without["alerting"]
    rendered = _render(tmp_path, yaml.safe_dump(without), SECURED, {**CA_VARS, **ALERTMANAGER})
    assert rendered["added"]["alerting_targets"] == ["localhost:9093"]
    _land(rendered, config)
    _remove(tmp_path, config)
    after = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert "alerting" not in after
    assert after["scrape_configs"] == without["scrape_configs"]
    # An Alertmanager of the operator's beside it, added after the deploy, stays.
    rendered = _render(tmp_path, yaml.safe_dump(without), SECURED, {**CA_VARS, **ALERTMANAGER})
    _land(rendered, config)
    landed = yaml.safe_load(config.read_text(encoding="utf-8"))
    landed["alerting"]["alertmanagers"].insert(
        0, {"scheme": "https", "static_configs": [{"targets": ["am.example.com:9093"]}]}
    )
    config.write_text(yaml.safe_dump(landed, sort_keys=False), encoding="utf-8")
    _remove(tmp_path, config)
    assert yaml.safe_load(config.read_text(encoding="utf-8"))["alerting"] == {
        "alertmanagers": [
            {"scheme": "https", "static_configs": [{"targets": ["am.example.com:9093"]}]}
        ]
    }


def test_removal_without_a_record_takes_the_rule_files_entry_not_alerting(tmp_path: Path) -> None:
    # A deploy older than the record: its rule_files entry is limpeza's, alerting is not known
    # to be.
    config = tmp_path / "prometheus.yml"
    without = yaml.safe_load(DEBIAN_STOCK)
    del without["alerting"]
    rendered = _render(tmp_path, yaml.safe_dump(without), SECURED, {**CA_VARS, **ALERTMANAGER})
    _land(rendered, config)
    (rendered["scrape_dir"] / "added-to-prometheus.yml").unlink()
    _remove(tmp_path, config)
    after = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert after["rule_files"] == []
    assert after["alerting"] == {
        "alertmanagers": [{"static_configs": [{"targets": ["localhost:9093"]}]}]
    }
    assert [job["job_name"] for job in after["scrape_configs"]] == ["prometheus", "node"]


def test_opted_out_removal_leaves_prometheus_yml_and_names_the_lines(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    rendered = _render(tmp_path, DEBIAN_STOCK, SECURED, CA_VARS)
    _land(rendered, config)
    before = config.read_bytes()
    opt_out = {"limpeza_prometheus_manage_config": False}
    removed = _remove(tmp_path, config, opt_out)
    assert removed["changed"] == 0 and removed["reloads"] == 0, removed["output"]
    assert config.read_bytes() == before
    assert "job_name: limpeza" in removed["output"]
    assert "/etc/prometheus/rules/*.yml" in removed["output"]
    # The job still reads them: the scrape files stay until the operator removed it.
    assert (rendered["scrape_dir"] / "targets.yml").exists()
    edited = yaml.safe_load(before)
    edited["scrape_configs"] = [j for j in edited["scrape_configs"] if j["job_name"] != "limpeza"]
    edited["rule_files"] = []
    config.write_text(yaml.safe_dump(edited, sort_keys=False), encoding="utf-8")
    after_edit = config.read_bytes()
    removed = _remove(tmp_path, config, opt_out)
    assert removed["changed"] == 1 and removed["reloads"] == 1, removed["output"]
    assert "job_name: limpeza" not in removed["output"]
    assert not rendered["scrape_dir"].exists()
    assert config.read_bytes() == after_edit
