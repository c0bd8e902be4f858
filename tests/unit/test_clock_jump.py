"""A wall clock that jumps forward holds one cycle's removals (cleaner.clock, the daemon).

The watch is pure logic on readings of both clocks; the daemon is run here cycle by cycle
on a real tree with both of its clocks injected, as a stepped system clock would drive it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cleaner.clock import JUMP_INTERVALS, ClockReading, ClockWatch
from cleaner.config import build
from cleaner.daemon import Daemon
from tests.fixtures.trees import DAY, NOW, Tree

INTERVAL = 30.0


def test_the_first_reading_and_clocks_that_advance_alike_are_no_jump() -> None:
    watch = ClockWatch()
    assert watch.jump(ClockReading(NOW, 100.0), INTERVAL) is None
    assert watch.jump(ClockReading(NOW + 30, 130.0), INTERVAL) is None
    # a long sweep, a slow slew and a step back are not a jump ahead
    assert watch.jump(ClockReading(NOW + 3630, 3730.5), INTERVAL) is None
    assert watch.jump(ClockReading(NOW + 3600, 3760.0), INTERVAL) is None


def test_a_step_of_more_than_a_few_intervals_is_reported_once() -> None:
    watch = ClockWatch()
    watch.jump(ClockReading(NOW, 100.0), INTERVAL)
    limit = JUMP_INTERVALS * INTERVAL
    assert watch.jump(ClockReading(NOW + 30 + limit, 130.0), INTERVAL) is None  # at the limit
    assert watch.jump(ClockReading(NOW + 60 + limit + DAY, 160.0), INTERVAL) == DAY
    assert watch.jump(ClockReading(NOW + 90 + limit + DAY, 190.0), INTERVAL) is None


def test_the_limit_follows_the_interval_it_is_given() -> None:
    watch = ClockWatch()
    watch.jump(ClockReading(NOW, 0.0), 1.0)
    assert watch.jump(ClockReading(NOW + 1 + 10, 1.0), 1.0) == 10
    assert watch.jump(ClockReading(NOW + 2 + 20, 2.0), 10.0) is None


class Clocks:
    """Both of the daemon's clocks, moved by the test."""

    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 1000.0

    def advance(self, seconds: float, *, step: float = 0.0) -> None:
        self.wall += seconds + step
        self.mono += seconds


def test_the_daemon_holds_removals_for_the_cycle_after_a_jump(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    # One hour old at NOW, expired (24h) only by a clock stepped a day ahead.
    young = tree.file("session_young.json", age=3600)
    path = tree.write_config(interval="30s")
    clocks = Clocks()
    daemon = Daemon(
        build(tree.raw_config(interval="30s"), env={}),
        path,
        {},
        clock=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )
    daemon._open_parts()
    try:
        with caplog.at_level(logging.INFO, logger="cleaner.daemon"):
            daemon.cycle()
            clocks.advance(30, step=DAY)
            daemon.cycle()
            assert young.exists()
            clocks.advance(30)
            daemon.cycle()
    finally:
        daemon._close_parts()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "wall clock jumped 1d ahead" in warnings[0], warnings
    assert not young.exists()  # the next cycle goes on: the file is a day old by now
    state = json.loads(Path(tree.var / "state.json").read_text(encoding="utf-8"))
    assert state["clock_jumps"] == 1
    assert state["sweeps"] == 2  # the held cycle swept nothing
    audit = (tree.var / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(audit) == 1
