"""What the cleaner's state file says: counters, the last sweep, directories, the API.

Read at every scrape without ever blocking on it (``exporter.regular_file``: a FIFO at the
path is refused, not waited on) and validated field by field with the cleaner's own check
(``cleaner.state.State.from_dict``). A missing, unreadable or invalid file gives
``limpeza_state_up 0`` and none of the families below, never a failed scrape; the fault
is logged once when it starts and once when it ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from cleaner.config import Config
from cleaner.state import ERROR_STAGES, JOB_SOURCES, SKIP_REASONS, State, parse_state
from exporter.faults import Faults
from exporter.regular_file import read_regular_file
from exporter.statuses import fold, known_statuses

#: A state file holds a few counters per rule and directory: kilobytes. Past this it is
#: not one the cleaner wrote.
MAX_STATE_BYTES = 16 << 20


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def read_state_file(path: Path) -> State:
    """The state file at ``path``; raises OSError or ValueError (with a reason) when unusable."""
    return parse_state(read_regular_file(path, MAX_STATE_BYTES))


def _read(path: Path, faults: Faults) -> State | None:
    try:
        state = read_state_file(path)
    except FileNotFoundError:
        problem = "missing (the cleaner has not written it yet?): no counters exported"
    except (OSError, ValueError) as exc:
        problem = f"unusable ({exc}): no counters exported"
    else:
        faults.report(f"state file {path}", None)
        return state
    faults.report(f"state file {path}", problem)
    return None


def state_metrics(config: Config, faults: Faults) -> Iterator[Metric]:
    """``limpeza_state_up`` and, when the file is usable, every family read from it."""
    state = _read(config.state_file, faults)
    yield _gauge(
        "limpeza_state_up",
        "1 when the cleaner's state file was read in this scrape; "
        "0 means no counters are exported.",
        1 if state is not None else 0,
    )
    if state is None:
        return
    yield from _counters(config, state)
    yield from _sweep_metrics(state)
    yield from _missing_metrics(config, state)
    if config.jobs.health_url is not None:
        yield from _api_metrics(state)


def _per_key(
    name: str, doc: str, label: str, known: Iterable[str], values: Mapping[str, int]
) -> CounterMetricFamily:
    """A counter with one series per ``label`` value: each known one (0 until counted) and
    any other the state file holds (a rule since removed keeps its count)."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, number in sorted({**dict.fromkeys(known, 0), **values}.items()):
        family.add_metric([key], number)
    return family


def _counters(config: Config, state: State) -> Iterator[Metric]:
    rules = [rule.name for rule in config.files.rules]
    for name, doc, values in (
        (
            "limpeza_files_removed",
            "Files the cleaner removed, per rule, since its state file was created.",
            state.files_removed,
        ),
        (
            "limpeza_bytes_removed",
            "Bytes the cleaner's removals freed (allocated blocks of files whose last link "
            "went), per rule, since its state file was created.",
            state.bytes_removed,
        ),
    ):
        yield _per_key(name, doc, "rule", rules, values)
    yield _per_key(
        "limpeza_files_skipped",
        "Matching entries the cleaner left alone, per reason (from its state file).",
        "reason",
        SKIP_REASONS,
        state.skipped,
    )

    reaped = CounterMetricFamily(
        "limpeza_jobs_reaped",
        "Stale jobs the cleaner ended, per source (database, cache) and status they had "
        "(from its state file).",
        labels=["source", "status"],
    )
    known: dict[tuple[str, str], int] = {
        (source, status): 0 for source in JOB_SOURCES for status in config.jobs.active_statuses
    }
    statuses = known_statuses(config)
    for source, per_status in state.jobs_reaped.items():
        for status, number in fold(per_status, statuses).items():
            known[(source, status)] = number
    for (source, status), number in sorted(known.items()):
        reaped.add_metric([source, status], number)
    yield reaped

    yield _per_key(
        "limpeza_cleanup_errors",
        "Errors the cleaner met, per stage (files, cache, database, health, jobs, state), "
        "from its state file.",
        "stage",
        ERROR_STAGES,
        state.errors,
    )

    yield CounterMetricFamily(
        "limpeza_force_cleans",
        "Force-cleans (every active job ended at once) the cleaner ran, from its state file.",
        value=state.force_cleans,
    )
    yield CounterMetricFamily(
        "limpeza_jobs_reap_skipped",
        "Cycles whose database reaping was skipped because another cleaner held the "
        "reaper lock, from the state file.",
        value=state.reaps_skipped,
    )
    yield CounterMetricFamily(
        "limpeza_clock_jumps",
        "Cycles held because the wall clock jumped forward against the monotonic clock "
        "(nothing removed, no job reaped), from the state file.",
        value=state.clock_jumps,
    )
    yield CounterMetricFamily(
        "limpeza_sweeps",
        "Sweeps (file rules and job reaping) the cleaner completed, from its state file.",
        value=state.sweeps,
    )


def _missing_metrics(config: Config, state: State) -> Iterator[Metric]:
    missing = GaugeMetricFamily(
        "limpeza_directory_missing",
        "1 when the cleaner's last sweep found the configured directory missing, so "
        "nothing was swept there (from its state file).",
        labels=["directory"],
    )
    gone = set(state.missing_directories)
    for directory in config.files.all_directories():
        missing.add_metric([str(directory)], 1 if str(directory) in gone else 0)
    yield missing


def _sweep_metrics(state: State) -> Iterator[Metric]:
    last_sweep = state.last_sweep_end or state.last_sweep_start
    if last_sweep is not None:
        yield _gauge(
            "limpeza_last_sweep_timestamp_seconds",
            "Unix time the cleaner's last sweep ended, from its state file.",
            last_sweep,
        )
    if state.last_success is not None:
        yield _gauge(
            "limpeza_last_success_timestamp_seconds",
            "Unix time of the cleaner's last sweep without any error, from its state file.",
            state.last_success,
        )
    if state.last_sweep_duration is not None:
        yield _gauge(
            "limpeza_sweep_duration_seconds",
            "How long the cleaner's last sweep took, from its state file.",
            state.last_sweep_duration,
        )
    files = GaugeMetricFamily(
        "limpeza_directory_files",
        "Regular files in the directory when the cleaner last swept it, after removal "
        "(from its state file; the exporter never walks a directory).",
        labels=["directory"],
    )
    size = GaugeMetricFamily(
        "limpeza_directory_bytes",
        "Bytes of the regular files in the directory when the cleaner last swept it, "
        "after removal (from its state file).",
        labels=["directory"],
    )
    for directory, usage in sorted(state.directories.items()):
        files.add_metric([directory], usage.files)
        size.add_metric([directory], usage.bytes)
    yield files
    yield size


def _api_metrics(state: State) -> Iterator[Metric]:
    api = state.api
    if api.up is not None:
        yield _gauge(
            "limpeza_api_up",
            "1 when the API's health endpoint (jobs.health_url) answered with a 2xx status "
            "at the cleaner's last check, from its state file.",
            1 if api.up else 0,
        )
    if api.jobs_active is not None:
        yield _gauge(
            "limpeza_api_jobs_active",
            "Active jobs the API's health endpoint reported at the cleaner's last check, "
            "from its state file.",
            api.jobs_active,
        )
    if api.checked_at is not None:
        yield _gauge(
            "limpeza_api_last_check_timestamp_seconds",
            "Unix time of the cleaner's last check of the API's health endpoint.",
            api.checked_at,
        )
