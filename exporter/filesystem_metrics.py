"""The filesystems holding the monitored directories: ``statvfs`` at scrape time.

Never a walk: one ``statvfs`` per configured directory. A directory that cannot be read
has no filesystem series; its fault is logged once when it starts and once when it ends.
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
    for directory in config.files.all_directories():
        try:
            st = stat(directory)
        except OSError as exc:
            faults.report(f"directory {directory}", f"statvfs failed: {exc.strerror or exc}")
            continue
        faults.report(f"directory {directory}", None)
        label = [str(directory)]
        families["size"].add_metric(label, st.f_blocks * st.f_frsize)
        families["avail"].add_metric(label, st.f_bavail * st.f_frsize)
        families["files"].add_metric(label, st.f_files)
        families["files_free"].add_metric(label, st.f_favail)
    yield from families.values()
