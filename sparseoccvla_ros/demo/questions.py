"""Ask the driving node questions through its ``AskScene`` service while a bag replays (used by ``sparseoccvla demo``).

The asker is an ordinary ROS 2 client on its own rclpy context (its own DDS participant, as a separate program
would be): it subscribes to ``<node>/output/plan`` and, once the node has published the plan of a trigger key
frame (a plan stamped at or after that key frame's CAM_FRONT stamp), calls ``<node>/ask_scene`` with each question
from a worker thread, one at a time.  The node answers about the latest camera set it processed; the response's
``scene_stamp`` says which, so every answer is attached to the key frame it is really about.  Triggers the replay
never reached (the node dropped those frames) are asked after the bag ends, by :meth:`SceneQuestioner.finish`.

Service definition: ``msg/srv/AskScene.srv`` (question -> success, answer, error_message, scene_stamp, latency_s).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Optional, Sequence

from .report import QuestionAnswer

#: The default questions (free-form, as a user would ask them).
#: Questions in the wording of the training data (the synthetic world's OmniDrive conversations and nuScenes-QA):
#: a small LLM trained from scratch answers the questions it was trained on, not free paraphrases of them.
DEFAULT_QUESTIONS: tuple[str, ...] = (
    "What is directly in front of the ego vehicle in its lane?",
    "Are there any pedestrians around the ego vehicle?",
    "How many moving cars are there?",
)


class SceneQuestioner:
    """Asks ``questions`` after each trigger key frame (see the module docstring).

    Args:
        node_path: the driving node's fully qualified name (``/sparseoccvla/driving_node``).
        questions: the questions asked at every trigger.
        triggers: (key frame index, CAM_FRONT stamp ns) pairs, in time order.
        frame_of_stamp: maps a response's ``scene_stamp`` (ns) to its key frame index (None when unknown).
        timeout_s: wait for the service / one answer at most this long, s.
        on_answer: optional callback with each :class:`~.report.QuestionAnswer` (progress lines).
    """

    def __init__(
        self,
        node_path: str,
        questions: Sequence[str],
        triggers: Sequence[tuple[int, int]],
        frame_of_stamp: Callable[[int], Optional[int]],
        timeout_s: float = 60.0,
        on_answer: Optional[Callable[[QuestionAnswer], None]] = None,
    ) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, QoSReliabilityPolicy

        from sparseoccvla_msgs.msg import DrivingPlan
        from sparseoccvla_msgs.srv import AskScene

        self.questions = list(questions)
        self.frame_of_stamp = frame_of_stamp
        self.timeout_s = timeout_s
        self.on_answer = on_answer
        self.answers: list[QuestionAnswer] = []
        self._pending = sorted(triggers, key=lambda t: t[1])  # not yet triggered
        self._lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._outstanding = 0  # triggers queued or being asked (guarded by _lock)
        self._stop = threading.Event()
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("demo_questioner", context=self.context)
        self.client = self.node.create_client(AskScene, f"{node_path.rstrip('/')}/ask_scene")
        self._request_type = AskScene.Request
        qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        self.node.create_subscription(DrivingPlan, f"{node_path.rstrip('/')}/output/plan", self._on_plan, qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_executor, name="demo-questioner-spin", daemon=True)
        self._spin.start()
        self._worker = threading.Thread(target=self._run, name="demo-questioner", daemon=True)
        self._worker.start()

    def _spin_executor(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except (ExternalShutdownException, KeyboardInterrupt):
            pass
        except Exception:  # noqa: BLE001 - the context was shut down under the executor (close())
            if self.context.ok():
                raise

    def _on_plan(self, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._lock:
            due = [t for t in self._pending if t[1] <= stamp]
            self._pending = [t for t in self._pending if t[1] > stamp]
        for frame, _ in due:
            self._enqueue(frame)

    def _enqueue(self, trigger_frame: Optional[int]) -> None:
        with self._lock:
            self._outstanding += 1
        self._jobs.put(trigger_frame)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                trigger = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                for question in self.questions:
                    if self._stop.is_set():
                        break
                    qa = self.ask(question, trigger)
                    self.answers.append(qa)
                    if self.on_answer is not None:
                        self.on_answer(qa)
            finally:
                with self._lock:
                    self._outstanding -= 1

    def ask(self, question: str, trigger_frame: Optional[int] = None) -> QuestionAnswer:
        """One blocking AskScene call (from a thread other than the executor's)."""
        t0 = time.perf_counter()
        if not self.client.wait_for_service(timeout_sec=self.timeout_s):
            return QuestionAnswer(
                question, "", False, "the AskScene service did not appear", 0.0, 0.0, trigger_frame, None
            )
        request = self._request_type()
        request.question = question
        done = threading.Event()
        future = self.client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(self.timeout_s):
            self.client.remove_pending_request(future)
            return QuestionAnswer(
                question, "", False, f"no answer within {self.timeout_s:.0f} s", 0.0, time.perf_counter() - t0,
                trigger_frame, None,
            )  # fmt: skip
        rt = time.perf_counter() - t0
        res = future.result()
        stamp = res.scene_stamp.sec * 1_000_000_000 + res.scene_stamp.nanosec
        return QuestionAnswer(
            question=question,
            answer=res.answer,
            success=bool(res.success),
            error=res.error_message,
            latency_s=float(res.latency_s),
            round_trip_s=rt,
            trigger_frame=trigger_frame,
            scene_frame=self.frame_of_stamp(stamp) if stamp else None,
            scene_stamp_ns=stamp,
        )

    def finish(self, timeout_s: float = 120.0) -> None:
        """Ask at every trigger the replay never reached (after the bag), then wait until all answers are in."""
        with self._lock:
            left, self._pending = self._pending, []
        if left:  # the node answers about its latest camera set: one round covers every missed trigger
            self._enqueue(None)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.outstanding:
            time.sleep(0.05)

    @property
    def outstanding(self) -> int:
        """Triggers queued or being asked."""
        with self._lock:
            return self._outstanding

    def close(self) -> None:
        """Stop the worker and the executor, shut the context down (idempotent)."""
        import rclpy

        self._stop.set()
        self._worker.join(timeout=self.timeout_s)
        self.executor.shutdown(timeout_sec=2.0)
        try:
            self.node.destroy_node()
        except Exception:  # noqa: BLE001 - already destroyed
            pass
        rclpy.try_shutdown(context=self.context)
        self._spin.join(timeout=5.0)
