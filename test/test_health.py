"""sparseoccvla_ros.health: alarm hold times, level precedence and per-kind log throttling, with explicit times."""

import pytest

from sparseoccvla_ros.health import (
    ERROR,
    OK,
    TIME_BASE_CLOCK,
    TIME_BASE_OFFSET,
    WARN,
    AlarmBoard,
    LogThrottle,
    input_age_s,
)


def test_alarm_is_held_for_the_hold_time_after_it_last_happened():
    board = AlarmBoard(hold_s=5.0)
    assert board.summary(0.0, "inputs OK") == (OK, "inputs OK")
    board.raise_alarm("corrupt_image", ERROR, "CAM_BACK corrupt", now_s=10.0)
    assert board.summary(10.1, "ok")[0] == ERROR  # seen by the next report even though it happened once
    assert board.summary(14.9, "ok")[0] == ERROR  # still inside the hold time
    board.raise_alarm("corrupt_image", ERROR, "CAM_BACK corrupt again", now_s=14.0)  # refreshes the hold
    level, text = board.summary(18.5, "ok")
    assert level == ERROR and "again" in text and "(x2)" in text
    assert board.summary(19.01, "ok") == (OK, "ok")  # 5 s after the last occurrence


def test_worst_level_wins_and_every_alarm_is_listed():
    board = AlarmBoard(hold_s=2.0)
    board.raise_alarm("drops", WARN, "3 dropped", 0.0)
    board.raise_alarm("calibration", ERROR, "no extrinsics for CAM_BACK", 0.5)
    level, text = board.summary(1.0, "ok")
    assert level == ERROR and text.index("no extrinsics") < text.index("3 dropped")
    assert board.summary(1.0, "ok", keys={"drops"}) == (WARN, "3 dropped")
    assert board.summary(2.1, "ok") == (ERROR, "no extrinsics for CAM_BACK")  # the WARN expired first
    # a lower level inside the hold time does not lower the alarm
    board.raise_alarm("calibration", WARN, "minor", 2.2)
    assert board.summary(2.3, "ok")[0] == ERROR
    board.clear("calibration")
    assert board.summary(2.3, "ok") == (OK, "ok")
    with pytest.raises(ValueError):
        AlarmBoard(0.0)


def test_log_throttle_is_per_kind_and_counts_suppressed_lines():
    throttle = LogThrottle(period_s=5.0)
    assert throttle.admit("out_of_order", 0.0) == 0
    assert throttle.admit("out_of_order", 1.0) is None
    assert throttle.admit("odometry", 1.5) == 0  # another kind is never hidden by the first one
    assert throttle.admit("out_of_order", 2.0) is None
    assert throttle.admit("out_of_order", 5.5) == 2  # the next line reports the two suppressed ones
    assert throttle.admit("out_of_order", 6.0) is None


def test_input_age_in_both_time_bases():
    stamp = 1_532_402_927_612_460_000  # 2018
    # live / sim time: the node clock and the stamps share a time base
    assert input_age_s(stamp + 250_000_000, stamp, None) == (0.25, TIME_BASE_CLOCK)
    # a 2018 bag replayed in wall time (2026): 2.6e8 s apart; the age is measured against the stream's offset
    offset = 1_796_000_000_000_000_000 - stamp
    age, base = input_age_s(stamp + offset + 300_000_000, stamp, stream_offset_ns=offset + 20_000_000)
    assert base == TIME_BASE_OFFSET and age == pytest.approx(0.28)
    age, _ = input_age_s(stamp + offset, stamp, stream_offset_ns=None)  # no offset yet: the first message is 0
    assert age == 0.0


def test_polled_alarms_show_no_count():
    board = AlarmBoard(hold_s=2.0)
    for t in (0.0, 1.0, 2.0):  # re-raised at every report while the condition lasts
        board.raise_alarm("stale_input", WARN, "inputs stale", t, counted=False)
    assert board.summary(2.5, "ok") == (WARN, "inputs stale")


def test_stamp_gap_counter_counts_lost_frames_and_restarts_on_discontinuities():
    from sparseoccvla_ros.health import StampGapCounter

    period = 500_000_000  # 2 Hz key frames, ns
    g = StampGapCounter(min_gaps=3)
    stamps = [i * period + jitter for i, jitter in enumerate([0, 3_000_000, -2_000_000, 1_000_000, 0])]
    assert [g.add(s) for s in stamps] == [0] * 5 and g.missed == 0
    # frames 5 and 6 never arrive, frame 7 does: two lost
    assert g.add(7 * period) == 2 and g.missed == 2
    assert g.add(8 * period) == 0
    # a bag loop: time goes back, the period is learned again before anything is counted
    assert g.add(0) == 0 and g.add(period) == 0 and g.add(2 * period) == 0
    assert g.add(4 * period) == 0  # only 2 gaps known after the jump: the period is not known yet
    assert g.add(5 * period) == 0 and g.add(7 * period) == 1 and g.missed == 3
    # a pause far longer than the period (bag ended, sensor restarted) is a discontinuity, not lost frames
    assert g.add(8 * period + 60 * period) == 0 and g.missed == 3
