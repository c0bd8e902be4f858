"""The quarantine's commands: ``quarantine list``, ``quarantine purge`` and ``restore``.

Each opens the configuration's quarantines (reconciling them with their manifests, as the
daemon does at start), acts under each quarantine's lock, writes what left the quarantine
to the audit log, and adds its counts to the quarantine's summary (and the bytes freed by
a purge to the state file). ``cleaner.cli`` wires them in.

Exit codes as everywhere: 0 done, 1 done with errors (a restore refused: which, and why),
2 bad usage (a malformed id, no selector, purge without ``--yes``).
"""

from __future__ import annotations

import argparse
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
from cleaner.manifest import Entry
from cleaner.quarantine import Expired, QuarantineError, Quarantines, Store
from cleaner.report import Printable, format_age, format_bytes
from cleaner.restore import Outcome, restore_entry, select
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
    quarantines = _open(config)
    if quarantines is None:
        return EXIT_USAGE
    try:
        stores = _stores(quarantines)
        now = time.time()
        names: set[str] | None = None
        if args.session is not None:
            entries_by = {e.id: e for s in stores for e in s.entries().values()}
            try:
                chosen, _ = select(entries_by, config.files, session=args.session)
            except ValueError as exc:
                print(f"limpeza-cleaner: {exc}", file=sys.stderr)
                return EXIT_USAGE
            names = {e.id for e in chosen}
        rows: list[dict[str, object]] = []
        orphans: list[dict[str, object]] = []
        for store in stores:
            for entry in sorted(store.entries().values(), key=lambda e: e.time):
                if args.rule is not None and entry.rule != args.rule:
                    continue
                if names is not None and entry.id not in names:
                    continue
                rows.append(_entry_dict(entry, now, store.directory))
            orphans.extend(
                {"id": name, "quarantine": str(store.directory), "orphaned": True}
                for name in store.orphans
            )
    finally:
        quarantines.close()
    if args.json:
        print(json.dumps({"entries": rows, "orphans": orphans}, indent=1, ensure_ascii=True))
        return EXIT_OK
    for row in rows:
        print(
            f"{row['id']}  {row['rule']}  {format_bytes(int(str(row['size'])))}  "
            f"{format_age(float(str(row['age'])))} ago  {Printable(str(row['path']))}"
        )
    for orphan in orphans:
        print(f"{orphan['id']}  orphaned (no manifest entry; kept)  in {orphan['quarantine']}")
    print(f"{len(rows)} quarantined" + (f", {len(orphans)} orphaned" if orphans else ""))
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
    if not (args.ids or args.session or args.path):
        print(
            "limpeza-cleaner: restore needs IDs, --session ID or --path ORIGINAL", file=sys.stderr
        )
        return EXIT_USAGE
    quarantines = _open(config)
    if quarantines is None:
        return EXIT_USAGE
    holds = {r.name: r.quarantine.retention for r in config.files.rules if r.quarantine}
    to = Path(args.to) if args.to else None
    failed = False
    try:
        stores = _stores(quarantines)
        owner = {e.id: s for s in stores for e in s.entries().values()}
        entries = {e.id: e for s in stores for e in s.entries().values()}
        try:
            chosen, problems = select(
                entries, config.files, ids=args.ids, session=args.session, path=args.path
            )
        except ValueError as exc:
            print(f"limpeza-cleaner: {exc}; nothing restored", file=sys.stderr)
            return EXIT_USAGE
        for problem in problems:
            print(f"limpeza-cleaner: {Printable(problem)}", file=sys.stderr)
            failed = True
        restored: dict[Store, dict[str, int]] = {}
        with AuditLog(None if args.dry_run else config.audit_log, time.time) as audit:
            for entry in chosen:
                store = owner[entry.id]
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
                gone = store.purge(args.older_than)
                total += len(gone)
                record(config.state_file, record_expired(audit, store, gone, time.time()))
    finally:
        quarantines.close()
    print(f"{total} quarantined files unlinked")
    return EXIT_OK


def cmd_quarantine(args: argparse.Namespace, config: Config) -> int:
    handler: Handler = cmd_list if args.quarantine_command == "list" else cmd_purge
    return handler(args, config)
