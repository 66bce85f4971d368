"""CameraSetSynchronizer and OdometryHistory on crafted stamp streams, checked against independent computations.

The synchronizer must emit smallest-span sets (checked by brute force over every combination of the stream),
use each message once, keep sets in time order, respect the span limit, keep memory bounded, and reset on a
backwards time jump.  Odometry interpolation is compared with closed-form poses.
"""

import itertools
import math

import numpy as np
import pytest

from sparseoccvla_ros.synchronizer import (
    NS_PER_S,
    CameraSetSynchronizer,
    OdometryHistory,
    OdometryLookupError,
    OdometrySample,
)

CAMS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
MS = 1_000_000


def _rig_stream(rng, n_triggers, period_ms=500, jitter_ms=42, missing=0.0, t0_ns=1_532_402_927_000_000_000):
    """Six cameras firing once per trigger with a per-camera offset in [0, jitter]; some messages missing.

    Returns:
        messages [(cam, stamp_ns, trigger)] in a random arrival order that keeps each camera in time order,
        and the set of triggers whose six messages all exist.
    """
    per_cam = {c: [] for c in CAMS}
    complete = set()
    for k in range(n_triggers):
        present = rng.random(len(CAMS)) >= missing
        if present.all():
            complete.add(k)
        for c, here in zip(CAMS, present):
            if here:
                stamp = t0_ns + k * period_ms * MS + int(rng.integers(0, jitter_ms * MS))
                per_cam[c].append((c, stamp, k))
    # random interleaving, each camera in order, roughly by stamp plus a random network delay
    events = [(s + int(rng.integers(0, 30 * MS)), c, s, k) for c in CAMS for (c, s, k) in per_cam[c]]
    events.sort()
    return [(c, s, k) for _, c, s, k in events], complete


def _feed(sync, stream):
    out = []
    for cam, stamp, payload in stream:
        out.extend(sync.add(cam, stamp, payload))
    return out


def test_rig_sets_match_the_triggers():
    rng = np.random.default_rng(0)
    stream, complete = _rig_stream(rng, 40, missing=0.08)
    sync = CameraSetSynchronizer(CAMS, queue_size=4, max_span_s=0.1, min_period_s=0.25)
    sets = _feed(sync, stream)
    got = [set(s.messages.values()) for s in sets]
    assert all(len(g) == 1 for g in got), "a set mixed messages of different triggers"
    triggers = [next(iter(g)) for g in got]
    # every complete trigger is emitted (the proof needs no later frame when the period bound holds)
    assert triggers == sorted(complete)
    assert sync.stats.sets == len(complete)
    for s in sets:
        assert s.stamp_ns == s.stamps_ns["CAM_FRONT"]
        assert s.span_ns == max(s.stamps_ns.values()) - min(s.stamps_ns.values()) <= 0.1 * NS_PER_S
    # every message of an incomplete trigger is eventually discarded: nothing stale piles up
    assert sum(sync.pending().values()) <= len(CAMS)


def test_set_is_emitted_when_its_last_camera_arrives():
    sync = CameraSetSynchronizer(CAMS, queue_size=4, max_span_s=0.1, min_period_s=0.25)
    t = 10 * NS_PER_S
    for i, cam in enumerate(CAMS[:-1]):
        assert sync.add(cam, t + i * 7 * MS, cam) == []
    (s,) = sync.add(CAMS[-1], t + 40 * MS, CAMS[-1])
    assert s.messages == {c: c for c in CAMS} and s.stamp_ns == t and s.span_ns == 40 * MS


def test_without_period_bound_the_set_waits_for_proof():
    # min_period = 0: like ApproximateTime without inter-message bounds, the set is final only when later
    # messages prove that no tighter set can form -- one period of latency.
    sync = CameraSetSynchronizer(CAMS, queue_size=4, max_span_s=0.1, min_period_s=0.0)
    t = 10 * NS_PER_S
    for i, cam in enumerate(CAMS):
        assert sync.add(cam, t + i * 5 * MS, ("a", cam)) == []
    out = []
    for i, cam in enumerate(CAMS):
        out += sync.add(cam, t + 500 * MS + i * 5 * MS, ("b", cam))
    assert len(out) == 1 and {p[0] for p in out[0].messages.values()} == {"a"}
    # identical stamps (span 0) are final at once, without any later message
    sync2 = CameraSetSynchronizer(CAMS, min_period_s=0.0)
    res = [sync2.add(c, t, c) for c in CAMS]
    assert res[-1] and res[-1][0].span_ns == 0


def test_tightest_set_wins_over_the_first_one_within_slop():
    # A first-within-slop rule would pair A@0 with B@35 ms; the tightest set is A@40 + B@35 (span 5 ms).
    sync = CameraSetSynchronizer(("A", "B"), queue_size=4, max_span_s=0.05, min_period_s=0.02)
    out = []
    out += sync.add("A", 0, "a0")
    out += sync.add("B", 35 * MS, "b35")
    out += sync.add("A", 40 * MS, "a40")
    out += sync.add("A", 100 * MS, "a100")
    out += sync.add("B", 100 * MS, "b100")
    assert [s.messages for s in out][0] == {"A": "a40", "B": "b35"}
    assert sync.stats.dropped >= 1  # a0 was superseded


@pytest.mark.parametrize("seed", range(6))
def test_minimal_span_against_brute_force(seed):
    """Independent check: no set of the whole stream that competes with an emitted set is tighter."""
    rng = np.random.default_rng(seed)
    topics = ("A", "B", "C")
    min_period = 30 * MS
    per_topic = {}
    for t in topics:
        gaps = rng.integers(min_period, 120 * MS, size=7)
        per_topic[t] = list(np.cumsum(gaps) + int(rng.integers(0, 40 * MS)))
    events = sorted((int(s) + int(rng.integers(0, 60 * MS)), t, int(s)) for t in topics for s in per_topic[t])
    stream = [(t, s, (t, s)) for _, t, s in events]
    sync = CameraSetSynchronizer(topics, queue_size=50, max_span_s=0.06, min_period_s=min_period / NS_PER_S)
    sets = _feed(sync, stream)
    used = set()
    prev = {t: -1 for t in topics}
    for s in sets:
        msgs = set(s.messages.values())
        assert not (msgs & used), "a message was used twice"
        assert all(s.stamps_ns[t] > prev[t] for t in topics), "sets out of time order"
        assert s.span_ns <= 0.06 * NS_PER_S
        # brute force over every combination of messages still eligible (unused, newer than the previous set)
        pools = [[x for x in per_topic[t] if x > prev[t]] for t in topics]
        for combo in itertools.product(*pools):
            shares = any(int(c) == s.stamps_ns[t] for c, t in zip(combo, topics))
            if shares:
                assert max(combo) - min(combo) >= s.span_ns, f"tighter competing set {combo} than {s.stamps_ns}"
        used |= msgs
        prev = dict(s.stamps_ns)
    assert sets, "no set emitted"


def test_memory_is_bounded_when_a_camera_is_dead():
    sync = CameraSetSynchronizer(CAMS, queue_size=3, max_span_s=0.1, min_period_s=0.25)
    for k in range(200):
        for cam in CAMS[:-1]:  # CAM_BACK_RIGHT never publishes
            assert sync.add(cam, k * 500 * MS, k) == []
    assert all(n <= 3 for n in sync.pending().values())
    assert sync.stats.dropped == 5 * 200 - sum(sync.pending().values())


def test_late_duplicate_and_backwards_reset():
    sync = CameraSetSynchronizer(("A", "B"), max_span_s=0.05, min_period_s=0.2, backwards_reset_s=1.0)
    t = 100 * NS_PER_S
    sync.add("A", t, 1)
    assert len(sync.add("B", t + MS, 2)) == 1
    assert sync.add("A", t - MS, 3) == [] and sync.stats.late == 1  # older than the emitted set
    sync.add("A", t + 500 * MS, 4)
    assert sync.add("A", t + 500 * MS, 5) == [] and sync.stats.duplicates == 1
    # the bag loops: stamps jump 10 s back; once the second camera goes back too the queues are cleared and the
    # synchronizer works on the new time line, starting with the held message
    assert sync.add("A", t - 10 * NS_PER_S, 6) == [] and sync.stats.resets == 0
    (s,) = sync.add("B", t - 10 * NS_PER_S + 2 * MS, 7)
    assert sync.stats.resets == 1
    assert s.messages == {"A": 6, "B": 7}


def test_one_reordered_image_is_not_a_time_jump():
    """An image far older than its camera's newest (a reordered message in a bag) is dropped as late when its camera
    goes on; the pending messages survive and no reset happens (docs: README fault table, out_of_order)."""
    sync = CameraSetSynchronizer(("A", "B", "C"), max_span_s=0.05, min_period_s=0.2, backwards_reset_s=1.0)
    t = 100 * NS_PER_S
    for cam in "ABC":
        sync.add(cam, t + (cam == "C") * MS, cam)
    assert sync.stats.sets == 1
    sync.add("A", t + 500 * MS, "A1")
    assert sync.add("B", t - 5 * NS_PER_S, "stale") == []  # 5 s behind: held, nothing reset yet
    assert sync.stats.resets == 0 and sync.pending()["A"] == 1
    assert sync.add("B", t + 501 * MS, "B1") == [] and sync.stats.late == 1  # B goes on: the old one was late
    (s,) = sync.add("C", t + 502 * MS, "C1")
    assert s.messages == {"A": "A1", "B": "B1", "C": "C1"} and sync.stats.resets == 0


def test_loops_with_time_jumping_back_keep_every_set():
    """A bag played twice with stamps jumping back, cameras in a shuffled order inside each frame: the second loop
    yields every frame as the first did (the camera that triggered the reset must not keep its pre-jump stamp)."""
    rng = np.random.default_rng(11)
    sync = CameraSetSynchronizer(CAMS, queue_size=4, max_span_s=0.1, min_period_s=0.25)
    t0 = 1_532_402_927_000_000_000
    frames = 5
    emitted = []
    for loop in range(2):
        for k in range(frames):
            order = list(CAMS)
            rng.shuffle(order)
            for cam in order:
                stamp = t0 + k * 500 * MS + CAMS.index(cam) * 7 * MS
                emitted.extend(sync.add(cam, stamp, (loop, k)))
    assert sync.stats.resets == 1
    per_loop = [[s.messages["CAM_FRONT"] for s in emitted if s.messages["CAM_FRONT"][0] == loop] for loop in (0, 1)]
    assert per_loop[0] == [(0, k) for k in range(frames)]
    assert per_loop[1] == [(1, k) for k in range(frames)]
    assert all(len({p for p in s.messages.values()}) == 1 for s in emitted)  # never a mix of frames or loops
    assert sync.stats.dropped == 0 and sync.stats.late == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        CameraSetSynchronizer(("A", "A"))
    with pytest.raises(ValueError):
        CameraSetSynchronizer(("A",), queue_size=0)
    with pytest.raises(KeyError, match="unknown camera"):
        CameraSetSynchronizer(("A",)).add("Z", 0, None)


# ----------------------------------------------------------------------------------------------- odometry
def _yaw_quat(yaw):
    return np.array([0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])


def _sample(t_s, x, yaw, v=(0.0, 0.0, 0.0), w=(0.0, 0.0, 0.0)):
    return OdometrySample(
        stamp_ns=int(round(t_s * NS_PER_S)),
        position=np.array([x, 0.0, 0.0]),
        orientation_xyzw=_yaw_quat(yaw),
        linear_velocity=np.array(v, dtype=float),
        angular_velocity=np.array(w, dtype=float),
    )


def test_odometry_interpolation_lerp_and_slerp():
    hist = OdometryHistory(max_age_s=3.0, max_gap_s=0.2)
    hist.add(_sample(10.0, 0.0, 0.0, v=(5.0, 0, 0)))
    hist.add(_sample(10.1, 1.0, 0.4, v=(7.0, 0, 0)))
    got = hist.lookup(int(10.025 * NS_PER_S))
    np.testing.assert_allclose(got.position, [0.25, 0, 0], atol=1e-9)
    np.testing.assert_allclose(got.linear_velocity, [5.5, 0, 0], atol=1e-9)
    np.testing.assert_allclose(
        got.orientation_xyzw, _yaw_quat(0.1), atol=1e-9
    )  # slerp of a yaw rotation is linear in yaw
    m = got.pose_matrix()
    assert math.atan2(m[1, 0], m[0, 0]) == pytest.approx(0.1)
    exact = hist.lookup(int(10.1 * NS_PER_S))
    assert exact.position[0] == 1.0


def test_odometry_gap_age_nan_and_reset():
    hist = OdometryHistory(max_age_s=1.0, max_gap_s=0.2)
    with pytest.raises(OdometryLookupError, match="no odometry"):
        hist.lookup(0)
    hist.add(_sample(10.0, 0.0, 0.0))
    hist.add(_sample(11.0, 1.0, 0.0))
    with pytest.raises(OdometryLookupError, match="0.500 s"):
        hist.lookup(int(10.5 * NS_PER_S))  # half a second from both neighbours
    assert hist.lookup(int(11.1 * NS_PER_S)).position[0] == 1.0  # hold the newest within the gap
    with pytest.raises(OdometryLookupError, match="after the newest"):
        hist.lookup(int(11.5 * NS_PER_S))
    for i in range(30):
        hist.add(_sample(11.1 + 0.1 * i, 0.0, 0.0))
    assert len(hist) <= 11  # only max_age_s of history kept
    with pytest.raises(ValueError, match="NaN"):
        hist.add(_sample(20.0, float("nan"), 0.0))
    hist.add(_sample(1.0, 0.0, 0.0))  # bag loop: time jumps back
    assert len(hist) == 1 and hist.resets == 1


def test_odometry_acceleration_in_ego_frame():
    # constant world acceleration of 2 m/s^2 along world x while the car faces +y (yaw 90 deg):
    # in the ego frame that is a lateral acceleration of -2 m/s^2 (x forward, y left).
    hist = OdometryHistory(max_age_s=3.0, max_gap_s=0.2)
    yaw = math.pi / 2
    for i in range(11):
        t = 0.1 * i
        v_world = np.array([2.0 * t, 0.0, 0.0])
        rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        hist.add(_sample(100.0 + t, 0.0, yaw, v=rot.T @ v_world))
    acc = hist.acceleration(int(101.0 * NS_PER_S), window_s=0.5)
    np.testing.assert_allclose(acc, [0.0, -2.0, 0.0], atol=1e-9)
    assert np.all(hist.acceleration(int(100.0 * NS_PER_S), window_s=0.5) == 0)  # no history yet
