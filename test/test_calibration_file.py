"""sparseoccvla_core.calibration_file: the YAML precedence rule vs /tf_static and CameraInfo (pure, no ROS).

Expected values are built by hand here: a rotation about z for tf_static, the embedded nuScenes calibration for
the YAML, and a K matrix for CameraInfo; each case states which source must win per camera.
"""

import math

import numpy as np
import pytest

from sparseoccvla_core.batch import CAMERA_NAMES
from sparseoccvla_core.calibration_file import (
    SOURCE_CALIBRATION_FILE,
    SOURCE_CAMERA_INFO,
    SOURCE_TF_STATIC,
    CalibrationIncompleteError,
    CameraCalibration,
    camera_frame_ids,
    load_calibration,
    matrix_to_wxyz,
    resolve_camera_models,
    save_calibration,
)
from sparseoccvla_core.synthetic.calibration import camera_calibrations

W, H = 320, 180


def _yaml_cal(with_k=True):
    return {
        c.channel: CameraCalibration(
            c.channel,
            c.sensor2ego,
            f"{c.channel}_optical",
            c.scaled_intrinsics(W, H) if with_k else None,
            (W, H) if with_k else None,
        )
        for c in camera_calibrations()
    }


def _yaw(yaw, xyz):
    m = np.eye(4)
    m[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    m[:3, 3] = xyz
    return m


def test_tf_static_wins_per_camera_and_yaml_fills_the_rest():
    yaml_cal = _yaml_cal()
    tf = {"CAM_FRONT": _yaw(0.3, [1.0, 2.0, 3.0]), "CAM_BACK": _yaw(-1.0, [0.0, 0.0, 1.0])}
    k_info = np.array([[500.0, 0, 160], [0, 500.0, 90], [0, 0, 1]])
    info = {"CAM_FRONT_LEFT": (k_info, (H, W))}
    models = resolve_camera_models(CAMERA_NAMES, yaml_cal, tf, info)
    assert list(models) == list(CAMERA_NAMES)
    for cam, m in models.items():
        if cam in tf:
            assert m.extrinsics_source == SOURCE_TF_STATIC
            np.testing.assert_array_equal(m.cam2ego, tf[cam])
        else:
            assert m.extrinsics_source == SOURCE_CALIBRATION_FILE
            np.testing.assert_array_equal(m.cam2ego, yaml_cal[cam].cam2ego)
        if cam in info:
            assert m.intrinsics_source == SOURCE_CAMERA_INFO and m.image_wh == (W, H)
            np.testing.assert_array_equal(m.intrinsics, k_info)
        else:
            assert m.intrinsics_source == SOURCE_CALIBRATION_FILE
            np.testing.assert_array_equal(m.intrinsics, yaml_cal[cam].intrinsics)


def test_tf_static_alone_with_camera_info_is_enough():
    tf = {cam: _yaw(0.1 * i, [i, 0, 0]) for i, cam in enumerate(CAMERA_NAMES)}
    k = np.eye(3)
    k[0, 0] = k[1, 1] = 300.0
    models = resolve_camera_models(CAMERA_NAMES, {}, tf, {cam: (k, (H, W)) for cam in CAMERA_NAMES})
    assert {m.extrinsics_source for m in models.values()} == {SOURCE_TF_STATIC}


def test_incomplete_calibration_names_cameras_and_fix():
    yaml_cal = {k: v for k, v in _yaml_cal(with_k=False).items() if k != "CAM_BACK"}
    with pytest.raises(CalibrationIncompleteError) as err:
        resolve_camera_models(CAMERA_NAMES, yaml_cal, {}, {}, tf_available=True)
    text = str(err.value)
    assert "no extrinsics (cam2ego) for cameras ['CAM_BACK']" in text and "/tf_static" in text
    assert "no intrinsics for cameras" in text and "CameraInfo" in text
    with pytest.raises(CalibrationIncompleteError, match="tf2_msgs does not import"):
        resolve_camera_models(CAMERA_NAMES, yaml_cal, {}, {}, tf_available=False)


def test_camera_frame_ids_precedence():
    yaml_cal = _yaml_cal()
    got = camera_frame_ids(
        ["CAM_FRONT", "CAM_BACK", "CAM_BACK_LEFT"],
        {"CAM_FRONT": "cam_front_info", "CAM_BACK": ""},
        {k: v for k, v in yaml_cal.items() if k != "CAM_BACK_LEFT"},
    )
    assert got == {"CAM_FRONT": "cam_front_info", "CAM_BACK": "CAM_BACK_optical", "CAM_BACK_LEFT": "CAM_BACK_LEFT"}


def test_yaml_round_trip_and_quaternion(tmp_path):
    cams = _yaml_cal()
    path = save_calibration(tmp_path / "calibration.yaml", cams, ego_frame="ego")
    loaded, ego = load_calibration(path)
    assert ego == "ego" and list(loaded) == list(CAMERA_NAMES)
    for name, cal in cams.items():
        np.testing.assert_allclose(loaded[name].cam2ego, cal.cam2ego, atol=1e-9)
        assert loaded[name].frame_id == cal.frame_id and loaded[name].image_wh == (W, H)
    w, x, y, z = matrix_to_wxyz(_yaw(0.8, [0, 0, 0])[:3, :3])  # rotation about z: (cos(a/2), 0, 0, sin(a/2))
    np.testing.assert_allclose([w, x, y, z], [math.cos(0.4), 0, 0, math.sin(0.4)], atol=1e-12)
