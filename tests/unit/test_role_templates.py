"""The roles' templates rendered by Ansible itself with the roles' defaults."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / ".venv" / "bin" / "ansible"


def _render(role: str, template: str, dest: Path, *var_files: Path) -> str:
    if not ANSIBLE.exists():
        pytest.fail(f"{ANSIBLE} is missing: `make setup` installs ansible-core")
    extra = [arg for path in var_files for arg in ("-e", f"@{path}")]
    result = subprocess.run(
        [
            str(ANSIBLE),
            "localhost",
            "-c",
            "local",
            "-m",
            "ansible.builtin.template",
            "-a",
            f"src={REPO / 'roles' / role / 'templates' / template} dest={dest}",
            "-e",
            f"@{REPO / 'roles' / role / 'defaults' / 'main.yml'}",
            *extra,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dest.read_text(encoding="utf-8")


def test_alert_rules_template_with_defaults_is_the_committed_rule_file(tmp_path: Path) -> None:
    rendered = _render("limpeza_alerts", "limpeza.rules.yml.j2", tmp_path / "rules.yml")
    committed = yaml.safe_load((REPO / "alerts" / "limpeza.rules.yml").read_text())
    assert yaml.safe_load(rendered) == committed


def test_alert_rules_template_takes_the_thresholds(tmp_path: Path) -> None:
    overrides = tmp_path / "vars.yml"
    overrides.write_text(
        "limpeza_alerts_jobs_active_threshold: 9\nlimpeza_alerts_jobs_active_for: 3m\n"
        "limpeza_alerts_exporter_job: cleaner\n"
    )
    rendered = _render("limpeza_alerts", "limpeza.rules.yml.j2", tmp_path / "r.yml", overrides)
    rules = {rule["alert"]: rule for rule in yaml.safe_load(rendered)["groups"][0]["rules"]}
    assert rules["LimpezaJobsActiveHigh"]["expr"] == "limpeza_jobs_active > 9"
    assert rules["LimpezaJobsActiveHigh"]["for"] == "3m"
    assert rules["LimpezaExporterDown"]["expr"] == 'up{job="cleaner"} == 0'
    assert "{{ $labels.instance }}" in rules["LimpezaJobsActiveHigh"]["annotations"]["description"]
