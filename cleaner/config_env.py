"""What the configuration takes from the environment, and the ``.env`` file that adds to it.

Only these variables are read, from the process environment or a ``.env`` file beside the
configuration file (the environment wins):

- ``LIMPEZA_CONFIG``: the configuration file, when ``--config`` is not given;
- ``LIMPEZA_DATABASE_URL``: the database DSN (never in the YAML file);
- ``LIMPEZA_<KEY>``: the value of one configuration key, named by its key path in capitals
  with a double underscore per level: ``LIMPEZA_INTERVAL``, ``LIMPEZA_JOBS__HEALTH_URL``,
  ``LIMPEZA_JOBS__DATABASE__TABLE``. The value is read as YAML and replaces the key's value
  in the file.

Which keys exist is the schema's to say (cleaner.config passes them in). Any other
``LIMPEZA_*`` name is not read: it is returned as unused so that a program can warn about it
by name (never by value), and it can never stop a program from starting.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "LIMPEZA_"
CONFIG_VARIABLE = "LIMPEZA_CONFIG"
DSN_VARIABLE = "LIMPEZA_DATABASE_URL"
#: Variables with a meaning of their own, never treated as key overrides.
ENV_RESERVED = frozenset({CONFIG_VARIABLE, DSN_VARIABLE})

KeyPath = tuple[str, ...]


def variable_name(path: KeyPath) -> str:
    """The variable that overrides a key: ``("jobs", "health_url")`` -> LIMPEZA_JOBS__HEALTH_URL."""
    return ENV_PREFIX + "__".join(key.upper() for key in path)


def env_overrides(
    env: Mapping[str, str], keys: Collection[KeyPath]
) -> tuple[dict[KeyPath, Any], tuple[str, ...]]:
    """(overrides by key path, the unused ``LIMPEZA_*`` names) of an environment.

    ``keys`` are every key path of the schema, sections included. Values are read as YAML,
    so ``[a, b]`` is a list, ``true`` a boolean and ``null`` nothing.
    """
    by_name = {variable_name(path): path for path in keys}
    overrides: dict[KeyPath, Any] = {}
    unused: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in ENV_RESERVED:
            continue
        path = by_name.get(name)
        if path is None:
            unused.append(name)
            continue
        try:
            overrides[path] = yaml.safe_load(env[name]) if env[name] else ""
        except yaml.YAMLError:
            overrides[path] = env[name]
    return overrides, tuple(unused)


def apply_overrides(
    raw: Mapping[str, Any], overrides: Mapping[KeyPath, Any]
) -> tuple[dict[str, Any], list[str]]:
    """``raw`` with each override's key set, and the overrides that could not be set.

    Nothing in ``raw`` is changed: the mappings on an override's path are copied. Shallow
    keys go first, so ``LIMPEZA_JOBS__HEALTH_URL`` lands inside a ``LIMPEZA_JOBS`` mapping.
    An override below a key whose value is not a mapping (nor nothing) is a problem.
    """
    root = dict(raw)
    problems: list[str] = []
    for path in sorted(overrides, key=len):
        node = root
        for depth, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is not None and not isinstance(child, dict):
                problems.append(
                    f"${variable_name(path)}: cannot set {'.'.join(path)}, "
                    f"{'.'.join(path[: depth + 1])} is not a mapping"
                )
                break
            node[key] = child = dict(child or {})
            node = child
        else:
            node[path[-1]] = overrides[path]
    return root, problems


def read_dotenv(path: Path) -> dict[str, str]:
    """Variables from a ``.env`` file (python-dotenv's syntax); nothing if there is none."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}
