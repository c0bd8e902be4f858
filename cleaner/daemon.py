"""The daemon loop: sweep at once, then every interval; signals set flags, the loop acts.

SIGTERM and SIGINT stop it after the current file; SIGHUP reloads the configuration
(an invalid new file is logged and the old one kept). A burst of SIGHUPs is one reload,
and a reload brings the next sweep forward at most once per interval. An exception in one
cycle is logged and counted, never fatal. A cycle after the wall clock jumped ahead of the
monotonic clock removes and reaps nothing (cleaner.clock).

The job reaper's cycle runs in a daemon thread (``JobsCycle``), so a frozen database can
never hold up the file sweep nor a stop: each cycle waits for it at most half an interval;
one that is still running then finishes in the background, later cycles skip the jobs stage
meanwhile (counted as a ``jobs`` error), and its report is applied once it is done.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from cleaner import config as config_mod
from cleaner.audit import AuditLog
from cleaner.clock import ClockReading, ClockWatch
from cleaner.config import Config, ConfigError
from cleaner.files import sweep
from cleaner.jobs.force_clean import ForceCleanReport
from cleaner.jobs.reaper import STATS_EVERY, CycleReport, JobReaper
from cleaner.memory import SweepMemory
from cleaner.quarantine import QuarantineError, Quarantines
from cleaner.quarantine_expiry import Expired, RuleCounts, expired_counts
from cleaner.report import format_duration
from cleaner.state import ApiHealth, StageErrors, State, StateStore
from cleaner.sweep_result import SweepResult

log = logging.getLogger(__name__)

#: SIGHUPs less than this apart are one reload...
RELOAD_QUIET = 1.0
#: ...made at most this long after the first of them, however long they keep coming.
RELOAD_SETTLE_MAX = 5.0


# -- what each stage returned, recorded in a state delta ---------------------------------


def apply_sweep(delta: State, result: SweepResult) -> None:
    """Records what a sweep did in a state delta."""
    for rule, tally in result.removed.items():
        delta.add(delta.files_removed, rule, tally.files)
        delta.add(delta.bytes_removed, rule, tally.bytes)
    for reason, count in result.skipped.items():
        delta.add(delta.skipped, reason, count)
    if result.errors:
        delta.count_error("files", result.errors)
    delta.directories = dict(result.directories)
    delta.missing_directories = list(result.missing)


def apply_expired(delta: State, gone: list[Expired]) -> dict[str, RuleCounts]:
    """Records what left a quarantine: the bytes it freed count as removed under the rule
    (its file was counted when it was quarantined). Returns the counts per rule."""
    counts = expired_counts(gone)
    for rule, tally in counts.items():
        delta.add(delta.bytes_removed, rule, tally.bytes)
    return counts


def apply_errors(delta: State, errors: StageErrors) -> None:
    for stage, count in errors.counts.items():
        delta.count_error(stage, count)


def apply_force_clean(delta: State, report: ForceCleanReport) -> None:
    """Records a force-clean: what it ended (a dry run ends nothing) and what failed."""
    apply_errors(delta, report.errors)
    if report.dry_run:
        return
    delta.force_cleans += 1
    for source, counts in (("database", report.database), ("cache", report.cache)):
        for status, n in (counts or {}).items():
            delta.count_reaped(source, status, n)


def apply_jobs(delta: State, report: CycleReport) -> None:
    """Records what one cycle of the job reaper did."""
    for source, counts in (("cache", report.cache_reaped), ("database", report.database_reaped)):
        for status, n in counts.items():
            delta.count_reaped(source, status, n)
    apply_errors(delta, report.errors)
    delta.reaps_skipped += int(report.database_locked is False)
    if report.database_up is not None:
        delta.database_up = report.database_up
    delta.jobs_active = report.jobs_active
    if report.api is not None:
        delta.api = ApiHealth(report.api.up, report.api.jobs_active, report.api.checked_at)
    if report.force_clean is not None:
        apply_force_clean(delta, report.force_clean)


def apply_cycle(delta: State, *, started: float, ended: float, duration: float, ok: bool) -> None:
    """Records one whole cycle (a sweep): when it ran, how long, whether it succeeded."""
    delta.sweeps += 1
    delta.last_sweep_start = started
    delta.last_sweep_end = ended
    delta.last_sweep_duration = duration
    if ok:
        delta.last_success = ended


class JobsCycle:
    """One cycle of a job reaper running in a daemon thread; ``report()`` once ``done``."""

    def __init__(self, reaper: JobReaper) -> None:
        self.reaper = reaper
        self.done = threading.Event()
        self._report: CycleReport | None = None
        threading.Thread(target=self._run, name="limpeza-jobs", daemon=True).start()

    def _run(self) -> None:
        try:
            self._report = self.reaper.cycle()
        finally:
            self.done.set()

    def report(self) -> CycleReport:
        """What the cycle did (it has ended)."""
        if self._report is not None:
            return self._report
        report = CycleReport()  # cycle() never raises; a crash of its thread is still counted
        report.errors.add("jobs", "jobs: the reaper's thread died")
        return report


class Daemon:
    """Runs cycles until asked to stop. Everything it needs is handed in."""

    def __init__(
        self,
        config: Config,
        config_path: Path,
        env: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.env = env
        self.clock = clock
        #: Measures cycles and, against ``clock``, sees the wall clock jump (ClockWatch).
        #: Waits and deadlines always use the real time.monotonic.
        self.monotonic = monotonic
        self.clock_watch = ClockWatch()
        self.store = StateStore(config.state_file, clock)
        self.delta = State()
        self.cycles = 0
        self.failed_cycles = 0
        self._stop = False
        self._reload = False
        self._reload_signals = 0
        self._wake = threading.Event()
        self._totals = State()
        #: Lets a sweep skip directories that provably hold nothing new nor expired.
        self.memory = SweepMemory()
        #: Configured directories the last sweep found missing: logged when this changes.
        self._missing: frozenset[str] = frozenset()
        #: The job reaper's cycle in its thread, until its report is applied.
        self._jobs: JobsCycle | None = None
        self._jobs_behind = False

    # -- signals: set a flag and wake the loop; the loop does the work -------------------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop = True
        self._wake.set()

    def _on_reload(self, signum: int, _frame: FrameType | None) -> None:
        self._reload = True
        self._reload_signals += 1
        self._wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        log.info(
            "limpeza-cleaner started: %d rules over %d directories, every %s",
            len(self.config.files.rules),
            len(self.config.files.all_directories()),
            format_duration(self.config.interval),
        )
        try:
            self._totals = self.store.load()
        except OSError as exc:
            log.warning("cannot read state file %s: %s", self.store.path, exc)
        self._open_parts()
        self._quarantine_stage(expire=False)  # reconciled with their manifests at start
        try:
            self._loop()
        finally:
            self._close_parts()
        log.info("limpeza-cleaner stopped after %d cycles", self.cycles)
        return 0

    def _loop(self) -> None:
        """A cycle, then an interval's rest; a reload may end the rest early, once an interval.

        So a storm of SIGHUPs (each one coalesced into a reload by _settle_reloads) makes
        at most one sweep more than the schedule's in any interval.
        """
        brought_forward: float | None = None  # when a reload last ended a rest early
        while not self._stop:
            self.cycle()
            rest_from = time.monotonic()
            while not self._stop:
                remaining = rest_from + self.config.interval - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
                self._wake.clear()
                if not self._reload or not self._settle_reloads():
                    continue
                self.reload()
                now = time.monotonic()
                if brought_forward is None or now - brought_forward >= self.config.interval:
                    brought_forward = now
                    break  # sweep now with the new configuration

    def _settle_reloads(self) -> bool:
        """Waits until SIGHUPs stop coming (RELOAD_QUIET without one, RELOAD_SETTLE_MAX at
        most); False when a stop came meanwhile. Those SIGHUPs are one reload."""
        deadline = time.monotonic() + RELOAD_SETTLE_MAX
        while self._reload and not self._stop:
            self._reload = False
            self._wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.wait(min(RELOAD_QUIET, remaining))
        signals, self._reload_signals = self._reload_signals, 0
        if signals > 1:
            log.info("%d SIGHUPs in a row: one reload", signals)
        return not self._stop

    def _open_parts(self) -> None:
        self.audit = AuditLog(self.config.audit_log, self.clock)
        self.quarantines = Quarantines(self.config.files, self.clock)
        self.reaper = JobReaper(self.config.jobs, clock=self.clock, interval=self.config.interval)

    def _close_parts(self) -> None:
        self.audit.close()
        self.quarantines.close()
        if self._jobs is not None and self._jobs.reaper is self.reaper:
            # Still in use by its thread (closing would wait for it): the next _collect
            # closes it, or the process exits without it.
            log.info("leaving the running jobs cycle behind")
            return
        self.reaper.close()

    def reload(self) -> None:
        try:
            new = config_mod.load(self.config_path, self.env)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        self._close_parts()
        self.config = new
        if new.state_file != self.store.path:
            self.store = StateStore(new.state_file, self.clock)
        self._open_parts()
        log.info("configuration reloaded from %s", self.config_path)

    def cycle(self) -> None:
        """One cycle: the file sweep, then the job reaper; state saved at the end.

        Held (nothing swept nor reaped, counted) when the wall clock jumped ahead since
        the last cycle.

        The reaper's failures (database down, corrupt cache, API unreachable) are counted
        by stage and have alerts of their own; they do not make the cycle a failed one, so
        an outage of the database does not also page as "the cleaner stopped sweeping".
        """
        start = self.clock()
        monotonic_start = self.monotonic()
        jump = self.clock_watch.jump(ClockReading(start, monotonic_start), self.config.interval)
        if jump is not None:
            self._hold(jump)
            return
        ok = True
        expired = self._quarantine_stage(expire=True)
        try:
            result = sweep(
                self.config.files,
                now=start,
                on_remove=self.audit.write,
                should_stop=lambda: self._stop,
                memory=self.memory,
                checkpoint=self._checkpoint,
                quarantines=self.quarantines,
            )
            apply_sweep(self.delta, result.pending())
            log.info("%s", result.summary())
            self._log_missing(frozenset(result.missing))
        except Exception:
            log.exception("file sweep failed")
            self.delta.count_error("files")
            ok = False
        self._write_summaries(expired)
        self._jobs_stage(deadline=time.monotonic() + self.config.interval / 2)
        apply_cycle(
            self.delta,
            started=start,
            ended=self.clock(),
            duration=self.monotonic() - monotonic_start,
            ok=ok,
        )
        if not ok:
            self.failed_cycles += 1
        self.cycles += 1
        self._save()
        if self.cycles % STATS_EVERY == 0:
            self._log_stats()

    def _quarantine_stage(self, *, expire: bool) -> dict[Path, dict[str, int]]:
        """Opens (and so reconciles) every quarantine, reads what restores and purges
        appended, and with ``expire`` unlinks what is past retention or over max_bytes:
        each audited, the bytes freed counted. Returns the files expired per quarantine."""
        expired: dict[Path, dict[str, int]] = {}
        try:
            self.quarantines.refresh()
            if not expire:
                for store in self.quarantines.all():
                    store.write_summary(restored={}, expired={})
                return expired
            now = self.clock()
            for store, gone in self.quarantines.expire().items():
                counts = apply_expired(self.delta, gone)
                expired[store.directory] = {rule: c.files for rule, c in counts.items()}
                for item in gone:
                    self.audit.write(item.removal(now))
                if gone:
                    log.info("quarantine %s: %d expired", store.directory, len(gone))
        except (OSError, QuarantineError) as exc:
            log.error("quarantine: %s", exc)
            self.delta.count_error("files")
        return expired

    def _write_summaries(self, expired: dict[Path, dict[str, int]]) -> None:
        """Each quarantine's summary for the exporter: what it holds now, the totals."""
        try:
            self.quarantines.sync()
            for store in self.quarantines.all():
                store.write_summary(restored={}, expired=expired.get(store.directory, {}))
        except (OSError, QuarantineError) as exc:
            log.error("quarantine: cannot write its summary: %s", exc)
            self.delta.count_error("files")

    def _checkpoint(self, progress: SweepResult) -> None:
        """Saves what a long sweep did so far: a crash loses at most a second of counts."""
        apply_sweep(self.delta, progress)
        self._save()

    def _hold(self, lead: float) -> None:
        """A cycle after the wall clock jumped ahead: nothing removed nor reaped, counted.

        Ages are judged by the wall clock (the job cache's too), so every file and job
        would look ``lead`` older than it is. The next cycle compares the clocks afresh
        and sweeps as usual.
        """
        log.warning(
            "wall clock jumped %s ahead of the monotonic clock since the last cycle (NTP "
            "step, resumed VM?): nothing removed nor reaped in this cycle, the next one "
            "sweeps as usual",
            format_duration(round(lead)),
        )
        self.delta.clock_jumps += 1
        self.cycles += 1
        self._save()

    def _log_missing(self, missing: frozenset[str]) -> None:
        """One line when a configured directory goes missing, one when it is back."""
        for directory in sorted(missing - self._missing):
            log.warning(
                "directory %s does not exist: nothing is swept there "
                "(limpeza_directory_missing is 1 until it does)",
                directory,
            )
        for directory in sorted(self._missing - missing):
            log.info("directory %s exists again: swept from now on", directory)
        self._missing = missing

    def _jobs_stage(self, deadline: float) -> None:
        """Starts the reaper's cycle and waits for it until ``deadline`` (or a stop).

        While the previous one still runs, this cycle's jobs stage is skipped and counted.
        """
        self._collect()
        if self._jobs is not None:
            if not self._jobs_behind:
                log.warning(
                    "jobs stage skipped: the previous jobs cycle is still running (database "
                    "frozen or unreachable?); files are swept on schedule meanwhile"
                )
                self._jobs_behind = True
            skipped = StageErrors()
            skipped.add("jobs", "jobs: the previous jobs cycle is still running")
            apply_errors(self.delta, skipped)
            return
        if self._jobs_behind:
            log.info("jobs stage back on schedule")
            self._jobs_behind = False
        running = self._jobs = JobsCycle(self.reaper)
        while not self._stop:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or running.done.wait(min(remaining, 0.25)):
                break
        self._collect()

    def _collect(self) -> None:
        """Applies the report of a jobs cycle that has ended (and closes a replaced reaper)."""
        if self._jobs is None or not self._jobs.done.is_set():
            return
        ended, self._jobs = self._jobs, None
        apply_jobs(self.delta, ended.report())
        if ended.reaper is not self.reaper:
            ended.reaper.close()

    def _save(self) -> None:
        try:
            self._totals = self.store.update(self.delta)
        except OSError as exc:
            log.error("cannot write state file %s: %s", self.store.path, exc)
            self.delta.count_error("state")
            return
        self.delta = State()

    def _log_stats(self) -> None:
        totals = self._totals
        log.info(
            "stats: %d cycles here (%d with errors); since the state began: %d sweeps, "
            "%d files and %d bytes removed, %d errors",
            self.cycles,
            self.failed_cycles,
            totals.sweeps,
            sum(totals.files_removed.values()),
            sum(totals.bytes_removed.values()),
            sum(totals.errors.values()),
        )
