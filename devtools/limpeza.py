"""The real limpeza programs as processes: the cleaner daemon and the exporter.

``LimpezaProcesses`` writes a configuration, starts ``limpeza-cleaner run`` and
``limpeza-exporter`` exactly as systemd would (``python -m cleaner`` / ``python -m exporter``
of this checkout, the DSN in ``$LIMPEZA_DATABASE_URL``), runs one-off commands such as
``force-clean --yes``, and stops every process it started (``stop_all``)::

    procs = LimpezaProcesses(base)
    config = procs.write_config(jobs_db, interval="1s")
    procs.start_cleaner(config)
    exporter = procs.start_exporter(config)     # waits until /metrics answers
    prom = start_prometheus([exporter.address])

``start_exporter(config, base=...)`` runs the installed ``limpeza-exporter`` on its own, with
only the environment it is given, and waits until it listens (for TLS and auth set-ups).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import requests
import yaml

from devtools.postgres import JobsDatabase
from devtools.process import ServerProcess, free_port, terminate

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


class LimpezaProcessError(AssertionError):
    """A limpeza program exited or never answered; carries its log tail."""


@dataclass
class LimpezaProcess(ServerProcess):
    """One running limpeza program and its combined stdout/stderr log."""

    NAME: ClassVar[str] = "limpeza"
    ERROR: ClassVar[type[AssertionError]] = LimpezaProcessError


@dataclass
class CleanerProcess(LimpezaProcess):
    """``limpeza-cleaner run``: the daemon."""

    NAME: ClassVar[str] = "cleaner"

    def wait_state(self, state_file: Path, timeout: float = START_TIMEOUT) -> None:
        """Waits until the daemon has written its state file (its first cycle is done)."""
        self.wait_until(state_file.exists, "the cleaner wrote no state file", timeout, 0.1)


@dataclass
class ExporterProcess(LimpezaProcess):
    """``limpeza-exporter`` on ``port``; ``get()`` fetches from it (TLS when ``https``)."""

    scheme: str = "http"
    verify: str | bool = True

    NAME: ClassVar[str] = "exporter"

    def url(self, path: str = "/metrics") -> str:
        return f"{self.scheme}://{self.address}{path}"

    def get(self, path: str = "/metrics", **kwargs: Any) -> requests.Response:
        timeout = kwargs.pop("timeout", 15)
        kwargs.setdefault("verify", self.verify)
        return requests.get(self.url(path), timeout=timeout, **kwargs)

    def listening(self) -> bool:
        """Whether its port accepts TCP connections right now."""
        if self.port is None:
            return False
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        self.wait_until(self.listening, "exporter not listening", timeout, 0.1)

    def wait_metrics(self, timeout: float = START_TIMEOUT) -> None:
        """Waits until a plain-HTTP GET of /metrics says 200."""
        self.wait_until(
            lambda: self.answers("/metrics", timeout=5), "the exporter did not answer", timeout, 0.1
        )

    def stop(self) -> int:
        """SIGTERM and the exit code; SIGKILL and ``LimpezaProcessError`` if it ignores it."""
        if not terminate(self.process):
            raise self.ERROR(f"exporter ignored SIGTERM:\n{self.log()}")
        return int(self.process.returncode)


def exporter_command() -> list[str]:
    """The installed ``limpeza-exporter`` next to this Python, else ``python -m exporter``."""
    script = Path(sys.executable).parent / "limpeza-exporter"
    return [str(script)] if script.exists() else [sys.executable, "-m", "exporter"]


def start_exporter(
    config: Path,
    *,
    base: Path,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    scheme: str = "http",
    verify: str | bool = True,
    wait: bool = True,
) -> ExporterProcess:
    """``limpeza-exporter --config CONFIG`` on a free 127.0.0.1 port, log in ``base``.

    Its environment is ``PATH`` and ``env``. With ``wait`` it returns once the port
    listens; the caller stops it.
    """
    port = free_port()
    exporter = ExporterProcess.spawn(
        [
            *exporter_command(),
            "--config",
            str(config),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            *args,
        ],
        base=base,
        port=port,
        log_path=base / f"exporter-{port}.log",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        scheme=scheme,
        verify=verify,
    )
    if wait:
        try:
            exporter.wait_listening()
        except BaseException:
            with contextlib.suppress(LimpezaProcessError):
                exporter.stop()
            raise
    return exporter


@dataclass
class LimpezaProcesses:
    """Starts and stops the cleaner and the exporter; everything lives under ``base``."""

    base: Path
    env: dict[str, str] = field(default_factory=dict)
    started: list[LimpezaProcess] = field(default_factory=list)

    def _env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base),
            "LC_ALL": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.env)
        return env

    def write_config(
        self,
        jobs_db: JobsDatabase | None = None,
        *,
        interval: str = "1s",
        directories: list[Path] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """A limpeza.yml for the cleaner and the exporter (the DSN goes to the environment).

        Automatic force-clean stays off (the default). ``extra`` is merged at the top.
        """
        if directories is None:
            directories = [self.base / "uploads"]
        for directory in directories:
            directory.mkdir(parents=True, exist_ok=True)
        jobs: dict[str, Any] = {"force_clean": {"auto": False}}
        raw: dict[str, Any] = {
            "interval": interval,
            "state_file": str(self.base / "state" / "state.json"),
            "audit_log": str(self.base / "audit.jsonl"),
            "log_level": "debug",
            "files": {"directories": [str(d) for d in directories]},
            "jobs": jobs,
        }
        if jobs_db is not None:
            jobs["database"] = {"table": jobs_db.table}
            self.env["LIMPEZA_DATABASE_URL"] = jobs_db.dsn
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        path = self.base / "limpeza.yml"
        path.write_text("---\n" + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        return path

    def start_cleaner(self, config: Path) -> CleanerProcess:
        """``limpeza-cleaner --config CONFIG run``; waits until it has written its state."""
        cleaner = CleanerProcess.spawn(
            [sys.executable, "-m", "cleaner", "--config", str(config), "run"],
            base=self.base,
            cwd=REPO,
            env=self._env(),
        )
        self.started.append(cleaner)
        state = yaml.safe_load(config.read_text(encoding="utf-8"))["state_file"]
        cleaner.wait_state(Path(state))
        return cleaner

    def start_exporter(self, config: Path) -> ExporterProcess:
        """``limpeza-exporter`` on a free 127.0.0.1 port; waits until /metrics answers."""
        port = free_port()
        exporter = ExporterProcess.spawn(
            [
                sys.executable,
                "-m",
                "exporter",
                "--config",
                str(config),
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            base=self.base,
            port=port,
            cwd=REPO,
            env=self._env(),
        )
        self.started.append(exporter)
        exporter.wait_metrics()
        return exporter

    def cleaner_command(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """One ``limpeza-cleaner --config CONFIG ARGS...`` run to completion (at most 120 s)."""
        return subprocess.run(
            [sys.executable, "-m", "cleaner", "--config", str(config), *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=self._env(),
            timeout=120,
            check=False,
        )

    def stop_all(self) -> None:
        """Stops every process started here, the last first (each is stopped even if one
        had to be killed)."""
        for started in reversed(self.started):
            with contextlib.suppress(LimpezaProcessError):
                started.stop()
