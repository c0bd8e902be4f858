"""What the controller puts in its cache directory for limpeza, and nothing anywhere else.

usage: wheelhouse.py wheel SOURCE_DIR WHEELS_DIR
       wheelhouse.py dependencies LOCK_FILE DEST_DIR PYTHON_VERSION ARCH GLIBC_VERSION
       wheelhouse.py prune CACHE_DIR KEEP LOCK_DIGEST [VERSION...]

``wheel`` builds the limpeza wheel (pure Python) from a copy of SOURCE_DIR: setuptools
writes build/ and *.egg-info into the tree it builds, and never prunes build/lib. The sources
are only read. The wheel replaces the one of the same name in WHEELS_DIR; the wheels of other
versions stay there, for a rollback. Its name is printed.

``dependencies`` downloads the binary wheels of the pinned dependencies (LOCK_FILE, a
requirements file of name==version lines, each with the sha256 hashes of its wheels) for one
target: CPython PYTHON_VERSION on ARCH with the GNU C library GLIBC_VERSION, whatever Python
and platform the controller runs. pip checks every wheel against the lock's hashes
(``--require-hashes``: a pin without one is refused too). They are collected in a fresh
directory renamed to DEST_DIR once complete, with the lock file beside them. pip's own cache
is $PIP_CACHE_DIR (the role sets it inside the cache directory).

``prune`` keeps CACHE_DIR from growing with every release: of the limpeza wheels in
CACHE_DIR/wheels, the KEEP built last (by modification time) stay, and those of the
VERSIONs (the one deployed, the ones the targets ran before it: a rollback's); of the
dependency sets in CACHE_DIR/dependencies (one directory per lock file), the KEEP fetched
last stay, and LOCK_DIGEST's (the lock deployed). The rest is removed, and named.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: What the wheel is made of (pyproject.toml names README.md as its readme).
SOURCES = ("pyproject.toml", "README.md", "cleaner", "exporter")
PIP = (sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check")


def build_wheel(source: Path, wheels: Path) -> str:
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=wheels.parent) as tmp:
        staged, built = Path(tmp) / "src", Path(tmp) / "out"
        staged.mkdir()
        for name in SOURCES:
            if (source / name).is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(source / name, staged / name, ignore=ignore)
            else:
                shutil.copy2(source / name, staged / name)
        subprocess.run([*PIP, "wheel", "--no-deps", "--wheel-dir", str(built), str(staged)], check=True)
        (wheel,) = built.glob("limpeza-*.whl")
        wheel.replace(wheels / wheel.name)
    return wheel.name


def platforms(arch: str, glibc: str) -> list[str]:
    """Every manylinux tag a system with that C library runs (pip does not infer them)."""
    major, minor = (int(part) for part in glibc.split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    return [*tags, f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}", f"linux_{arch}"]


def download(
    requirements: Path, out: Path, python: str, arch: str, glibc: str, require_hashes: bool
) -> None:
    """The wheels of ``requirements`` (pins, no dependencies) for one target, into ``out``.

    The deploy requires the lock's hashes; ``make lock`` calls it without, to learn them.
    """
    abi = "cp" + python.replace(".", "")
    command = [*PIP, "download", "--only-binary=:all:", "--no-deps", "--implementation", "cp"]
    command += ["--python-version", python, "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for platform in platforms(arch, glibc):
        command += ["--platform", platform]
    if require_hashes:
        command.append("--require-hashes")
    subprocess.run([*command, "--dest", str(out), "--requirement", str(requirements)], check=True)


def fetch_dependencies(lock: Path, dest: Path, python: str, arch: str, glibc: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        out = Path(tmp) / "out"
        download(lock, out, python, arch, glibc, require_hashes=True)
        shutil.copy2(lock, out / "requirements.lock")
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)


def prune(cache: Path, keep: int, lock_digest: str, versions: set[str]) -> list[Path]:
    """Removes what the cache holds beyond the last ``keep`` versions; returns it."""

    def newest_first(paths: list[Path]) -> list[Path]:
        return sorted(paths, key=lambda path: (path.stat().st_mtime_ns, path.name), reverse=True)

    removed = []
    wheels = newest_first(list((cache / "wheels").glob("limpeza-*-py3-none-any.whl")))
    for wheel in wheels[keep:]:
        if wheel.name.split("-")[1] not in versions:
            wheel.unlink()
            removed.append(wheel)
    root = cache / "dependencies"
    sets = newest_first([p for p in root.iterdir() if p.is_dir()] if root.is_dir() else [])
    for directory in sets[keep:]:
        if directory.name != lock_digest and not directory.name.startswith("."):
            shutil.rmtree(directory)
            removed.append(directory)
    return removed


def main(argv: list[str]) -> int:
    if argv[1:2] == ["wheel"] and len(argv) == 4:
        print(build_wheel(Path(argv[2]), Path(argv[3])))
        return 0
    if argv[1:2] == ["dependencies"] and len(argv) == 7:
        fetch_dependencies(Path(argv[2]), Path(argv[3]), argv[4], argv[5], argv[6])
        return 0
    if argv[1:2] == ["prune"] and len(argv) >= 5 and argv[3].isdigit() and int(argv[3]) >= 1:
        for path in prune(Path(argv[2]), int(argv[3]), argv[4], set(argv[5:])):
            print(f"removed {path}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
