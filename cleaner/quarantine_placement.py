"""Where a quarantine directory may be: what ``check-config`` and every load refuse.

A quarantine moves files by rename, so it must be on the filesystem of every directory its
rule sweeps (it never copies: a cleaner under disk pressure must not), and it must be
outside every swept directory (a sweep must never find its own quarantine) and hold none.
This needs the disk, so ``cleaner.config.load`` runs it after the schema's checks.
"""

from __future__ import annotations

import os
from pathlib import Path

from cleaner.config_types import FilesConfig


def placement_problems(files: FilesConfig) -> list[str]:
    """Why a quarantine directory cannot serve its rules, each with its key path.

    It must be on the filesystem of every directory its rule sweeps (a rename; a
    quarantine never copies), and neither inside a swept directory nor holding one. A
    directory that does not exist yet is judged by its nearest existing parent; a swept
    directory that does not exist cannot be judged (it is reported as missing anyway). A
    rule that takes ``files.quarantine`` has its problems told under that key, once.
    """
    problems: dict[str, None] = {}
    swept = files.all_directories()
    for index, rule in enumerate(files.rules):
        if rule.quarantine is None:
            continue
        inherited = rule.quarantine is files.quarantine
        where = (
            "files.quarantine.directory"
            if inherited
            else f"files.rules[{index}].quarantine.directory"
        )
        sweeper = f" (rule {rule.name})" if inherited else ""
        target = rule.quarantine.directory
        real = Path(os.path.realpath(target))
        for directory in swept:
            other = Path(os.path.realpath(directory))
            if real == other or other in real.parents or real in other.parents:
                problems[
                    f"{where}: {str(target)!r} is inside swept directory {str(directory)!r} "
                    "or holds it; a quarantine must be outside every swept directory"
                ] = None
        device = _device(real)
        for directory in rule.directories:
            try:
                theirs = os.stat(directory).st_dev
            except OSError:
                continue
            if device is not None and device != theirs:
                problems[
                    f"{where}: {str(target)!r} is on another filesystem than {str(directory)!r}, "
                    f"which the rule sweeps{sweeper}; a quarantine moves files and never copies "
                    "them: put it on the same filesystem"
                ] = None
    return list(problems)


def _device(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return os.stat(candidate).st_dev
        except OSError:
            continue
    return None
