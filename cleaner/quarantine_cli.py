"""The quarantine's commands: ``quarantine list``, ``quarantine purge`` and ``restore``.

Each opens the configuration's quarantines (reconciling them with their manifests, as the
daemon does at start), acts under each quarantine's lock, writes what left the quarantine
to the audit log, and adds its counts to the quarantine's summary (and the bytes freed by
a purge to the state file). ``cleaner.cli`` wires them in.

Entries are streamed from the manifests and filtered as they come: what a command holds
in memory is what it chose (or, for ``list``, nothing but the line it prints).

Exit codes as everywhere: 0 done, 1 done with errors (a restore refused: which, and why),
2 bad usage (a malformed id, no selector, purge without ``--yes``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cleaner.audit import AuditLog
from cleaner.config import Config
from cleaner.daemon import apply_expired
from cleaner.manifest_lines import Entry
from cleaner.quarantine import QuarantineError, Quarantines, Store
from cleaner.quarantine_expiry import Expired, RuleCounts, purge
from cleaner.report import Printable, format_age, format_bytes
from cleaner.restore import (
    Outcome,
    check_orphan_name,
    check_selectors,
    restore_entry,
    restore_orphan,
    select,
)
from cleaner.state import State, record
from cleaner.sweep_result import Removal

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2
#: How long a restored file is held from the sweep when its rule has no quarantine now.
DEFAULT_HOLD = 7 * 86400.0

log = logging.getLogger("limpeza")

Handler = Callable[[argparse.Namespace, Config], int]


def add_parsers(sub: Any, duration: Callable[[str], float]) -> None:
    """Adds ``quarantine`` (list, purge) and ``restore`` to the command parser."""
    quarantine = sub.add_parser("quarantine", help="what the quarantine holds; purge it")
    actions = quarantine.add_subparsers(dest="quarantine_command", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="the quarantined files, oldest first")
    listing.add_argument("--session", metavar="ID", help="only this session's files")
    listing.add_argument("--rule", metavar="RULE", help="only this rule's files")
    listing.add_argument("--json", action="store_true", help="print as JSON")
    purge = actions.add_parser("purge", help="unlink quarantined files now (needs --yes)")
    purge.add_argument("--older-than", type=duration, metavar="DURATION")
    purge.add_argument("--yes", action="store_true", help="really unlink them")

    restore = sub.add_parser("restore", help="put quarantined files back where they were")
    restore.add_argument("ids", nargs="*", metavar="ID")
    restore.add_argument("--session", metavar="ID", help="every file of this session")
    restore.add_argument("--path", metavar="ORIGINAL", help="the latest file taken from there")
    restore.add_argument("--to", metavar="DIR", help="into this directory instead")
    restore.add_argument(
        "--orphan", metavar="NAME", help="a file without a manifest entry (needs --to DIR)"
    )
    restore.add_argument("--dry-run", action="store_true", help="report, change nothing")


def _open(config: Config, sync_every: float = 0.0) -> Quarantines | None:
    """The configuration's quarantines; each manifest line fsynced unless ``sync_every``."""
    quarantines = Quarantines(config.files, sync_every=sync_every)
    if not quarantines.rules:
        print("limpeza-cleaner: no rule has a quarantine", file=sys.stderr)
        return None
    return quarantines


def _stores(quarantines: Quarantines) -> list[Store]:
    return list(quarantines.all())


def _entry_dict(entry: Entry, now: float, directory: Path) -> dict[str, object]:
    return {
        "id": entry.id,
        "path": entry.path,
        "rule": entry.rule,
        "size": entry.size,
        "allocated": entry.allocated,
        "mtime": entry.mtime_ns / 1e9,
        "uid": entry.uid,
        "gid": entry.gid,
        "mode": f"{entry.mode:04o}",
        "quarantined_at": entry.time,
        "age": round(now - entry.time, 3),
        "quarantine": str(directory),
    }


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    try:
        names = check_selectors(config.files, (), args.session)
    except ValueError as exc:
        print(f"limpeza-cleaner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    quarantines = _open(config)
    if quarantines is None:
        return EXIT_USAGE
    listed = 0
    orphans: list[dict[str, object]] = []
    if args.json:
        sys.stdout.write('{"entries": [')
    try:
        now = time.time()
        for store in _stores(quarantines):
            for entry in store.each():
                if args.rule is not None and entry.rule != args.rule:
                    continue
                if args.session is not None and entry.name not in names:
                    continue
                row = _entry_dict(entry, now, store.directory)
                if args.json:
                    sys.stdout.write(("\n " if not listed else ",\n ") + json.dumps(row))
                else:
                    print(
                        f"{row['id']}  {row['rule']}  {format_bytes(entry.size)}  "
                        f"{format_age(float(str(row['age'])))} ago  {Printable(entry.path)}"
                    )
                listed += 1
            orphans.extend(
                {"id": name, "quarantine": str(store.directory), "orphaned": True}
                for name in store.orphans
            )
    finally:
        quarantines.close()
    if args.json:
        print(f'\n], "orphans": {json.dumps(orphans, ensure_ascii=True)}}}')
        return EXIT_OK
    for orphan in orphans:
        print(f"{orphan['id']}  orphaned (no manifest entry; kept)  in {orphan['quarantine']}")
    print(f"{listed} quarantined" + (f", {len(orphans)} orphaned" if orphans else ""))
    return EXIT_OK


def _audit(audit: AuditLog, entry: Entry, action: str, now: float, **extra: Any) -> None:
    audit.write(
        Removal(
            entry.rule,
            entry.path,
            entry.size,
            now - entry.mtime_ns / 1e9,
            entry.mtime_ns / 1e9,
            quarantine_id=entry.id,
            action=action,
            **extra,
        )
    )


def cmd_restore(args: argparse.Namespace, config: Config) -> int:
    if args.orphan is not None:
        return _restore_orphan(args, config)
    if not (args.ids or args.session or args.path):
        print(
            "limpeza-cleaner: restore needs IDs, --session ID, --path ORIGINAL "
            "or --orphan NAME --to DIR",
            file=sys.stderr,
        )
        return EXIT_USAGE
    quarantines = _open(config)
    if quarantines is None:
        return EXIT_USAGE
    holds = {r.name: r.quarantine.retention for r in config.files.rules if r.quarantine}
    to = Path(args.to) if args.to else None
    failed = False
    try:
        check_selectors(config.files, args.ids, args.session)
    except ValueError as exc:
        print(f"limpeza-cleaner: {exc}; nothing restored", file=sys.stderr)
        quarantines.close()
        return EXIT_USAGE
    try:
        stores = _stores(quarantines)
        chosen, problems = select(
            itertools.chain.from_iterable(s.each() for s in stores),
            config.files,
            ids=args.ids,
            session=args.session,
            path=args.path,
        )
        for problem in problems:
            print(f"limpeza-cleaner: {Printable(problem)}", file=sys.stderr)
            failed = True
        restored: dict[Store, dict[str, int]] = {}
        with AuditLog(None if args.dry_run else config.audit_log, time.time) as audit:
            for entry in chosen:
                # Ids are unique: its quarantine is the one that has its file.
                store = next((s for s in stores if s.holds_file(entry.id)), stores[0])
                outcome = restore_entry(
                    store,
                    entry,
                    to=to,
                    hold_for=holds.get(entry.rule, DEFAULT_HOLD),
                    dry_run=args.dry_run,
                )
                failed |= not outcome.restored
                _print(outcome, args.dry_run)
                if outcome.restored and not args.dry_run:
                    _audit(audit, entry, "restore", time.time())
                    counts = restored.setdefault(store, {})
                    counts[entry.rule] = counts.get(entry.rule, 0) + 1
        for store, counts in restored.items():
            store.write_summary(restored=counts, expired={})
    except QuarantineError as exc:
        print(f"limpeza-cleaner: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    finally:
        quarantines.close()
    return EXIT_ERRORS if failed else EXIT_OK


def _restore_orphan(args: argparse.Namespace, config: Config) -> int:
    """``restore --orphan NAME --to DIR``: an orphan has no original path on record."""
    problem = None
    if args.ids or args.session or args.path:
        problem = "--orphan restores one orphaned file alone; give no IDs, --session or --path"
    elif args.to is None:
        problem = (
            "an orphaned file has no manifest entry, so its original path is unknown "
            "(the audit log may have it): name the directory to restore it into with --to DIR"
        )
    else:
        try:
            check_orphan_name(args.orphan)
        except ValueError as exc:
            problem = f"{exc}; nothing restored"
    if problem is not None:
        print(f"limpeza-cleaner: {problem}", file=sys.stderr)
        return EXIT_USAGE
    quarantines = _open(config)
    if quarantines is None:
        return EXIT_USAGE
    try:
        stores = [s for s in _stores(quarantines) if args.orphan in s.orphans]
        if len(stores) != 1:
            where = (
                "in several quarantines" if stores else "no such orphaned file in the quarantine"
            )
            print(f"limpeza-cleaner: {Printable(args.orphan)}: {where}", file=sys.stderr)
            return EXIT_ERRORS
        [store] = stores
        hold = max(
            (
                rule.quarantine.retention
                for rule in quarantines.rules[store.directory]
                if rule.quarantine
            ),
            default=DEFAULT_HOLD,
        )
        target, why = restore_orphan(
            store, args.orphan, Path(args.to), hold_for=hold, dry_run=args.dry_run
        )
        if why is not None:
            print(
                f"not restored: {Printable(args.orphan)} to {Printable(target)}: {why}",
                file=sys.stderr,
            )
            return EXIT_ERRORS
        verb = "would restore" if args.dry_run else "restored"
        print(f"{verb} orphan {Printable(args.orphan)} to {Printable(target)}")
        if not args.dry_run:
            store.write_summary(restored={}, expired={})
    except QuarantineError as exc:
        print(f"limpeza-cleaner: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    finally:
        quarantines.close()
    return EXIT_OK


def _print(outcome: Outcome, dry_run: bool) -> None:
    entry = outcome.entry
    if outcome.restored:
        verb = "would restore" if dry_run else "restored"
        print(f"{verb} {entry.id} to {Printable(outcome.target)}")
    else:
        print(
            f"not restored: {entry.id} to {Printable(outcome.target)}: {outcome.problem}",
            file=sys.stderr,
        )


def record_expired(audit: AuditLog, store: Store, gone: list[Expired], now: float) -> State:
    """Audits what left a quarantine by expiry or purge, adds it to the quarantine's
    summary, and returns the bytes freed (under each rule) as a state delta."""
    delta = State()
    for item in gone:
        audit.write(item.removal(now))
    counts = apply_expired(delta, gone)
    store.write_summary(restored={}, expired={r: c.files for r, c in counts.items()})
    return delta


def cmd_purge(args: argparse.Namespace, config: Config) -> int:
    if not args.yes:
        print(
            "limpeza-cleaner: quarantine purge unlinks quarantined files for good; add --yes",
            file=sys.stderr,
        )
        return EXIT_USAGE
    quarantines = _open(config, sync_every=1.0)  # synced when closed
    if quarantines is None:
        return EXIT_USAGE
    total = 0
    try:
        with AuditLog(config.audit_log, time.time) as audit:
            for store in _stores(quarantines):
                # Audited and counted as each goes: nothing held per file.
                delta = State()
                counts: dict[str, RuleCounts] = {}

                def expired(
                    item: Expired, audit: AuditLog = audit, counts: dict[str, RuleCounts] = counts
                ) -> None:
                    audit.write(item.removal(time.time()))
                    tally = counts.setdefault(item.entry.rule, RuleCounts())
                    tally.files += 1
                    tally.bytes += item.freed

                purge(store, args.older_than, on_expired=expired)
                for rule, tally in counts.items():
                    delta.add(delta.bytes_removed, rule, tally.bytes)
                    total += tally.files
                store.write_summary(restored={}, expired={r: c.files for r, c in counts.items()})
                record(config.state_file, delta)
    finally:
        quarantines.close()
    print(f"{total} quarantined files unlinked")
    return EXIT_OK


def cmd_quarantine(args: argparse.Namespace, config: Config) -> int:
    handler: Handler = cmd_list if args.quarantine_command == "list" else cmd_purge
    return handler(args, config)
