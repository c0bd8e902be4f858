"""What the configured directories hold now: the files part of ``limpeza-cleaner status``.

The same walk as the sweep's (same rules, protect globs and safety: no symlink followed,
no mount point crossed, a nested configured root left to its own rules), with nothing
removed: per directory and rule, the matching
regular files, their bytes, and how many of them are past the rule's age. A file that is a
mount point (another file bind-mounted onto a matching name) is not counted: the sweep
never removes it, so it is neither what a rule holds nor what it would free.
"""

from __future__ import annotations

from dataclasses import dataclass

from cleaner.config import FilesConfig
from cleaner.files import Walker, is_mount_point, root_identities
from cleaner.mounts import MountPoints
from cleaner.state import DirectoryUsage
from cleaner.sweep_result import SweepResult


@dataclass
class RuleSurvey:
    """One rule's matching files in one directory, and those of them past its age."""

    files: int = 0
    bytes: int = 0
    expired: int = 0
    expired_bytes: int = 0


def survey(files: FilesConfig, *, now: float) -> dict[str, dict[str, RuleSurvey]]:
    """What is there now, per directory and rule: files, bytes, and how many are expired."""
    report: dict[str, dict[str, RuleSurvey]] = {}
    scratch = SweepResult(dry_run=True)
    roots = root_identities(files.all_directories())
    mounts = MountPoints.detect(files.all_directories())
    for root in files.all_directories():
        rules = tuple(r for r in files.rules if root in r.directories)
        per_rule = report.setdefault(str(root), {r.name: RuleSurvey() for r in rules})
        walker = Walker(
            root,
            rules,
            files.protect,
            scratch,
            DirectoryUsage(),
            other_roots=frozenset(v for k, v in roots.items() if k != root),
            mounts=mounts,
        )
        for candidate in walker.candidates():
            try:
                if is_mount_point(candidate, -1, mounts):
                    continue
            except OSError:
                continue  # gone since the walk saw it
            entry = per_rule[candidate.rule.name]
            entry.files += 1
            entry.bytes += candidate.st.st_size
            if now - candidate.st.st_mtime >= candidate.rule.max_age:
                entry.expired += 1
                entry.expired_bytes += candidate.st.st_size
    return report
