"""A storm of SIGHUPs is one reload and at most one extra sweep (the real daemon process).

Each SIGHUP used to reload the configuration (reopening the audit log and the database) and
sweep at once: a burst of them, from a loop of ``systemctl reload`` or a log rotation
sending one per file, made as many reloads and sweeps.
"""

from __future__ import annotations

import os
import signal
import time

from cleaner.state import read_state
from tests.fixtures.cleaner_daemon import StartDaemon
from tests.fixtures.trees import Tree

RELOADED = "configuration reloaded"
#: Longer than the daemon waits for SIGHUPs to stop coming (1 s) before it reloads.
SETTLED = 2.5


def _burst(pid: int, count: int) -> None:
    for _ in range(count):
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.01)


def test_a_burst_of_sighups_is_one_reload_and_one_extra_sweep(
    tree: Tree, cleaner_daemon: StartDaemon
) -> None:
    state_file = tree.var / "state.json"
    # An hour between sweeps: any sweep after the first is one a SIGHUP brought forward.
    daemon = cleaner_daemon(tree.write_config(interval="1h"))
    daemon.wait_until(state_file.exists, "no first sweep", 30, 0.05)
    assert read_state(state_file).sweeps == 1

    _burst(daemon.process.pid, 50)
    daemon.wait_until(lambda: RELOADED in daemon.log(), "no reload", 30, 0.05)
    daemon.wait_until(lambda: read_state(state_file).sweeps >= 2, "no extra sweep", 30, 0.05)
    time.sleep(SETTLED)
    assert daemon.log().count(RELOADED) == 1, daemon.log()
    assert read_state(state_file).sweeps == 2

    # Another burst within the interval: reloaded once more, but no second extra sweep.
    _burst(daemon.process.pid, 20)
    daemon.wait_until(lambda: daemon.log().count(RELOADED) == 2, "no reload", 30, 0.05)
    time.sleep(SETTLED)
    assert daemon.log().count(RELOADED) == 2, daemon.log()
    assert read_state(state_file).sweeps == 2

    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=20) == 0, daemon.log_tail()
