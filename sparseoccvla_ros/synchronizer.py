"""Approximate-time synchronization of the six cameras and odometry lookup at the set stamp (docs/design.md §6).

Pure Python + numpy (no rclpy import), so one code path serves pip-only and full ROS 2 installs, and the
algorithm is unit-tested on crafted stamp streams (``test/test_synchronizer.py``).

Camera sets (:class:`CameraSetSynchronizer`) follow the idea of ROS' ``message_filters`` ApproximateTime
policy (docs/ros_conventions.md §5), implemented here from the description, not from its code:

* a *set* holds one message per camera; its *span* is newest stamp - oldest stamp;
* the synchronizer emits the set of smallest span among those that compete for the same messages, only
  sets whose span is at most ``max_span_s`` (the node's ``sync_slop_s``);
* every message is used at most once, sets come out in time order, and emitting a set discards every
  older pending message (counted as dropped);
* a set is emitted as soon as no later message can form a tighter competing set.  A later message of
  camera ``k`` is assumed to carry a stamp ``>= newest_k + min_period_s`` (``min_period_s`` is a lower
  bound of the camera period, like ApproximateTime's ``inter_message_lower_bound``; with 0 the proof needs
  the next frame of the cameras, i.e. one period of latency);
* memory is bounded: at most ``queue_size`` pending messages per camera (the oldest is dropped beyond that),
  and a message that can no longer be part of any set within the span limit is dropped at once.

How the candidates are found: sweeping one pointer per camera over the time-sorted queues and always
advancing the pointer of the oldest message enumerates, for every possible oldest message, the tightest set
that starts with it (each other camera takes its first message at or after that stamp).  Every
minimal-span set is one of these candidates, and candidates sharing a message form contiguous runs of the
sweep, which makes "the tightest of competing sets" a local comparison.

The set stamp is the stamp of the reference camera (the first topic, CAM_FRONT, as Autoware's BEVDet node
does); every output of the node carries it.

Odometry (:class:`OdometryHistory`) is not part of the camera set: it is kept in a short time-ordered history
and interpolated at the set stamp (linear in position and twist, spherical-linear in orientation); a set
whose stamp is farther than ``max_gap_s`` from the nearest odometry sample is rejected with a reason.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

NS_PER_S: int = 1_000_000_000


def seconds_to_ns(seconds: float) -> int:
    return int(round(seconds * NS_PER_S))


# ----------------------------------------------------------------------------------------------- camera sets
@dataclass(frozen=True)
class CameraSet:
    """One synchronized set: a message per camera.

    Args:
        stamp_ns: the set stamp (the reference camera's stamp), ns.
        stamps_ns: per camera, the stamp of its message, ns.
        messages: per camera, the payload given to :meth:`CameraSetSynchronizer.add`.
        span_ns: newest - oldest stamp of the set, ns.
    """

    stamp_ns: int
    stamps_ns: dict[str, int]
    messages: dict[str, Any]
    span_ns: int


@dataclass
class SyncStats:
    """Counters of :class:`CameraSetSynchronizer` (reported in diagnostics).

    Args:
        sets: sets emitted.
        dropped: messages discarded without being part of a set (overflow, unmatched, superseded).
        late: messages older than the last emitted set of their camera (arrived too late, or one image far
            behind its camera that no other camera followed back in time), discarded.
        duplicates: messages whose stamp equals a pending one of the same camera, discarded.
        resets: times the stamps jumped backwards (bag loop / new bag) and every queue was cleared.
    """

    sets: int = 0
    dropped: int = 0
    late: int = 0
    duplicates: int = 0
    resets: int = 0


@dataclass
class _Pending:
    stamp_ns: int
    payload: Any = field(compare=False)


class CameraSetSynchronizer:
    """Minimal-span approximate-time synchronizer (see the module docstring for the algorithm).

    Args:
        topics: camera names; the first one is the reference whose stamp stamps the set.
        queue_size: pending messages kept per camera (>= 1; >= 2 recommended).
        max_span_s: widest set accepted (newest - oldest stamp), s.
        min_period_s: lower bound of each camera's inter-frame period, s (0 = no assumption).
        backwards_reset_s: a stamp this much older than the newest stamp seen on its camera may mean that time
            jumped backwards (bag loop, new bag), s.  It is a jump once a second camera (or the same camera's
            next message) goes back too: every queue is cleared and the held messages start the new time line.
            A single reordered image is not a jump: it is dropped and counted as ``late`` when its camera's next
            message continues the old time line.

    Raises:
        ValueError: no topics, duplicate topics or out-of-range arguments.
    """

    def __init__(
        self,
        topics: Sequence[str],
        queue_size: int = 4,
        max_span_s: float = 0.1,
        min_period_s: float = 0.0,
        backwards_reset_s: float = 1.0,
    ) -> None:
        if not topics or len(set(topics)) != len(topics):
            raise ValueError(f"topics must be non-empty and unique, got {list(topics)}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if max_span_s < 0 or min_period_s < 0 or backwards_reset_s <= 0:
            raise ValueError("max_span_s and min_period_s must be >= 0 and backwards_reset_s > 0")
        self.topics: tuple[str, ...] = tuple(topics)
        self.queue_size = int(queue_size)
        self.max_span_ns = seconds_to_ns(max_span_s)
        self.min_period_ns = seconds_to_ns(min_period_s)
        self.backwards_reset_ns = seconds_to_ns(backwards_reset_s)
        self.stats = SyncStats()
        self._queues: dict[str, list[_Pending]] = {t: [] for t in self.topics}
        self._newest: dict[str, Optional[int]] = {t: None for t in self.topics}  # newest stamp ever received
        self._last_used: dict[str, Optional[int]] = {t: None for t in self.topics}  # stamp in the last emitted set
        # messages far behind their camera's newest stamp, held until the jump is confirmed (see add())
        self._jump_candidates: dict[str, list[_Pending]] = {}

    # ------------------------------------------------------------------ public API
    def reset(self) -> None:
        """Forget every pending message and stamp history (counters are kept)."""
        for t in self.topics:
            self._queues[t].clear()
            self._newest[t] = None
            self._last_used[t] = None
        self._jump_candidates.clear()

    def pending(self) -> dict[str, int]:
        """Pending messages per camera."""
        return {t: len(q) for t, q in self._queues.items()}

    def add(self, topic: str, stamp_ns: int, payload: Any) -> list[CameraSet]:
        """Add one message and return the sets that became final (usually zero or one), oldest first.

        Args:
            topic: camera name (one of ``topics``).
            stamp_ns: header stamp of the message, ns.
            payload: anything (the message); returned inside the :class:`CameraSet`.
        Raises:
            KeyError: unknown topic.
        """
        if topic not in self._queues:
            raise KeyError(f"unknown camera {topic!r}; expected one of {self.topics}")
        stamp_ns = int(stamp_ns)
        newest = self._newest[topic]
        if newest is not None and stamp_ns < newest - self.backwards_reset_ns:
            # far behind this camera's newest stamp: a time jump (bag loop, new bag) or one reordered image.  Hold
            # it until a second camera (or the same camera's next message) goes back too; a single straggler is
            # dropped as late when its camera moves on.
            self._jump_candidates.setdefault(topic, []).append(_Pending(stamp_ns, payload))
            confirmed = len(self._jump_candidates) >= min(2, len(self.topics)) or len(self._jump_candidates[topic]) >= 2
            if not confirmed:
                return []
            held = sorted(
                ((p.stamp_ns, t, p.payload) for t, ps in self._jump_candidates.items() for p in ps),
                key=lambda x: x[0],
            )
            self.stats.dropped += sum(len(q) for q in self._queues.values())
            self.stats.resets += 1
            self.reset()  # clears the candidates too; the pre-jump stamps must not survive, or every message resets
            emitted: list[CameraSet] = []
            for stamp, t, payload_ in held:  # the held messages start the new time line
                emitted.extend(self.add(t, stamp, payload_))
            return emitted
        if topic in self._jump_candidates:
            # this camera went on from where it was: what it sent far back was one reordered image, not a jump
            self.stats.late += len(self._jump_candidates.pop(topic))
        last_used = self._last_used[topic]
        if last_used is not None and stamp_ns <= last_used:
            self.stats.late += 1
            return []
        queue = self._queues[topic]
        stamps = [p.stamp_ns for p in queue]
        pos = bisect.bisect_left(stamps, stamp_ns)
        if pos < len(queue) and queue[pos].stamp_ns == stamp_ns:
            self.stats.duplicates += 1
            return []
        queue.insert(pos, _Pending(stamp_ns, payload))
        self._newest[topic] = stamp_ns if newest is None else max(newest, stamp_ns)
        if len(queue) > self.queue_size:
            queue.pop(0)  # bounded memory: the oldest pending message of this camera goes first
            self.stats.dropped += 1
        return self._emit_ready()

    # ------------------------------------------------------------------ algorithm
    def _candidates(self) -> list[tuple[tuple[int, ...], int, int]]:
        """Sweep: for each possible oldest message, the tightest set starting with it, in time order.

        Returns:
            (index per topic, oldest stamp, newest stamp) per candidate.
        """
        queues = [self._queues[t] for t in self.topics]
        idx = [0] * len(queues)
        out = []
        while True:
            stamps = [q[i].stamp_ns for q, i in zip(queues, idx)]
            lo, hi = min(stamps), max(stamps)
            out.append((tuple(idx), lo, hi))
            k = stamps.index(lo)  # advance the camera holding the oldest message
            idx[k] += 1
            if idx[k] == len(queues[k]):
                return out

    def _provably_final(self, lo: int, hi: int) -> bool:
        """No message still to come can form a tighter set competing with the set [lo, hi].

        A competing set holds a message at or before ``hi``; one holding a future message of camera k
        (stamp >= newest_k + min_period, or > newest_k when min_period is 0) spans at least that minus ``hi``.
        """
        span = hi - lo
        # a future stamp equal to the bound gives a competitor of equal span: not tighter, so ">=" suffices
        return all(self._newest[t] + self.min_period_ns - hi >= span for t in self.topics)  # type: ignore[operator]

    def _emit_ready(self) -> list[CameraSet]:
        out: list[CameraSet] = []
        self._prune_unmatchable()
        while all(self._queues[t] for t in self.topics):
            cands = self._candidates()
            first_idx, lo, hi = cands[0]
            if hi - lo > self.max_span_ns:
                # The oldest pending message starts candidate 0, and no future message can tighten a set that
                # starts with it (future stamps are newer than everything pending): it can never be used.
                k = next(j for j, t in enumerate(self.topics) if self._queues[t][first_idx[j]].stamp_ns == lo)
                self._queues[self.topics[k]].pop(0)
                self.stats.dropped += 1
                continue
            chosen = self._tightest_competitor(cands, 0)
            c_idx, c_lo, c_hi = cands[chosen]
            if not self._provably_final(c_lo, c_hi):
                break  # wait for more messages
            out.append(self._pop_set(c_idx, c_hi - c_lo))
        return out

    def _prune_unmatchable(self) -> None:
        """Drop messages that no set within the span limit can ever contain because a camera has nothing close.

        A camera with no pending message will next publish at ``>= newest + min_period`` (``> newest`` when the
        bound is 0); pending messages of other cameras older than that minus ``max_span`` can never be matched.
        """
        horizon = None
        for t in self.topics:
            newest = self._newest[t]
            if not self._queues[t] and newest is not None:
                first_future = newest + max(self.min_period_ns, 1)
                horizon = first_future if horizon is None else max(horizon, first_future)
        if horizon is None:
            return
        for t in self.topics:
            queue = self._queues[t]
            n = 0
            while n < len(queue) and queue[n].stamp_ns + self.max_span_ns < horizon:
                n += 1
            if n:
                del queue[:n]
                self.stats.dropped += n

    def _tightest_competitor(self, cands: list[tuple[tuple[int, ...], int, int]], start: int) -> int:
        """Follow the run of candidates sharing messages with ``start`` to a local minimum of the span."""
        best = start
        while True:
            b_idx, b_lo, b_hi = cands[best]
            improved = None
            for j in range(best + 1, len(cands)):
                j_idx, j_lo, j_hi = cands[j]
                if not any(a == b for a, b in zip(j_idx, b_idx)):
                    break  # indices only grow along the sweep: no later candidate shares a message either
                if j_hi - j_lo < b_hi - b_lo:
                    improved = j
                    break
            if improved is None:
                return best
            best = improved

    def _pop_set(self, indices: tuple[int, ...], span_ns: int) -> CameraSet:
        stamps, messages = {}, {}
        for t, i in zip(self.topics, indices):
            queue = self._queues[t]
            item = queue[i]
            stamps[t], messages[t] = item.stamp_ns, item.payload
            self.stats.dropped += i  # older pending messages of this camera are superseded
            del queue[: i + 1]
            self._last_used[t] = item.stamp_ns
        self.stats.sets += 1
        return CameraSet(stamp_ns=stamps[self.topics[0]], stamps_ns=stamps, messages=messages, span_ns=span_ns)


# ----------------------------------------------------------------------------------------------- odometry
@dataclass(frozen=True)
class OdometrySample:
    """Ego odometry at one instant (nav_msgs/Odometry semantics).

    Args:
        stamp_ns: stamp, ns.
        position: [3] ego position in the odometry (map) frame, m.
        orientation_xyzw: [4] unit quaternion of the ego orientation in that frame (ROS order x, y, z, w).
        linear_velocity: [3] velocity in the ego (child) frame, m/s.
        angular_velocity: [3] angular rate in the ego frame, rad/s.
    """

    stamp_ns: int
    position: np.ndarray
    orientation_xyzw: np.ndarray
    linear_velocity: np.ndarray
    angular_velocity: np.ndarray

    def pose_matrix(self) -> np.ndarray:
        """[4, 4] float64 ego -> odometry-frame transform."""
        x, y, z, w = self.orientation_xyzw / np.linalg.norm(self.orientation_xyzw)
        m = np.eye(4)
        m[:3, :3] = [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
        m[:3, 3] = self.position
        return m


def _slerp(q0: np.ndarray, q1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (shortest arc)."""
    q0 = q0 / np.linalg.norm(q0)
    q1 = q1 / np.linalg.norm(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: normalised lerp is exact to float precision and avoids 0/0
        q = q0 + alpha * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1.0 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / np.sin(theta)


class OdometryLookupError(LookupError):
    """No odometry close enough to the requested stamp (the reason names the gap)."""


class OdometryHistory:
    """A short, time-ordered odometry history with interpolation at arbitrary stamps.

    Args:
        max_age_s: samples older than the newest by more than this are forgotten, s.
        max_gap_s: lookups farther than this from the nearest sample fail (and extrapolation beyond the newest
            / before the oldest sample is allowed only within this gap, holding the end sample), s.
        backwards_reset_s: a sample this much older than the newest clears the history (bag loop), s.
    """

    def __init__(self, max_age_s: float = 3.0, max_gap_s: float = 0.2, backwards_reset_s: float = 1.0) -> None:
        if max_age_s <= 0 or max_gap_s < 0:
            raise ValueError("max_age_s must be > 0 and max_gap_s >= 0")
        self.max_age_ns = seconds_to_ns(max_age_s)
        self.max_gap_ns = seconds_to_ns(max_gap_s)
        self.backwards_reset_ns = seconds_to_ns(backwards_reset_s)
        self._samples: deque[OdometrySample] = deque()
        self.resets = 0

    def __len__(self) -> int:
        return len(self._samples)

    def clear(self) -> None:
        self._samples.clear()

    def add(self, sample: OdometrySample) -> None:
        """Insert a sample (in time order; a duplicate stamp replaces the old sample).

        Raises:
            ValueError: a non-finite field (NaN / Inf odometry).
        """
        for name in ("position", "orientation_xyzw", "linear_velocity", "angular_velocity"):
            if not np.all(np.isfinite(getattr(sample, name))):
                raise ValueError(f"odometry {name} contains NaN or Inf at stamp {sample.stamp_ns} ns")
        if np.linalg.norm(sample.orientation_xyzw) < 1e-6:
            raise ValueError(f"odometry orientation is a zero quaternion at stamp {sample.stamp_ns} ns")
        s = self._samples
        if s and sample.stamp_ns < s[-1].stamp_ns - self.backwards_reset_ns:
            s.clear()
            self.resets += 1
        if not s or sample.stamp_ns > s[-1].stamp_ns:
            s.append(sample)
        else:  # rare out-of-order sample: insert in place
            stamps = [x.stamp_ns for x in s]
            pos = bisect.bisect_left(stamps, sample.stamp_ns)
            if pos < len(s) and s[pos].stamp_ns == sample.stamp_ns:
                s[pos] = sample
            else:
                s.insert(pos, sample)
        while s and s[-1].stamp_ns - s[0].stamp_ns > self.max_age_ns:
            s.popleft()

    def lookup(self, stamp_ns: int) -> OdometrySample:
        """Odometry at ``stamp_ns``: interpolated between neighbours, or the nearest end sample within the gap.

        Raises:
            OdometryLookupError: empty history, or the stamp is farther than ``max_gap_s`` from the samples.
        """
        s = self._samples
        if not s:
            raise OdometryLookupError("no odometry received yet")
        stamps = [x.stamp_ns for x in s]
        pos = bisect.bisect_left(stamps, stamp_ns)
        if pos < len(s) and stamps[pos] == stamp_ns:
            return s[pos]
        if pos == 0 or pos == len(s):
            end = s[0] if pos == 0 else s[-1]
            gap = abs(end.stamp_ns - stamp_ns)
            if gap > self.max_gap_ns:
                where = "before the oldest" if pos == 0 else "after the newest"
                raise OdometryLookupError(
                    f"camera set stamp is {gap / NS_PER_S:.3f} s {where} odometry sample "
                    f"(max_odometry_gap_s = {self.max_gap_ns / NS_PER_S:.3f})"
                )
            return OdometrySample(
                stamp_ns, end.position, end.orientation_xyzw, end.linear_velocity, end.angular_velocity
            )
        a, b = s[pos - 1], s[pos]
        gap = min(stamp_ns - a.stamp_ns, b.stamp_ns - stamp_ns)
        if gap > self.max_gap_ns:
            raise OdometryLookupError(
                f"nearest odometry sample is {gap / NS_PER_S:.3f} s from the camera set stamp "
                f"(max_odometry_gap_s = {self.max_gap_ns / NS_PER_S:.3f})"
            )
        alpha = (stamp_ns - a.stamp_ns) / (b.stamp_ns - a.stamp_ns)
        return OdometrySample(
            stamp_ns=stamp_ns,
            position=(1 - alpha) * a.position + alpha * b.position,
            orientation_xyzw=_slerp(a.orientation_xyzw, b.orientation_xyzw, alpha),
            linear_velocity=(1 - alpha) * a.linear_velocity + alpha * b.linear_velocity,
            angular_velocity=(1 - alpha) * a.angular_velocity + alpha * b.angular_velocity,
        )

    def acceleration(self, stamp_ns: int, window_s: float) -> np.ndarray:
        """Ego-frame acceleration [3] (m/s^2) at ``stamp_ns``: backward difference of the velocity over ``window_s``.

        The velocity at ``stamp_ns - window`` is rotated into the odometry frame with its own orientation, differenced
        with the current one and expressed in the current ego frame (as the loaders derive ``ax, ay`` from key-frame
        poses, sparseoccvla_core.geometry.ego_motion).  Zero when the history does not reach back that far (start of a
        stream): the only honest value without motion history.
        """
        now = self.lookup(stamp_ns)
        past_stamp = stamp_ns - seconds_to_ns(window_s)
        if not self._samples or past_stamp < self._samples[0].stamp_ns - self.max_gap_ns:
            return np.zeros(3)
        try:
            past = self.lookup(past_stamp)
        except OdometryLookupError:
            return np.zeros(3)
        dt = (now.stamp_ns - past.stamp_ns) / NS_PER_S
        if dt <= 0:
            return np.zeros(3)
        r_now, r_past = now.pose_matrix()[:3, :3], past.pose_matrix()[:3, :3]
        acc_world = (r_now @ now.linear_velocity - r_past @ past.linear_velocity) / dt
        return r_now.T @ acc_world
