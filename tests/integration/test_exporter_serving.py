"""The exporter's serving side as a real process: web config checks, reloads, compression,
deadlines and bounds against hostile or unlucky clients."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import bcrypt
import pytest
import yaml

from devtools.limpeza import ExporterProcess
from tests.fixtures.exporter import StartExporter, write_site

pytestmark = pytest.mark.integration


def sample(text: str, name: str) -> float | None:
    """The value of one unlabelled or fully spelled series in the text format."""
    for line in text.splitlines():
        if not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            if series == name:
                return float(value)
    return None


def wait_for_sample(
    exporter: ExporterProcess, name: str, value: float, timeout: float = 20.0
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = exporter.get().text
        if sample(text, name) == value:
            return text
        assert time.monotonic() < deadline, f"{name} is not {value}:\n{exporter.log_tail()}"
        time.sleep(0.1)


# --------------------------------------------------------------------------- web config


def test_a_malformed_bcrypt_hash_is_refused_at_start(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    good = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    # One character lost in a copy and paste: bcrypt says "wrong password", never "bad hash".
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": good[:-1]}}))
    exporter = start_exporter(site.config, args=["--web.config.file", str(web)], wait=False)
    try:
        code = exporter.process.wait(timeout=30)
    except Exception:
        pytest.fail(f"the exporter started with a malformed hash:\n{exporter.log_tail()}")
    assert code == 2, exporter.log()
    assert "basic_auth_users.prometheus: expected a bcrypt hash" in exporter.log()
    assert good[7:-1] not in exporter.log()


# --------------------------------------------------------------------------- reloads


def test_a_refused_reload_shows_in_the_metrics(
    start_exporter: StartExporter, tmp_path: Path
) -> None:
    site = write_site(tmp_path)
    started = time.time()
    exporter = start_exporter(site.config)
    successful = "limpeza_exporter_config_last_reload_successful"
    stamp = "limpeza_exporter_config_last_reload_success_timestamp_seconds"
    text = exporter.get().text
    assert sample(text, successful) == 1, text
    loaded_at = sample(text, stamp)
    assert loaded_at is not None and started - 1 <= loaded_at <= time.time()

    good = site.config.read_text()
    site.config.write_text(good.replace("max_age: 24h", "max_age: soon", 1))
    exporter.process.send_signal(signal.SIGHUP)
    text = wait_for_sample(exporter, successful, 0)
    assert sample(text, stamp) == loaded_at, "a refused reload moved the success time"
    assert "SIGHUP: keeping the old configuration" in exporter.log()
    assert sample(text, 'limpeza_rule_max_age_seconds{rule="sessions"}') == 86400

    time.sleep(0.01)
    site.config.write_text(good.replace("max_age: 24h", "max_age: 12h", 1))
    exporter.process.send_signal(signal.SIGHUP)
    text = wait_for_sample(exporter, successful, 1)
    reloaded_at = sample(text, stamp)
    assert reloaded_at is not None and reloaded_at > loaded_at
    assert sample(text, 'limpeza_rule_max_age_seconds{rule="sessions"}') == 43200
    assert exporter.stop() == 0
