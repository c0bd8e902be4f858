"""A real Prometheus server, started from the installed ``prometheus`` binary.

``start_prometheus`` starts one on a free 127.0.0.1 port with its own temporary storage
(the caller stops it and removes ``base``)::

    prom = start_prometheus(targets=["127.0.0.1:9817"], rule_files=[rules_path])
    prom.query("limpeza_jobs_active")          # -> [{"metric": {...}, "value": [ts, "3"]}]
    prom.wait_for("limpeza_jobs_active == 3")  # polls until the query returns something

A target is ``"host:port"`` (plain HTTP, job ``limpeza``) or a whole ``scrape_configs`` entry
as a mapping (for TLS, basic auth, another job name). Once ``/-/ready`` answers, the server
waits until every target reports ``up == 1``: Prometheus applies new targets a few seconds
after it is ready, so without that wait the first queries would find nothing.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import requests
import yaml

from devtools.process import MissingRequirementError, ServerProcess, free_port

PROMETHEUS_BIN = "prometheus"
UP_TIMEOUT = 60.0

Target = str | Mapping[str, Any]


class PrometheusError(AssertionError):
    """A query failed or a condition never came true; carries the server's log tail."""


@dataclass
class PrometheusServer(ServerProcess):
    """One running Prometheus; ``url()`` is its base address (``http://127.0.0.1:PORT``)."""

    scrape_interval: float = 1.0
    jobs: tuple[str, ...] = ()

    NAME: ClassVar[str] = "prometheus"
    ERROR: ClassVar[type[AssertionError]] = PrometheusError

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer."""
        response = requests.get(self.url(f"/api/v1/{path}"), params=params, timeout=10)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {response.status_code} {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the list of results (``metric`` labels and ``value``)."""
        data = self.api("query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def values(self, expr: str, label: str | None = None) -> dict[str, float]:
        """Results as {value of ``label`` (or the series text): number}."""
        out: dict[str, float] = {}
        for result in self.query(expr):
            metric = result["metric"]
            key = metric.get(label, "") if label else str(sorted(metric.items()))
            out[key] = float(result["value"][1])
        return out

    def value(self, expr: str) -> float | None:
        """The single number an expression gives, None when it gives nothing."""
        results = self.query(expr)
        if not results:
            return None
        if len(results) > 1:
            raise PrometheusError(f"{expr} gave {len(results)} series: {results}")
        return float(results[0]["value"][1])

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 60.0,
    ) -> list[dict[str, Any]]:
        """Polls ``expr`` until ``predicate(results)`` holds (by default: any result)."""
        return self.poll_until(
            lambda: self.query(expr),
            predicate,
            lambda results: f"{expr} still gives {results}; targets: {self.target_health()}",
            timeout,
            min(0.5, self.scrape_interval / 2),
        )

    def target_health(self) -> list[dict[str, Any]]:
        """Each active target's job, URL, health and last error."""
        data = self.api("targets", {"state": "active"})
        return [
            {
                "job": t["labels"].get("job"),
                "url": t["scrapeUrl"],
                "health": t["health"],
                "error": t.get("lastError", ""),
            }
            for t in data["activeTargets"]
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts the rule manager holds right now (pending and firing)."""
        return list(self.api("alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups."""
        return list(self.api("rules")["groups"])

    def wait_targets_up(self, timeout: float = UP_TIMEOUT) -> None:
        """Waits until every configured job has targets and all of them are up."""
        if not self.jobs:
            return

        def all_up(results: list[dict[str, Any]]) -> bool:
            seen = {r["metric"].get("job") for r in results}
            return seen >= set(self.jobs) and all(r["value"][1] == "1" for r in results)

        self.wait_for("up", all_up, timeout)


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


def write_config(
    path: Path,
    targets: Sequence[Target],
    *,
    rule_files: Sequence[Path] = (),
    alertmanagers: Sequence[str] = (),
    scrape_interval: float = 1.0,
    evaluation_interval: float = 1.0,
) -> tuple[str, ...]:
    """Writes a prometheus.yml; returns the job names it scrapes."""
    scrape_configs: list[dict[str, Any]] = []
    plain = [t for t in targets if isinstance(t, str)]
    if plain:
        scrape_configs.append({"job_name": "limpeza", "static_configs": [{"targets": plain}]})
    scrape_configs.extend(dict(t) for t in targets if not isinstance(t, str))
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": _duration(scrape_interval),
            "scrape_timeout": _duration(scrape_interval),
            "evaluation_interval": _duration(evaluation_interval),
        },
        "scrape_configs": scrape_configs,
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
        }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return tuple(str(c["job_name"]) for c in scrape_configs)


def start_prometheus(
    targets: Sequence[Target] = (),
    *,
    rule_files: Sequence[Path] = (),
    alertmanagers: Sequence[str] = (),
    scrape_interval: float = 1.0,
    evaluation_interval: float = 1.0,
    wait_up: bool = True,
    extra_args: Sequence[str] = (),
) -> PrometheusServer:
    """Starts one server and waits for it (the caller stops it and removes ``base``)."""
    binary = shutil.which(PROMETHEUS_BIN)
    if binary is None:
        raise MissingRequirementError(
            "no prometheus binary; `make test` installs Debian's prometheus package"
        )
    base = Path(tempfile.mkdtemp(prefix="limpeza-prometheus-"))
    config = base / "prometheus.yml"
    jobs = write_config(
        config,
        targets,
        rule_files=rule_files,
        alertmanagers=alertmanagers,
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
    )
    port = free_port()
    server = PrometheusServer.launch(
        base,
        port,
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=info",
            *extra_args,
        ],
        scrape_interval=scrape_interval,
        jobs=jobs,
    )
    if wait_up:
        server.ready_or_discard(server.wait_targets_up)
    return server
