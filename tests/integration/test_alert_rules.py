"""The alert rules: valid for the real promtool, covered by its unit tests, consistent.

``promtool check rules`` and ``promtool test rules`` (Debian's prometheus package) run on
``alerts/limpeza.rules.yml`` and every ``alerts/tests/*.yml``; a failure shows promtool's
output. The conventions (names, severities, annotations, runbook sections) are checked on
the parsed file, and mutated copies of the rules prove the unit tests notice a change of
the paging threshold.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
RULES = ALERTS / "limpeza.rules.yml"
RUNBOOK = ALERTS / "runbook.md"
UNIT_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
RUNBOOK_BASE = "https://git.example.com/limpeza/blob/main/alerts/runbook.md"


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("no promtool; `make test` installs Debian's prometheus package", pytrace=False)
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def all_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def rules() -> list[dict[str, Any]]:
    """The alerting rules (the recording rules they use left out)."""
    return [rule for rule in all_rules() if "alert" in rule]


def alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in rules()})


def alert_rule_tests() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(file name, case name, alert_rule_test entry) for every case of every unit test file."""
    for path in UNIT_TESTS:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for case in document["tests"]:
            for check in case.get("alert_rule_test", []):
                yield path.name, case.get("name", ""), check


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """Anchor -> text of each ``## `` section of the runbook."""
    sections: dict[str, str] = {}
    current: str | None = None
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = github_anchor(line[3:])
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


# --------------------------------------------------------------------------- promtool


def test_promtool_checks_the_rules_file() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, shown(result)
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout, shown(result)


def test_there_are_unit_test_files() -> None:
    assert UNIT_TESTS, "no promtool unit test files in alerts/tests"


@pytest.mark.parametrize("path", UNIT_TESTS, ids=[p.name for p in UNIT_TESTS])
def test_promtool_unit_tests_pass(path: Path) -> None:
    result = promtool("test", "rules", path.name, cwd=path.parent)
    assert result.returncode == 0, shown(result)
    assert "SUCCESS" in result.stdout, shown(result)


@pytest.mark.parametrize("name", alert_names())
def test_every_alert_has_firing_and_quiet_cases(name: str) -> None:
    checks = [check for _, _, check in alert_rule_tests() if check["alertname"] == name]
    firing = [c for c in checks if c.get("exp_alerts")]
    quiet = [c for c in checks if not c.get("exp_alerts")]
    assert firing, f"no unit test case where {name} fires"
    assert quiet, f"no unit test case where {name} stays quiet"
    for check in firing:
        for alert in check["exp_alerts"]:
            assert "severity" in alert.get("exp_labels", {}), (name, alert)
            assert set(alert.get("exp_annotations", {})) == {
                "summary",
                "description",
                "runbook_url",
            }, (name, alert)


def test_every_case_has_a_name() -> None:
    for path in UNIT_TESTS:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for case in document["tests"]:
            assert case.get("name"), f"{path.name}: a case without a name: {case}"


ACTIVE = "table:limpeza_jobs_active:max"


def mutate(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of alerts/ whose rules file has ``old`` replaced by ``new`` (exactly once)."""
    copy = tmp_path / "alerts"
    shutil.copytree(ALERTS, copy)
    text = RULES.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not in the rules exactly once"
    (copy / RULES.name).write_text(text.replace(old, new), encoding="utf-8")
    return copy


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (f"expr: {ACTIVE} > 5", f"expr: {ACTIVE} >= 5"),
        (f"expr: {ACTIVE} > 5\n        for: 1m", f"expr: {ACTIVE} > 5"),
        (
            f"expr: {ACTIVE} > 5\n        for: 1m\n        labels:\n          severity: critical",
            f"expr: {ACTIVE} > 5\n        for: 1m\n        labels:\n          severity: warning",
        ),
        (
            'expr: max by (job, table) (limpeza_jobs_active{table!=""})',
            'expr: sum by (job, table) (limpeza_jobs_active{table!=""})',
        ),
        (
            'expr: max by (job, table) (limpeza_jobs_active{table!=""})',
            'expr: max by (job, table, instance) (limpeza_jobs_active{table!=""})',
        ),
    ],
    ids=["threshold-includes-5", "no-for", "not-critical", "sum-over-exporters", "per-instance"],
)
def test_unit_tests_catch_a_changed_paging_rule(tmp_path: Path, old: str, new: str) -> None:
    copy = mutate(tmp_path, old, new)
    result = promtool("test", "rules", "jobs.yml", cwd=copy / "tests")
    assert result.returncode != 0, "the unit tests pass a broken paging rule:\n" + shown(result)
    assert "LimpezaJobsActiveHigh" in result.stdout + result.stderr, shown(result)


# --------------------------------------------------------------------------- conventions


def test_recording_rules_come_before_the_alerts_that_use_them() -> None:
    names = [rule.get("record") or rule["alert"] for rule in all_rules()]
    records = [name for name in names if ":" in name]
    assert records and names[: len(records)] == records, names
    for rule in rules():
        for record in re.findall(r"\b\w+:\w+:\w+\b", rule["expr"]):
            assert record in records, f"{rule['alert']} uses {record}, which no rule records"


def test_one_group() -> None:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert [g["name"] for g in document["groups"]] == ["limpeza"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: f"{r['alert']}-{r['labels']['severity']}")
def test_alert_follows_the_conventions(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"Limpeza(?:[A-Z][a-z0-9]+)+", name), name
    assert rule["labels"]["severity"] in {"critical", "warning"}, rule
    annotations = rule["annotations"]
    summary = annotations["summary"]
    assert summary.endswith(".") and summary.count(". ") == 0 and "{{" not in summary, summary
    description = annotations["description"]
    assert "$value" in description, description
    if not rule["expr"].startswith("absent("):
        # Per-host alerts name the instance, alerts about a shared jobs table the table.
        assert "$labels.instance" in description or "$labels.table" in description, description
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}", annotations
    assert rule.get("for"), f"{name} has no for: a single bad scrape would notify"


def test_rules_are_unique_by_name_and_severity() -> None:
    keys = [(r["alert"], r["labels"]["severity"]) for r in rules()]
    assert len(keys) == len(set(keys)), keys


def test_jobs_active_high_pages_above_five_for_a_minute() -> None:
    (rule,) = [r for r in rules() if r["alert"] == "LimpezaJobsActiveHigh"]
    assert rule["expr"] == f"{ACTIVE} > 5"
    assert rule["for"] == "1m"
    assert rule["labels"]["severity"] == "critical"


@pytest.mark.parametrize("name", alert_names())
def test_every_alert_has_a_runbook_section(name: str) -> None:
    sections = runbook_sections()
    anchor = name.lower()
    assert anchor in sections, f"runbook.md has no '## {name}' section"
    text = sections[anchor]
    for part in ("**Meaning.**", "**How to check.**", "**How to fix.**"):
        assert part in text, f"runbook section {name} lacks {part}"


def test_runbook_has_no_section_without_an_alert() -> None:
    assert set(runbook_sections()) == {name.lower() for name in alert_names()}


@pytest.mark.parametrize("name", ["LimpezaJobsActiveHigh", "LimpezaJobsStale", "LimpezaApiDown"])
def test_runbook_names_the_force_clean_playbook(name: str) -> None:
    text = runbook_sections()[name.lower()]
    assert "ansible-playbook -i INVENTORY playbooks/force_clean.yml -e confirm=yes" in text


def test_runbook_links_point_at_sections() -> None:
    sections = runbook_sections()
    for anchor in re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text(encoding="utf-8")):
        assert anchor in sections, f"runbook link to a missing section #{anchor}"
