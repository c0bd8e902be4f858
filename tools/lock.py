"""`make lock`: requirements.lock, the pins with the sha256 of every wheel the deploy fetches.

usage: python -m tools.lock [--check]

The pins are the lock's own ``name==version`` lines: to move them, write the new set of
``name==version`` lines (in a fresh virtualenv, ``pip install .``, then ``pip freeze
--exclude limpeza --exclude pip --exclude setuptools --exclude wheel``) and run ``make lock``.
For every target the roles support (``TARGETS``), it downloads the pinned wheels from the
package index exactly as the deploy does (the roles' ``wheelhouse.py``, with pip's own hash
check off, since it learns them), and writes each pin with the sha256 of every wheel it got,
in pip's ``--require-hashes`` format: the deploy then refuses any other file. ``--check``
writes nothing and exits 1 when the lock is not what it would write.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
WHEELHOUSE = REPO / "roles" / "limpeza" / "files" / "wheelhouse.py"

#: (CPython, architecture, glibc) of every target the roles support: Debian 12 (bookworm)
#: and Debian 13 (trixie), on their two 64-bit architectures.
TARGETS = (
    ("3.11", "x86_64", "2.36"),
    ("3.11", "aarch64", "2.36"),
    ("3.13", "x86_64", "2.41"),
    ("3.13", "aarch64", "2.41"),
)

HEADER = """\
# The dependencies of limpeza, pinned: what the roles install on every target, each fetched
# as a binary wheel for the target's Python and architecture (pip download --only-binary)
# and checked against these sha256 hashes (--require-hashes), on the controller and again
# on the target. Every name of the dependency closure of pyproject.toml's dependencies,
# nothing else; a unit test holds it so. The hashes are written by `make lock` (tools/lock.py),
# from the wheels the package index serves for every supported target; `make lock` also
# says how to move the pins.
"""

_PIN = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)((?:\s+--hash=sha256:[0-9a-f]{64})*)\s*(\\?)$"
)
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> dict[str, tuple[str, str, list[str]]]:
    """canonical name -> (name as written, version, sha256 hashes), from a lock with or
    without hashes. A line that is neither a pin, a hash of the pin above, a comment nor
    blank is refused."""
    pins: dict[str, tuple[str, str, list[str]]] = {}
    current: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            current = None
            continue
        if match := _PIN.match(line):
            name, version, hashes, more = match.groups()
            key = canonical(name)
            if key in pins:
                raise ValueError(f"line {number}: {name} is pinned twice")
            pins[key] = (name, version, _HASH.findall(hashes))
            current = key if more else None
            continue
        hashes = _HASH.findall(stripped)
        if current is None or not hashes or _HASH.sub("", stripped).strip(" \\"):
            raise ValueError(f"line {number}: neither a name==version pin nor its --hash: {line!r}")
        pins[current][2].extend(hashes)
        if not stripped.endswith("\\"):
            current = None
    return pins


def render(pins: dict[str, tuple[str, str, list[str]]]) -> str:
    """The lock file: the header, then each pin (by name) with its hashes, sorted."""
    lines = [HEADER.rstrip("\n")]
    for key in sorted(pins):
        name, version, hashes = pins[key]
        unique = sorted(set(hashes))
        if not unique:
            raise ValueError(f"{name}=={version} has no hash")
        lines.append(f"{name}=={version} \\")
        lines.extend(
            f"    --hash=sha256:{digest}" + (" \\" if i < len(unique) - 1 else "")
            for i, digest in enumerate(unique)
        )
    return "\n".join(lines) + "\n"


def wheel_pin(filename: str) -> tuple[str, str]:
    """(canonical name, version) of a wheel file name (``name-version-...-tag.whl``)."""
    name, version = filename.split("-")[:2]
    return canonical(name), version


def _wheelhouse() -> ModuleType:
    spec = importlib.util.spec_from_file_location("limpeza_wheelhouse", WHEELHOUSE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hashed(pins: dict[str, tuple[str, str, list[str]]]) -> dict[str, tuple[str, str, list[str]]]:
    """The pins with the sha256 of every wheel of each, for every target, from the index."""
    wheelhouse = _wheelhouse()
    found: dict[str, set[str]] = {key: set() for key in pins}
    with tempfile.TemporaryDirectory(prefix="limpeza-lock-") as tmp:
        requirements = Path(tmp) / "pins.txt"
        requirements.write_text(
            "".join(f"{name}=={version}\n" for name, version, _ in pins.values()), encoding="utf-8"
        )
        for index, (python, arch, glibc) in enumerate(TARGETS):
            out = Path(tmp) / str(index)
            wheelhouse.download(requirements, out, python, arch, glibc, require_hashes=False)
            for wheel in sorted(out.glob("*.whl")):
                key, version = wheel_pin(wheel.name)
                if key not in pins or pins[key][1] != version:
                    raise ValueError(f"{wheel.name} was fetched but is not pinned")
                found[key].add(hashlib.sha256(wheel.read_bytes()).hexdigest())
    missing = sorted(pins[key][0] for key, digests in found.items() if not digests)
    if missing:
        raise ValueError(f"no wheel fetched for {', '.join(missing)}")
    return {key: (name, version, sorted(found[key])) for key, (name, version, _) in pins.items()}


def main(argv: list[str]) -> int:
    if argv[1:] not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 2
    current = LOCK.read_text(encoding="utf-8")
    wanted = render(hashed(parse(current)))
    if argv[1:] == ["--check"]:
        if wanted != current:
            print(f"{LOCK.name} is not what `make lock` writes: run it", file=sys.stderr)
            return 1
        print(f"{LOCK.name}: every pin has the hashes of its wheels for {len(TARGETS)} targets")
        return 0
    LOCK.write_text(wanted, encoding="utf-8")
    print(f"{LOCK.name}: {len(parse(wanted))} pins hashed for {len(TARGETS)} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
