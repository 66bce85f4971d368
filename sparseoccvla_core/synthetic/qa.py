"""Question answering data from the synthetic world's facts: OmniDrive-style and nuScenes-QA-style.

Every answer is computed from the frame's ground truth, so it is true in that frame:

* the *QA objects* of a frame are its annotations (see :mod:`generate`) that are at most ``QA_RANGE`` m from the
  ego and at least 40 % visible (nuScenes visibility token >= 2), with the camera that sees most of them;
* the signal answers use the state of the signal group controlling the ego's next stop line within 80 m;
* the action and its reason come from the ego driver's binding constraint (red light, leader, oncoming traffic,
  curve) and its route maneuver over the next seconds.

OmniDrive layout (docs/reference_choices.md §5.2): ``desc`` = {"description", "action"}, ``conv`` and ``vqa`` =
lists of {"question", "answer"}, ``keywords`` = a JSON string (the short action).  nuScenes-QA
(docs/reference_choices.md §5.4): items {sample_token, question, answer, template_type, num_hop} with answers from
the 30-answer vocabulary below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: nuScenes-QA closed answer vocabulary (qiantianwen/NuScenes-QA src/datasets/answer_dict.json).
NUSCENES_QA_ANSWERS: tuple[str, ...] = (
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "10",
    "no",
    "yes",
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction vehicle",
    "motorcycle",
    "moving",
    "not standing",
    "parked",
    "pedestrian",
    "standing",
    "stopped",
    "traffic cone",
    "trailer",
    "truck",
    "with rider",
    "without rider",
)
NUSCENES_QA_TEMPLATES: tuple[str, ...] = ("exist", "count", "object", "status", "comparison")

QA_RANGE = 50.0  # m
QA_MIN_VISIBILITY = 2  # nuScenes visibility token: 1 = 0-40 %, 2 = 40-60 %, 3 = 60-80 %, 4 = 80-100 %

#: nuScenes category -> the nuScenes-QA object word.
QA_NAME: dict[str, str] = {
    "vehicle.car": "car",
    "vehicle.truck": "truck",
    "vehicle.bus.rigid": "bus",
    "vehicle.construction": "construction vehicle",
    "vehicle.motorcycle": "motorcycle",
    "vehicle.bicycle": "bicycle",
    "human.pedestrian.adult": "pedestrian",
    "movable_object.trafficcone": "traffic cone",
    "movable_object.barrier": "barrier",
}
_PLURAL = {
    "bus": "buses",
    "pedestrian": "pedestrians",
    "traffic cone": "traffic cones",
    "barrier": "barriers",
    "car": "cars",
    "truck": "trucks",
    "bicycle": "bicycles",
    "motorcycle": "motorcycles",
    "construction vehicle": "construction vehicles",
}
#: nuScenes attribute -> nuScenes-QA status word.
STATUS_WORD: dict[str, str] = {
    "vehicle.moving": "moving",
    "vehicle.stopped": "stopped",
    "vehicle.parked": "parked",
    "pedestrian.moving": "moving",
    "pedestrian.standing": "standing",
    "cycle.with_rider": "with rider",
    "cycle.without_rider": "without rider",
}
CAMERA_WORDS: dict[str, str] = {
    "CAM_FRONT": "front",
    "CAM_FRONT_RIGHT": "front right",
    "CAM_FRONT_LEFT": "front left",
    "CAM_BACK": "back",
    "CAM_BACK_LEFT": "back left",
    "CAM_BACK_RIGHT": "back right",
}
OMNIDRIVE_SHORT_QUESTION = "Please shortly describe your driving action."


@dataclass
class QAObject:
    """One QA object of a frame.

    Args:
        name: nuScenes-QA word ("car", "traffic cone", ...).
        status: nuScenes-QA status word or None (cones, barriers).
        xy: (x, y) in the current ego frame, m.
        distance: m from the ego origin.
        camera: channel that sees most of it.
        moving_along: heading relative to the ego, rad.
    """

    name: str
    status: str | None
    xy: tuple
    distance: float
    camera: str
    rel_heading: float


@dataclass
class FrameFacts:
    """What the QA generators know about one key frame."""

    layout_description: str
    objects: list  # [QAObject], nearest first
    signal: tuple | None  # (state, distance to stop line m) of the ego's next signal
    behavior: str  # ego behaviour (traffic.ego_behavior)
    maneuver: str  # route maneuver
    turn_ahead: bool  # the ego reaches its turn within the next 3 s
    speed: float  # m/s
    leader: QAObject | None  # what the ego follows
    future_speed: float  # ego speed 3 s later (or last known), m/s
    scenery: list  # roadside scenery words in view ("buildings", "trees"), from the rendered class shares


def _count_words(objects: list) -> str:
    counts: dict[str, int] = {}
    for o in objects:
        counts[o.name] = counts.get(o.name, 0) + 1
    parts = [f"{n} {name if n == 1 else _PLURAL[name]}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    if not parts:
        return "no other road users nearby"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _where(o: QAObject) -> str:
    return f"about {o.distance:.0f} m away in the {CAMERA_WORDS[o.camera]} view"


def _motion(o: QAObject) -> str:
    if o.status in (None, "parked", "stopped", "standing", "without rider"):
        return {
            "parked": "parked",
            "stopped": "stopped",
            "standing": "standing still",
            "without rider": "parked without a rider",
        }.get(o.status, "static")
    if o.name == "pedestrian":
        return "walking"
    same = np.cos(o.rel_heading) > 0.7
    opposite = np.cos(o.rel_heading) < -0.7
    return "moving in the same direction" if same else "moving towards the ego vehicle" if opposite else "crossing"


def action(f: FrameFacts) -> tuple[str, str]:
    """(action sentence with its reason, short keyword phrase) for the ego in this frame."""
    turn = f.maneuver if f.maneuver in ("left", "right") else None
    sig = f.signal
    if f.behavior in ("stopped_signal", "stop_signal") and sig is not None:
        verb = "remain stopped" if f.behavior == "stopped_signal" else "slow down and stop"
        return (
            f"The ego vehicle should {verb} at the stop line, {sig[1]:.0f} m ahead, because the traffic light "
            f"ahead is {sig[0]}.",
            f"stop for the {sig[0]} light",
        )
    if f.behavior == "yield":
        return (
            "The ego vehicle should wait at the intersection before turning left, because oncoming traffic has "
            "the right of way.",
            "yield to oncoming traffic, then turn left",
        )
    if f.behavior == "stopped_queue" and f.leader is not None:
        return (
            f"The ego vehicle should stay stopped behind the {f.leader.name} ahead, because the {f.leader.name} "
            f"is stationary {f.leader.distance:.0f} m in front.",
            f"wait behind the {f.leader.name}",
        )
    if f.behavior == "turn" or (turn and f.turn_ahead):
        road = "intersection" if "intersection" in f.layout_description else "curve"
        return (
            f"The ego vehicle should slow down and turn {turn} {'at the intersection' if road == 'intersection' else 'following the curve'}, "
            f"keeping to its lane.",
            f"turn {turn}",
        )
    if f.behavior == "curve":
        return (
            "The ego vehicle should reduce its speed for the upcoming curve and keep its lane.",
            "slow down for the curve",
        )
    if f.behavior == "follow" and f.leader is not None:
        trend = "slow down" if f.future_speed < f.speed - 1.0 else "keep a safe distance"
        return (
            f"The ego vehicle should {trend} and follow the {f.leader.name} ahead, which is {f.leader.distance:.0f} m "
            f"in front and {_motion(f.leader)}.",
            f"follow the {f.leader.name} ahead",
        )
    if f.behavior == "accelerate":
        why = "the traffic light ahead is green" if sig is not None and sig[0] == "green" else "the road ahead is clear"
        return (f"The ego vehicle should accelerate and go straight, because {why}.", "accelerate and go straight")
    why = f"the traffic light ahead is {sig[0]}" if sig is not None and sig[0] == "green" else "the lane ahead is clear"
    return (
        f"The ego vehicle should keep its lane and go straight at a steady speed of about {f.speed:.0f} m/s, "
        f"because {why}.",
        "keep lane and go straight",
    )


def omnidrive(f: FrameFacts) -> dict:
    """OmniDrive-style records: {"desc": {...}, "conv": [...], "vqa": [...], "keywords": str}."""
    act, short = action(f)
    light = ""
    if f.signal is not None:
        light = f" The traffic light ahead is {f.signal[0]}, {f.signal[1]:.0f} m away."
    near = f.objects[0] if f.objects else None
    near_txt = f" The nearest one is a {near.name} {_where(near)}, {_motion(near)}." if near is not None else ""
    side = f", with {' and '.join(f.scenery)} along the road" if f.scenery else ""
    description = (
        f"The ego vehicle is driving at {f.speed:.1f} m/s on {f.layout_description} in clear daytime "
        f"weather{side}.{light} Around the ego vehicle the cameras show {_count_words(f.objects)}.{near_txt}"
    )
    conv = []
    if f.signal is not None:
        conv.append(
            {
                "question": "What is the state of the traffic light ahead of the ego vehicle?",
                "answer": f"The traffic light ahead is {f.signal[0]}; its stop line is {f.signal[1]:.0f} m ahead.",
            }
        )
    else:
        conv.append(
            {
                "question": "Is there a traffic light controlling the ego vehicle's lane nearby?",
                "answer": "No, there is no traffic light ahead of the ego vehicle within 80 m.",
            }
        )
    peds = [o for o in f.objects if o.name == "pedestrian"]
    conv.append(
        {
            "question": "Are there any pedestrians around the ego vehicle?",
            "answer": (
                f"Yes, there {'is' if len(peds) == 1 else 'are'} {len(peds)} "
                f"{'pedestrian' if len(peds) == 1 else 'pedestrians'}; the nearest is {_where(peds[0])}, "
                f"{_motion(peds[0])}."
                if peds
                else "No, there are no pedestrians near the ego vehicle."
            ),
        }
    )
    if f.leader is not None:
        conv.append(
            {
                "question": "What is directly in front of the ego vehicle in its lane?",
                "answer": f"A {f.leader.name} {f.leader.distance:.0f} m ahead, {_motion(f.leader)}.",
            }
        )
    else:
        conv.append(
            {
                "question": "What is directly in front of the ego vehicle in its lane?",
                "answer": "The ego lane ahead is clear of other road users.",
            }
        )
    conv.append({"question": "What should the ego vehicle do now, and why?", "answer": act})
    vqa = []
    seen_names = sorted({o.name for o in f.objects})
    for name in seen_names:
        group = [o for o in f.objects if o.name == name]
        cams = sorted({CAMERA_WORDS[o.camera] for o in group})
        vqa.append(
            {
                "question": f"How many {_PLURAL[name]} can be seen around the ego vehicle, and where?",
                "answer": f"{len(group)} {name if len(group) == 1 else _PLURAL[name]}, in the "
                f"{', '.join(cams)} view{'s' if len(cams) > 1 else ''}.",
            }
        )
    firsts = {}
    for o in f.objects:  # nearest first: the first object of each (class, view) is the closest one there
        firsts.setdefault((o.name, o.camera), o)
    for o in list(firsts.values())[:3]:
        vqa.append(
            {
                "question": f"Describe the {o.name} closest to the ego vehicle in the {CAMERA_WORDS[o.camera]} view.",
                "answer": f"It is a {o.name} {_where(o)}, {_motion(o)}.",
            }
        )
    return {"desc": {"description": description, "action": act}, "conv": conv, "vqa": vqa, "keywords": short}


def nuscenes_qa(f: FrameFacts, sample_token: str, rng: np.random.Generator, per_frame: int = 6) -> list[dict]:
    """nuScenes-QA-style questions (answers in :data:`NUSCENES_QA_ANSWERS`), a few per template."""
    names = [QA_NAME[c] for c in QA_NAME]
    objs = f.objects
    count = {n: sum(o.name == n for o in objs) for n in names}
    items = []

    def add(question, answer, template, hop):
        answer = str(answer)
        assert answer in NUSCENES_QA_ANSWERS, answer
        items.append(
            {
                "sample_token": sample_token,
                "question": question,
                "answer": answer,
                "template_type": template,
                "num_hop": hop,
            }
        )

    # exist
    for n in rng.choice(names, size=2, replace=False):
        add(f"Are there any {_PLURAL[n]}?", "yes" if count[n] else "no", "exist", 0)
    cams = list(CAMERA_WORDS.items())
    ch, word = cams[int(rng.integers(len(cams)))]
    n = names[int(rng.integers(len(names)))]
    exists = any(o.name == n and o.camera == ch for o in objs)
    add(f"Is there a {n} to the {word} of the ego car?", "yes" if exists else "no", "exist", 1)
    # count (answers only up to 10 exist in the vocabulary)
    for n in rng.choice(names, size=2, replace=False):
        if count[n] <= 10:
            add(f"How many {_PLURAL[n]} are there?", count[n], "count", 0)
    moving = sum(o.name == "car" and o.status == "moving" for o in objs)
    if moving <= 10:
        add("How many moving cars are there?", moving, "count", 1)
    # object: the closest thing (unique by construction)
    if objs:
        add("What is the object closest to the ego car?", objs[0].name, "object", 0)
        ch, word = cams[int(rng.integers(len(cams)))]
        in_view = [o for o in objs if o.camera == ch]
        if in_view:
            add(f"What is the closest object to the {word} of the ego car?", in_view[0].name, "object", 1)
    # status of the closest object of a class that has one
    with_status = [o for o in objs if o.status is not None]
    if with_status:
        o = with_status[0]
        add(f"What is the status of the {o.name} that is closest to the ego car?", o.status, "status", 1)
    # comparison
    a, b = rng.choice(names, size=2, replace=False)
    add(f"Are there more {_PLURAL[a]} than {_PLURAL[b]}?", "yes" if count[a] > count[b] else "no", "comparison", 0)
    add(
        f"Are there the same number of {_PLURAL[a]} and {_PLURAL[b]}?",
        "yes" if count[a] == count[b] else "no",
        "comparison",
        0,
    )
    return items[: max(per_frame, len(items))]
