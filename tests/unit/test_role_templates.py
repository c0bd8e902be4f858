"""The roles' templates rendered by Ansible itself with the roles' defaults.

limpeza.yml, as the role renders it with its defaults, is cleaner.config.DEFAULTS key for key
and value for value: the role has one variable per key, defaulting to the programs' default.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from cleaner.config import DEFAULTS, KEYS, SECTIONS

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


def _alert_rules(tmp_path: Path, *var_files: Path) -> str:
    """The limpeza_alerts template rendered as the role renders it (its vars, its role_path)."""
    role = REPO / "roles" / "limpeza_alerts"
    role_path = tmp_path / "role_path.yml"
    role_path.write_text(f"role_path: {role}\n", encoding="utf-8")
    return _render(
        "limpeza_alerts",
        "limpeza.rules.yml.j2",
        tmp_path / "rules.yml",
        role / "vars" / "main.yml",
        role_path,
        *var_files,
    )


def test_alert_rules_template_with_defaults_is_the_committed_rule_file(tmp_path: Path) -> None:
    rendered = _alert_rules(tmp_path)
    committed = yaml.safe_load((REPO / "alerts" / "limpeza.rules.yml").read_text())
    assert yaml.safe_load(rendered) == committed


def test_the_role_holds_no_copy_of_the_rules() -> None:
    role = REPO / "roles" / "limpeza_alerts"
    template = (role / "templates" / "limpeza.rules.yml.j2").read_text()
    assert "alert:" not in template and "expr:" not in template
    assert not list(role.rglob("*.rules.yml"))


def test_every_tunable_alert_of_the_rule_file_has_its_variables() -> None:
    role = REPO / "roles" / "limpeza_alerts"
    tuning = yaml.safe_load((role / "vars" / "main.yml").read_text())["_limpeza_alerts_tuning"]
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    rules = yaml.safe_load((REPO / "alerts" / "limpeza.rules.yml").read_text())["groups"][0]
    alerts = {f"{r['alert']}/{r['labels']['severity']}" for r in rules["rules"] if "alert" in r}
    assert set(tuning) <= alerts, set(tuning) - alerts
    for key, tune in tuning.items():
        for value in tune.values():
            variable = value.strip("{} ")
            assert variable in defaults, f"{key}: {variable} has no default"


def test_alert_rules_template_takes_the_thresholds(tmp_path: Path) -> None:
    overrides = tmp_path / "vars.yml"
    overrides.write_text(
        "limpeza_alerts_jobs_active_threshold: 9\nlimpeza_alerts_jobs_active_for: 3m\n"
        "limpeza_alerts_exporter_job: cleaner\nlimpeza_alerts_sweep_overdue_intervals: 20\n"
        "limpeza_alerts_filesystem_filling_percent: 30\n"
        "limpeza_alerts_runbook_url: https://wiki.example.org/limpeza\n"
    )
    rendered = _alert_rules(tmp_path, overrides)
    rules = {
        rule["alert"]: rule
        for rule in yaml.safe_load(rendered)["groups"][0]["rules"]
        if "alert" in rule
    }
    assert rules["LimpezaJobsActiveHigh"]["expr"] == "table:limpeza_jobs_active:max > 9"
    assert rules["LimpezaJobsActiveHigh"]["for"] == "3m"
    assert rules["LimpezaExporterDown"]["expr"] == 'up{job="cleaner"} == 0'
    assert rules["LimpezaSweepOverdue"]["expr"] == "instance:limpeza_sweep_age:intervals > 20"
    assert rules["LimpezaFilesystemFillingUp"]["expr"].endswith(" < 0) < 30")
    assert rules["LimpezaApiDown"]["annotations"]["runbook_url"] == (
        "https://wiki.example.org/limpeza#limpezaapidown"
    )
    assert "{{ $labels.instance }}" in rules["LimpezaSweepOverdue"]["annotations"]["description"]


def _role_files(role: str) -> list[Path]:
    """The defaults and vars files of the limpeza role, then of ``role`` (if another)."""
    files = []
    for name in dict.fromkeys(["limpeza", role]):
        for kind in ("defaults", "vars"):
            path = REPO / "roles" / name / kind / "main.yml"
            if path.exists():
                files.append(path)
    return files


def _key_tree(value: object) -> object:
    if isinstance(value, dict):
        return {key: _key_tree(child) for key, child in value.items()}
    return None


def test_limpeza_yml_template_with_defaults_is_the_programs_defaults(tmp_path: Path) -> None:
    rendered = yaml.safe_load(
        _render("limpeza", "limpeza.yml.j2", tmp_path / "limpeza.yml", *_role_files("limpeza"))
    )
    assert _key_tree(rendered) == _key_tree(DEFAULTS)
    assert rendered == DEFAULTS


def _config_variables() -> dict[str, tuple[str, ...]]:
    """Role variable -> key path: one per top-level key and per key of a top-level section.

    Deeper sections (jobs.force_clean, jobs.database) are one mapping variable each.
    """
    variables = {}
    for path in sorted(KEYS):
        if (len(path) == 1 and path not in SECTIONS) or len(path) == 2:
            variables["limpeza_" + "_".join(path)] = path
    return variables


def test_role_builds_limpeza_yml_from_one_variable_per_key() -> None:
    role_vars = yaml.safe_load((REPO / "roles" / "limpeza" / "vars" / "main.yml").read_text())
    expected: dict[str, object] = {}
    for variable, path in _config_variables().items():
        node = expected
        for key in path[:-1]:
            node = node.setdefault(key, {})  # type: ignore[assignment]
        node[path[-1]] = "{{ " + variable + " }}"
    assert role_vars["_limpeza_config"] == expected


def test_role_defaults_are_the_programs_defaults() -> None:
    defaults = yaml.safe_load((REPO / "roles" / "limpeza" / "defaults" / "main.yml").read_text())
    for variable, path in _config_variables().items():
        value: object = DEFAULTS
        for key in path:
            value = value[key]  # type: ignore[index]
        assert variable in defaults, f"{variable} ({'.'.join(path)}) has no default"
        if isinstance(defaults[variable], str) and "{{" in defaults[variable]:
            continue  # a templated default: rendered, it is the program's (test above)
        assert defaults[variable] == value, variable


def _unit(tmp_path: Path, *var_files: Path, role: str = "limpeza_exporter") -> dict[str, list[str]]:
    text = _render(
        role,
        f"{role.replace('_', '-')}.service.j2",
        tmp_path / "unit",
        *_role_files(role),
        *var_files,
    )
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(name, []).append(value)
    return settings


def test_exporter_unit_reloads_on_sighup_and_takes_its_address_at_start(tmp_path: Path) -> None:
    unit = _unit(tmp_path)
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    [start] = unit["ExecStart"]
    assert start.endswith(
        "/bin/limpeza-exporter --config /etc/limpeza/limpeza.yml "
        "--web.listen-address 127.0.0.1:9817"
    )
    overrides = tmp_path / "vars.yml"
    overrides.write_text(
        "limpeza_exporter_listen_address: '[::1]:9100'\n"
        "limpeza_exporter_web_config_file: /etc/limpeza/web.yml\n"
    )
    [start] = _unit(tmp_path, overrides)["ExecStart"]
    assert start.endswith("--web.listen-address [::1]:9100 --web.config.file /etc/limpeza/web.yml")


@pytest.mark.parametrize("role", ["limpeza_cleaner", "limpeza_exporter"])
def test_a_config_change_reloads_and_new_code_restarts(role: str) -> None:
    handlers = yaml.safe_load((REPO / "roles" / role / "handlers" / "main.yml").read_text())
    by_topic: dict[str, list[str]] = {}
    for handler in handlers:
        if "ansible.builtin.systemd_service" not in handler:
            continue  # the checks that the unit stays active after any of them
        for topic in handler["listen"]:
            by_topic.setdefault(topic, []).append(
                handler["ansible.builtin.systemd_service"]["state"]
            )
    assert by_topic["limpeza config changed"] == ["reloaded"]
    assert by_topic["limpeza code changed"] == ["restarted"]
    assert by_topic["limpeza environment changed"] == ["restarted"]


def test_cleaner_unit_may_rename_into_every_quarantine(tmp_path: Path) -> None:
    """A rename never crosses a mount point, and the sandbox bind-mounts each writable path
    on its own: each quarantine is writable through the deepest directory it shares with
    what its rules sweep (a rule's own, and files.quarantine once a rule inherits it)."""
    unit = _unit(tmp_path, role="limpeza_cleaner")
    assert unit["ReadWritePaths"] == ["/srv/app/backend/app/uploads", "/srv/app/uploads"]
    overrides = tmp_path / "vars.yml"
    own = {"directory": "/data/.own-quarantine", "retention": "1d"}
    section = {"directory": "/srv/app/.limpeza-quarantine", "retention": "7d", "max_bytes": "5GB"}
    rules = [
        {"name": "sessions", "pattern": "session_*.json", "max_age": "24h"},
        {"name": "temp_audio", "pattern": "temp_audio_*.wav", "max_age": "24h", "quarantine": None},
        {
            "name": "renders",
            "pattern": "final_*.mp4",
            "max_age": "24h",
            "directories": ["/data/renders/a", "/data/renders/b"],
            "quarantine": own,
        },
    ]
    overrides.write_text(
        yaml.safe_dump({"limpeza_files_rules": rules, "limpeza_files_quarantine": section})
    )
    assert _unit(tmp_path, overrides, role="limpeza_cleaner")["ReadWritePaths"] == [
        "/srv/app/backend/app/uploads",
        "/srv/app/uploads",
        "/data/renders/a",
        "/data/renders/b",
        "/data",
        "/srv/app",
    ]
    # Every rule with a key of its own: files.quarantine serves none and stays read-only.
    rules[0]["quarantine"] = False
    overrides.write_text(
        yaml.safe_dump({"limpeza_files_rules": rules, "limpeza_files_quarantine": section})
    )
    assert _unit(tmp_path, overrides, role="limpeza_cleaner")["ReadWritePaths"] == [
        "/srv/app/backend/app/uploads",
        "/srv/app/uploads",
        "/data/renders/a",
        "/data/renders/b",
        "/data",
    ]


def test_cleaner_role_creates_its_quarantines_for_its_user_alone() -> None:
    tasks = yaml.safe_load(
        (REPO / "roles" / "limpeza_cleaner" / "tasks" / "configure.yml").read_text()
    )
    names = [task["name"] for task in tasks]
    [create] = [task for task in tasks if task["name"] == "Create the quarantine directories"]
    assert create["loop"] == "{{ _limpeza_cleaner_quarantines }}"
    assert create["ansible.builtin.file"] == {
        "path": "{{ item }}",
        "state": "directory",
        "owner": "{{ limpeza_user }}",
        "group": "{{ limpeza_group }}",
        "mode": "0700",
    }
    # It exists before the unit names it in ReadWritePaths (a missing path fails the start).
    assert names.index(create["name"]) < names.index("Install the limpeza-cleaner unit")
