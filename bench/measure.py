"""How a benchmark measures: one child process timed with its own resource usage.

Every contender runs as a child; ``os.wait4`` gives its user and system CPU time and its
peak resident set (``ru_maxrss``), so the numbers are the child's alone, whatever else the
machine is doing. Repeats are summarised as the median with the min-max range.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    """One child process: wall seconds, CPU seconds (user + sys), peak RSS in KiB."""

    wall: float
    cpu: float
    rss_kib: int
    returncode: int


GNU_TIME = "/usr/bin/time"


def run_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdout: int | None = subprocess.DEVNULL,
) -> Run:
    """Runs ``argv`` to the end and returns what it cost.

    Wall time is taken here; CPU time is the user + system time ``wait4`` reports (it
    includes the reaped descendants). Peak RSS comes from GNU time, which forks the command
    from its own small process: Linux carries ``ru_maxrss`` across ``exec``, so a child
    spawned straight from this (large) Python process would report this process's size.
    """
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-") as rss_file:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [GNU_TIME, "-f", "%M", "-o", rss_file.name, *argv],
            env=None if env is None else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stderr.close()
        rss_text = rss_file.read().strip().splitlines()
    rss_kib = int(rss_text[-1]) if rss_text and rss_text[-1].isdigit() else 0
    run = Run(wall, usage.ru_utime + usage.ru_stime, rss_kib, proc.returncode)
    if run.returncode not in (0, 1):
        raise RuntimeError(f"{argv[0]} exited {run.returncode}: {err.decode(errors='replace')}")
    return run


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def show(self, unit: str = "s", digits: int = 3) -> str:
        if self.n == 1:
            return f"{self.median:.{digits}f} {unit}".rstrip()
        return f"{self.median:.{digits}f} {unit} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def show_seconds(summary: Summary) -> str:
    """A duration summary in the unit that suits it (ms below one second)."""
    if summary.median < 1:
        return Summary(
            summary.median * 1000, summary.low * 1000, summary.high * 1000, summary.n
        ).show("ms", 1)
    return summary.show("s", 2)


def show_mib(summary: Summary) -> str:
    return summary.show("MiB", 1)


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference > 0 else "n/a"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def proc_sample(pid: int) -> tuple[float, int]:
    """CPU seconds used so far (user + sys) and the current RSS in KiB, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss_kib = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
    return cpu, rss_kib
