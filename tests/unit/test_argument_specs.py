"""Each role's variables, told the same everywhere.

meta/argument_specs.yml documents exactly the variables of defaults/main.yml; the README's
table shows each with that default and that description; the example inventory shows each
with its default; limpeza_<key> names the key of limpeza.yml it sets (cleaner.config).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cleaner.config import DEFAULTS, KEYS

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if (p / "defaults" / "main.yml").exists())


class _VaultLoader(yaml.SafeLoader):
    """Reads an inline `!vault` value (ansible-vault encrypt_string) as its ciphertext."""


_VaultLoader.add_constructor("!vault", lambda loader, node: loader.construct_scalar(node))


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_VaultLoader) or {}


def test_every_role_is_checked() -> None:
    assert {
        "limpeza",
        "limpeza_cleaner",
        "limpeza_exporter",
        "limpeza_alerts",
        "limpeza_prometheus",
    } <= set(ROLE_NAMES)


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


def _options(role: str) -> dict[str, dict[str, object]]:
    options: dict[str, dict[str, object]] = _load(ROLES / role / "meta" / "argument_specs.yml")[
        "argument_specs"
    ]["main"]["options"]
    return options


_SPEC_TYPES = {str: ("str", "path"), list: ("list",), dict: ("dict",), bool: ("bool",)}


def test_config_variables_name_their_key_and_its_type() -> None:
    """limpeza_<key path> documents the key of limpeza.yml it sets, typed as its default."""
    options = _options("limpeza")
    config_variables = {
        "limpeza_" + "_".join(path): path
        for path in KEYS
        if (len(path) == 1 and not isinstance(DEFAULTS[path[0]], dict)) or len(path) == 2
    }
    assert set(config_variables) <= set(options), sorted(set(config_variables) - set(options))
    for name, path in config_variables.items():
        option = options[name]
        assert f"({'.'.join(path)})" in str(option["description"]), name
        value = DEFAULTS
        for key in path:
            value = value[key]
        if value is not None:
            assert option["type"] in _SPEC_TYPES.get(type(value), ("int",)), name


def _readme_table(role: str) -> dict[str, tuple[str, str]]:
    """name -> (default cell, description) of the role README's table of variables."""
    text = (ROLES / role / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Variables\n", 1)[1]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def _shown(value: object) -> str:
    """A default as the tables show it: a string as it is, anything else as flow YAML."""
    if isinstance(value, str) and value:
        text = value
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
        text = text.removesuffix("\n").removesuffix("\n...")
    return "`" + text.replace("|", "\\|") + "`"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_readme_table_is_the_defaults_and_the_specs(role: str) -> None:
    defaults = _load(ROLES / role / "defaults" / "main.yml")
    options = _options(role)
    table = _readme_table(role)
    assert list(table) == list(defaults), f"{role}: README rows differ from defaults/main.yml"
    for name, (default, description) in table.items():
        assert default == _shown(defaults[name]), f"{role}: {name}"
        assert description == " ".join(str(options[name]["description"]).split()), f"{role}: {name}"


def test_example_inventory_shows_every_variable_with_its_default() -> None:
    inventory = REPO / "inventories" / "example" / "group_vars"
    groups = {"limpeza": ["limpeza", "limpeza_cleaner", "limpeza_exporter"]}
    groups["prometheus"] = ["limpeza_alerts", "limpeza_prometheus"]
    for group, roles in groups.items():
        path = inventory / group / "main.yml"
        shown = _load(path if path.exists() else inventory / f"{group}.yml")
        expected = {
            k: v for role in roles for k, v in _load(ROLES / role / "defaults" / "main.yml").items()
        }
        # The only departure: the DSN, encrypted inline.
        if group == "limpeza":
            assert shown["limpeza_database_url"].startswith("$ANSIBLE_VAULT;1.1;AES256")
        expected["limpeza_database_url"] = shown.get("limpeza_database_url")
        if group == "prometheus":
            del expected["limpeza_database_url"]
        assert shown == expected, group


def test_the_files_quarantine_is_validated_as_the_cleaner_reads_it() -> None:
    """limpeza_files_quarantine has the keys of a rule's quarantine (cleaner.config_files),
    and the role refuses one without a directory or a retention before anything runs."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    from cleaner.config_files import _QUARANTINE_KEYS

    spec = _options("limpeza")["limpeza_files_quarantine"]
    suboptions = spec["options"]
    assert isinstance(suboptions, dict)
    assert set(suboptions) == set(_QUARANTINE_KEYS)
    validator = ArgumentSpecValidator({"limpeza_files_quarantine": spec})
    good = {"directory": "/srv/app/.limpeza-quarantine", "retention": "7d", "max_bytes": "5GB"}
    assert not validator.validate({"limpeza_files_quarantine": good}).error_messages
    assert not validator.validate({"limpeza_files_quarantine": None}).error_messages
    for missing in ("directory", "retention"):
        partial = {k: v for k, v in good.items() if k != missing}
        errors = validator.validate({"limpeza_files_quarantine": partial}).error_messages
        assert any(missing in error for error in errors), errors
    unknown = validator.validate({"limpeza_files_quarantine": {**good, "retain": "1d"}})
    assert any("retain" in error for error in unknown.error_messages), unknown.error_messages
