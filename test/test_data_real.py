"""Data loaders on the real sample files in ../shared/data (nuScenes key frame, Occ3D GT, QA files).

Skips with the reason when the samples are absent.  Geometry checks compare with independent computations and
with the figures measured in ../shared/data/nuscenes_demo/README.md.
"""

import json

import cv2
import numpy as np
import pytest

from sparseoccvla_core.batch import CAMERA_NAMES, FREE_CLASS, IGNORE_INDEX, OCC3D_CLASSES
from sparseoccvla_core.config import SparseOccVLAConfig
from sparseoccvla_core.data.images import CorruptImageError, jpeg_size, load_image
from sparseoccvla_core.data.occ3d import load_occ3d_labels, occ3d_points
from sparseoccvla_core.data.qa import (
    OmniDriveQA,
    load_drivelm,
    load_nuscenes_qa,
    load_nuscenes_qa_answers,
    load_omnidrive_planning_anchors,
    planning_answer,
)
from sparseoccvla_core.geometry.camera import invert_pose, project_points, resize_crop_for, transform_points
from sparseoccvla_core.occ_grid import points_to_labels

# nuscenes_demo/README.md, "Geometry sanity check": points inside each 1600x900 image with depth > 0.1 m.
README_IN_IMAGE_MOTION_COMPENSATED = {
    "CAM_FRONT": 3067,
    "CAM_FRONT_RIGHT": 3079,
    "CAM_FRONT_LEFT": 3704,
    "CAM_BACK": 4826,
    "CAM_BACK_LEFT": 4097,
    "CAM_BACK_RIGHT": 3379,
}
README_IN_IMAGE_STATIC_CAM2EGO = {
    "CAM_FRONT": 2879,
    "CAM_FRONT_RIGHT": 3009,
    "CAM_FRONT_LEFT": 3558,
    "CAM_BACK": 4898,
    "CAM_BACK_LEFT": 4100,
    "CAM_BACK_RIGHT": 3422,
}
README_UNION = 20206


@pytest.fixture(scope="module")
def demo(nuscenes_demo_dir):
    calib = json.loads((nuscenes_demo_dir / "calib.json").read_text())["samples"][0]
    raw = np.fromfile(nuscenes_demo_dir / calib["lidar"]["path"], dtype=np.float32).reshape(-1, 5)
    lidar2ego = np.asarray(calib["lidar"]["lidar2ego"])
    points_ego = transform_points(lidar2ego, raw[:, :3].astype(np.float64))  # [P, 3]
    return calib, points_ego, lidar2ego


def _counts(calib, points_ego, cam2ego_of, scale_to=None):
    counts, union = {}, np.zeros(len(points_ego), dtype=bool)
    for cam in CAMERA_NAMES:
        c = calib["cameras"][cam]
        k, hw = np.asarray(c["intrinsic"]), (c["height"], c["width"])
        if scale_to is not None:
            tr = resize_crop_for(hw, scale_to)
            k, hw = tr.apply_to_intrinsics(k), tr.out_hw
        _, _, inside = project_points(points_ego, k, cam2ego_of(c), hw)
        counts[cam] = int(inside.sum())
        union |= inside
    return counts, union


def test_lidar_projects_into_cameras_like_readme(demo):
    """Our projection path reproduces the README's per-camera coverage (both cam2ego variants)."""
    calib, points_ego, lidar2ego = demo
    n = len(points_ego)
    static, _ = _counts(calib, points_ego, lambda c: np.asarray(c["cam2ego"]))
    # motion-compensated cam2ego (camera -> ego at the lidar stamp), what frames.py builds from ego poses
    moving, union = _counts(calib, points_ego, lambda c: lidar2ego @ invert_pose(np.asarray(c["lidar2cam"])))
    for cam in CAMERA_NAMES:
        assert abs(static[cam] - README_IN_IMAGE_STATIC_CAM2EGO[cam]) <= 0.01 * README_IN_IMAGE_STATIC_CAM2EGO[cam]
        assert (
            abs(moving[cam] - README_IN_IMAGE_MOTION_COMPENSATED[cam]) <= 0.01 * README_IN_IMAGE_MOTION_COMPENSATED[cam]
        )
        assert 0.085 <= moving[cam] / n <= 0.142  # README: 8.8-13.9 % per camera
    assert abs(int(union.sum()) - README_UNION) <= 0.01 * README_UNION
    assert 0.57 <= union.mean() <= 0.595  # README: 58.3 % in at least one camera


def test_resized_intrinsics_keep_relative_location(demo):
    """After resize + crop a 3D point lands where an independent pixel mapping of the original puts it."""
    calib, points_ego, _ = demo
    for out_hw in ((256, 704), (64, 160), (96, 224)):
        for cam in CAMERA_NAMES:
            c = calib["cameras"][cam]
            k, hw, c2e = np.asarray(c["intrinsic"]), (c["height"], c["width"]), np.asarray(c["cam2ego"])
            uv, depth, inside = project_points(points_ego, k, c2e, hw)
            tr = resize_crop_for(hw, out_hw)
            uv2, depth2, inside2 = project_points(points_ego, tr.apply_to_intrinsics(k), c2e, tr.out_hw)
            # independent: relative position in the original image -> resized image -> minus the crop window
            rh, rw = tr.resized_hw
            expect = np.stack([uv[:, 0] / hw[1] * rw, uv[:, 1] / hw[0] * rh], 1) - np.asarray(tr.crop_xy)
            front = depth > 0.1
            np.testing.assert_allclose(uv2[front], expect[front], atol=1e-6 * max(hw))
            np.testing.assert_allclose(depth2, depth)
            # a point inside the output image was inside the original image (crop only removes)
            assert np.all(inside[inside2])
    # the paper setting: 1600x900 -> 704x396 -> top 140 rows cut
    tr = resize_crop_for((900, 1600), (256, 704))
    assert tr.resized_hw == (396, 704) and tr.crop_xy == (0, 140) and tr.scale == (0.44, 0.44)


def test_load_image_reduced_decode_matches_full_decode(nuscenes_demo_dir, demo):
    calib, _, _ = demo
    c = calib["cameras"]["CAM_FRONT"]
    path = nuscenes_demo_dir / c["img_path"]
    assert jpeg_size(path.read_bytes()) == (900, 1600)
    tr = resize_crop_for((900, 1600), (64, 160))
    fast = load_image(path, tr)  # decoded at 1/4 (225x400), then INTER_AREA
    assert fast.shape == (64, 160, 3) and fast.dtype == np.uint8
    full = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    rh, rw = tr.resized_hw
    ref = cv2.resize(full, (rw, rh), interpolation=cv2.INTER_AREA)[tr.crop_xy[1] :, tr.crop_xy[0] :][:64, :160]
    diff = np.abs(fast.astype(np.int32) - ref.astype(np.int32))
    assert diff.mean() < 3.0, diff.mean()


def test_bad_images_raise_clear_errors(nuscenes_demo_dir, tmp_path, demo):
    calib, _, _ = demo
    data = (nuscenes_demo_dir / calib["cameras"]["CAM_BACK"]["img_path"]).read_bytes()
    tr = resize_crop_for((900, 1600), (64, 160))
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(CorruptImageError, match="truncated"):
        load_image(tmp_path / "trunc.jpg", tr)
    with pytest.raises(CorruptImageError, match="not a JPEG"):
        load_image(tmp_path / "text.jpg", tr)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg", tr)
    with pytest.raises(CorruptImageError, match="disagrees with its calibration"):
        load_image(nuscenes_demo_dir / calib["cameras"]["CAM_BACK"]["img_path"], tr, in_hw=(450, 800))


def test_occ3d_sample_road_on_ego_ground_and_round_trip(occ3d_sample_dir):
    cfg = SparseOccVLAConfig.tiny()
    labels = load_occ3d_labels(occ3d_sample_dir / "29796060110c4163b07f06eff4af0753" / "labels.npz")
    pts, lab = occ3d_points(labels, cfg.point_cloud_range, cfg.voxel_size)
    assert len(pts) == 640000 - 600908  # README histogram: non-free voxels
    road = pts[lab == OCC3D_CLASSES.index("driveable_surface")]
    assert len(road) == 8433
    np.testing.assert_allclose(road[:, 2], 0.0, atol=1e-6)  # layer 0 centre = nuScenes ego ground after the shift
    # the ego column (100, 100) is road right under the car
    under = (np.abs(pts[:, 0]) < 0.4) & (np.abs(pts[:, 1]) < 0.4) & (pts[:, 2] < 0.2)
    assert set(lab[under].tolist()) == {OCC3D_CLASSES.index("driveable_surface")}
    # points -> grid -> points is exact
    grid = points_to_labels(pts, lab, cfg.point_cloud_range, cfg.voxel_size, free_class=FREE_CLASS)
    np.testing.assert_array_equal(grid, labels.semantics)
    # visibility masks select exactly the masked non-free voxels
    cam_pts, _ = occ3d_points(labels, cfg.point_cloud_range, cfg.voxel_size, visibility="camera")
    assert len(cam_pts) == 43355 - 20491


def test_occ3d_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.npz"):
        load_occ3d_labels(tmp_path / "scene-x" / "tok" / "labels.npz")
    np.savez(tmp_path / "bad.npz", semantics=np.zeros((200, 200, 16), np.uint8))
    with pytest.raises(ValueError, match="mask_camera"):
        load_occ3d_labels(tmp_path / "bad.npz")


def test_drivelm_files_parse(qa_samples_dir):
    root = qa_samples_dir / "drivelm"
    frames = load_drivelm(root / "train_sample.json")
    assert len(frames) == 9
    assert sum(len(f.pairs) for f in frames.values()) == 790  # README: 790 QA pairs
    for f in frames.values():
        assert f.plan_text and f.plan_text.startswith("The ego vehicle")
        assert {p.source for p in f.pairs} >= {"drivelm/perception", "drivelm/planning", "drivelm/behavior"}
        for cam, rel in f.image_paths.items():
            assert cam in CAMERA_NAMES
            assert (root / rel.replace("../", "", 1)).is_file()
    test_frames = load_drivelm(root / "test.json")
    assert set(test_frames) == set(frames)
    assert all(p.question and p.answer is not None for f in test_frames.values() for p in f.pairs)


def test_drivelm_pair_tokenizes_with_chat_template(qa_samples_dir):
    from sparseoccvla_core.tokenizer import default_corpus, encode_qa, train_tokenizer

    frames = load_drivelm(qa_samples_dir / "drivelm" / "train_sample.json")
    pairs = [p for f in frames.values() for p in f.pairs]
    tok = train_tokenizer(default_corpus() + [p.question + " " + p.answer for p in pairs[:50]], vocab_size=600)
    pair = next(p for p in pairs if p.source == "drivelm/behavior")
    ids, labels = encode_qa(tok, pair.question, pair.answer, max_tokens=256)
    answer_ids = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert labels[0] == IGNORE_INDEX and answer_ids[-1] == tok.eos_token_id
    assert tok.decode(answer_ids[:-1]).strip() == pair.answer.strip()
    assert "USER:" in tok.decode(ids) and pair.question in tok.decode(ids)


def test_nuscenes_qa_answer_vocabulary(qa_samples_dir, tmp_path):
    vocab = load_nuscenes_qa_answers(qa_samples_dir / "nuscenes_qa" / "answer_dict.json")
    assert len(vocab) == 30 and vocab[:11] == [str(i) for i in range(11)]
    assert {"yes", "no", "car", "traffic cone", "without rider"} <= set(vocab)
    # a question file in the documented schema parses to per-token pairs whose answers are in the vocabulary
    qfile = tmp_path / "NuScenes_val_questions.json"
    qfile.write_text(
        json.dumps(
            {
                "questions": [
                    {
                        "sample_token": "a",
                        "question": "How many cars are there?",
                        "answer": "2",
                        "template_type": "count",
                        "num_hop": 0,
                    },
                    {
                        "sample_token": "a",
                        "question": "Is there a bus?",
                        "answer": "no",
                        "template_type": "exist",
                        "num_hop": 0,
                    },
                    {
                        "sample_token": "b",
                        "question": "What is parked?",
                        "answer": "truck",
                        "template_type": "object",
                        "num_hop": 1,
                    },
                ]
            }
        )
    )
    qa = load_nuscenes_qa(qfile)
    assert [p.answer for p in qa["a"]] == ["2", "no"] and qa["b"][0].question == "What is parked?"
    assert all(p.answer in vocab for ps in qa.values() for p in ps)
    qfile.write_text(json.dumps({"items": []}))
    with pytest.raises(ValueError, match="questions"):
        load_nuscenes_qa(qfile)


def test_omnidrive_files(qa_samples_dir, tmp_path):
    anchors = load_omnidrive_planning_anchors(qa_samples_dir / "omnidrive" / "planning_anchor_infos.pkl")
    assert anchors.shape == (300, 6, 3)
    assert 0.0 <= anchors[..., 0].min() and anchors[..., 0].max() < 60.0  # x forward, <= 54.5 m in 3 s
    # QA files in the OmniDrive layout (docs/reference_choices.md §5.2; no real instance is public)
    for kind, content in {
        "desc": {"description": "A wide road at night.", "action": "Keep the lane and slow down."},
        "conv": [{"question": "Is the light red?", "answer": "Yes."}],
        "vqa": [{"question": "How many cars?", "answer": "Two."}],
        "keywords": "slow down",
    }.items():
        (tmp_path / kind / "val").mkdir(parents=True)
        (tmp_path / kind / "val" / "tok.json").write_text(json.dumps(content))
    omni = OmniDriveQA(tmp_path, "val")
    pairs = omni.pairs("tok")
    assert [p.source for p in pairs] == ["desc", "conv", "vqa", "keywords"]
    assert pairs[0].answer == "A wide road at night." and omni.plan_text("tok") == "Keep the lane and slow down."
    assert omni.pairs("other") == [] and omni.plan_text("other") is None
    (tmp_path / "conv" / "val" / "tok.json").write_text(json.dumps({"question": "q"}))
    with pytest.raises(ValueError, match="conv"):
        omni.pairs("tok")


def test_planning_answer_format():
    wp = np.array([[2.004, 0.004], [4.5, -0.126], [7.0, 0.5], [9.5, 1.0], [12.0, 1.5], [14.5, 2.25]])
    assert planning_answer(wp) == (
        "Here is the planning trajectory [PT, (+2.00, 0.0), (+4.50, -0.13), (+7.00, +0.50), (+9.50, +1.00), "
        "(+12.00, +1.50), (+14.50, +2.25)]."
    )


def test_concat_gt_on_real_occ3d_sample_matches_set_union(occ3d_sample_dir):
    """G of the real sample and a copy seen from 2 m further ahead equals the independent voxel-set union."""
    from sparseoccvla_core.data.occ3d import EXTENDED_RANGE_EGO, concat_gt, to_future_frame
    from sparseoccvla_core.geometry.camera import pose_matrix

    cfg = SparseOccVLAConfig.tiny()
    labels = load_occ3d_labels(occ3d_sample_dir / "29796060110c4163b07f06eff4af0753" / "labels.npz")
    pts, lab = occ3d_points(labels, cfg.point_cloud_range, cfg.voxel_size)
    fut_to_cur = pose_matrix([1, 0, 0, 0], [2.0, 0.0, 0.0])  # the future ego stands 2 m (5 voxels) ahead
    g_pts, g_lab = concat_gt([(pts, lab), (pts, lab)], [np.eye(4), fut_to_cur], EXTENDED_RANGE_EGO, cfg.voxel_size)
    ijk = np.argwhere(labels.semantics != FREE_CLASS)
    union = {tuple(v) for v in ijk} | {(i + 5, j, k) for i, j, k in ijk}
    assert len(g_pts) == len(union)
    got = {tuple(v) for v in np.round((g_pts - np.asarray(cfg.point_cloud_range[:3])) / 0.4 - 0.5).astype(int)}
    assert got == union
    # where both frames occupy a voxel the current frame's label is kept
    np.testing.assert_array_equal(g_lab[: len(lab)], lab)
    # G seen from the future frame contains the future frame's own GT exactly
    back, back_lab = to_future_frame(g_pts, g_lab, np.linalg.inv(fut_to_cur), EXTENDED_RANGE_EGO)
    own = {tuple(p) for p in np.round(pts, 3)}
    assert own <= {tuple(p) for p in np.round(back, 3)}
