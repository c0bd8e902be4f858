"""A JobReaper whose reports are recorded in a State, the way the daemon records them."""

from __future__ import annotations

from typing import Any

from cleaner.config import JobsConfig
from cleaner.daemon import apply_force_clean, apply_jobs
from cleaner.jobs.force_clean import ForceCleanReport
from cleaner.jobs.reaper import CycleReport, JobReaper
from cleaner.jobs.status import jobs_status
from cleaner.state import State


class RecordingReaper(JobReaper):
    """``cycle()`` and ``force_clean()`` as usual, each report also applied to ``state``."""

    def __init__(self, config: JobsConfig, state: State, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.state = state

    def cycle(self) -> CycleReport:
        report = super().cycle()
        apply_jobs(self.state, report)
        return report

    def force_clean(self, dry_run: bool, *, min_age: float = 0.0) -> ForceCleanReport:
        report = super().force_clean(dry_run, min_age=min_age)
        apply_force_clean(self.state, report)
        return report

    def status(self) -> dict[str, Any]:
        return jobs_status(self.config, now=self._clock(), application_name="limpeza test")
