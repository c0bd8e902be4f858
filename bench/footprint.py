"""Section 5, footprint: the daemon and the exporter left running, RSS and CPU from /proc.

``limpeza-cleaner run`` sweeps a small nested tree (nothing expired) every 30 s;
``limpeza-exporter`` serves the same configuration and is scraped every 15 s, as a
Prometheus server would. Both run side by side for the whole window; /proc is sampled
every few seconds after a short settling time, so start-up is not counted as idle CPU.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import expiry, trees
from bench.measure import proc_sample, table
from devtools.process import free_port, terminate

SETTLE = 5.0
SAMPLE_EVERY = 5.0
SCRAPE_EVERY = 15.0
TREE_FILES = 1_000


@dataclass
class Footprint:
    name: str
    window: float
    cpu: float
    rss_first_kib: int
    rss_last_kib: int
    rss_max_kib: int


@contextlib.contextmanager
def _process(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        terminate(proc, timeout=10)


def run_section(duration: float, scratch: Path, log: Callable[[str], None]) -> list[Footprint]:
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(dir=scratch) as work_name:
        work = Path(work_name)
        tree = trees.generate(work / "uploads", TREE_FILES, nested=True, now=time.time(), idle=True)
        config = expiry.limpeza_config(tree, work)
        config.write_text(config.read_text().replace("log_level: warning", "log_level: info"))
        port = free_port()
        cleaner = [str(bindir / "limpeza-cleaner"), "--config", str(config), "run"]
        exporter_bin = bindir / "limpeza-exporter"
        exporter = [
            str(exporter_bin),
            "--config",
            str(config),
            "--web.listen-address",
            f"127.0.0.1:{port}",
        ]
        with contextlib.ExitStack() as stack:
            procs = {"limpeza-cleaner run": stack.enter_context(_process(cleaner))}
            if exporter_bin.exists():
                procs["limpeza-exporter"] = stack.enter_context(_process(exporter))
            time.sleep(SETTLE)
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}")
            first = {name: proc_sample(p.pid) for name, p in procs.items()}
            peak = {name: sample[1] for name, sample in first.items()}
            start = time.monotonic()
            next_scrape = start
            last = first
            while time.monotonic() - start < duration:
                if "limpeza-exporter" in procs and time.monotonic() >= next_scrape:
                    url = f"http://127.0.0.1:{port}/metrics"
                    with urllib.request.urlopen(url, timeout=10) as response:
                        response.read()
                    next_scrape += SCRAPE_EVERY
                time.sleep(min(SAMPLE_EVERY, max(0.0, duration - (time.monotonic() - start))))
                last = {name: proc_sample(p.pid) for name, p in procs.items()}
                for name, (_, rss) in last.items():
                    peak[name] = max(peak[name], rss)
            window = time.monotonic() - start
        results = [
            Footprint(
                name,
                window,
                last[name][0] - first[name][0],
                first[name][1],
                last[name][1],
                peak[name],
            )
            for name in procs
        ]
    for r in results:
        log(f"  {r.name}: {r.cpu:.2f}s CPU in {r.window:.0f}s, RSS {r.rss_last_kib / 1024:.1f}MiB")
    return results


def report(results: list[Footprint], exporter_missing: bool) -> str:
    rows = [
        [
            r.name,
            f"{r.window:.0f} s",
            f"{r.cpu:.2f} s",
            f"{r.cpu / r.window * 3600:.1f} s",
            f"{100 * r.cpu / r.window:.2f} %",
            f"{r.rss_first_kib / 1024:.1f} MiB",
            f"{r.rss_last_kib / 1024:.1f} MiB",
            f"{r.rss_max_kib / 1024:.1f} MiB",
        ]
        for r in results
    ]
    header = [
        "process",
        "window",
        "CPU in window",
        "CPU-s per hour",
        "of one core",
        "RSS at start",
        "RSS at end",
        "peak RSS",
    ]
    note = "\n\nlimpeza-exporter was not installed: not measured." if exporter_missing else ""
    return table(header, rows) + note
