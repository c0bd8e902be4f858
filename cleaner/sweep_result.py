"""What a sweep did: removals, counters per rule and skip reason, usage, and checkpoints.

``cleaner.files.sweep`` returns a ``SweepResult`` and the daemon applies it to its state
(``cleaner.daemon.apply_sweep``); during a long sweep ``Checkpoints`` hands the counters
over in slices, so a crash loses at most one slice. Bytes count what the filesystem gets
back (``freed_bytes``), the apparent size beside it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cleaner.report import format_bytes
from cleaner.state import DirectoryUsage

#: Called once per file removed (or, in a dry run, that would be removed).
RemovalHook = Callable[["Removal"], None]
#: Called during a long sweep with the counters of what it did since the last call.
CheckpointHook = Callable[["SweepResult"], None]
#: A long sweep hands its counters to its checkpoint at most this often (seconds): a crash
#: then loses at most this long of the sweep's counts.
CHECKPOINT_EVERY = 1.0


def freed_bytes(st: os.stat_result) -> int:
    """What removing this name gives back to the filesystem: its allocated blocks when it
    is the file's last link, else nothing (``st_blocks`` counts 512-byte units). A sparse
    file frees less than its size, a hard link nothing until the last one goes."""
    return st.st_blocks * 512 if st.st_nlink == 1 else 0


@dataclass(frozen=True)
class Removal:
    """One file removed (or that a dry run would remove).

    ``size`` is its apparent size; ``freed`` what its removal gave back (``freed_bytes``),
    None where it was not measured. ``action`` is ``remove``, ``quarantine`` (then
    ``quarantine_id`` names the entry, and nothing is freed yet), or what happened to a
    quarantined file later: ``expire`` (its ``reason``), ``restore``.
    """

    rule: str
    path: str
    size: int
    age: float
    mtime: float
    freed: int | None = None
    quarantine_id: str | None = None
    action: str = ""
    reason: str | None = None

    @property
    def what(self) -> str:
        if self.action:
            return self.action
        return "remove" if self.quarantine_id is None else "quarantine"


@dataclass
class RuleTally:
    """Files removed under one rule: how many, the bytes freed (``freed_bytes``: allocated
    blocks, last links only) and their apparent size."""

    files: int = 0
    bytes: int = 0
    apparent: int = 0

    def add(self, other: RuleTally, sign: int = 1) -> None:
        self.files += sign * other.files
        self.bytes += sign * other.bytes
        self.apparent += sign * other.apparent


@dataclass
class SweepResult:
    """What one sweep did: counters per rule, skips per reason, errors, usage seen."""

    dry_run: bool
    removed: dict[str, RuleTally] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    directories: dict[str, DirectoryUsage] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    stopped: bool = False
    #: Of the files removed, how many went to a quarantine (they free nothing yet).
    quarantined: int = 0
    #: The counters already handed to a checkpoint (see ``sweep``), None when none was.
    checkpointed: SweepResult | None = None

    @property
    def files_removed(self) -> int:
        return sum(t.files for t in self.removed.values())

    @property
    def bytes_removed(self) -> int:
        """The bytes freed (allocated blocks of the files whose last link went)."""
        return sum(t.bytes for t in self.removed.values())

    @property
    def apparent_bytes_removed(self) -> int:
        """The apparent size (``st_size``) of the files removed."""
        return sum(t.apparent for t in self.removed.values())

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def counters(self) -> SweepResult:
        """A copy of the counters (removed, skipped, errors) alone."""
        return SweepResult(
            self.dry_run,
            removed={n: RuleTally(t.files, t.bytes, t.apparent) for n, t in self.removed.items()},
            skipped=dict(self.skipped),
            errors=self.errors,
        )

    def since(self, before: SweepResult) -> SweepResult:
        """The counters added since ``before`` (an earlier ``counters()``) was taken."""
        done = self.counters()
        for name, tally in before.removed.items():
            done.removed.setdefault(name, RuleTally()).add(tally, -1)
        for reason, count in before.skipped.items():
            done.skipped[reason] = done.skipped.get(reason, 0) - count
        done.errors -= before.errors
        return done

    def pending(self) -> SweepResult:
        """What no checkpoint has carried yet: the counters since the last one, with the
        usage, the missing directories and whether the sweep was stopped (the whole result
        when there was no checkpoint). The daemon records this once the sweep returns."""
        if self.checkpointed is None:
            return self
        rest = self.since(self.checkpointed)
        rest.directories = dict(self.directories)
        rest.missing = list(self.missing)
        rest.stopped = self.stopped
        return rest

    def summary(self) -> str:
        """The one line logged per sweep."""
        verb = "would be removed" if self.dry_run else "removed"
        per_rule = ", ".join(f"{name}: {t.files}" for name, t in self.removed.items())
        parts = [per_rule] if per_rule else []
        parts.append(f"errors: {self.errors}")
        skipped = sum(self.skipped.values())
        if skipped:
            parts.append(
                "skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()) if v)
            )
        freed = "would be freed" if self.dry_run else "freed"
        head = "cleanup dry run" if self.dry_run else "cleanup done"
        if self.quarantined:
            parts.append(f"quarantined: {self.quarantined}")
        return (
            f"{head}: {self.files_removed} files {verb} ({', '.join(parts)}), "
            f"{format_bytes(self.bytes_removed)} {freed}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "files_removed": self.files_removed,
            "bytes_removed": self.bytes_removed,
            "apparent_bytes_removed": self.apparent_bytes_removed,
            "rules": {
                n: {"files": t.files, "bytes": t.bytes, "apparent_bytes": t.apparent}
                for n, t in self.removed.items()
            },
            "skipped": dict(self.skipped),
            "errors": self.errors,
            "directories": {
                d: {"files": u.files, "bytes": u.bytes} for d, u in self.directories.items()
            },
            "missing_directories": list(self.missing),
            "stopped": self.stopped,
            "files_quarantined": self.quarantined,
        }


class Checkpoints:
    """Hands a sweep's counters to ``checkpoint`` at most once per ``every`` seconds."""

    def __init__(
        self,
        result: SweepResult,
        checkpoint: CheckpointHook,
        every: float,
        clock: Callable[[], float],
    ) -> None:
        self.result = result
        self.checkpoint = checkpoint
        self.every = every
        self.clock = clock
        self.due = clock() + every

    def tick(self) -> None:
        now = self.clock()
        if now < self.due:
            return
        self.due = now + self.every
        result = self.result
        done = result.counters()
        progress = done if result.checkpointed is None else done.since(result.checkpointed)
        result.checkpointed = done
        self.checkpoint(progress)
