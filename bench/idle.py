"""Section 2, the idle sweep: a million files, nothing expired, the daemon's 30 s cycle.

A child process builds the configuration and runs several sweeps in a row, timing each
one's CPU (``time.process_time``) and wall time: once as the sweep was before the daemon
kept a memory (every directory read every cycle), once with the daemon's SweepMemory
(the first sweep reads everything; the next ones skip unchanged directories). The
hourly CPU of each ``files.full_read_every`` cadence follows from the two: one full read
per cadence, skipping sweeps in between.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import expiry, trees
from bench.measure import Summary, show_seconds, table

INTERVAL = 30.0
CYCLES_PER_HOUR = 3600 / INTERVAL
#: The ``files.full_read_every`` cadences reported: the default and a slower one.
CADENCES = (("5m", 300.0, " (default)"), ("30m", 1800.0, ""))


@dataclass
class IdleOutcome:
    files: int
    shape: str
    without: list[dict[str, float]]  # per sweep: cpu, wall
    with_memory: list[dict[str, float]]
    usage_equal: bool


def probe(config_path: Path, sweeps: int, use_memory: bool) -> dict[str, object]:
    """Runs in the child: ``sweeps`` sweeps, each timed; the last usage counters."""
    from cleaner import config as config_mod
    from cleaner.files import sweep
    from cleaner.memory import SweepMemory

    config = config_mod.load(config_path, {})
    # A clock that stands still: after the first, no sweep is a full read.
    memory = SweepMemory(clock=lambda: 0.0) if use_memory else None
    timings: list[dict[str, float]] = []
    usage: dict[str, list[int]] = {}
    for i in range(sweeps):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = sweep(config.files, now=time.time() + i * INTERVAL, memory=memory)
        timings.append({"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0})
        if result.files_removed or result.errors:
            raise RuntimeError(f"an idle sweep removed or failed: {result.summary()}")
        usage = {d: [u.files, u.bytes] for d, u in result.directories.items()}
    return {"timings": timings, "usage": usage}


def _child(config_path: Path, sweeps: int, use_memory: bool) -> dict[str, object]:
    argv = [sys.executable, "-m", "bench.idle", str(config_path), str(sweeps)]
    if use_memory:
        argv.append("--memory")
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    data: dict[str, object] = json.loads(out.stdout)
    return data


def run_section(
    files: int, sweeps: int, scratch: Path, log: Callable[[str], None]
) -> list[IdleOutcome]:
    outcomes = []
    for nested in (True, False):
        root = scratch / f"idle-{files}-{'nested' if nested else 'flat'}"
        started = time.perf_counter()
        tree = trees.generate(root, files, nested=nested, now=time.time(), idle=True)
        log(f"generated idle {files} {tree.shape} in {time.perf_counter() - started:.1f}s")
        try:
            with tempfile.TemporaryDirectory(dir=scratch) as work:
                config = expiry.limpeza_config(tree, Path(work))
                plain = _child(config, sweeps, use_memory=False)
                remembered = _child(config, sweeps, use_memory=True)
        finally:
            trees.remove(root)
        without = plain["timings"]
        with_memory = remembered["timings"]
        assert isinstance(without, list) and isinstance(with_memory, list)
        outcomes.append(
            IdleOutcome(
                files,
                tree.shape,
                without,
                with_memory,
                plain["usage"] == remembered["usage"],
            )
        )
        log(
            f"  idle {tree.shape}: without memory cpu "
            f"{statistics.median(t['cpu'] for t in without):.3f}s/sweep, with memory "
            f"first {with_memory[0]['cpu']:.3f}s then "
            f"{statistics.median(t['cpu'] for t in with_memory[1:]):.4f}s/sweep"
        )
    return outcomes


def report(outcomes: list[IdleOutcome]) -> str:
    rows = []
    notes = []
    for out in outcomes:
        plain_cpu = Summary.of([t["cpu"] for t in out.without])
        plain_wall = Summary.of([t["wall"] for t in out.without])
        full_cpu = out.with_memory[0]["cpu"]
        skip_cpu = Summary.of([t["cpu"] for t in out.with_memory[1:]])
        skip_wall = Summary.of([t["wall"] for t in out.with_memory[1:]])
        hourly_plain = plain_cpu.median * CYCLES_PER_HOUR
        rows.append(
            [
                f"{out.files:,}",
                out.shape,
                "every directory read (`full_read_every: 0s`)",
                show_seconds(plain_wall),
                show_seconds(plain_cpu),
                f"{hourly_plain:.0f} s",
            ]
        )
        ratios = []
        for name, cadence, note in CADENCES:
            # One full read per cadence, every other sweep of the hour skipping.
            full_reads = min(CYCLES_PER_HOUR, 3600 / cadence)
            skips = CYCLES_PER_HOUR - full_reads
            hourly = full_reads * plain_cpu.median + skips * skip_cpu.median
            ratios.append(f"{hourly_plain / hourly:.0f}x lower at {name}")
            rows.append(
                [
                    f"{out.files:,}",
                    out.shape,
                    f"unchanged directories skipped, `full_read_every: {name}`{note}",
                    show_seconds(skip_wall),
                    show_seconds(skip_cpu),
                    f"{hourly:.1f} s",
                ]
            )
        notes.append(
            f"{out.files:,} {out.shape}: first sweep with memory {full_cpu:.2f} s CPU; "
            f"CPU per hour {', '.join(ratios)}; usage counters "
            + ("identical to a full read." if out.usage_equal else "**differ from a full read**.")
        )
    header = ["files", "shape", "sweep", "wall per sweep", "CPU per sweep", "CPU-s per hour"]
    return table(header, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n" + IDLE_NOTES


IDLE_NOTES = """\
CPU-s per hour assumes the default 30 s interval (120 sweeps an hour); with the memory,
one sweep per `files.full_read_every` reads everything (priced as a sweep without memory),
the others skip, so the hourly figure is mostly those full reads. What the memory skips,
and why it is safe: a directory whose mtime (and inode) is unchanged since it was read
holds the same names, so until the earliest of its matching files reaches its rule's age
nothing there can be due; its files and bytes from the last read are counted again. A
directory changed less than 2 s before it was read, or where anything was removed, skipped
as locked, or failed, is read again next cycle. What a directory's mtime cannot show waits
at most for the next full read (`full_read_every`, 5 minutes by default): a file whose
mtime is set back in place is removed late, never early, and a file that grows or shrinks
in place has its bytes counted late. The memory holds one small record per directory, not
per file.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description="one idle-sweep probe (run by bench.run)")
    parser.add_argument("config", type=Path)
    parser.add_argument("sweeps", type=int)
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()
    print(json.dumps(probe(args.config, args.sweeps, args.memory)))


if __name__ == "__main__":
    main()
