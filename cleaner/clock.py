"""Wall-clock jumps: a sweep judges ages by the wall clock, so a step forward ages every file.

Between two cycles the wall clock (``time.time``) and the monotonic clock
(``time.monotonic``) advance alike. When the wall clock got more than ``JUMP_INTERVALS``
intervals ahead of the monotonic one since the last cycle (an NTP step, a virtual machine
resumed after a pause, an operator's ``date -s``), files would look older than they are
and could be removed early: the daemon holds that cycle's removals and goes on at the next,
when both clocks advance alike again. A step backwards only makes files look younger.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How many intervals ahead of the monotonic clock the wall clock may get between two
#: cycles before the cycle is held.
JUMP_INTERVALS = 3.0


@dataclass(frozen=True)
class ClockReading:
    """Both clocks read at one moment (seconds)."""

    wall: float
    monotonic: float


class ClockWatch:
    """Compares each reading with the previous one; says when the wall clock jumped ahead."""

    def __init__(self) -> None:
        self._last: ClockReading | None = None

    def jump(self, now: ClockReading, interval: float) -> float | None:
        """Seconds the wall clock got ahead of the monotonic one since the last reading,
        when that is more than ``JUMP_INTERVALS`` times ``interval``; else None.

        The first reading has nothing to compare with (None). ``now`` is kept for the next
        call either way, so a jump is reported once.
        """
        last, self._last = self._last, now
        if last is None:
            return None
        lead = (now.wall - last.wall) - (now.monotonic - last.monotonic)
        return lead if lead > JUMP_INTERVALS * interval else None
