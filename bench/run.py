"""Runs every benchmark section and writes bench/RESULTS.md.

    python -m bench.run            # the full run (`make bench`, under an hour on 2 cores)
    python -m bench.run --quick    # small sizes, short footprint (`make bench-quick`)
    python -m bench.run --only expiry,idle
    python -m bench.run --only scrape_load --update   # re-measure one section, keep the rest
    python -m bench.run --only quarantine --update

RESULTS.md is rewritten after each section, so an interrupted run keeps what it measured
and says which sections did not run. With ``--update`` the sections not selected keep what
the file held, and each re-measured one says when it was measured and under what load.
Nothing in it is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import (
    cache_writers,
    expiry,
    footprint,
    idle,
    profile,
    quarantine,
    reaping,
    scrape_load,
    trees,
)

HERE = Path(__file__).resolve().parent
SECTIONS = (
    "expiry",
    "idle",
    "reaping",
    "scrape",
    "footprint",
    "cache_writers",
    "scrape_load",
    "quarantine",
)


@dataclass(frozen=True)
class Plan:
    expiry_sizes: tuple[int, ...]
    repeats: int
    idle_files: int
    idle_sweeps: int
    job_rows: tuple[int, ...]
    footprint_seconds: float
    cache_writer_seconds: float
    quarantine_sizes: tuple[int, ...] = (100_000, 1_000_000)


FULL = Plan((10_000, 100_000, 1_000_000), 3, 1_000_000, 6, (1_000_000, 5_000_000), 600.0, 30.0)
QUICK = Plan((10_000,), 3, 20_000, 5, (100_000,), 30.0, 5.0, (10_000,))

TITLES = {
    "expiry": "1. Expiring files",
    "idle": "2. The idle sweep",
    "reaping": "3. Reaping jobs",
    "scrape": "4. Scraping",
    "footprint": "5. Footprint",
    "cache_writers": "6. Job cache writers",
    "scrape_load": "7. Concurrent scrapers",
    "quarantine": "8. Quarantine",
}


def profile_section(plan: Plan, scratch: Path) -> str:
    """Where limpeza's CPU goes, on a flat tree of the section's middle size."""
    size = plan.expiry_sizes[len(plan.expiry_sizes) // 2]
    source = scratch / f"tree-profile-{size}"
    tree = trees.generate(source, size, nested=False, now=time.time())
    try:
        return profile.profile(tree, scratch, log)
    finally:
        trees.remove(source)


def machine() -> str:
    mem_kib = 0
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    model = platform.processor() or platform.machine()
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = []
    for argv in (["find", "--version"], ["systemd-tmpfiles", "--version"]):
        with_version = shutil.which(argv[0])
        if with_version:
            out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
            versions.append(out.splitlines()[0] if out else argv[0])
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_kib / 1024 / 1024:.1f} GiB memory, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        + "; ".join(versions)
    )


class Results:
    """The RESULTS.md being built: rewritten after every section."""

    def __init__(
        self, path: Path, quick: bool, wanted: tuple[str, ...], *, update: bool = False
    ) -> None:
        self.path = path
        self.quick = quick
        self.wanted = wanted
        self.sections: dict[str, str] = {}
        #: With --update: the file's head and the sections it held, kept as they are.
        self.kept_head: list[str] | None = None
        self.kept: dict[str, str] = {}
        if update and path.exists():
            self.kept_head, self.kept = read_results(path.read_text(encoding="utf-8"))
        self.started = datetime.datetime.now(datetime.UTC)
        self.machine = machine()
        self.load_start = os.getloadavg()[0]
        self.load_end: float | None = None

    def add(self, name: str, text: str) -> None:
        if self.kept_head is not None:
            text = (
                f"*Measured on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by "
                f"`python -m bench.run --only {name} --update`, load average (1 min) "
                f"{self.load_start:.2f} when it started and {os.getloadavg()[0]:.2f} when it "
                "ended; the other sections are from the run the head of this file "
                "describes.*\n\n" + text
            )
        self.sections[name] = text
        self.write()

    def write(self) -> None:
        mode = "`make bench-quick` (small sizes)" if self.quick else "`make bench`"
        head = [
            "# limpeza benchmarks",
            "",
            f"Generated by {mode} on {self.started:%Y-%m-%d %H:%M} UTC. "
            "Every number below is measured by `bench/run.py`; none is typed by hand.",
            "",
            f"Machine: {self.machine}.",
            f"Load average (1 min) when the run started: {self.load_start:.2f}"
            + (f"; when it ended: {self.load_end:.2f}." if self.load_end is not None else "."),
            "Wall times carry the noise of whatever else the machine does: CPU times "
            "(user + system of the measured process) and medians of repeats are the "
            "steadier figures. Ranges in brackets are min-max.",
            "",
        ]
        if self.kept_head is not None:
            head = self.kept_head
        body = []
        for name in SECTIONS:
            body.append(f"## {TITLES[name]}\n")
            if name in self.sections:
                body.append(self.sections[name] + "\n")
            elif name in self.kept and name not in self.wanted:
                body.append(self.kept[name] + "\n")
            elif name in self.wanted:
                body.append("Not measured in this run (it did not finish).\n")
            else:
                body.append("Not measured in this run (not selected).\n")
        self.path.write_text("\n".join(head + body), encoding="utf-8")


def read_results(text: str) -> tuple[list[str], dict[str, str]]:
    """The head lines of a RESULTS.md and its sections by name (what ``write`` produced)."""
    starts = {
        name: text.find(f"\n## {TITLES[name]}\n")
        for name in SECTIONS
        if f"## {TITLES[name]}\n" in text
    }
    first = min(starts.values(), default=len(text))
    sections = {}
    for name, start in starts.items():
        begin = start + len(f"\n## {TITLES[name]}\n")
        end = text.find("\n## ", begin)
        # write() puts a blank line after the heading and a newline after the text.
        sections[name] = text[begin : end if end != -1 else len(text)][1:-1]
    return text[:first].split("\n"), sections


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def timed(name: str, work: Callable[[], str], results: Results) -> None:
    started = time.perf_counter()
    log(f"section {name}")
    results.add(name, work())
    log(f"section {name} done in {time.perf_counter() - started:.0f}s")


def scrape_section(quick: bool, scratch: Path) -> str:
    if not (HERE / "scrape.py").exists():
        return "bench/scrape.py is not there: not measured."
    out = scratch / "scrape.md"
    argv = [sys.executable, "-m", "bench.scrape", "--output", str(out), "--scratch", str(scratch)]
    if quick:
        argv.append("--quick")
    subprocess.run(argv, check=True, cwd=HERE.parent)
    text = out.read_text(encoding="utf-8")
    # The section brings its own heading; this file has its own.
    lines = text.splitlines()
    if lines and lines[0].startswith("#"):
        lines = lines[1:]
    return "\n".join(lines).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, ~3 minutes")
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument(
        "--output",
        type=Path,
        help="default: bench/RESULTS.md, or bench/out/RESULTS-quick.md with --quick "
        "(a quick run never overwrites the published numbers)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the sections not selected as the output file has them",
    )
    args = parser.parse_args(argv)
    wanted = tuple(args.only.split(",")) if args.only else SECTIONS
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    if args.output is None:
        args.output = HERE / "out" / "RESULTS-quick.md" if args.quick else HERE / "RESULTS.md"
        args.output.parent.mkdir(exist_ok=True)
    results = Results(args.output, args.quick, wanted, update=args.update)
    results.write()
    scratch = Path(tempfile.mkdtemp(prefix="limpeza-bench-"))
    scratch.chmod(0o755)
    log(f"scratch {scratch}, {shutil.disk_usage(scratch).free / 1e9:.0f} GB free")
    started = time.perf_counter()
    try:
        if "idle" in wanted:
            timed(
                "idle",
                lambda: idle.report(
                    idle.run_section(plan.idle_files, plan.idle_sweeps, scratch, log)
                ),
                results,
            )
        if "reaping" in wanted:
            timed(
                "reaping",
                lambda: reaping.report(reaping.run_section(plan.job_rows, plan.repeats, log)),
                results,
            )
        if "expiry" in wanted:

            def partial(done: list[expiry.Outcome]) -> None:
                left = len(plan.expiry_sizes) * 2 - len(done)
                note = (
                    f"\n\n{left} more trees (sizes x shapes) were planned and did not finish."
                    if left
                    else ""
                )
                results.add("expiry", expiry.report(done) + note)

            def expiry_section() -> str:
                done = expiry.run_section(plan.expiry_sizes, plan.repeats, scratch, log, partial)
                return expiry.report(done) + "\n\n" + profile_section(plan, scratch)

            timed("expiry", expiry_section, results)
        if "scrape" in wanted:
            timed("scrape", lambda: scrape_section(args.quick, scratch), results)
        if "footprint" in wanted:
            exporter_missing = not (Path(sys.executable).parent / "limpeza-exporter").exists()
            timed(
                "footprint",
                lambda: footprint.report(
                    footprint.run_section(plan.footprint_seconds, scratch, log), exporter_missing
                ),
                results,
            )
        if "scrape_load" in wanted:
            timed(
                "scrape_load",
                lambda: scrape_load.report(
                    scrape_load.run_section(args.quick, scratch), args.quick
                ),
                results,
            )
        if "cache_writers" in wanted:
            timed(
                "cache_writers",
                lambda: cache_writers.report(
                    cache_writers.run_section(
                        (20.0, 100.0), plan.cache_writer_seconds, scratch / "cache-writers", log
                    )
                ),
                results,
            )
        if "quarantine" in wanted:

            def quarantine_partial(done: list[quarantine.Outcome]) -> None:
                left = [f"{n:,}" for n in plan.quarantine_sizes[len(done) :]]
                note = f"\n\nNot measured in this run: {', '.join(left)} files." if left else ""
                results.add("quarantine", quarantine.report(done) + note)

            timed(
                "quarantine",
                lambda: quarantine.report(
                    quarantine.run_section(
                        plan.quarantine_sizes, plan.repeats, scratch, log, quarantine_partial
                    )
                ),
                results,
            )
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(scratch)], check=False)
        results.load_end = os.getloadavg()[0]
        results.write()
    log(f"wrote {args.output} in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
