"""``limpeza-exporter``: argument parsing, logging, signals; the work is in collector/http.

Exit codes: 0 after SIGTERM or SIGINT, 1 when the server cannot start (address in use),
2 for bad usage or an invalid configuration. SIGHUP rereads the configuration (not the
listen address or the web config, which need a restart).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from prometheus_client import CollectorRegistry

from cleaner import config as limpeza_config
from exporter import webconfig
from exporter.collector import LimpezaCollector
from exporter.http import ExporterServer, Limits
from exporter.reload import ReloadStatus

log = logging.getLogger("limpeza.exporter")

LOG_LEVELS = ("debug", "info", "warning", "error")


def version() -> str:
    try:
        return metadata.version("limpeza")
    except metadata.PackageNotFoundError:
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="limpeza-exporter",
        description="Prometheus exporter for the limpeza cleaner: jobs, stale jobs, removed "
        "files and disk usage, read fresh at every scrape.",
    )
    p.add_argument(
        "--config",
        "--config.file",
        dest="config",
        metavar="FILE",
        help="limpeza config (default: $LIMPEZA_CONFIG, else /etc/limpeza/limpeza.yml)",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="HOST:PORT",
        help="address to listen on (default: exporter.listen_address of the config, "
        f"{limpeza_config.DEFAULT_EXPORTER_ADDRESS})",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="FILE",
        help="exporter-toolkit web config for TLS and basic auth "
        "(default: exporter.web_config_file of the config; none: plain HTTP)",
    )
    p.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=_positive_int,
        default=Limits.max_connections,
        metavar="N",
        help="connections served at once; more wait in the listen backlog "
        f"(default: {Limits.max_connections}, lowered to fit the open files limit)",
    )
    p.add_argument(
        "--log.level",
        dest="log_level",
        choices=LOG_LEVELS,
        help="log level (default: log_level of the config)",
    )
    p.add_argument("--version", action="version", version=f"limpeza-exporter {version()}")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


#: File descriptors kept for everything but client connections: the standard streams, the
#: listening socket, the database connection and its cancel request, the state file, the
#: job cache, the web config's certificates, the selector, Python's own.
FD_RESERVE = 32


def fitting_connections(wanted: int, nofile: int) -> int:
    """How many connections fit under a soft RLIMIT_NOFILE of ``nofile`` (at least 1)."""
    if nofile == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, nofile - FD_RESERVE))


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
        level=getattr(logging, level.upper()),
        force=True,
    )


def run(argv: Sequence[str] | None, env: Mapping[str, str]) -> int:
    args = parser().parse_args(argv)
    _setup_logging(args.log_level or "info")
    config_path = limpeza_config.resolve_path(args.config, env)
    try:
        config = limpeza_config.load(config_path, env)
    except limpeza_config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _setup_logging(args.log_level or config.log_level)
    limpeza_config.warn_unused_environment(config, log)

    address_text = args.listen_address or config.exporter.listen_address
    try:
        address = limpeza_config.parse_listen_address(address_text)
    except ValueError as exc:
        print(f"limpeza-exporter: --web.listen-address: {exc}", file=sys.stderr)
        return 2
    web_path = Path(args.web_config) if args.web_config else config.exporter.web_config_file
    web = webconfig.WebConfig()
    if web_path is not None:
        try:
            web = webconfig.load(web_path)
        except limpeza_config.ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    max_connections = fitting_connections(args.max_connections, nofile)
    if max_connections < args.max_connections:
        log.warning(
            "the open files limit is %d: serving at most %d connections at once, not %d "
            "(raise LimitNOFILE= or lower --web.max-connections)",
            nofile,
            max_connections,
            args.max_connections,
        )

    # Signals are taken synchronously by the main thread (sigwait); every thread the server
    # starts inherits the mask, so no handler ever runs in the middle of a scrape.
    handled = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)

    collector = LimpezaCollector(config, version=version())
    reloads = ReloadStatus()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    registry.register(reloads)
    try:
        server = ExporterServer(
            address,
            registry,
            web,
            version=version(),
            limits=Limits(max_connections=max_connections),
        )
    except OSError as exc:
        log.error("cannot listen on %s: %s", address_text, exc.strerror or exc)
        collector.close()
        return 1

    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    log.info(
        "listening on %s://%s/metrics (config %s, jobs from %s)",
        server.scheme,
        address_text,
        config_path,
        _jobs_source(config),
    )
    try:
        while True:
            received = signal.sigwait(handled)
            if received != signal.SIGHUP:
                log.info("%s received: shutting down", signal.Signals(received).name)
                break
            try:
                new_config = limpeza_config.load(config_path, env)
            except limpeza_config.ConfigError as exc:
                reloads.failed()
                log.error("SIGHUP: keeping the old configuration: %s", exc)
                continue
            collector.reload(new_config)
            reloads.succeeded()
            log.info("SIGHUP: configuration %s reloaded", config_path)
            started, now = config.exporter, new_config.exporter
            if (now.listen_address, now.web_config_file) != (
                started.listen_address,
                started.web_config_file,
            ):
                log.warning(
                    "SIGHUP: a new exporter.listen_address or exporter.web_config_file "
                    "applies at the next restart only"
                )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        collector.close()
    return 0


def _jobs_source(config: limpeza_config.Config) -> str:
    if config.jobs.database is not None:
        return f"the table {config.jobs.database.table}"
    if config.jobs.cache_file is not None:
        return f"the cache {config.jobs.cache_file}"
    return "nowhere (no jobs.database nor jobs.cache_file)"


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, os.environ)


if __name__ == "__main__":
    sys.exit(main())
