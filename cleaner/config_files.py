"""The ``files`` section of the configuration: rules, protect globs, session file names.

What a rule may name is checked here, each problem with its key path: a pattern is a base
name glob that fnmatch(3) takes as meant (cleaner.patterns), a protect glob has no ``/``,
and without ``allow_dangerous`` no rule sweeps a system directory nor takes every name
(cleaner.safety). cleaner.config calls ``read_files`` with the section's defaults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cleaner.config_reader import MAX_INTERVAL, Reader, show
from cleaner.config_types import FilesConfig, QuarantineConfig, Rule
from cleaner.patterns import glob_problem, is_catch_all
from cleaner.safety import is_system_directory

_RULE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_RULE_KEYS = (
    "name",
    "pattern",
    "max_age",
    "directories",
    "recursive",
    "allow_dangerous",
    "quarantine",
)
_QUARANTINE_KEYS = ("directory", "retention", "max_bytes")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$")
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def read_files(reader: Reader, raw: object, defaults: Mapping[str, Any]) -> FilesConfig:
    """The ``files`` section, its missing keys taken from ``defaults``."""
    section = reader.mapping(raw, "files", defaults.keys())
    section = {**defaults, **section}
    directories = reader.path_list(section["directories"], "files.directories")
    protect = reader.string_list(section["protect"], "files.protect")
    for i, glob in enumerate(protect):
        if "/" in glob:
            reader.fail(
                f"files.protect[{i}]",
                "protects base names only, and a glob with '/' matches no base name, so it "
                f"would protect nothing; name the file's base name, got {show(glob)}",
            )
        elif glob and glob_problem(glob):
            reader.fail(f"files.protect[{i}]", f"{glob_problem(glob)}, got {show(glob)}")
    # The section's quarantine is every rule's that has no ``quarantine`` key of its own.
    default_quarantine = read_quarantine(reader, section["quarantine"], "files.quarantine")
    rules: list[Rule] = []
    raw_rules = section["rules"]
    if not isinstance(raw_rules, list):
        reader.fail("files.rules", f"expected a list of rules, got {show(raw_rules)}")
        raw_rules = []
    names: set[str] = set()
    for i, raw_rule in enumerate(raw_rules):
        path = f"files.rules[{i}]"
        entry = reader.mapping(raw_rule, path, _RULE_KEYS)
        for key in ("name", "pattern", "max_age"):
            if key not in entry and isinstance(raw_rule, dict):
                reader.fail(f"{path}.{key}", "is required")
        name = reader.string(entry.get("name", "x"), f"{path}.name")
        if name and not _RULE_NAME_RE.match(name):
            reader.fail(
                f"{path}.name", f"expected lower_snake_case (a metric label), got {show(name)}"
            )
        if name in names:
            reader.fail(f"{path}.name", f"duplicate rule name {show(name)}")
        names.add(name)
        pattern = reader.string(entry.get("pattern", "x"), f"{path}.pattern")
        if "/" in pattern:
            reader.fail(
                f"{path}.pattern", f"matches base names only; no '/' allowed, got {show(pattern)}"
            )
        rule_dirs = (
            reader.path_list(entry["directories"], f"{path}.directories")
            if "directories" in entry
            else directories
        )
        if not rule_dirs:
            reader.fail(f"{path}.directories", "no directory to sweep (set files.directories)")
        dirs_key = f"{path}.directories" if "directories" in entry else "files.directories"
        dangerous = reader.boolean(entry.get("allow_dangerous", False), f"{path}.allow_dangerous")
        _check_rule_safety(reader, path, pattern, rule_dirs, dirs_key, dangerous)
        rules.append(
            Rule(
                name=name,
                pattern=pattern,
                max_age=reader.duration(entry.get("max_age", 0), f"{path}.max_age"),
                directories=rule_dirs,
                recursive=reader.boolean(entry.get("recursive", False), f"{path}.recursive"),
                quarantine=(
                    read_quarantine(reader, entry["quarantine"], f"{path}.quarantine")
                    if "quarantine" in entry
                    else default_quarantine
                ),
            )
        )
    templates: dict[str, tuple[str, ...]] = {}
    for key in ("session_files", "final_files"):
        templates[key] = reader.string_list(section[key], f"files.{key}")
        for i, template in enumerate(templates[key]):
            if template and ("{id}" not in template or "/" in template):
                reader.fail(
                    f"files.{key}[{i}]",
                    f"expected a base name containing {{id}}, got {show(template)}",
                )
    return FilesConfig(
        directories,
        protect,
        tuple(rules),
        templates["session_files"],
        templates["final_files"],
        reader.duration(section["full_read_every"], "files.full_read_every", MAX_INTERVAL),
        default_quarantine,
    )


def parse_size(value: object) -> int:
    """Bytes from ``5GB``, ``500MiB``, ``1024`` (decimal and binary units); ValueError else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(value)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def read_quarantine(reader: Reader, raw: object, path: str) -> QuarantineConfig | None:
    """A ``quarantine: {directory, retention, max_bytes}`` of a rule or of the section;
    null or false: none.

    Where the directory lies (same filesystem, outside every swept directory) needs the
    disk: cleaner.quarantine.placement_problems, which cleaner.config.load runs.
    """
    if raw is None or raw is False:
        return None
    section = reader.mapping(raw, path, _QUARANTINE_KEYS)
    if "directory" not in section or "retention" not in section:
        reader.fail(path, "expected {directory: PATH, retention: DURATION, max_bytes: SIZE}")
        return None
    max_bytes = 0
    try:
        max_bytes = parse_size(section.get("max_bytes", 0))
    except ValueError:
        reader.fail(
            f"{path}.max_bytes",
            f"expected a size such as 5GB or 500MiB, got {show(section.get('max_bytes'))}",
        )
    return QuarantineConfig(
        directory=reader.abs_path(section["directory"], f"{path}.directory"),
        retention=reader.duration(section["retention"], f"{path}.retention"),
        max_bytes=max_bytes,
    )


def _check_rule_safety(
    reader: Reader,
    path: str,
    pattern: str,
    directories: tuple[Path, ...],
    dirs_key: str,
    dangerous: bool,
) -> None:
    """A rule's pattern must be a glob fnmatch(3) takes as meant; without allow_dangerous
    it may not sweep a system directory nor take every name (see cleaner.safety)."""
    problem = glob_problem(pattern) if pattern else None
    if problem:
        reader.fail(f"{path}.pattern", f"{problem}, got {show(pattern)}")
    if dangerous:
        return
    if pattern and is_catch_all(pattern):
        reader.fail(
            f"{path}.pattern",
            f"{show(pattern)} has no literal character but dots: it selects every name, not "
            "one kind of temporary file; name the files (session_*.json), or set "
            f"{path}.allow_dangerous: true if removing everything there is meant",
        )
    for j, directory in enumerate(directories):
        if is_system_directory(str(directory)):
            reader.fail(
                f"{dirs_key}[{j}]",
                f"{show(str(directory))} is a system directory (/, /etc, /usr, /home, /var/lib "
                "and the like, or directly in one): no rule sweeps it unless it sets "
                f"allow_dangerous: true ({path} does not)",
            )
