"""The filesystems holding the monitored directories: ``statvfs`` at scrape time.

Never a walk: one ``statvfs`` per configured directory. A directory that is gone or cannot
be reached is never silent: ``limpeza_filesystem_error`` is 1 for it, and its filesystem
series are measured at its nearest ancestor that can be (the filesystem its files would be
on), so the disk alerts still watch it; only when no ancestor can be measured either (a
failing root) do its series go. The fault is logged once when it starts and once when it
ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from cleaner.config import Config
from exporter.faults import Faults

StatVFS = Callable[[Path], os.statvfs_result]


def os_statvfs(path: Path) -> os.statvfs_result:
    return os.statvfs(path)


def _measure(directory: Path, stat: StatVFS) -> tuple[os.statvfs_result | None, OSError | None]:
    """(statvfs of the directory or of its nearest measurable ancestor, the directory's error)."""
    try:
        return stat(directory), None
    except OSError as exc:
        error = exc
    for ancestor in directory.parents:
        try:
            return stat(ancestor), error
        except OSError:
            continue
    return None, error


def filesystem_metrics(config: Config, stat: StatVFS, faults: Faults) -> Iterator[Metric]:
    """Size, free space, inodes and free inodes of each monitored directory's filesystem."""
    families = {
        "size": GaugeMetricFamily(
            "limpeza_filesystem_size_bytes",
            "Size of the filesystem holding the monitored directory (statvfs at scrape time).",
            labels=["directory"],
        ),
        "avail": GaugeMetricFamily(
            "limpeza_filesystem_avail_bytes",
            "Bytes available to unprivileged users on the filesystem holding the "
            "monitored directory (statvfs at scrape time).",
            labels=["directory"],
        ),
        "files": GaugeMetricFamily(
            "limpeza_filesystem_files",
            "Inodes of the filesystem holding the monitored directory (statvfs at scrape "
            "time; 0 when the filesystem has no fixed number).",
            labels=["directory"],
        ),
        "files_free": GaugeMetricFamily(
            "limpeza_filesystem_files_free",
            "Inodes available to unprivileged users on the filesystem holding the "
            "monitored directory (statvfs at scrape time).",
            labels=["directory"],
        ),
    }
    errors = GaugeMetricFamily(
        "limpeza_filesystem_error",
        "1 when statvfs of the monitored directory failed in this scrape (gone, or not "
        "reachable by the exporter): its filesystem series are then those of its nearest "
        "ancestor that could be measured.",
        labels=["directory"],
    )
    for directory in config.files.all_directories():
        label = [str(directory)]
        st, error = _measure(directory, stat)
        errors.add_metric(label, 0 if error is None else 1)
        if error is None:
            faults.report(f"directory {directory}", None)
        else:
            where = "no ancestor either" if st is None else "measured at its nearest ancestor"
            faults.report(
                f"directory {directory}", f"statvfs failed: {error.strerror or error}; {where}"
            )
        if st is None:
            continue
        families["size"].add_metric(label, st.f_blocks * st.f_frsize)
        families["avail"].add_metric(label, st.f_bavail * st.f_frsize)
        families["files"].add_metric(label, st.f_files)
        families["files_free"].add_metric(label, st.f_favail)
    yield from families.values()
    yield errors
