"""Lost writes: APIs writing the job cache their own way while the cleaner reaps it.

Each writer is a real process that appends jobs to the cache at a steady rate, in one of
the ways APIs do it: ``os.replace`` of a temporary file, a plain ``open(path, "w")``, one
handle kept open (``seek(0)``, ``truncate()``, ``write()``), and the documented flock
protocol. Each write reads the file, adds one fresh job (and every tenth write one stale
job) and writes it back. Meanwhile this process reaps the same file every 100 ms with
cleaner.jobs.cache.reap_cache. At the end every fresh job a writer wrote must still be in
the file (else it was lost) and every stale one must be gone.

    python -m bench.cache_writers --seconds 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cleaner.jobs.cache import CacheError, reap_cache

STYLES = ("replace", "open_w", "handle", "flock")
#: A fresh job is never stale during a run; a stale one always is.
STALE_AFTER = {"running": 3600.0, "queued": 3600.0}
REAP_EVERY = 0.1

# argv: style path rate seconds. Prints {"fresh": [...], "stale": [...], "torn": n}.
WRITER = r"""
import fcntl, json, os, sys, time
style, path, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
fresh, stale, torn = [], [], 0

def parse(text):
    global torn
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        torn += 1  # a read that caught a write half way: try again, as an API would
        return None

def add(jobs, i):
    now = time.time()
    jobs[f"{style}-{i}"] = {"status": "running", "updated_at": now}
    fresh.append(f"{style}-{i}")
    if i % 10 == 0:
        jobs[f"{style}-stale-{i}"] = {"status": "queued", "updated_at": now - 86400}
        stale.append(f"{style}-stale-{i}")
    return json.dumps(jobs, indent=1)

def read_path():
    for _ in range(10000):
        with open(path, encoding="utf-8") as fh:
            jobs = parse(fh.read())
        if jobs is not None:
            return jobs
        time.sleep(0.001)
    raise SystemExit("the cache never became readable")

handle = open(path, "r+", encoding="utf-8") if style == "handle" else None
start = time.monotonic()
i = 0
while time.monotonic() - start < seconds:
    if style == "replace":
        text = add(read_path(), i)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    elif style == "open_w":
        text = add(read_path(), i)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    elif style == "handle":
        while True:
            handle.seek(0)
            jobs = parse(handle.read())
            if jobs is not None:
                break
            time.sleep(0.001)
        text = add(jobs, i)
        handle.seek(0)
        handle.truncate()
        handle.write(text)
        handle.flush()
    else:  # flock: lock, make sure the path still names the file, read, rewrite in place
        while True:
            with open(path, "r+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                if os.fstat(fh.fileno()).st_ino != os.stat(path).st_ino:
                    continue
                text = add(json.loads(fh.read() or "{}"), i)
                fh.seek(0)
                fh.truncate()
                fh.write(text)
                break
    i += 1
    time.sleep(max(0.0, start + (i / rate) - time.monotonic()))
print(json.dumps({"fresh": fresh, "stale": stale, "torn": torn}))
"""


@dataclass(frozen=True)
class Outcome:
    style: str
    rate: float
    seconds: float
    writes: int
    lost: int
    stale_left: int
    torn_reads: int
    reaped: int
    reap_errors: dict[str, int]


def run_one(style: str, rate: float, seconds: float, scratch: Path) -> Outcome:
    """One writer of ``style`` at ``rate`` writes/s for ``seconds`` against a reaping loop."""
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / f"jobs-{style}-{rate:g}.json"
    filler = {f"done-{i}": {"status": "done", "updated_at": 1_600_000_000} for i in range(200)}
    path.write_text(json.dumps(filler), encoding="utf-8")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, style, str(path), str(rate), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    reaped = 0
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + seconds + 60
    try:
        while writer.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"writer {style} did not finish in time")
            tick = time.monotonic()
            try:
                reaped += sum(reap_cache(path, STALE_AFTER, time.time()).values())
            except CacheError as exc:
                errors[str(exc).split(": ", 1)[-1][:60]] += 1
            time.sleep(max(0.0, tick + REAP_EVERY - time.monotonic()))
        out, _ = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    if writer.returncode != 0:
        raise RuntimeError(f"writer {style} failed with {writer.returncode}")
    reaped += sum(reap_cache(path, STALE_AFTER, time.time()).values())  # the writer is done
    wrote = json.loads(out)
    final = json.loads(path.read_text(encoding="utf-8"))
    path.unlink()
    return Outcome(
        style=style,
        rate=rate,
        seconds=seconds,
        writes=len(wrote["fresh"]),
        lost=sum(job not in final for job in wrote["fresh"]),
        stale_left=sum(job in final for job in wrote["stale"]),
        torn_reads=wrote["torn"],
        reaped=reaped,
        reap_errors=dict(errors),
    )


def run_section(
    rates: tuple[float, ...],
    seconds: float,
    scratch: Path,
    log: Callable[[str], None] | None = None,
) -> list[Outcome]:
    outcomes = []
    for rate in rates:
        for style in STYLES:
            outcome = run_one(style, rate, seconds, scratch)
            if log is not None:
                log(f"cache writers {style} at {rate:g}/s: lost {outcome.lost}/{outcome.writes}")
            outcomes.append(outcome)
    return outcomes


LABELS = {
    "replace": "`os.replace` of a temporary file",
    "open_w": 'plain `open(path, "w")`',
    "handle": "one handle kept open (`seek(0)`, `truncate()`, `write()`)",
    "flock": "the flock protocol (README, The job cache protocol)",
}


def report(outcomes: list[Outcome]) -> str:
    seconds = outcomes[0].seconds if outcomes else 0
    lines = [
        "A writer process per style appends jobs to the cache (one fresh job per write, a stale "
        f"one every tenth) for {seconds:g} s while the cleaner reaps the same file every "
        f"{REAP_EVERY * 1000:g} ms (`reap_cache`, in place, compare-and-swap). Lost: fresh "
        "jobs a writer wrote that are not in the file at the end. Torn reads: reads of the "
        "writer's own that caught a write half way and were retried. Gave up: reap cycles "
        "that found the file changing on every attempt (a counted `cache` error; the next "
        "cycle reaps).",
        "",
        "| writer | writes/s | writes | lost | stale left | reaped | torn reads | gave up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        gave_up = sum(o.reap_errors.values())
        lines.append(
            f"| {LABELS[o.style]} | {o.rate:g} | {o.writes} | {o.lost} | {o.stale_left} "
            f"| {o.reaped} | {o.torn_reads} | {gave_up} |"
        )
    errors: Counter[str] = Counter()
    for o in outcomes:
        errors.update(o.reap_errors)
    if errors:
        lines += ["", "Reap cycles that gave up, by reason:", ""]
        lines += [f"- {count} x {reason}" for reason, count in errors.most_common()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_writers", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", default="20,100")
    parser.add_argument("--scratch", type=Path, default=Path("bench/out/cache-writers"))
    args = parser.parse_args(argv)
    rates = tuple(float(r) for r in args.rates.split(","))
    print(report(run_section(rates, args.seconds, args.scratch, print)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
