"""The demo report (``sparseoccvla_ros/demo/report.py``) without ROS or a model: every image the HTML / markdown
references exists, every section is present, the figures put the right colours in the right places, and the
metric tables show the values of the metric code they come from."""

from __future__ import annotations

import html.parser
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from sparseoccvla_core.batch import CAMERA_NAMES, OCC3D_COLORS
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.evaluation import MetricAccumulator
from sparseoccvla_core.occ_grid import grid_shape, labels_to_points
from sparseoccvla_ros.demo.report import (
    CAMERA_GRID,
    SECTIONS,
    QuestionAnswer,
    ReportData,
    ReportFrame,
    camera_mosaic,
    top_view_image,
    write_report,
)

CFG = SparseOccVLAConfig()
PC, VOXEL = CFG.point_cloud_range, CFG.voxel_size
CAM_COLORS_BGR = {cam: (40 * i + 20, 200 - 30 * i, 60 + 25 * i) for i, cam in enumerate(CAMERA_NAMES)}


class _Refs(html.parser.HTMLParser):
    """Collects <img src>, <a href> and element ids of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if "id" in a:
            self.ids.append(a["id"])


def html_references(path: Path) -> _Refs:
    refs = _Refs()
    refs.feed(path.read_text())
    return refs


def _jpeg(bgr: tuple[int, int, int], w: int = 160, h: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((h, w, 3), bgr, np.uint8))
    assert ok
    return buf.tobytes()


def _grid_with_box(cls: int, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    grid = np.full(grid_shape(PC, VOXEL), 17, np.uint8)
    grid[:, :, 0] = 11  # driveable surface everywhere on the lowest layer
    grid[x0:x1, y0:y1, 2:4] = cls
    return grid


def _frame(index: int, with_outputs: bool = True) -> ReportFrame:
    gt_grid = _grid_with_box(4, 120, 130, 95, 105)  # a car ahead
    gt_pts, gt_lab = labels_to_points(gt_grid, PC, VOXEL)
    f = ReportFrame(index=index, scene="scene-test", stamp_ns=1_000_000_000 + index * 500_000_000)
    f.jpegs = {cam: _jpeg(CAM_COLORS_BGR[cam]) for cam in CAMERA_NAMES}
    f.gt_points, f.gt_labels = gt_pts, gt_lab
    f.gt_trajectory = np.array([[2.0 * (t + 1), 0.0] for t in range(6)])
    f.gt_future = {1.0: (gt_pts, gt_lab), 2.0: (gt_pts, gt_lab), 3.0: None}
    if with_outputs:
        pred_pts, pred_cls = labels_to_points(_grid_with_box(10, 120, 130, 95, 105), PC, VOXEL)
        f.pred_points, f.pred_classes, f.pred_scores = pred_pts, pred_cls, np.ones(len(pred_pts), np.float32)
        f.forecast = {h: (pred_pts, pred_cls) for h in (1.0, 2.0, 3.0)}
        f.plan = np.array([[1.9 * (t + 1), 0.1 * t] for t in range(6)])
        f.anchors = np.stack([f.plan, f.plan * [1.0, -1.0], f.plan * 0.5])
        f.anchor_scores, f.chosen_anchor = np.array([0.9, 0.3, 0.05]), 0
        f.explanation = "The ego car should keep straight & slow <down> for the car ahead."
    return f


def _results(frames: list[ReportFrame]):
    acc = MetricAccumulator(CFG)
    for f in frames:
        if f.pred_points is None:
            continue
        acc.add_occupancy(f.pred_points, f.pred_classes, _grid_with_box(4, 120, 130, 95, 105))
        acc.add_plan(f.plan, f.gt_trajectory, np.ones(6, bool), np.array([4.0, 0.0]))
    results = acc.finalize(split="bag", num_samples=len(frames), meteor=False)
    results.extra["replay"] = {
        "key_frames": len(frames),
        "matched": {"occupancy": 2, "forecast": 2, "plan": 2},
        "missed": {"occupancy": 1, "forecast": 1, "plan": 1},
        "latency": {
            "clock": "recorded-inputs",
            "plan": {"p50": 0.123, "p90": 0.2, "p95": 0.25, "max": 0.3, "count": 2},
        },
    }
    return results


@pytest.fixture
def report(tmp_path):
    frames = [_frame(0), _frame(4), _frame(8, with_outputs=False)]
    qa = QuestionAnswer("How many cars are in front of the ego car?", "One car.", True, "", 0.25, 0.3, 4, 4)
    qa.scene_stamp_ns = frames[1].stamp_ns
    failed = QuestionAnswer("Is it raining?", "", False, "the model is not ready", 0.0, 0.01, None, None)
    frames[1].questions = [qa]
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "rec.mcap").write_bytes(b"\x89MCAP0\r\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    data = ReportData(
        run="test-run",
        created="today",
        source="hand-built frames",
        checkpoint="/nowhere/ckpt",
        pc_range=PC,
        voxel_size=VOXEL,
        key_frames=12,
        frames=frames,
        results=_results(frames),
        questions=[qa, failed],
        stage_times_s={"backbone": [0.02, 0.03, 0.025], "llm": [0.05, 0.06, 0.055]},
        replay={"rate": 0.5, "sets_completed": 12, "frames_published": 11, "sets_dropped_behind": 1},
        phases_s={"scene": 3.0, "replay": 10.0},
        recording=tmp_path / "rec",
        gt_bag=None,
        eval_dir=tmp_path / "eval",
    )
    html_path, md_path = write_report(data, tmp_path / "out")
    return data, html_path, md_path


def test_every_referenced_image_exists_and_every_section_is_present(report):
    data, html_path, md_path = report
    refs = html_references(html_path)
    assert refs.images, "the report shows no image"
    for src in refs.images:
        assert not src.startswith(("http:", "https:", "data:")), src
        target = (html_path.parent / src) if "://" not in src else Path(src.split("://", 1)[1])
        assert target.is_file(), f"{src} referenced by report.html does not exist"
        assert cv2.imread(str(target)) is not None, f"{src} is not a readable image"
    for section in SECTIONS:
        assert section in refs.ids, f"section #{section} missing"
    for f in data.frames:  # four figures per key frame shown
        assert f"frame-{f.index}" in refs.ids
        assert sum(f"frame{f.index:03d}_" in s for s in refs.images) == 4
    for href in refs.links:  # recording + eval links resolve too
        if not href.startswith("#"):
            assert (html_path.parent / href).is_file() or Path(href.replace("file://", "")).is_file(), href
    md = md_path.read_text()
    md_images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(md_images) >= 4 * len(data.frames) + 1
    for src in md_images:
        assert (md_path.parent / src).is_file(), f"{src} referenced by report.md does not exist"
    for heading in ("## Summary", "## Key frames", "## Metrics (eval-bag)", "## Timing", "## Recording"):
        assert heading in md


def test_report_text_shows_answers_explanations_and_escapes_html(report):
    data, html_path, md_path = report
    page = html_path.read_text()
    assert "How many cars are in front of the ego car?" in page and "One car." in page
    assert "no answer: the model is not ready" in page  # the failed question is shown, not hidden
    assert "slow &lt;down&gt;" in page and "slow <down>" not in page
    assert "(no explanation recorded)" in page  # the frame without outputs says so
    assert "rec.mcap" in page and "Foxglove" in page and "rviz/sparseoccvla.rviz" in page
    assert "1 of 2 answered" in page or "1 / 2" in page
    assert "One car." in md_path.read_text()


def test_metric_tables_show_the_accumulated_values(report):
    data, html_path, _ = report
    page = html_path.read_text()
    r = data.results
    occ = r.occupancy.no_mask
    # computed independently: pred = truck box, GT = car box on the same voxels, road identical
    assert occ.iou_per_class["driveable_surface"] == pytest.approx(100.0)
    assert occ.iou_per_class["car"] == pytest.approx(0.0)
    assert f"{occ.miou:.2f}" in page
    l2 = r.planning.scores.l2["stp3"]
    gt = np.array([[2.0 * (t + 1), 0.0] for t in range(6)])
    plan = np.array([[1.9 * (t + 1), 0.1 * t] for t in range(6)])
    err = np.linalg.norm(plan - gt, axis=1)
    assert l2.horizons["1s"] == pytest.approx(err[:2].mean(), abs=1e-6)
    assert f"{l2.horizons['1s']:.2f}" in page
    assert "0.123" in page  # eval-bag's latency p50
    assert "matched occupancy 2" in page


def test_top_view_colours_and_orientation():
    """A car voxel column ahead-left of the ego lands at the right pixel with the car colour; empty = white."""
    grid = np.full(grid_shape(PC, VOXEL), 17, np.uint8)
    ix, iy = 150, 120  # x = -40 + 150*0.4 + 0.2 = 20.2 m ahead, y = 8.2 m left
    grid[ix, iy, 5] = 4
    pts, lab = labels_to_points(grid, PC, VOXEL)
    assert np.allclose(pts[0, :2], [20.2, 8.2], atol=1e-4)
    img, present = top_view_image(pts, lab, PC, VOXEL)
    assert present == {4}
    assert np.allclose(img[ix, iy], np.array(OCC3D_COLORS[4]) / 255.0)
    assert np.allclose(img[0, 0], 1.0)  # free = white
    empty, none = top_view_image(None, None, PC, VOXEL)
    assert none == set() and np.allclose(empty, 1.0)


def test_camera_mosaic_uses_the_surround_layout(tmp_path):
    jpegs = {cam: _jpeg(CAM_COLORS_BGR[cam]) for cam in CAMERA_NAMES if cam != "CAM_BACK"}
    path = tmp_path / "m.png"
    camera_mosaic(jpegs, path, thumb_width=160)
    img = cv2.imread(str(path))
    th = img.shape[0] // 2
    assert img.shape[1] == 3 * 160
    for r, row in enumerate(CAMERA_GRID):
        for c, cam in enumerate(row):
            pixel = img[r * th + th // 2 + 10, c * 160 + 80].astype(int)
            expected = np.array(CAM_COLORS_BGR[cam]) if cam != "CAM_BACK" else np.array([128, 128, 128])
            assert np.abs(pixel - expected).max() <= 12, (cam, pixel, expected)


def test_missing_default_checkpoint_names_the_path_and_the_training_commands(tmp_path):
    from sparseoccvla_ros.demo.command import DemoError, resolve_checkpoint

    with pytest.raises(DemoError) as exc:
        resolve_checkpoint(tmp_path / "nope")
    text = str(exc.value)
    assert str(tmp_path / "nope") in text and "config.yaml" in text and "docs/training.md §1" in text


def test_select_frames_every_kth_plus_question_frames():
    from sparseoccvla_ros.demo.collect import select_frames

    assert select_frames(10, 20) == list(range(10))
    assert select_frames(40, 10) == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
    assert select_frames(40, 10, include=[5, 39, 99]) == [0, 4, 5, 8, 12, 16, 20, 24, 28, 32, 36, 39]
    assert select_frames(0, 5) == []


def test_questions_are_escaped_and_shown_once_each(tmp_path):
    """The Q&A block (one template macro) escapes questions, answers and errors in the HTML, keeps them verbatim in
    the markdown, and shows each question once: under its key frame, or under "Other questions"."""
    frame = _frame(2, with_outputs=False)
    about = QuestionAnswer("Is the <b>light</b> red & green?", "No, it's <green>.", True, "", 0.1, 0.2, 2, 2)
    about.scene_stamp_ns = frame.stamp_ns
    frame.questions = [about]
    failed = QuestionAnswer("Who's there?", "", False, "timeout <after 5 s>", 0.0, 5.0, None, None)
    data = ReportData(
        run="escape-run",
        created="today",
        source="a <script>alert(1)</script> source",
        checkpoint="ckpt",
        pc_range=PC,
        voxel_size=VOXEL,
        key_frames=1,
        frames=[frame],
        results=None,
        questions=[about, failed],
    )
    html_path, md_path = write_report(data, tmp_path / "out")
    page = html_path.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>light</b>" not in page and "Is the &lt;b&gt;light&lt;/b&gt; red &amp; green?" in page
    assert "&lt;green&gt;" in page and "timeout &lt;after 5 s&gt;" in page
    assert page.count('<div class="qa">') == 2 and page.count("Other questions") == 1
    assert page.index("Is the &lt;b&gt;") < page.index('id="metrics"')  # under its key frame
    md = md_path.read_text()
    assert md.count("- **Q:** ") == 2 and "Is the <b>light</b> red & green?" in md and "No, it's <green>." in md
    assert "_no answer: timeout <after 5 s>_" in md and "### Other questions" in md
    for table in ("Occupancy (current frame, Occ3D)", "Latency"):  # no eval results: the tables say so
        assert table in page
    assert page.count("not available") >= 4


def test_report_templates_are_package_data():
    """The templates ship with the package (setup.py package_data), so an installed (non-editable) package renders."""
    import ast
    from importlib.resources import files

    from sparseoccvla_ros.demo.report import TEMPLATES

    templates = files("sparseoccvla_ros.demo") / "templates"
    for name in TEMPLATES.values():
        assert (templates / name).is_file(), name
    setup = ast.parse((Path(__file__).resolve().parents[1] / "setup.py").read_text())
    package_data = next(
        kw.value
        for node in ast.walk(setup)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "package_data"
    )
    patterns = ast.literal_eval(package_data)["sparseoccvla_ros"]
    assert "demo/templates/*.j2" in patterns
