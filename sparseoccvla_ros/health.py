"""Health bookkeeping of the driving node: alarms held for a fixed time, log throttling per kind, input age.

Pure Python (no rclpy), so the rules are unit-tested with explicit times (``test/test_health.py``); the node
(``sparseoccvla_ros/driving_node.py``) feeds them wall-clock seconds (``time.monotonic()``), so a paused or
looping bag clock never freezes or stretches an alarm.

Levels follow diagnostic_msgs/DiagnosticStatus (OK 0, WARN 1, ERROR 2, STALE 3).  An alarm is raised under a
*key* (one per condition, e.g. ``corrupt_image``); it stays active for ``hold_s`` after it was last raised, so a
problem that happens once between two diagnostics periods is still reported, and for at least the hold time.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Optional

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


@dataclass
class Alarm:
    """One active condition.

    Args:
        key: condition name (one alarm per key; raising it again refreshes it).
        level: WARN, ERROR or STALE.
        message: the latest text for the condition.
        first_s: when it was first raised in the current episode, s (monotonic).
        last_s: when it was last raised, s (monotonic).
        count: times raised in the current episode.
        counted: whether the count is shown (False for conditions polled every report, e.g. stale input).
    """

    key: str
    level: int
    message: str
    first_s: float
    last_s: float
    count: int = 1
    counted: bool = True


class AlarmBoard:
    """Alarms keyed by condition, each held for ``hold_s`` seconds after it was last raised.  Thread-safe.

    Args:
        hold_s: hold time, s (> 0).
    Raises:
        ValueError: a non-positive hold time.
    """

    def __init__(self, hold_s: float) -> None:
        if not hold_s > 0:
            raise ValueError(f"hold_s must be > 0, got {hold_s}")
        self.hold_s = float(hold_s)
        self._alarms: dict[str, Alarm] = {}
        self._lock = threading.Lock()

    def raise_alarm(self, key: str, level: int, message: str, now_s: float, counted: bool = True) -> None:
        """Raise or refresh the alarm ``key`` (a higher level replaces a lower one; the level never drops inside
        the hold time of the higher one).  ``counted=False`` for conditions polled at every report."""
        with self._lock:
            old = self._alarms.get(key)
            if old is None or now_s - old.last_s > self.hold_s:
                self._alarms[key] = Alarm(key, int(level), message, now_s, now_s, counted=counted)
                return
            old.count += 1
            old.last_s = now_s
            if level >= old.level:
                old.level, old.message = int(level), message

    def clear(self, key: str) -> None:
        """Drop ``key`` at once (for conditions the node knows are over, e.g. the model finished loading)."""
        with self._lock:
            self._alarms.pop(key, None)

    def active(self, now_s: float) -> list[Alarm]:
        """Alarms raised within the hold time, highest level first, then most recent first."""
        with self._lock:
            for key in [k for k, a in self._alarms.items() if now_s - a.last_s > self.hold_s]:
                del self._alarms[key]
            alarms = list(self._alarms.values())
        return sorted(alarms, key=lambda a: (-a.level, -a.last_s))

    def summary(self, now_s: float, ok_message: str, keys: Optional[set[str]] = None) -> tuple[int, str]:
        """(level, message) over the active alarms (restricted to ``keys`` when given).

        The level is the highest active level; the message lists every active alarm, worst first, each with how
        often it happened within the hold time.
        """
        alarms = [a for a in self.active(now_s) if keys is None or a.key in keys]
        if not alarms:
            return OK, ok_message
        parts = [a.message + (f" (x{a.count})" if a.counted and a.count > 1 else "") for a in alarms]
        return alarms[0].level, "; ".join(parts)


class LogThrottle:
    """Rate-limits log lines per kind: one line per ``period_s`` for each kind, so one frequent problem never hides
    another.  Lines suppressed in between are counted and reported with the next line of that kind.

    Args:
        period_s: minimum spacing of two lines of the same kind, s.
    """

    def __init__(self, period_s: float) -> None:
        self.period_s = float(period_s)
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, kind: str, now_s: float) -> Optional[int]:
        """None when this line of ``kind`` is to be suppressed; else how many were suppressed since the last one."""
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now_s - last < self.period_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return None
            self._last[kind] = now_s
            return self._suppressed.pop(kind, 0)


#: |now - stamp| above this means the node clock and the input stamps are in different time bases (a bag played in
#: wall time, its stamps years old), s.
TIME_BASE_MISMATCH_S = 3600.0
TIME_BASE_CLOCK = "node clock"
TIME_BASE_OFFSET = "stamps offset to node clock"


def input_age_s(
    now_ns: int, stamp_ns: int, stream_offset_ns: Optional[int], mismatch_s: float = TIME_BASE_MISMATCH_S
) -> tuple[float, str]:
    """Age of an input stamp when its outputs go out, s, and the time base it was measured in.

    Live sensors and sim time (``/clock``) share the node clock's time base: the age is ``now - stamp``.  A bag
    replayed in wall time keeps its recording stamps, so ``now - stamp`` is the years between recording and
    replay; the age is then measured against the stream's own offset ``stream_offset_ns`` (the smallest
    ``now - stamp`` seen at arrival since the last time jump), i.e. how much later than its earliest message the
    output went out.

    Args:
        now_ns: node clock now, ns.
        stamp_ns: the input stamp, ns.
        stream_offset_ns: min(node clock at arrival - stamp) of the current stream, ns (None: unknown).
        mismatch_s: |now - stamp| above this selects the offset form, s.
    Returns:
        (age in s, :data:`TIME_BASE_CLOCK` or :data:`TIME_BASE_OFFSET`).
    """
    age_ns = int(now_ns) - int(stamp_ns)
    if abs(age_ns) <= mismatch_s * 1e9:
        return age_ns / 1e9, TIME_BASE_CLOCK
    offset = age_ns if stream_offset_ns is None else int(stream_offset_ns)
    return (age_ns - offset) / 1e9, TIME_BASE_OFFSET


__all__ = [
    "ERROR",
    "LEVEL_NAMES",
    "OK",
    "STALE",
    "TIME_BASE_CLOCK",
    "TIME_BASE_MISMATCH_S",
    "TIME_BASE_OFFSET",
    "WARN",
    "Alarm",
    "AlarmBoard",
    "LogThrottle",
    "input_age_s",
]


class StampGapCounter:
    """Counts frames of one periodic stream that never arrived, from gaps in its header stamps.

    A best-effort subscription with a shallow queue loses messages silently when the node is busy (DDS overwrites
    the oldest sample; no event reports it).  A camera's stamps are periodic, so a gap of ``g`` against the stream's
    period ``p`` (the median of its recent gaps) means ``round(g / p) - 1`` frames were lost.  Gaps above
    ``max_gap_factor`` periods (a bag ending, a sensor restart) and stamps going backwards (a loop) start over.

    Args:
        window: recent gaps kept for the period estimate.
        min_gaps: gaps seen before anything is counted (the period must be known first).
        max_gap_factor: gaps longer than this many periods are a discontinuity, not lost frames.
    """

    def __init__(self, window: int = 16, min_gaps: int = 3, max_gap_factor: float = 10.0) -> None:
        self._gaps: deque[int] = deque(maxlen=window)
        self._last: Optional[int] = None
        self.min_gaps, self.max_gap_factor = min_gaps, max_gap_factor
        self.missed = 0

    def add(self, stamp_ns: int) -> int:
        """Record one stamp; returns the number of frames found missing just before it (also added to ``missed``)."""
        last, self._last = self._last, stamp_ns
        if last is None or stamp_ns <= last:
            if last is not None and stamp_ns < last:
                self._gaps.clear()  # time went backwards: a new time line
            return 0
        gap = stamp_ns - last
        lost = 0
        if len(self._gaps) >= self.min_gaps:
            period = sorted(self._gaps)[len(self._gaps) // 2]
            ratio = gap / period
            if ratio > self.max_gap_factor:
                self._gaps.clear()
                return 0
            lost = max(0, round(ratio) - 1)
        if lost == 0:
            self._gaps.append(gap)
        self.missed += lost
        return lost
