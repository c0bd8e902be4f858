"""Real Debian 12 and 13 hosts: debootstrap once per release, then systemd-nspawn per target.

A root file system per Debian release (``SUITES``: bookworm, trixie) is built with
``debootstrap`` from the mirror this machine's apt uses (else deb.debian.org) and cached as a
tarball in ``$LIMPEZADEV_IMAGE_CACHE`` (default /var/cache/limpeza-tests), keyed by the suite
and the package list, so only the first run pays for each build. Each target is a fresh
copy of its release's tarball, booted with systemd as PID 1 by ``systemd-nspawn --boot``
inside a cgroup of its own, in the host's network namespace: its sshd listens on a free
port of 127.0.0.1 and accepts a given key. A target may instead get a network of its own
(``NetworkNamespace``: a namespace and a veth pair on a free /30): its sshd then listens on
its address there, and the 127.0.0.1 of the others is out of its reach. ``shutdown()``
powers it off (killed if it does not stop) and removes its cgroups, network, files and ssh
connections.

It needs root, debootstrap and systemd-nspawn; ``host_problem()`` says what is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.process import free_port

#: The Debian releases a target can run: 12 and 13. The first is the default.
SUITES = ("bookworm", "trixie")
SUITE = SUITES[0]
DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: What a target needs: systemd as init, sshd for Ansible, Python with venv for the
#: bundle, iproute2/procps for the checks, Prometheus (promtool) for the alerts role and
#: Alertmanager for the Prometheus host (the targets have no package index).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-venv",
    "sudo",
    "iproute2",
    "procps",
    "prometheus",
    "prometheus-alertmanager",
)
CACHE_ENV = "LIMPEZADEV_IMAGE_CACHE"
DEFAULT_CACHE = Path("/var/cache/limpeza-tests")
CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))
BOOT_TIMEOUT = 120.0
#: For debootstrap and for packing or unpacking the root file system.
BUILD_TIMEOUT = 1800.0
SSH_OPTIONS = (
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=10",
)


# --------------------------------------------------------------------------- the image


def apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for the main archive, else deb.debian.org."""
    uris: list[str] = []
    sources = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (m.group(1).lower(), m.group(2).strip())
                    for m in re.finditer(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M)
                )
                if (
                    "deb" in fields.get("types", "").split()
                    and SUITE in fields.get("suites", "").split()
                ):
                    uris.extend(fields.get("uris", "").split())
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    uris.append(words[1])
    for uri in uris:
        if uri.startswith(("http://", "https://")) and not uri.rstrip("/").endswith("-security"):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def image_key(suite: str = SUITE) -> str:
    return hashlib.sha256(f"{suite}\n{','.join(sorted(PACKAGES))}\n".encode()).hexdigest()[:16]


def image_tarball(cache: Path | None = None, suite: str = SUITE) -> Path:
    """The cached root tarball of ``suite``, built first if missing (one builder at a time)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}, not one of {SUITES}")
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"debian-{suite}-{image_key(suite)}.tar"
    # One builder at a time per image: building one release does not hold up the other.
    with (cache / f".lock-{tarball.stem}").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            _build_image(cache, tarball, suite)
    return tarball


def _build_image(cache: Path, tarball: Path, suite: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    root = work / "root"
    try:
        mirror = apt_mirror()
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                suite,
                str(root),
                mirror,
            ],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            log = root / "debootstrap" / "debootstrap.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(
                f"debootstrap from {mirror} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{tail}"
            )
        # A fresh identity per boot: systemd writes a machine id, sshd keys are made per
        # target, and the build host's name and resolver do not leak into the image.
        (root / "etc" / "machine-id").write_text("", encoding="utf-8")
        for key in (root / "etc" / "ssh").glob("ssh_host_*"):
            key.unlink()
        (root / "etc" / "hostname").write_text("localhost\n", encoding="utf-8")
        with contextlib.suppress(FileNotFoundError):
            (root / "etc" / "resolv.conf").unlink()
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."],
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT,
        )
        partial.rename(tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- the targets


def host_problem() -> str | None:
    """Why this machine cannot run the host tier, or None when it can."""
    if os.geteuid() != 0:
        return "must run as root (systemd-nspawn and debootstrap need it)"
    missing = [
        tool
        for tool in ("debootstrap", "systemd-nspawn", "ssh", "ssh-keygen", "tar")
        if shutil.which(tool) is None
    ]
    if missing:
        return f"missing {', '.join(missing)} (`make packages` installs them)"
    if (
        not any((root / "cgroup.procs").exists() for root in CGROUP_ROOTS[:1])
        and not Path("/sys/fs/cgroup/cgroup.procs").exists()
    ):
        return "no cgroup v2 hierarchy mounted"
    return None


#: Where private networks are taken from: a /30 of this range that no address or route of
#: the machine overlaps.
PRIVATE_RANGE = ipaddress.IPv4Network("10.213.0.0/16")


def _run_ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result.stdout


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the machine has an address in or a route to."""
    used: list[ipaddress.IPv4Network] = []
    for word in (_run_ip("-4", "-o", "addr", "show") + _run_ip("-4", "route", "show")).split():
        with contextlib.suppress(ValueError):
            network = ipaddress.ip_network(word, strict=False)
            if isinstance(network, ipaddress.IPv4Network) and network.prefixlen > 0:
                used.append(network)
    return used


@dataclass
class NetworkNamespace:
    """A network namespace joined to the machine by a veth pair on a /30 of its own.

    The machine's end has ``host_address``, the namespace's end ``address``; the namespace's
    loopback is its own. Names carry the process id and a random tag, so concurrent runs do
    not collide; ``remove()`` deletes the namespace and with it both ends of the pair.
    """

    name: str
    host_link: str
    link: str
    network: ipaddress.IPv4Network

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    @property
    def host_address(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def address(self) -> str:
        return str(self.network.network_address + 2)

    @classmethod
    def create(cls) -> NetworkNamespace:
        tag = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)[:3]}"
        used = _networks_in_use()
        subnets: list[ipaddress.IPv4Network] = list(PRIVATE_RANGE.subnets(new_prefix=30))
        for network in secrets.SystemRandom().sample(subnets, 64):
            if not any(network.overlaps(other) for other in used):
                break
        else:
            raise RuntimeError(f"no free /30 in {PRIVATE_RANGE}")
        namespace = cls(f"limpeza-{tag}", f"lzh{tag}", f"lzn{tag}", network)
        _run_ip("netns", "add", namespace.name)
        try:
            prefix = f"/{network.prefixlen}"
            _run_ip("link", "add", namespace.host_link, "type", "veth", "peer", "name",
                    namespace.link, "netns", namespace.name)  # fmt: skip
            _run_ip("addr", "add", namespace.host_address + prefix, "dev", namespace.host_link)
            _run_ip("link", "set", namespace.host_link, "up")
            inside = ("-n", namespace.name)
            _run_ip(*inside, "addr", "add", namespace.address + prefix, "dev", namespace.link)
            _run_ip(*inside, "link", "set", namespace.link, "up")
            _run_ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            namespace.remove()
            raise
        return namespace

    def remove(self) -> None:
        """Deletes the namespace and both ends of the pair (idempotent)."""
        with contextlib.suppress(RuntimeError):
            _run_ip("link", "del", self.host_link)
        with contextlib.suppress(RuntimeError):
            _run_ip("netns", "del", self.name)


@dataclass
class Target:
    """One booted Debian host reachable as root over ssh on its ``address``.

    ``address`` is 127.0.0.1, in the machine's network namespace, unless the target has a
    ``network`` of its own: then its address there.
    """

    name: str
    base: Path
    ssh_port: int
    key: Path
    suite: str = SUITE
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    cgroups: list[Path] = field(default_factory=list)
    network: NetworkNamespace | None = None

    @property
    def address(self) -> str:
        return self.network.address if self.network is not None else "127.0.0.1"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def console_log(self) -> Path:
        return self.base / "console.log"

    @property
    def control_path(self) -> Path:
        return self.base / "ssh-control"

    def ssh_args(self) -> list[str]:
        return [
            "ssh",
            *SSH_OPTIONS,
            "-i",
            str(self.key),
            "-p",
            str(self.ssh_port),
            f"root@{self.address}",
        ]

    def ssh(
        self, command: str, *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Runs a shell command on the target as root."""
        result = subprocess.run(
            [*self.ssh_args(), command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.name}: `{command}` exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def testinfra(self) -> Any:
        """A testinfra host over ssh (one multiplexed connection, closed at tear-down)."""
        import testinfra

        extra = " ".join(
            [
                *SSH_OPTIONS,
                "-o",
                "ControlMaster=auto",
                "-o",
                "ControlPersist=120s",
                "-o",
                f"ControlPath={self.control_path}",
            ]
        )
        return testinfra.get_host(
            f"ssh://root@{self.address}:{self.ssh_port}",
            ssh_identity_file=str(self.key),
            ssh_extra_args=extra,
            controlpersist=0,
        )

    def journal(self, unit: str, lines: int = 60) -> str:
        result = self.ssh(f"journalctl -u {unit} -n {lines} --no-pager", check=False)
        return result.stdout + result.stderr

    # ---------------------------------------------------------------- life cycle

    def unpack(self, tarball: Path) -> None:
        self.root.mkdir(mode=0o755)
        subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(self.root), "-xf", str(tarball)],
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT,
        )
        etc = self.root / "etc"
        (etc / "hostname").write_text(f"{self.name}\n", encoding="utf-8")
        hosts = etc / "hosts"
        hosts.write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.name}\n", encoding="utf-8")
        ssh_dir = self.root / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(
            Path(f"{self.key}.pub").read_text(encoding="utf-8"), encoding="utf-8"
        )
        (ssh_dir / "authorized_keys").chmod(0o600)
        (etc / "ssh" / "sshd_config.d" / "limpeza-test.conf").write_text(
            f"Port {self.ssh_port}\nListenAddress {self.address}\nPasswordAuthentication no\n"
            "PermitRootLogin prohibit-password\nUseDNS no\n",
            encoding="utf-8",
        )
        subprocess.run(
            ["ssh-keygen", "-q", "-A", "-f", str(self.root)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def boot(self) -> None:
        """Starts systemd-nspawn in a cgroup of its own; returns at once."""
        cgroup_name = f"limpeza-test-{self.name}-{os.getpid()}"
        for hierarchy in CGROUP_ROOTS:
            if (hierarchy / "cgroup.procs").exists():
                path = hierarchy / cgroup_name
                path.mkdir()
                self.cgroups.append(path)
        cgroups = list(self.cgroups)

        def enter_cgroup() -> None:
            for path in cgroups:
                (path / "cgroup.procs").write_text(str(os.getpid()), encoding="ascii")

        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
        }
        with self.console_log.open("wb") as console:
            self.process = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--quiet",
                    "--console=read-only",
                    "--link-journal=no",
                    f"--machine={self.name}",
                    f"--directory={self.root}",
                    *(
                        [f"--network-namespace-path={self.network.path}"]
                        if self.network is not None
                        else []
                    ),
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=enter_cgroup,  # before exec: only writes cgroup.procs
            )

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Waits until sshd answers and systemd reports running (or degraded)."""
        deadline = time.monotonic() + timeout
        state = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: systemd-nspawn exited {self.process.returncode}:\n"
                    + self.console_log.read_text(errors="replace")[-3000:]
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                result = self.ssh("systemctl is-system-running", check=False, timeout=15)
                state = result.stdout.strip() or result.stderr.strip()
                if state in ("running", "degraded"):
                    return state
            time.sleep(0.3)
        raise RuntimeError(
            f"{self.name}: not ready after {timeout:.0f}s (last: {state}):\n"
            + self.console_log.read_text(errors="replace")[-3000:]
        )

    def shutdown(self, timeout: float = 30) -> None:
        """Powers the target off (SIGKILL to the whole cgroup if it hangs), then cleans up."""
        with contextlib.suppress(Exception):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={self.control_path}", "-O", "exit", "x"],
                capture_output=True,
                timeout=10,
                check=False,
            )
        if self.process is not None and self.process.poll() is None:
            # systemd-nspawn --boot turns SIGTERM into an orderly poweroff of the container.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_cgroups()
                self.process.kill()
                self.process.wait(10)
        self._kill_cgroups()
        self._remove_cgroups()
        if self.network is not None:
            self.network.remove()
        shutil.rmtree(self.base, ignore_errors=True)

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for top in self.cgroups:
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
        return pids

    def _kill_cgroups(self) -> None:
        for _ in range(50):
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _remove_cgroups(self) -> None:
        for top in self.cgroups:
            if not top.exists():
                continue
            for path in sorted(
                (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def boot_targets(
    names: list[str],
    key: Path,
    workdir: Path,
    prepare: Callable[[Target], None] | None = None,
    suites: dict[str, str] | None = None,
    private_network: frozenset[str] = frozenset(),
) -> list[Target]:
    """Unpacks and boots one target per name (in parallel) and waits until all are up.

    ``suites`` gives a target's Debian release (default ``SUITE``); each release's image is
    built once and cached. The targets named in ``private_network`` get a network namespace
    of their own (``NetworkNamespace``). ``prepare`` may change a target's files before it
    boots. On failure every target already started is shut down, its network removed.
    """
    suites = suites or {}
    wanted = sorted({suites.get(name, SUITE) for name in names})
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        tarballs = dict(
            zip(wanted, pool.map(lambda s: image_tarball(suite=s), wanted), strict=True)
        )
    targets: list[Target] = []
    try:
        for name in names:
            base = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
            base.chmod(0o755)
            suite = suites.get(name, SUITE)
            target = Target(name=name, base=base, ssh_port=free_port(), key=key, suite=suite)
            targets.append(target)
            if name in private_network:
                target.network = NetworkNamespace.create()
        # Unpacking is mostly waiting on the disk: all at once, then every target boots.
        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            list(pool.map(lambda t: t.unpack(tarballs[t.suite]), targets))
        for target in targets:
            if prepare is not None:
                prepare(target)
            target.boot()
        for target in targets:
            target.wait_ready()
    except BaseException:
        for target in targets:
            target.shutdown()
        raise
    return targets
