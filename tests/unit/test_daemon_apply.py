"""The daemon records what each stage returned: nothing below it touches its State."""

from __future__ import annotations

from cleaner.daemon import apply_cycle, apply_force_clean, apply_jobs
from cleaner.health import HealthResult
from cleaner.jobs.force_clean import ForceCleanReport
from cleaner.jobs.reaper import CycleReport
from cleaner.state import StageErrors, State


def test_a_reaper_report_is_recorded_whole() -> None:
    errors = StageErrors()
    errors.add("database", "database: down")
    errors.add("health")
    report = CycleReport(
        cache_reaped={"running": 2},
        database_reaped={"queued": 1},
        database_locked=False,
        database_up=False,
        api=HealthResult(up=True, jobs_active=3, checked_at=100.0),
        jobs_active=4,
        force_clean=ForceCleanReport(dry_run=False, database={"running": 5}, cache={}),
        errors=errors,
    )
    delta = State()
    apply_jobs(delta, report)
    assert delta.jobs_reaped == {"cache": {"running": 2}, "database": {"queued": 1, "running": 5}}
    assert delta.reaps_skipped == 1
    assert delta.errors == {"database": 1, "health": 1}
    assert (delta.database_up, delta.jobs_active, delta.force_cleans) == (False, 4, 1)
    assert (delta.api.up, delta.api.jobs_active, delta.api.checked_at) == (True, 3, 100.0)


def test_a_reap_that_ran_is_not_a_skip_and_a_dry_force_clean_ends_nothing() -> None:
    delta = State()
    apply_jobs(delta, CycleReport(database_locked=True))
    apply_force_clean(delta, ForceCleanReport(dry_run=True, database={"running": 5}))
    assert delta.reaps_skipped == 0
    assert delta.force_cleans == 0
    assert delta.jobs_reaped == {}


def test_a_cycle_moves_last_success_only_when_it_succeeded() -> None:
    delta = State()
    apply_cycle(delta, started=10.0, ended=12.0, duration=2.0, ok=False)
    assert (delta.sweeps, delta.last_sweep_end, delta.last_success) == (1, 12.0, None)
    apply_cycle(delta, started=20.0, ended=21.0, duration=1.0, ok=True)
    assert (delta.sweeps, delta.last_success) == (2, 21.0)
