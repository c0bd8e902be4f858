"""Each role's meta/argument_specs.yml documents exactly the variables of its defaults/main.yml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "defaults" / "main.yml").exists())


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def test_every_role_is_checked() -> None:
    assert {"limpeza", "limpeza_cleaner", "limpeza_exporter", "limpeza_alerts"} <= set(ROLE_NAMES)


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_argument_specs_mirror_defaults(role: str) -> None:
    defaults = _load(ROLES / role / "defaults" / "main.yml")
    specs = _load(ROLES / role / "meta" / "argument_specs.yml")
    options = specs["argument_specs"]["main"]["options"]
    missing = sorted(set(defaults) - set(options))
    extra = sorted(set(options) - set(defaults))
    assert not missing and not extra, f"{role}: undocumented {missing}, not defaults {extra}"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_option_is_typed_and_described(role: str) -> None:
    options = _load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]["main"][
        "options"
    ]
    for name, option in options.items():
        assert option.get("type"), f"{role}: {name} has no type"
        description = option.get("description")
        assert isinstance(description, str) and description.strip(), f"{role}: {name}"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_literal_spec_defaults_match_the_defaults_file(role: str) -> None:
    defaults = _load(ROLES / role / "defaults" / "main.yml")
    options = _load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]["main"][
        "options"
    ]
    for name, option in options.items():
        value = defaults[name]
        if "default" in option and not (isinstance(value, str) and "{{" in value):
            assert option["default"] == value, f"{role}: {name}"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_public_variables_carry_the_role_prefix(role: str) -> None:
    prefix = f"{role}_" if role != "limpeza" else "limpeza_"
    for name in _load(ROLES / role / "defaults" / "main.yml"):
        assert name.startswith(prefix), f"{role}: {name}"
