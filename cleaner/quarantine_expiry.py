"""Entries leaving a quarantine for good: expiry by ``retention`` and ``max_bytes``, and purge.

``expire`` unlinks the entries older than their rule's ``retention``, then the oldest of a
rule over its ``max_bytes``; ``purge`` unlinks every entry (or those older than a
duration). Each unlink is followed by its ``expire`` line (with its ``reason``), under the
quarantine's lock: a crash between the two leaves an entry without a file, which
reconciliation drops. They return what went (an ``Expired`` each), or give each to a
callback so that nothing grows with what goes; the caller audits and counts it. The
manifest is then compacted (when its dead lines are many) from the read they streamed,
less the entries they ended in its order: nothing is held per entry that went, however
many (``cleaner.manifest``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cleaner.manifest_lines import Entry
from cleaner.sweep_result import Removal

if TYPE_CHECKING:
    from cleaner.quarantine import Store


@dataclass
class RuleCounts:
    """Files and bytes of one rule: what a quarantine holds, or what left it."""

    files: int = 0
    bytes: int = 0


@dataclass
class Expired:
    """One entry unlinked by ``expire`` or ``purge``: the entry, why, the bytes freed."""

    entry: Entry
    reason: str
    freed: int

    def removal(self, now: float) -> Removal:
        """Its audit log line."""
        entry = self.entry
        mtime = entry.mtime_ns / 1e9
        return Removal(
            entry.rule,
            entry.path,
            entry.size,
            now - mtime,
            mtime,
            self.freed,
            entry.id,
            action="expire",
            reason=self.reason,
        )


def expired_counts(gone: list[Expired]) -> dict[str, RuleCounts]:
    """Files expired and bytes freed, per rule."""
    per_rule: dict[str, RuleCounts] = {}
    for item in gone:
        counts = per_rule.setdefault(item.entry.rule, RuleCounts())
        counts.files += 1
        counts.bytes += item.freed
    return per_rule


def unlink_entry(store: Store, entry: Entry, reason: str) -> Expired | None:
    try:
        st = os.stat(entry.id, dir_fd=store.files_fd, follow_symlinks=False)
        os.unlink(entry.id, dir_fd=store.files_fd)
    except FileNotFoundError:
        st = None
    store.manifest.end("expire", entry, store.clock(), reason=reason)
    if st is None:
        return None
    return Expired(entry, reason, st.st_blocks * 512 if st.st_nlink == 1 else 0)


def expire(
    store: Store,
    retention: Callable[[str], float],
    max_bytes: Callable[[str], int],
    on_expired: Callable[[Expired], None] | None = None,
) -> list[Expired]:
    """Unlinks the entries past their rule's retention, then the oldest of each rule over
    its max_bytes (0: no limit); returns them (or gives each to ``on_expired`` and
    returns none, so that nothing grows with what goes).

    The manifest is not read when no rule's oldest entry is past its retention and no
    rule is over its max_bytes (counted as lines are written). Otherwise it is streamed
    oldest first (the order files were quarantined) and the read stops at the first
    entry younger than every retention once no rule is over its max_bytes.
    """
    done: list[Expired] = []
    keep = done.append if on_expired is None else on_expired
    with store.locked():
        now = store.clock()
        tally = store.manifest.tally or {}
        over = {r for r, t in tally.items() if max_bytes(r) and t.bytes > max_bytes(r)}
        due = [r for r, t in tally.items() if t.files and now - t.oldest >= retention(r)]
        if not over and not due:
            return done
        youngest = min((retention(r) for r in tally), default=0.0)
        with store.manifest.scan() as scan:
            # Over max_bytes: what each such rule keeps once retention has been applied.
            kept = dict.fromkeys(over, 0)
            if over:
                for entry in scan.entries():
                    if entry.rule in kept and now - entry.time < retention(entry.rule):
                        kept[entry.rule] += entry.allocated
            oldest: dict[str, float] = {}
            whole = True
            for entry in scan.entries():
                rule = entry.rule
                if now - entry.time >= retention(rule):
                    reason = "retention"
                elif rule in kept and kept[rule] > max_bytes(rule):
                    reason = "max_bytes"
                    kept[rule] -= entry.allocated
                else:
                    oldest.setdefault(rule, entry.time)
                    if now - entry.time < youngest and all(
                        k <= max_bytes(r) for r, k in kept.items()
                    ):
                        whole = False
                        break
                    continue
                gone = unlink_entry(store, entry, reason)
                if gone is not None:
                    keep(gone)
            if store.manifest.tally is not None:  # the oldest left, as far as it was read
                for rule, counts in store.manifest.tally.items():
                    counts.oldest = oldest.get(rule, float("inf") if whole else counts.oldest)
            store.compact_if_dead(now, scan)
    return done


def purge(
    store: Store,
    older_than: float | None = None,
    on_expired: Callable[[Expired], None] | None = None,
) -> list[Expired]:
    """Unlinks every entry (or those quarantined more than ``older_than`` ago); returns
    them, or gives each to ``on_expired``."""
    done: list[Expired] = []
    keep = done.append if on_expired is None else on_expired
    with store.locked():
        now = store.clock()
        with store.manifest.scan() as scan:
            for entry in scan.entries():
                if older_than is None or now - entry.time >= older_than:
                    gone = unlink_entry(store, entry, "purge")
                    if gone is not None:
                        keep(gone)
            store.compact_if_dead(now, scan)
    return done
