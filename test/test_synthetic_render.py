"""Renderer and LiDAR model of the synthetic world against analytic ray geometry (no dataset generated)."""

from __future__ import annotations

import numpy as np

from sparseoccvla_core.synthetic.calibration import camera_calibrations, lidar_calibration
from sparseoccvla_core.synthetic.lidar import LidarModel, virtual_views
from sparseoccvla_core.synthetic.primitives import ObjectBuilder
from sparseoccvla_core.synthetic.render import Camera, Look, PackedScene, render
from sparseoccvla_core.synthetic.world import SURF_ROAD, GroundMap

CAR, BUS, VEG, ROAD, TERRAIN = 4, 3, 16, 11, 14


def _scene():
    """A car 12 m ahead of the ego, a bus 25 m ahead (partly hidden by the car), a tree crown to the left."""
    n = 2000  # 200 m x 200 m of road at 0.1 m; the ego stands at (100, 100) heading +x
    ground = GroundMap(np.full((n, n), SURF_ROAD, np.uint8), np.zeros((n, n), np.uint8))
    car = (
        ObjectBuilder()
        .box(0, 0, 0.0, 1.6, 4.5, 1.9, np.array([0.8, 0.1, 0.1]), CAR)
        .build(112.0, 100.0, 0.0, instance=0)
    )
    bus = (
        ObjectBuilder()
        .box(0, 0, 0.0, 3.4, 11.0, 2.9, np.array([0.1, 0.3, 0.8]), BUS)
        .build(125.0, 100.5, 0.0, instance=1)
    )
    tree = ObjectBuilder().ellipsoid(0, 0, 4.0, 2.0, 2.0, 1.5, np.array([0.2, 0.5, 0.2]), VEG).build(118.0, 106.0, 0.0)
    ego2global = np.eye(4)
    ego2global[:2, 3] = 100.0
    look = Look.sample(np.random.default_rng(0), 0.0)
    return ground, [car, bus, tree], ego2global, look


def _front_camera(width=400, height=225) -> Camera:
    c = camera_calibrations()[0]
    return Camera(c.channel, c.scaled_intrinsics(width, height), c.sensor2ego, width, height)


def _rays_world(cam: Camera, ego2global: np.ndarray):
    c2g = ego2global @ cam.cam2ego
    return c2g[:3, 3], cam.rays_cam.astype(np.float64) @ c2g[:3, :3].T


def test_depth_class_and_occlusion_match_analytic_ray_casting():
    ground, objects, ego2global, look = _scene()
    cam = _front_camera()
    view = render(cam, ego2global, PackedScene.pack(objects), ground, look, None)
    origin, d = _rays_world(cam, ego2global)
    # independent reference: nearest hit of every ray with the ground plane, the two boxes and the ellipsoid
    t_ref = np.full(len(d), np.inf)
    cls_ref = np.full(len(d), 17)
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.where(d[:, 2] < 0, -origin[2] / d[:, 2], np.inf)
    gxy = origin[:2] + np.where(np.isfinite(tg), tg, 0)[:, None] * d[:, :2]
    on_map = np.all((gxy >= 0) & (gxy < 200.0), axis=1)  # the raster covers 200 m; beyond it is terrain
    t_ref, cls_ref = np.where(tg < t_ref, tg, t_ref), np.where(tg < t_ref, np.where(on_map, ROAD, TERRAIN), cls_ref)
    for obj in objects[:2]:  # axis-aligned boxes (yaw 0): slab test
        lo, hi = obj.center[0] - obj.half[0], obj.center[0] + obj.half[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = (lo - origin) / d, (hi - origin) / d
        tn, tf = np.minimum(ta, tb).max(1), np.maximum(ta, tb).min(1)
        hit = (tf >= tn) & (tn > 0.1) & (tn < t_ref)
        t_ref[hit], cls_ref[hit] = tn[hit], obj.cls[0]
    e = objects[2]
    o, dd = (origin - e.center[0]) / e.half[0], d / e.half[0]
    qa, qb, qc = (dd * dd).sum(1), 2 * dd @ o, o @ o - 1
    disc = qb * qb - 4 * qa * qc
    te = (-qb - np.sqrt(np.maximum(disc, 0))) / (2 * qa)
    hit = (disc >= 0) & (te > 0.1) & (te < t_ref)
    t_ref[hit], cls_ref[hit] = te[hit], VEG
    cls = view.cls.reshape(-1)
    agree = cls == cls_ref
    assert agree.mean() > 0.995  # only polygon-edge pixels may differ
    both = agree & np.isfinite(t_ref)
    np.testing.assert_allclose(view.depth.reshape(-1)[both], t_ref[both], rtol=1e-3, atol=1e-3)
    # occlusion: the bus is visible beside / above the car but never through it
    assert (cls == BUS).sum() > 50 and (cls == CAR).sum() > 50 and (cls == VEG).sum() > 20
    inst = view.instance.reshape(-1)
    assert set(np.unique(inst[cls == CAR])) == {0} and set(np.unique(inst[cls == BUS])) == {1}
    assert np.all(inst[(cls == ROAD) | (cls == VEG) | (cls == 17)] == -1)
    # the RGB image shows the car's red where the class buffer says car, sky above the horizon
    rgb = view.rgb.reshape(-1, 3).astype(int)
    assert (rgb[cls == CAR, 0] > rgb[cls == CAR, 2] + 40).mean() > 0.95
    assert (rgb[cls == 17, 2] > rgb[cls == 17, 0]).mean() > 0.95


def test_lidar_points_lie_on_the_surfaces():
    ground, objects, ego2global, look = _scene()
    lid = lidar_calibration()
    views = virtual_views(lid)
    model = LidarModel(lid, views)
    packed = PackedScene.pack(objects)
    rendered = [render(v, ego2global, packed, ground, look, None, shade=False) for v in views]
    pts, inst = model.sweep(rendered, None)
    assert pts.shape[1] == 5 and len(pts) > 20000
    ego = pts[:, :3] @ lid.sensor2ego[:3, :3].T + lid.sensor2ego[:3, 3]
    on_ground = (inst < 0) & (np.linalg.norm(ego[:, :2] - [18.0, 6.0], axis=1) > 2.1)  # not on the tree crown
    assert np.abs(ego[on_ground & (np.linalg.norm(ego[:, :2], axis=1) < 60), 2]).max() < 0.1  # road plane z = 0
    car = ego[inst == 0]
    assert len(car) > 50
    assert np.all(np.abs(car[:, 0] - 12.0) <= 2.25 + 0.05) and np.all(np.abs(car[:, 1]) <= 0.95 + 0.05)
    assert set(np.unique(pts[:, 4]).astype(int)) <= set(range(32))
