"""A real Alertmanager, and a webhook server that records its notifications.

``start_alertmanager`` starts Debian's ``prometheus-alertmanager`` on a free 127.0.0.1 port
with its own temporary storage, single-node (``--cluster.listen-address=`` empty: without
it the server gossips on 0.0.0.0:9094 and waits for peers); the caller stops it::

    with serve_webhook() as hook:              # http://127.0.0.1:PORT/<receiver>
        am = start_alertmanager(routing_for(hook, group_wait="1s"))
        am.post_alerts([{"labels": {"alertname": "X", "severity": "critical"}}])
        hook.wait_for(lambda n: n.receiver == "pager")

``routing_for`` loads ``alerts/alertmanager.example.yml`` and points each receiver's
webhook at the webhook server (``/<receiver name>``), with timings short enough for a test.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import requests
import yaml

from devtools.process import MissingRequirementError, ServerProcess, free_port

ALERTMANAGER_BIN = "prometheus-alertmanager"
REPO = Path(__file__).resolve().parents[1]
EXAMPLE_ROUTING = REPO / "alerts" / "alertmanager.example.yml"


class AlertmanagerError(AssertionError):
    """Alertmanager failed or a notification never came; carries the server's log tail."""


# --------------------------------------------------------------------------- the webhook


@dataclass(frozen=True)
class Notification:
    """One webhook POST from Alertmanager: the receiver (from the path) and its payload."""

    path: str
    payload: dict[str, Any]

    @property
    def receiver(self) -> str:
        return str(self.payload.get("receiver", ""))

    @property
    def status(self) -> str:
        """``firing`` or ``resolved`` (of the whole group)."""
        return str(self.payload.get("status", ""))

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return list(self.payload.get("alerts", []))

    def alertnames(self) -> set[str]:
        return {str(a.get("labels", {}).get("alertname")) for a in self.alerts}


@dataclass
class WebhookServer:
    """Records every POST it gets; ``url(name)`` is where a receiver ``name`` should post."""

    port: int
    #: The address it listens on: 127.0.0.1, or one an Alertmanager in a container reaches.
    host: str = "127.0.0.1"
    notifications: list[Notification] = field(default_factory=list)
    _lock: threading.Condition = field(default_factory=threading.Condition)

    def url(self, receiver: str) -> str:
        return f"http://{self.host}:{self.port}/{receiver}"

    def record(self, notification: Notification) -> None:
        with self._lock:
            self.notifications.append(notification)
            self._lock.notify_all()

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.notifications)

    def wait_for(
        self,
        predicate: Callable[[Notification], bool],
        timeout: float = 60.0,
        what: str = "a matching notification",
    ) -> Notification:
        """The first notification (already received or arriving) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for notification in self.notifications:
                    if predicate(notification):
                        return notification
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = [(n.path, n.status, sorted(n.alertnames())) for n in self.notifications]
                    raise AlertmanagerError(f"no {what} within {timeout:.0f}s; got {got}")
                self._lock.wait(remaining)


def _handler_for(server: WebhookServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            try:
                payload = json.loads(body)
            except json.JSONDecodeError:
                self.send_response(400)
                self.end_headers()
                return
            server.record(Notification(self.path, payload if isinstance(payload, dict) else {}))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextlib.contextmanager
def serve_webhook(host: str = "127.0.0.1") -> Iterator[WebhookServer]:
    """An HTTP server on a free port of ``host`` recording webhook POSTs; always shut down."""
    port = free_port(host)
    server = WebhookServer(port, host)
    httpd = ThreadingHTTPServer((host, port), _handler_for(server))
    thread = threading.Thread(target=httpd.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------- the routing


def routing_for(
    hook: WebhookServer,
    *,
    source: Path = EXAMPLE_ROUTING,
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str = "1h",
) -> dict[str, Any]:
    """The example routing with every webhook sent to ``hook`` and test-sized timings.

    Routes, matchers, grouping and inhibitions stay exactly as in ``source``.
    """
    config: dict[str, Any] = copy.deepcopy(yaml.safe_load(source.read_text(encoding="utf-8")))
    for receiver in config.get("receivers", []):
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = hook.url(receiver["name"])

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (
            ("group_wait", group_wait),
            ("group_interval", group_interval),
            ("repeat_interval", repeat_interval),
        ):
            if key in route or route is config["route"]:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    return config


# --------------------------------------------------------------------------- the server


@dataclass
class AlertmanagerServer(ServerProcess):
    """One running Alertmanager; ``url()`` is its base address (``http://127.0.0.1:PORT``)."""

    NAME: ClassVar[str] = "alertmanager"
    ERROR: ClassVar[type[AssertionError]] = AlertmanagerError

    @property
    def config_path(self) -> Path:
        return self.base / "alertmanager.yml"

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """POST /api/v2/alerts, as Prometheus does."""
        response = requests.post(self.url("/api/v2/alerts"), json=list(alerts), timeout=10)
        if response.status_code != 200:
            raise AlertmanagerError(
                f"posting alerts: {response.status_code} {response.text}\n{self.log_tail()}"
            )

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """GET /api/v2/alerts (every alert, inhibited and silenced ones included)."""
        params = {"inhibited": "true", "silenced": "true", "active": "true", **filters}
        response = requests.get(self.url("/api/v2/alerts"), params=params, timeout=10)
        response.raise_for_status()
        return list(response.json())

    def wait_for_alerts(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Polls the alert list until ``predicate`` holds."""
        return self.poll_until(
            self.alerts,
            predicate,
            lambda alerts: f"alerts still {json.dumps(alerts, indent=1)}",
            timeout,
        )


def start_alertmanager(config: Mapping[str, Any] | Path) -> AlertmanagerServer:
    """Starts one server and waits until it is ready (the caller stops it, removes ``base``)."""
    binary = shutil.which(ALERTMANAGER_BIN)
    if binary is None:
        raise MissingRequirementError(
            "no prometheus-alertmanager binary; `make test` installs Debian's "
            "prometheus-alertmanager package"
        )
    base = Path(tempfile.mkdtemp(prefix="limpeza-alertmanager-"))
    config_path = base / "alertmanager.yml"
    if isinstance(config, Path):
        shutil.copyfile(config, config_path)
    else:
        config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    port = free_port()
    return AlertmanagerServer.launch(
        base,
        port,
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ],
    )
