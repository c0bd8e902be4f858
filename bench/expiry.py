"""Section 1, expiring files: limpeza-cleaner once, the contract limit, find and tmpfiles.

Each contender gets its own fresh ``cp -a`` copy of the same generated tree, in a rotating
order, and the regular files left afterwards must be exactly the expected survivors.

The contenders and what each is told:

* ``limpeza-cleaner once --json``: the three rules with ``max_age: 24h`` (``recursive:
  true`` for nested trees), ``protect: [original_*]``, no audit log.
* ``contract`` (bench/contract.c, compiled with ``cc -O2``): exactly limpeza's system calls
  per directory and per entry (see the program's header) and nothing else, the limit of
  the safety contract for any implementation of it.
* GNU find, one invocation with the three patterns as ``-o`` groups:
  ``find ROOT [-maxdepth 1] -type f ( -name P1 -o -name P2 -o -name P3 ) ! -name original_*
  -mmin +1440 -delete``.
* ``systemd-tmpfiles --clean FILE`` with ``e ROOT - - - m:1d`` (age by mtime only) and one
  ``x ROOT/original_*`` line per directory depth. tmpfiles has no "only files matching P"
  for a cleaned directory: it ages out *every* file that no ``x`` line excludes, so it
  matches the others here only because the generated tree holds nothing but the three
  patterns and the originals.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import trees
from bench.measure import Run, Summary, ratio, run_child, show_mib, show_seconds, table

CONTENDERS = ("find", "limpeza", "contract", "tmpfiles")
CONTRACT_SOURCE = Path(__file__).with_name("contract.c")


def limpeza_config(tree: trees.Tree, workdir: Path) -> Path:
    recursive = "true" if tree.nested else "false"
    rules = "\n".join(
        f"    - {{name: {name}, pattern: '{pattern}', max_age: {trees.MAX_AGE_HOURS}h, "
        f"recursive: {recursive}}}"
        for name, pattern in zip(
            ("sessions", "temp_audio", "final_videos"), trees.PATTERNS, strict=True
        )
    )
    path = workdir / "limpeza.yml"
    path.write_text(
        f"state_file: {workdir / 'state.json'}\n"
        "audit_log: null\n"
        "log_level: warning\n"
        "files:\n"
        f"  directories: ['{tree.root}']\n"
        f"  protect: ['{trees.PROTECT}']\n"
        "  rules:\n"
        f"{rules}\n"
    )
    return path


def find_argv(root: Path, nested: bool) -> list[str]:
    names: list[str] = []
    for pattern in trees.PATTERNS:
        names += (["-o"] if names else []) + ["-name", pattern]
    depth = [] if nested else ["-maxdepth", "1"]
    return [
        "find",
        str(root),
        *depth,
        "-type",
        "f",
        "(",
        *names,
        ")",
        "!",
        "-name",
        trees.PROTECT,
        "-mmin",
        f"+{trees.MAX_AGE_HOURS * 60}",
        "-delete",
    ]


def tmpfiles_config(root: Path, depth: int, workdir: Path) -> Path:
    lines = [f"e {root} - - - m:{trees.MAX_AGE_HOURS}h"]
    for level in range(depth + 1):
        lines.append(f"x {root}/{'*/' * level}{trees.PROTECT}")
    path = workdir / "bench.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def tmpfiles_binary() -> str | None:
    return shutil.which("systemd-tmpfiles")


@functools.cache
def contract_binary() -> str | None:
    """bench/contract.c compiled once per run, in a temporary directory; None without cc."""
    compiler = shutil.which("cc")
    if compiler is None:
        return None
    binary = Path(tempfile.mkdtemp(prefix="limpeza-contract-")) / "contract"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(CONTRACT_SOURCE)], check=True)
    return str(binary)


def contract_argv(root: Path, nested: bool) -> list[str]:
    binary = contract_binary()
    assert binary is not None
    max_age = str(trees.MAX_AGE_HOURS * 3600)
    return [binary, str(root), "1" if nested else "0", max_age, trees.PROTECT, *trees.PATTERNS]


def contender_argv(name: str, copy_root: Path, tree: trees.Tree, workdir: Path) -> list[str]:
    moved = trees.Tree(
        copy_root, tree.files, tree.nested, tree.depth, tree.survivors, tree.survivor_count
    )
    if name == "find":
        return find_argv(copy_root, tree.nested)
    if name == "contract":
        return contract_argv(copy_root, tree.nested)
    if name == "limpeza":
        cleaner = str(Path(sys.executable).with_name("limpeza-cleaner"))
        return [cleaner, "--config", str(limpeza_config(moved, workdir)), "once", "--json"]
    binary = tmpfiles_binary()
    assert binary is not None
    return [binary, "--clean", str(tmpfiles_config(copy_root, tree.depth, workdir))]


@dataclass
class Outcome:
    files: int
    shape: str
    runs: dict[str, list[Run]] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)


def measure_tree(
    tree: trees.Tree, repeats: int, scratch: Path, log: Callable[[str], None]
) -> Outcome:
    outcome = Outcome(tree.files, tree.shape, {c: [] for c in available()})
    names = list(outcome.runs)
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            copy_root = scratch / f"copy-{name}"
            trees.copy(tree, copy_root)
            with tempfile.TemporaryDirectory(dir=scratch) as work:
                argv = contender_argv(name, copy_root, tree, Path(work))
                run = run_child(argv)
            found, count = trees.surviving(copy_root)
            trees.remove(copy_root)
            if found != tree.survivors:
                outcome.mismatches.append(
                    f"{name}: {count} files left, expected {tree.survivor_count}"
                )
            outcome.runs[name].append(run)
            log(
                f"  {tree.files} {tree.shape} {name}: wall {run.wall:.2f}s cpu {run.cpu:.2f}s "
                f"rss {run.rss_kib / 1024:.1f}MiB left {count}"
            )
    return outcome


def available() -> tuple[str, ...]:
    found = {"tmpfiles": tmpfiles_binary() is not None, "contract": contract_binary() is not None}
    return tuple(c for c in CONTENDERS if found.get(c, True))


def run_section(
    sizes: tuple[int, ...],
    repeats: int,
    scratch: Path,
    log: Callable[[str], None],
    progress: Callable[[list[Outcome]], None] = lambda _: None,
) -> list[Outcome]:
    """Every size, flat then nested; ``progress`` hears of the outcomes after each tree."""
    outcomes: list[Outcome] = []
    for size in sizes:
        for nested in (False, True):
            source = scratch / f"tree-{size}-{'nested' if nested else 'flat'}"
            started = time.perf_counter()
            tree = trees.generate(source, size, nested=nested, now=time.time())
            log(f"generated {size} {tree.shape} in {time.perf_counter() - started:.1f}s")
            try:
                outcomes.append(measure_tree(tree, repeats, scratch, log))
            finally:
                trees.remove(source)
            progress(outcomes)
    return outcomes


def report(outcomes: list[Outcome]) -> str:
    rows: list[list[str]] = []
    for out in outcomes:
        find_wall = Summary.of([r.wall for r in out.runs["find"]])
        find_cpu = Summary.of([r.cpu for r in out.runs["find"]])
        limit = out.runs.get("contract")
        limit_cpu = Summary.of([r.cpu for r in limit]) if limit else None
        for name, runs in out.runs.items():
            wall = Summary.of([r.wall for r in runs])
            cpu = Summary.of([r.cpu for r in runs])
            rss = Summary.of([r.rss_kib / 1024 for r in runs])
            rows.append(
                [
                    f"{out.files:,}",
                    out.shape,
                    name,
                    show_seconds(wall),
                    show_seconds(cpu),
                    show_mib(rss),
                    ratio(wall.median, find_wall.median),
                    ratio(cpu.median, find_cpu.median),
                    ratio(cpu.median, limit_cpu.median) if limit_cpu else "-",
                ]
            )
    header = [
        "files",
        "shape",
        "contender",
        "wall",
        "CPU (user+sys)",
        "peak RSS",
        "wall / find",
        "CPU / find",
        "CPU / contract",
    ]
    text = table(header, rows)
    problems = [f"{o.files} {o.shape}: {m}" for o in outcomes for m in o.mismatches]
    verdict = (
        "Every run of every contender left exactly the expected survivors "
        "(the digests of the surviving relative paths matched)."
        if not problems
        else "**Mismatches:** " + "; ".join(problems)
    )
    return text + "\n\n" + verdict + "\n\n" + EXPIRY_NOTES


EXPIRY_NOTES = """\
How the contenders were run: each on its own `cp -a` copy (mtimes kept) of one generated
tree, in rotating order, page cache warm for all. `find` is one invocation with the three
patterns as `-o` groups (`-maxdepth 1` for flat trees); `limpeza-cleaner once --json` has
the three rules (`recursive: true` for nested trees), `protect: [original_*]` and no audit
log; `systemd-tmpfiles --clean` has `e ROOT - - - m:24h` (age by mtime only) and one
`x ROOT/*/.../original_*` line per depth. Expired files are 2-3 days old, fresh ones 1-3
hours, so the rounding rules of the three tools cannot change the set.

tmpfiles is not a drop-in equivalent: an `e` line ages out *every* file below the directory
that no `x` line excludes (it has no "only files named P"), a `x` glob matches whole paths
(one line per depth is needed for a base name), and it always recurses. It removes the
same set here only because the tree holds nothing but the three patterns and the originals.

What limpeza pays for, per file: `find` stats only the entries whose name matches and calls
`unlinkat`; limpeza stats every entry (the per-directory files/bytes the exporter
publishes), and for each expired file opens it without following links, `fstat`s it to
prove it is the file it examined, asks its mount id (`statx`: a file bind-mounted onto the
name is a mount point), takes a non-blocking `flock` (a pinned file is left alone),
re-stats the name right before `unlink` and closes it. The `contract` contender makes
exactly these calls in C: the CPU / contract column is what the interpreter costs on top
of the safety contract itself. The goal was 1.3x; the profile below says where the rest
goes.
"""
