"""limpeza-cleaner's command line: the arguments, and each command wired to its parts.

Each command loads the configuration, runs the stages it needs (the sweep, the reaper,
force-clean, status), records what they returned in the state file through the daemon's
``apply_*`` functions, and prints it with ``cleaner.report``.

Exit codes: 0 done, 1 done with errors, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from cleaner import __version__, quarantine_cli
from cleaner import config as config_mod
from cleaner.audit import AuditLog
from cleaner.config import Config, ConfigError
from cleaner.daemon import Daemon, apply_cycle, apply_force_clean, apply_jobs, apply_sweep
from cleaner.files import sweep
from cleaner.jobs.force_clean import JOB_SOURCES
from cleaner.jobs.reaper import CycleReport, JobReaper
from cleaner.jobs.status import STATUS_SOURCES, jobs_status
from cleaner.quarantine import Quarantines
from cleaner.report import (
    format_files_status,
    format_force_clean,
    format_jobs_status,
    format_removal,
    summary,
)
from cleaner.sessions import purge_and_record, validate_session_id
from cleaner.state import State, read_state, record
from cleaner.survey import survey
from cleaner.sweep_result import Removal, SweepResult

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2

#: What ``status --only`` can name: the files (directories and last sweep), or a job source.
STATUS_PARTS = ("files", *STATUS_SOURCES)

log = logging.getLogger("limpeza")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _duration(text: str) -> float:
    try:
        return config_mod.parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 3m, 24h or 0, at most 3650d, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="limpeza-cleaner",
        description="Removes expired temporary files by rule and reaps stale jobs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config",
        "--config.file",
        dest="config",
        metavar="FILE",
        help="configuration file (default: $LIMPEZA_CONFIG, else /etc/limpeza/limpeza.yml)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=("debug", "info", "warning", "error"),
        help="overrides log_level of the configuration",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sub.add_parser("run", help="the daemon: sweep now, then every interval")

    once = sub.add_parser("once", help="one sweep, then exit")
    once.add_argument("--dry-run", action="store_true", help="report, change nothing")
    once.add_argument(
        "--max-age", type=_duration, metavar="DURATION", help="overrides every rule's max_age"
    )
    once.add_argument("--json", action="store_true", help="print the counters as JSON")

    purge = sub.add_parser("purge-session", help="remove one session's files now")
    purge.add_argument("session_id", metavar="ID")
    purge.add_argument("--dry-run", action="store_true", help="report, change nothing")
    purge.add_argument("--include-final", action="store_true", help="remove the final video too")
    purge.add_argument(
        "--no-quarantine", action="store_true", help="unlink even where a rule quarantines"
    )
    purge.add_argument("--json", action="store_true", help="print the counters as JSON")

    status = sub.add_parser("status", help="what is there now, and the last sweep")
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.add_argument(
        "--only",
        action="append",
        choices=STATUS_PARTS,
        metavar="PART",
        help="report only this part (repeatable): files (the directories and the last "
        "sweep), database, cache or api; default: all",
    )

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")

    force = sub.add_parser("force-clean", help="end every active job now (needs --yes)")
    force.add_argument("--dry-run", action="store_true", help="report, change nothing")
    force.add_argument("--yes", action="store_true", help="really end every active job")
    force.add_argument("--json", action="store_true", help="print the report as JSON")
    force.add_argument(
        "--only",
        action="append",
        choices=JOB_SOURCES,
        metavar="SOURCE",
        help="end the jobs of this source only (repeatable): database (shared by the "
        "fleet: once) or cache (this host's); default: both",
    )
    quarantine_cli.add_parsers(sub, _duration)
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = dict(os.environ if env is None else env)
    if args.command == "check-config":
        return check_config(Path(args.file), environ)
    path = config_mod.resolve_path(args.config, environ)
    try:
        config = config_mod.load(path, environ)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level or config.log_level)
    config_mod.warn_unused_environment(config, log)
    handler = _COMMANDS[args.command]
    return handler(args, config, path, environ)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(levelname)s %(name)s: %(message)s",
        force=True,
    )


def check_config(path: Path, env: Mapping[str, str]) -> int:
    try:
        config_mod.load(path, env)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: valid")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace, config: Config, path: Path, env: Mapping[str, str]) -> int:
    daemon = Daemon(config, path, env)
    daemon.install_signal_handlers()
    return daemon.run()


def _on_remove(audit: AuditLog, args: argparse.Namespace) -> Callable[[Removal], None]:
    """Each removal goes to the audit log and, unless --json, to standard output."""

    def on_remove(removal: Removal) -> None:
        audit.write(removal)
        if not args.json:
            print(format_removal(removal, args.dry_run))

    return on_remove


def _finish(
    result: SweepResult,
    as_json: bool,
    jobs: CycleReport | None = None,
    *,
    missing_fails: bool = True,
) -> int:
    if as_json:
        payload = result.to_dict()
        if jobs is not None:
            payload["jobs"] = {
                "cache_reaped": jobs.cache_reaped,
                "database_reaped": jobs.database_reaped,
                "jobs_active": jobs.jobs_active,
                "errors": jobs.errors.messages,
            }
        print(json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=True))
    else:
        print(result.summary())
    for directory in result.missing:
        log.warning("directory %s does not exist: nothing was swept there", directory)
    # A configured directory that is missing is not success for a sweep: most often a typo.
    # A purge only looks for one session's files, which are then simply not there.
    missing = bool(result.missing) and missing_fails
    failed = result.errors or missing or (jobs is not None and jobs.errors.messages)
    return EXIT_ERRORS if failed else EXIT_OK


def _record(config: Config, delta: State) -> None:
    """Adds a one-shot command's counts to the state file the daemon and exporter share."""
    record(config.state_file, delta)


def _checkpoint(config: Config) -> Callable[[SweepResult], None]:
    """Records what a long one-shot sweep did so far, as the daemon's checkpoints do: a
    kill loses at most about a second of its counts."""

    def checkpoint(progress: SweepResult) -> None:
        step = State()
        apply_sweep(step, progress)
        _record(config, step)

    return checkpoint


def _cmd_once(args: argparse.Namespace, config: Config, path: Path, env: Mapping[str, str]) -> int:
    """One cycle as the daemon runs it: the file sweep, then (unless a dry run) the jobs."""
    now = time.time()
    quarantines = None if args.dry_run else Quarantines(config.files)
    delta = State()
    with AuditLog(None if args.dry_run else config.audit_log, time.time) as audit:
        try:
            if quarantines is not None:  # as the daemon: expire the quarantines first
                for store, gone in quarantines.expire().items():
                    delta.merge_from(quarantine_cli.record_expired(audit, store, gone, now))
            result = sweep(
                config.files,
                now=now,
                dry_run=args.dry_run,
                max_age=args.max_age,
                on_remove=_on_remove(audit, args),
                quarantines=quarantines,
                checkpoint=None if args.dry_run else _checkpoint(config),
            )
            if quarantines is not None:  # what they hold now, for the exporter
                for store in quarantines.all():
                    store.write_summary(restored={}, expired={})
        finally:
            if quarantines is not None:
                quarantines.close()
    if args.dry_run:
        return _finish(result, args.json)
    reaper = JobReaper(config.jobs, interval=config.interval)
    try:
        jobs = reaper.cycle()
    finally:
        reaper.close()
    if not args.json:
        for source, reaped in (("cache", jobs.cache_reaped), ("database", jobs.database_reaped)):
            if reaped:
                print(f"stale jobs reaped from the {source}: {summary(reaped)}")
    apply_sweep(delta, result.pending())  # the rest went with the checkpoints
    apply_jobs(delta, jobs)
    ended = time.time()
    apply_cycle(delta, started=now, ended=ended, duration=ended - now, ok=True)
    _record(config, delta)
    return _finish(result, args.json, jobs)


def _cmd_purge(args: argparse.Namespace, config: Config, path: Path, env: Mapping[str, str]) -> int:
    try:
        validate_session_id(args.session_id)
    except ValueError as exc:
        print(f"limpeza-cleaner: {exc}; nothing removed", file=sys.stderr)
        return EXIT_USAGE
    result = purge_and_record(
        config,
        args.session_id,
        include_final=args.include_final,
        dry_run=args.dry_run,
        on_remove=None if args.json else lambda r: print(format_removal(r, args.dry_run)),
        quarantine=not args.no_quarantine,
    )
    return _finish(result, args.json, missing_fails=False)


def status_report(
    config: Config, now: float, parts: Collection[str] = STATUS_PARTS
) -> dict[str, object]:
    """What `status` reports: the files part (per directory and rule, and the last sweep)
    and the jobs part, each only if in ``parts``."""
    report: dict[str, object] = {"now": now}
    if "files" in parts:
        report.update(files_status(config, now))
    sources = [part for part in STATUS_SOURCES if part in parts]
    if sources:
        report["jobs"] = jobs_status(
            config.jobs, now=now, application_name="limpeza-cleaner status", sources=sources
        )
    return report


def files_status(config: Config, now: float) -> dict[str, object]:
    """The files part of `status`: per directory and rule, and the last sweep."""
    directories = {
        directory: {
            rule: {
                "files": s.files,
                "bytes": s.bytes,
                "expired": s.expired,
                "expired_bytes": s.expired_bytes,
            }
            for rule, s in per_rule.items()
        }
        for directory, per_rule in survey(config.files, now=now).items()
    }
    try:
        state: State | None = read_state(config.state_file)
        state_error = None
    except FileNotFoundError:
        state, state_error = None, "no sweep recorded yet"
    except (OSError, ValueError) as exc:
        state, state_error = None, f"unreadable: {exc}"
    last: dict[str, object] = {"state_file": str(config.state_file)}
    if state is not None:
        last.update(
            sweeps=state.sweeps,
            last_sweep_end=state.last_sweep_end,
            last_success=state.last_success,
            last_sweep_duration=state.last_sweep_duration,
            files_removed=sum(state.files_removed.values()),
            bytes_removed=sum(state.bytes_removed.values()),
            errors=dict(state.errors),
        )
    else:
        last["problem"] = state_error
    return {"directories": directories, "last_sweep": last}


def _cmd_status(
    args: argparse.Namespace, config: Config, path: Path, env: Mapping[str, str]
) -> int:
    report = status_report(config, time.time(), args.only or STATUS_PARTS)
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True, ensure_ascii=True))
    else:
        if "directories" in report:
            for line in format_files_status(report):
                print(line)
        if "jobs" in report:
            for line in format_jobs_status(report["jobs"]):  # type: ignore[arg-type]
                print(line)
    return EXIT_OK


def _cmd_force_clean(
    args: argparse.Namespace, config: Config, path: Path, env: Mapping[str, str]
) -> int:
    if not args.yes and not args.dry_run:
        print(
            "limpeza-cleaner: force-clean ends every active job; "
            "add --yes to do it or --dry-run to see what it would do",
            file=sys.stderr,
        )
        return EXIT_USAGE
    reaper = JobReaper(config.jobs, application_name="limpeza-cleaner force-clean")
    try:
        report = reaper.force_clean(dry_run=args.dry_run, sources=args.only or JOB_SOURCES)
    finally:
        reaper.close()
    if not args.dry_run:
        delta = State()
        apply_force_clean(delta, report)
        _record(config, delta)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, sort_keys=True, ensure_ascii=True))
    else:
        for line in format_force_clean(report.to_dict(), config.jobs):
            print(line)
    return EXIT_ERRORS if report.errors.messages else EXIT_OK


def _cmd_quarantine(
    args: argparse.Namespace, config: Config, path: Path, env: Mapping[str, str]
) -> int:
    return quarantine_cli.cmd_quarantine(args, config)


def _cmd_restore(
    args: argparse.Namespace, config: Config, path: Path, env: Mapping[str, str]
) -> int:
    return quarantine_cli.cmd_restore(args, config)


_COMMANDS = {
    "run": _cmd_run,
    "once": _cmd_once,
    "purge-session": _cmd_purge,
    "status": _cmd_status,
    "force-clean": _cmd_force_clean,
    "quarantine": _cmd_quarantine,
    "restore": _cmd_restore,
}
