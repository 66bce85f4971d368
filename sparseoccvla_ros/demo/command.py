"""``sparseoccvla demo``: a scene the model never saw, replayed through the ROS 2 nodes, scored, and reported.

    sparseoccvla demo                                              # checkpoints/default, synthetic scene
    sparseoccvla demo --ckpt runs/stage3 --layout curve --frames 20 --seed 1001 --out outputs/curve
    sparseoccvla demo --data /data/nuscenes --scene scene-0103     # real nuScenes (devkit dataroot)
    sparseoccvla demo --bag bags/scene-0103                        # a bag written by 'sparseoccvla bag'

Stages (each prints ``[demo <elapsed> s] <stage>: ...`` progress lines):

1. **model**: ``--ckpt`` (default ``checkpoints/default/`` of the repository) must be a ``save_pretrained`` folder;
   its config gives the occupancy grid and plan horizon the GT bag is written with.
2. **scene**: by default one synthetic scene (``sparseoccvla synth``'s generator, seed ``--seed`` = 1000: the
   training worlds use small seeds, and scene ``i`` of seed ``s`` is seeded by ``SeedSequence([s, i])``, so this
   scene is new to the model), layout ``--layout`` (intersection: a traffic light and cross traffic), ``--frames``
   key frames at 2 Hz, six cameras at ``--width`` x ``--height`` (480 x 270, the default checkpoint's training
   images), no lidar; or ``--data DIR --scene NAME``.
3. **bag**: the scene -> rosbag2 MCAP with GT topics (:func:`sparseoccvla_ros.replay.bag_writer.write_bag`);
   skipped with ``--bag``.
4. **replay**: player -> driving_node -> recorder over real DDS, the bringup of ``sparseoccvla drive``
   (:class:`sparseoccvla_ros.bringup.Bringup`) at ``--rate`` (0.5 = one key frame per second, what 2 CPU cores
   sustain with questions on top; the node drops camera sets it cannot keep up with, and the report counts
   them).  Meanwhile :class:`~.questions.SceneQuestioner` asks the questions through ``AskScene`` after
   ``--ask-at`` key frames spread over the scene.
5. **eval**: :func:`sparseoccvla_ros.replay.eval_bag.evaluate_bags` on the GT bag and the recording
   (``<out>/eval/metrics.json``, ``metrics.md``, ``horizons.png``).
6. **report**: ``<out>/report.html`` + ``report.md`` + ``images/`` (:mod:`.report`).

Output folder ``--out`` (default ``outputs/<YYYYmmdd-HHMMSS>``): ``world/`` (synthetic scene), ``bag/`` (GT bag),
``recording/`` (the node's outputs, MCAP), ``eval/``, ``images/``, ``report.html``, ``report.md``, ``questions.json``.
Exit status 0 on success, 1 when a stage fails (the message names the stage and what to do), 130 on Ctrl-C before
the replay (Ctrl-C during the replay stops it and still writes the report from what was recorded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

from sparseoccvla_core.default_checkpoint import default_checkpoint

from ..replay import topics

#: The repository's committed default checkpoint (docs/training.md §2; scripts/train_default.sh).
DEFAULT_CHECKPOINT = default_checkpoint()
DEFAULT_SEED = 1000
DEFAULT_FRAMES = 16
DEFAULT_SIZE = (480, 270)
DEFAULT_RATE = 0.5
NODE_PATH = f"{topics.NODE_NAMESPACE}/{topics.NODE_NAME}"


class DemoError(RuntimeError):
    """A stage failed; the message says which and what to do."""


class Progress:
    """``[demo  12.3 s] stage: text`` lines on stderr (flushed)."""

    def __init__(self, quiet: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.quiet = quiet

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __call__(self, stage: str, text: str) -> None:
        if not self.quiet:
            print(f"[demo {self.elapsed():6.1f} s] {stage}: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class DemoOptions:
    """What one demo run does (``sparseoccvla demo``'s flags, same names and defaults).

    Args:
        ckpt: checkpoint folder (None: the repository's default checkpoint).
        data, scene: a nuScenes dataroot and the scene to replay (instead of a synthetic scene).
        bag: a GT bag written by ``sparseoccvla bag`` (skips the scene and bag stages).
        layout, frames, seed, width, height: the synthetic scene (layout, key frames, seed, camera W x H).
        rate: replay speed factor.
        question: questions to ask (empty: the default three).
        ask_at: key frames at which the questions are asked.
        report_frames: about this many key frames shown in the report.
        out: output folder (None: outputs/<YYYYmmdd-HHMMSS>); overwrite: replace a non-empty one.
        param: extra driving_node parameters, ``NAME:=VALUE``.
        diagnostics_period: the node's /diagnostics period, s.
        timeout: model load / answer timeout, s.
        quiet: no progress lines.
    """

    ckpt: Optional[str] = None
    data: Optional[str] = None
    bag: Optional[str] = None
    scene: Optional[str] = None
    layout: str = "intersection"
    frames: int = DEFAULT_FRAMES
    seed: int = DEFAULT_SEED
    width: int = DEFAULT_SIZE[0]
    height: int = DEFAULT_SIZE[1]
    rate: float = DEFAULT_RATE
    question: Sequence[str] = ()
    ask_at: int = 3
    report_frames: int = 20
    out: Optional[str] = None
    overwrite: bool = False
    param: Sequence[str] = ()
    diagnostics_period: float = 0.2
    timeout: float = 300.0
    quiet: bool = False


@dataclass
class DemoResult:
    """What a demo run produced (paths are inside ``out``)."""

    out: Path
    report_html: Path
    report_md: Path
    gt_bag: Path
    recording: Path
    eval_dir: Path
    questions: list = field(default_factory=list)
    replay: dict = field(default_factory=dict)
    phases_s: dict = field(default_factory=dict)


def resolve_checkpoint(ckpt: Optional[str | Path]) -> Path:
    """The checkpoint folder; the default is the repository's ``checkpoints/default``.

    Raises:
        DemoError: the folder (or its ``config.yaml`` / ``model.safetensors``) is missing; the message names the
        path and the training commands of docs/training.md §1.
    """
    from sparseoccvla_core.model import CONFIG_FILE, WEIGHTS_FILE

    path = Path(ckpt).expanduser().resolve() if ckpt else DEFAULT_CHECKPOINT
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (path / n).is_file()]
    if missing:
        which = "the default checkpoint" if not ckpt else "the checkpoint"
        raise DemoError(
            f"{which} {path} is missing {', '.join(missing)}. Give a checkpoint folder with --ckpt DIR (written by "
            "'sparseoccvla train', e.g. runs/stage3), or train one with the commands in docs/training.md "
            "§1 (sparseoccvla synth -> anchors -> train --stage 1/2/3)"
            + (f" and copy the final stage to {DEFAULT_CHECKPOINT}" if not ckpt else "")
        )
    return path


def _synthetic_scene(args: DemoOptions, out: Path, progress: Progress) -> Path:
    from sparseoccvla_core.synthetic.config import SynthConfig
    from sparseoccvla_core.synthetic.generate import generate_dataset

    cfg = SynthConfig(
        num_scenes=1,
        seed=args.seed,
        num_frames=args.frames,
        width=args.width,
        height=args.height,
        layouts=(args.layout,),
        write_lidar=False,
    )
    progress(
        "scene", f"generating a synthetic '{args.layout}' scene: seed {args.seed}, {args.frames} key frames, "
        f"six cameras at {args.width}x{args.height}"
    )  # fmt: skip
    info = generate_dataset(cfg, out, workers=1, overwrite=True)
    progress("scene", f"{info['scenes'][0]}: {info['key_frames']} key frames -> {out}")
    return out


def _triggers(gt, ask_at: int) -> list[tuple[int, int]]:
    """(key frame index, stamp) of ``ask_at`` key frames spread over the bag (never the very first)."""
    order = sorted(gt.frames.values(), key=lambda f: (f.stamp_ns, f.frame_index))
    n = len(order)
    if ask_at <= 0 or n == 0:
        return []
    picks = sorted({min(n - 1, max(1, round((j + 1) * n / (ask_at + 1)))) for j in range(ask_at)})
    return [(order[p].frame_index, order[p].stamp_ns) for p in picks]


def _replay(args: DemoOptions, ckpt: Path, gt_bag: Path, recording: Path, gt, progress: Progress) -> tuple[dict, list]:
    """Bringup (player -> node -> recorder) + questions; returns (replay counters, answers)."""
    import threading

    from ..bringup import Bringup
    from ..replay.player import install_stop_signals
    from .questions import DEFAULT_QUESTIONS, SceneQuestioner

    calib = gt_bag / topics.CALIBRATION_FILENAME
    params = [f"calibration_file:={calib}"] if calib.is_file() else []
    # a diagnostics message per key frame or more, so the recording holds every frame's stage timings
    params += [f"diagnostics_period_s:={args.diagnostics_period}", *args.param]
    progress("replay", f"starting player, driving_node ({ckpt}) and recorder; loading the model")
    try:
        bringup = Bringup(
            gt_bag,
            ckpt,
            record=recording,
            rate=args.rate,
            parameters=params,
            linger_s=2.0,
            wait_timeout_s=args.timeout,
            progress=False,
        )
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        raise DemoError(f"replay: the bringup did not start: {exc}") from exc
    install_stop_signals(bringup.stop)
    questioner = None
    n_frames = len(gt.frames)
    stop_monitor = threading.Event()
    t_play = [time.perf_counter()]

    def monitor() -> None:
        while not stop_monitor.wait(2.0):
            s = bringup.node.stats if bringup.node is not None else None
            if s is None:
                return
            with s.lock:
                done, dropped = s.frames_published, s.sets_dropped
            progress(
                "replay",
                f"key frames done {done}/{n_frames}, dropped {dropped}, "
                f"answers {len(questioner.answers) if questioner else 0}, {time.perf_counter() - t_play[0]:.1f} s",
            )

    def on_answer(qa) -> None:
        where = f"key frame {qa.scene_frame}" if qa.scene_frame is not None else "?"
        text = qa.answer if qa.success else f"no answer: {qa.error}"
        progress("ask", f"[{where}, {qa.latency_s:.2f} s] {qa.question} -> {text[:100]}")

    try:
        if not bringup.wait_ready():
            if bringup.stop_requested.is_set():
                raise KeyboardInterrupt
            level, text = bringup.node.model_status
            raise DemoError(f"replay: the driving node did not become ready: {text}")
        progress("replay", f"model loaded; playing {n_frames} key frames at rate {args.rate}x")
        questions = args.question or list(DEFAULT_QUESTIONS)
        questioner = SceneQuestioner(
            NODE_PATH,
            questions,
            _triggers(gt, args.ask_at),
            lambda s: gt.frames[s].frame_index if s in gt.frames else None,
            timeout_s=args.timeout,
            on_answer=on_answer,
        )
        watcher = threading.Thread(target=monitor, name="demo-progress", daemon=True)
        t_play[0] = time.perf_counter()
        watcher.start()
        stats = bringup.play()
        bringup.wait_outputs_done()
        questioner.finish(timeout_s=args.timeout)
        bringup.record_final_diagnostics()
        stop_monitor.set()
        s = bringup.node.stats
        with s.lock:
            replay = {
                "rate": args.rate,
                "messages_played": stats.published,
                "wall_s": time.perf_counter() - t_play[0],
                "sets_completed": s.sets_completed,
                "frames_published": s.frames_published,
                "sets_dropped_behind": s.sets_dropped,
            }
        answers = list(questioner.answers)
    finally:
        stop_monitor.set()
        if questioner is not None:
            questioner.close()
        bringup.close()
    progress(
        "replay",
        f"{replay['frames_published']}/{n_frames} key frames published, {replay['sets_dropped_behind']} dropped "
        f"(node fell behind), {sum(a.success for a in answers)}/{len(answers)} questions answered, "
        f"{replay['wall_s']:.1f} s",
    )
    return replay, answers


def run_demo(args: DemoOptions) -> DemoResult:
    """All stages (module docstring); raises :class:`DemoError` with the failing stage."""
    from sparseoccvla_core.config import SparseOccVLAConfig
    from sparseoccvla_core.model import CONFIG_FILE

    from ..replay.bag_writer import write_bag
    from ..replay.eval_bag import BagEvaluationError, evaluate_bags, read_gt_bag, write_bag_report
    from .collect import load_run
    from .report import ReportData, write_report

    progress = Progress(args.quiet)
    phases: dict[str, float] = {}
    ckpt = resolve_checkpoint(args.ckpt)
    cfg = SparseOccVLAConfig.from_yaml(ckpt / CONFIG_FILE)
    out = Path(args.out) if args.out else Path("outputs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise DemoError(f"output folder {out} exists and is not empty: choose another --out or pass --overwrite")
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    progress("model", f"checkpoint {ckpt} (image input {cfg.image_size[1]}x{cfg.image_size[0]}); output {out}")

    t = time.perf_counter()
    if args.bag:
        gt_bag = Path(args.bag).resolve()
        source = f"bag {gt_bag}"
        write_cfg = None
    else:
        if args.data:
            if not args.scene:
                raise DemoError("--data needs --scene NAME (the scene to replay)")
            data, scenes = Path(args.data), [args.scene]
            source = f"nuScenes scene {args.scene} of {data}"
        else:
            try:
                data, scenes = _synthetic_scene(args, out / "world", progress), None
            except ValueError as exc:
                raise DemoError(f"scene: {exc}") from exc
            source = (
                f"synthetic '{args.layout}' scene, seed {args.seed} (not a training seed), {args.frames} key frames, "
                f"{args.width}x{args.height} cameras"
            )
        phases["scene"] = time.perf_counter() - t
        t = time.perf_counter()
        gt_bag = out / "bag"
        try:
            summary = write_bag(data, gt_bag, scenes=scenes, cfg=cfg, progress=False)
        except (FileNotFoundError, FileExistsError, ValueError) as exc:
            raise DemoError(f"bag: {exc}") from exc
        progress(
            "bag", f"{summary.key_frames} key frames, {summary.messages} messages, {summary.bytes / 1e6:.1f} MB -> "
            f"{gt_bag} ({summary.seconds:.1f} s)"
        )  # fmt: skip
        write_cfg = cfg
        phases["bag"] = time.perf_counter() - t
    try:
        gt = read_gt_bag(gt_bag)
    except (FileNotFoundError, BagEvaluationError) as exc:
        raise DemoError(f"bag: {exc}") from exc

    t = time.perf_counter()
    recording = out / "recording"
    replay, answers = _replay(args, ckpt, gt_bag, recording, gt, progress)
    phases["replay"] = time.perf_counter() - t
    (out / "questions.json").write_text(json.dumps([asdict(a) for a in answers], indent=2) + "\n")

    t = time.perf_counter()
    eval_dir = out / "eval"
    try:
        results = evaluate_bags(gt_bag, recording, node=NODE_PATH, cfg=write_cfg)
    except (FileNotFoundError, BagEvaluationError) as exc:
        raise DemoError(f"eval: {exc}") from exc
    write_bag_report(results, eval_dir)
    rep = results.extra["replay"]
    progress("eval", f"scored {rep['key_frames']} key frames (missed {rep['missed']}) -> {eval_dir / 'metrics.json'}")
    phases["eval"] = time.perf_counter() - t

    t = time.perf_counter()
    progress("report", "reading the bags back")
    gt, frames, extras = load_run(gt_bag, recording, NODE_PATH, args.report_frames, answers)
    replay.update({k: v for k, v in extras.counters.items() if k not in replay})  # + synchronizer drops
    data = ReportData(
        run=out.name,
        created=f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')} - sparseoccvla demo",
        source=source,
        checkpoint=str(ckpt),
        pc_range=tuple(gt.pc_range),
        voxel_size=gt.voxel_size,
        key_frames=len(gt.frames),
        frames=frames,
        results=results,
        questions=answers,
        stage_times_s=extras.stage_times_s,
        replay=replay,
        phases_s=phases,
        recording=recording,
        gt_bag=gt_bag,
        eval_dir=eval_dir,
        node=NODE_PATH,
    )
    html, md = write_report(
        data,
        out,
        progress=lambda d, n: progress("report", f"key frame figures {d}/{n}") if d == n or d % 4 == 0 else None,
    )
    phases["report"] = time.perf_counter() - t
    progress("report", f"{html} ({len(frames)} key frames shown); also {md}")
    progress("done", f"total {progress.elapsed():.1f} s; open file://{html}")
    return DemoResult(out, html, md, gt_bag, recording, eval_dir, answers, replay, phases)


# ---------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sparseoccvla_core.synthetic.config import LAYOUTS

    parser.add_argument(
        "--ckpt", default=None, help=f"checkpoint folder (default: the repository's {DEFAULT_CHECKPOINT})"
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--data", default=None, help="nuScenes dataroot (devkit tables); needs --scene")
    src.add_argument("--bag", default=None, help="a GT bag written by 'sparseoccvla bag' (skips scene + bag)")
    parser.add_argument("--scene", default=None, help="scene name with --data, e.g. scene-0103")
    parser.add_argument("--layout", choices=LAYOUTS, default=DemoOptions.layout, help="synthetic layout (%(default)s)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="synthetic key frames (%(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="synthetic scene seed (%(default)s)")
    parser.add_argument("--width", type=int, default=DEFAULT_SIZE[0], help="synthetic image width (%(default)s)")
    parser.add_argument("--height", type=int, default=DEFAULT_SIZE[1], help="synthetic image height (%(default)s)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="replay speed factor (%(default)s)")
    parser.add_argument(
        "--question", action="append", default=[], help="a question to ask (repeatable; default: three questions)"
    )
    parser.add_argument("--ask-at", type=int, default=3, help="key frames at which the questions are asked (3)")
    parser.add_argument(
        "--report-frames", type=int, default=20, help="show at most about this many key frames (every k-th; 20)"
    )
    parser.add_argument("--out", default=None, help="output folder (default outputs/<YYYYmmdd-HHMMSS>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument(
        "-p", "--param", action="append", default=[], metavar="NAME:=VALUE", help="extra driving_node parameter"
    )
    parser.add_argument(
        "--diagnostics-period", type=float, default=0.2, metavar="S", help="node /diagnostics period (%(default)s)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="model load / answer timeout, s (%(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    options = DemoOptions(**{f.name: getattr(args, f.name) for f in fields(DemoOptions)})
    try:
        result = run_demo(options)
    except DemoError as exc:
        print(f"sparseoccvla demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparseoccvla demo: interrupted", file=sys.stderr)
        return 130
    print(result.report_html)
    return 0
