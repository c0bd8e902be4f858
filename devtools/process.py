"""What every program these tools start needs: a free loopback port, a log, a clean stop.

``frozen(pid)`` stops a program and its descendants (SIGSTOP) for a while, the way a hung
server or a dead network path looks to its clients, and always lets them go on after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import requests

T = TypeVar("T")


class MissingRequirementError(RuntimeError):
    """Something a launcher needs is not on this machine (a program, a user)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` (127.0.0.1) that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def terminate(process: subprocess.Popen[Any], timeout: float = 20) -> bool:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout``.

    Returns False when it had to be killed (it ignored SIGTERM).
    """
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        return False
    return True


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP on ``pid`` first (a stopped PostgreSQL postmaster forks no new backend), then
    on all its descendants (the backends); SIGCONT on every one of them afterwards,
    whatever happens.

    A stopped process's kernel still completes TCP handshakes and acknowledges data, so
    its clients see a server that accepts and never answers.
    """
    stopped: list[int] = []
    try:
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
        pending = _children(pid)
        while pending:
            child = pending.pop()
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
                stopped.append(child)
                pending += _children(child)
        yield
    finally:
        for stopped_pid in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped_pid, signal.SIGCONT)


def minimal_env(home: Path) -> dict[str, str]:
    """The environment a started server gets by default: ``PATH`` and ``HOME`` only."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}


@dataclass
class ServerProcess:
    """A program started on 127.0.0.1: its directory, process, log and port (if it listens).

    Subclasses name the program (``NAME``, also the default log ``NAME``.log in ``base``)
    and the error they raise when it exits or never gets ready.
    """

    base: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None

    NAME: ClassVar[str] = "server"
    ERROR: ClassVar[type[AssertionError]] = AssertionError

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        base: Path,
        port: int | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> Self:
        """Starts ``argv`` (in ``cwd``, default ``base``), stdout and stderr to the log.

        Returns at once; the caller waits for it and stops it.
        """
        log_path = log_path or base / f"{cls.NAME}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd or base,
                env=dict(env) if env is not None else minimal_env(base),
            )
        return cls(base, process, log_path, port, **fields)

    @classmethod
    def launch(cls, base: Path, port: int, argv: Sequence[str], **fields: Any) -> Self:
        """Starts ``argv`` in ``base`` (``PATH`` and ``HOME`` only), waits until it is ready.

        If it never gets ready it is stopped and ``base`` removed before the error goes on.
        """
        server = cls.spawn(argv, base=base, port=port, **fields)
        server.ready_or_discard(server.wait_ready)
        return server

    def ready_or_discard(self, wait: Callable[[], None]) -> None:
        """Runs ``wait``; if it fails, stops the server and removes ``base``, then re-raises."""
        try:
            wait()
        except BaseException:
            self.stop()
            shutil.rmtree(self.base, ignore_errors=True)
            raise

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as a scrape or alerting target."""
        if self.port is None:
            raise ValueError(f"{self.NAME} listens on no port")
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "") -> str:
        """``http://127.0.0.1:PORT`` followed by ``path``."""
        return f"http://{self.address}{path}"

    def log(self) -> str:
        """The whole log so far."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, size: int = 4000) -> str:
        return self.log()[-size:]

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise self.ERROR(
                f"{self.NAME} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def wait_until(
        self, ready: Callable[[], bool], what: str, timeout: float = 60.0, step: float = 0.2
    ) -> None:
        """Polls ``ready`` until it holds; raises ``ERROR`` (``what`` after ``timeout``) or as
        soon as the program exits."""
        self.poll_until(ready, bool, lambda _: what, timeout, step)

    def poll_until(
        self,
        fetch: Callable[[], T],
        predicate: Callable[[T], bool],
        describe: Callable[[T], str],
        timeout: float = 60.0,
        step: float = 0.2,
    ) -> T:
        """Calls ``fetch`` until ``predicate`` holds for what it returned, and returns that.

        Raises ``ERROR`` as soon as the program exits, or after ``timeout`` with
        ``describe(last value)`` and the log's tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            value = fetch()
            if predicate(value):
                return value
            if time.monotonic() > deadline:
                raise self.ERROR(f"{describe(value)} after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(step)

    def answers(self, path: str, timeout: float = 2.0) -> bool:
        """Whether a GET of ``path`` says 200 right now."""
        with contextlib.suppress(requests.RequestException):
            return requests.get(self.url(path), timeout=timeout).status_code == 200
        return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Polls ``/-/ready`` (Prometheus and Alertmanager both have it) until it says 200."""
        self.wait_until(lambda: self.answers("/-/ready"), f"{self.NAME} not ready", timeout)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit within 20 s; the exit code."""
        terminate(self.process)
        return int(self.process.returncode)
