"""Camera renderer of the synthetic world: z-buffered rasterisation of boxes and ray-cast ellipsoids, in numpy
and OpenCV.

Every pixel's viewing ray is ``d = R_wc K^-1 [u + 0.5, v + 0.5, 1]``, so a hit at ray parameter ``t`` has camera
z-depth ``t``.  Per camera:

1. **Ground**: rays going down hit the plane z = 0; colour from the surface / marking raster with asphalt and grass
   grain and sidewalk paving joints.
2. **Boxes**: per object, the front-facing faces of its boxes (at most three per box, tiling its silhouette) are
   clipped at the near plane, projected and filled with OpenCV into one window (far to near within the object);
   each covered pixel gets the exact depth of its face plane ``t = (n . p0) / (n . d)`` and is kept only where it
   is nearer than the z-buffer (objects are drawn front to back and skipped when already hidden).
3. **Ellipsoids** (tree crowns, heads): ray-quadric intersection on the pixels of their projected bounding box,
   same z-test.
4. **Shading** of all object pixels at once: Lambert with a per-scene sun plus sky light, textures (building
   window grid, bus window band, leaf grain), emissive signal lamps; road users cast a contact shadow (the
   ground under their footprint is darkened).  Sky is a vertical gradient; colours fade into
   haze with distance (``1 - exp(-d / 350 m)``); a per-camera exposure gain and Gaussian sensor noise follow.

Besides RGB the renderer returns the z-depth, the Occ3D class and the annotated-object instance of every pixel:
occupancy visibility masks, LiDAR points and the tests use those buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..batch import FREE_CLASS
from .primitives import BOX, TEX_EMISSIVE, TEX_LEAVES, TEX_WINDOW_BAND, TEX_WINDOWS, SceneObject
from .world import SURF_OTHER_FLAT, SURF_ROAD, SURF_SIDEWALK, SURFACE_TO_OCC, GroundMap

FREE = FREE_CLASS  # Occ3D's free-space label
NEAR = 0.1  # m, near plane
FAR = 400.0  # m, objects beyond are not drawn (haze covers them)
HAZE_DISTANCE = 350.0  # m, e-folding distance of the aerial perspective
SUBPIXEL_BITS = 4  # OpenCV fill precision
_SURFACE_RGB = np.array([[0.30, 0.40, 0.19], [0.31, 0.31, 0.32], [0.62, 0.61, 0.58], [0.55, 0.54, 0.50]], np.float32)
_MARK_RGB = np.array([[0, 0, 0], [0.90, 0.90, 0.88], [0.88, 0.70, 0.16]], np.float32)
_GRAIN = np.array([0.05, 0.035, 0.03, 0.03], np.float32)  # grain amplitude per surface
# Box corner k has local signs ((k >> 2) & 1, (k >> 1) & 1, k & 1) -> (x, y, z); faces list corners in order.
_SIGNS = np.array([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], np.float32) * 2.0 - 1.0
_FACES = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]])
_FACE_NORMALS = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], np.float32)


@dataclass
class Camera:
    """A pinhole camera on the ego vehicle.

    Args:
        name: channel name.
        K: [3, 3] intrinsics at the rendered resolution.
        cam2ego: [4, 4] camera -> ego (camera: x right, y down, z forward).
        width, height: image size, pixels.
    """

    name: str
    K: np.ndarray
    cam2ego: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        u, v = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        pix = np.stack([u, v, np.ones_like(u)], axis=-1).reshape(-1, 3)  # [H*W, 3]
        self.rays_cam = (pix @ np.linalg.inv(self.K).T).astype(np.float32)  # z = 1: t is the z-depth
        self.ray_norm = np.linalg.norm(self.rays_cam, axis=1)  # metres of ray per metre of depth


@dataclass
class View:
    """One rendered image and its per-pixel buffers, all [H, W]."""

    rgb: np.ndarray  # uint8 [H, W, 3] RGB
    depth: np.ndarray  # float32 z-depth, inf for sky
    cls: np.ndarray  # uint8 Occ3D class (17 = sky / free)
    instance: np.ndarray  # int32 annotated-object index, -1 otherwise


@dataclass
class Look:
    """Per-scene appearance: sun direction, sky colours, ground grain texture, sensor-noise bank."""

    sun: np.ndarray
    sky_horizon: np.ndarray
    sky_zenith: np.ndarray
    grain: np.ndarray  # [256, 256] float32 in [-1, 1]
    frame_yaw: float
    noise: np.ndarray  # [NOISE_SIZE, NOISE_SIZE, 3] float32 unit Gaussian, shifted randomly per image

    @staticmethod
    def sample(rng: np.random.Generator, frame_yaw: float) -> "Look":
        az, el = rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 1.1)
        sun = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)], np.float32)
        haze = rng.uniform(0.0, 0.1)
        grain = rng.uniform(-1.0, 1.0, (256, 256)).astype(np.float32)
        grain = 0.5 * grain + 0.25 * (np.roll(grain, 1, 0) + np.roll(grain, 1, 1))
        noise = rng.standard_normal((512, 512, 3), dtype=np.float32)
        return Look(
            sun,
            np.array([0.80, 0.85, 0.90], np.float32) + haze,
            np.array([0.42, 0.58, 0.85], np.float32) + haze * 0.5,
            grain,
            frame_yaw,
            noise,
        )


@dataclass
class PackedScene:
    """All primitives of a frame in flat arrays (P primitives), with their box corners and face planes."""

    center: np.ndarray  # [P, 3]
    half: np.ndarray  # [P, 3]
    cos: np.ndarray  # [P]
    sin: np.ndarray  # [P]
    kind: np.ndarray  # [P]
    color: np.ndarray  # [P, 3]
    cls: np.ndarray  # [P]
    texture: np.ndarray  # [P]
    instance: np.ndarray  # [P]
    corners: np.ndarray  # [P, 8, 3] world corners (ellipsoids: of their bounding box)
    face_normal: np.ndarray  # [P, 6, 3] world outward normals
    face_point: np.ndarray  # [P, 6, 3] a point on each face (its centre), world
    object_of: np.ndarray  # [P] index of the object each primitive belongs to
    object_start: np.ndarray  # [O] first primitive of each object

    @staticmethod
    def pack(objects: list[SceneObject]) -> "PackedScene":
        counts = np.array([len(o.kind) for o in objects])
        cat = lambda name: np.concatenate([getattr(o, name) for o in objects], axis=0)  # noqa: E731
        center, half, yaw = cat("center").astype(np.float64), cat("half").astype(np.float64), cat("yaw")
        c, s = np.cos(yaw), np.sin(yaw)
        rot = np.zeros((len(yaw), 3, 3))
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1.0
        local = _SIGNS[None] * half[:, None, :]  # [P, 8, 3]
        corners = np.einsum("pij,pkj->pki", rot, local) + center[:, None, :]  # [P, 8, 3]
        normals = np.einsum("pij,fj->pfi", rot, _FACE_NORMALS.astype(np.float64))  # [P, 6, 3]
        points = center[:, None, :] + np.einsum("pij,pfj->pfi", rot, _FACE_NORMALS[None] * half[:, None, :])
        f32 = np.float32
        return PackedScene(
            center.astype(f32),
            half.astype(f32),
            c.astype(f32),
            s.astype(f32),
            cat("kind"),
            cat("color").astype(f32),
            cat("cls"),
            cat("texture"),
            np.repeat(np.array([o.instance for o in objects]), counts),
            corners,
            normals.astype(f32),
            points,
            np.repeat(np.arange(len(objects)), counts),
            np.cumsum(counts) - counts,
        )


def _hash(p: np.ndarray) -> np.ndarray:
    """Cheap deterministic per-cell noise in [0, 1) from [N, 3] points (leaf grain)."""
    q = np.floor(p.astype(np.float64) * 5.0)
    return np.modf(np.abs(np.sin(q @ np.array([12.9898, 78.233, 37.719])) * 43758.5453))[0].astype(np.float32)


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon [N, 3] against z >= NEAR."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ina, inb = a[2] >= NEAR, b[2] >= NEAR
        if ina:
            out.append(a)
        if ina != inb:
            f = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + f * (b - a))
    return np.array(out) if len(out) >= 3 else np.zeros((0, 3))


def _light(normal_w: np.ndarray, look: Look) -> np.ndarray:
    """Light on surfaces with world normals [..., 3]: ambient + sky light (up-facing brighter) + Lambert sun."""
    lambert = np.clip(normal_w @ look.sun, 0.0, 1.0)
    return np.float32(0.49) + np.float32(0.11) * normal_w[..., 2] + np.float32(0.55) * lambert


def _shade(sc: PackedScene, prim: np.ndarray, normal_w: np.ndarray, p_world: np.ndarray, look: Look) -> np.ndarray:
    """RGB [R, 3] of curved or leafy hits: Lambert + sky light, leaf grain, emissive lamps."""
    shade = _light(normal_w, look)
    color = sc.color[prim].copy()
    tex = sc.texture[prim]
    leaves = tex == TEX_LEAVES
    if leaves.any():
        color[leaves] *= (0.7 + 0.6 * _hash(p_world[leaves] - sc.center[prim[leaves]]))[:, None]
    out = color * shade[:, None]
    emis = tex == TEX_EMISSIVE
    out[emis] = color[emis]
    return out


BAKE_TILE = 256  # cells per side of a lazily baked ground-colour tile (25.6 m)


def bake_ground(ground: GroundMap, look: Look, rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> None:
    """Bake the sunlit ground colour of the tiles containing cells (rows, cols) into ``ground.rgb`` (uint8).

    Colour per cell: surface base colour x (1 + grain), paving joints on sidewalks (aligned with the layout frame),
    white / yellow paint on roads, times the sun's light on a horizontal surface.  Tiles are baked on first use,
    so only ground some camera sees is ever computed.
    """
    n = ground.surface.shape[0]
    nt = -(-n // BAKE_TILE)
    if ground.rgb is None:
        ground.rgb = np.zeros((n, n, 3), np.uint8)  # calloc: untouched pages cost nothing
        ground.occ = SURFACE_TO_OCC[ground.surface]
        ground.baked = np.zeros((nt, nt), bool)
    if rows is None:
        tiles = np.argwhere(~ground.baked)
    else:
        used = np.bincount((rows // BAKE_TILE) * nt + cols // BAKE_TILE, minlength=nt * nt) > 0  # no sort needed
        ids = np.nonzero(used)[0]
        tiles = np.stack([ids // nt, ids % nt], 1)
        tiles = tiles[~ground.baked[tiles[:, 0], tiles[:, 1]]]
    cy, sy = np.cos(look.frame_yaw), np.sin(look.frame_yaw)
    gain = np.float32(255.0 * (0.60 + 0.55 * look.sun[2]))
    for ti, tj in tiles:
        r0, c0 = ti * BAKE_TILE, tj * BAKE_TILE
        surf = ground.surface[r0 : r0 + BAKE_TILE, c0 : c0 + BAKE_TILE]
        mark = ground.marking[r0 : r0 + BAKE_TILE, c0 : c0 + BAKE_TILE]
        grain = look.grain[: surf.shape[0], : surf.shape[1]]  # BAKE_TILE == grain size: tiles repeat the grain
        rgb = _SURFACE_RGB[surf] * (1.0 + _GRAIN[surf] * 2.0 * grain)[..., None]
        rr, cc = np.nonzero(surf == SURF_SIDEWALK)  # paving joints
        x, y = (cc + c0 + 0.5) * ground.res, (rr + r0 + 0.5) * ground.res
        joint = (np.modf(np.abs(cy * x + sy * y) / 1.2)[0] < 0.05) | (np.modf(np.abs(-sy * x + cy * y) / 1.2)[0] < 0.05)
        rgb[rr[joint], cc[joint]] *= 0.85
        rr, cc = np.nonzero((mark > 0) & ((surf == SURF_ROAD) | (surf == SURF_OTHER_FLAT)))
        rgb[rr, cc] = _MARK_RGB[mark[rr, cc]] * (1.0 + 0.04 * grain[rr, cc])[:, None]
        ground.rgb[r0 : r0 + BAKE_TILE, c0 : c0 + BAKE_TILE] = np.clip(rgb * gain, 0, 255).astype(np.uint8)
        ground.baked[ti, tj] = True


SHADOW_GAIN = 0.55  # ground brightness under a road user (contact shadow / ambient occlusion)
SHADOW_MARGIN = 0.15  # m the shadow extends beyond the footprint


def _contact_shadows(scene: PackedScene, g2c: np.ndarray, K: np.ndarray, w: int, h: int) -> np.ndarray | None:
    """[H, W] uint8 mask of the ground under annotated objects (their footprint hull, slightly enlarged)."""
    agents = np.nonzero(scene.instance[scene.object_start] >= 0)[0]
    if len(agents) == 0:
        return None
    mask = np.zeros((h, w), np.uint8)
    counts = np.diff(np.append(scene.object_start, len(scene.kind)))
    for o in agents:
        a = scene.object_start[o]
        xy = scene.corners[a : a + counts[o], :, :2].reshape(-1, 2).astype(np.float32)
        hull = cv2.convexHull(xy)[:, 0, :].astype(np.float64)  # [M, 2] footprint outline
        centre = hull.mean(0)
        d = hull - centre
        hull = hull + SHADOW_MARGIN * d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
        pc = np.c_[hull, np.full(len(hull), 0.01)] @ g2c[:3, :3].T + g2c[:3, 3]
        if np.any(pc[:, 2] < 1.0):
            continue  # behind or straddling the camera: no shadow drawn
        uv = pc[:, :2] / pc[:, 2:3] * [K[0, 0], K[1, 1]] + K[:2, 2] - 0.5
        if uv[:, 0].max() < 0 or uv[:, 1].max() < 0 or uv[:, 0].min() >= w or uv[:, 1].min() >= h:
            continue
        pts = np.round(np.clip(uv, -8 * w, 8 * w) * (1 << SUBPIXEL_BITS)).astype(np.int32)
        cv2.fillConvexPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    return mask


def render(
    camera: Camera,
    ego2global: np.ndarray,
    scene: PackedScene,
    ground: GroundMap,
    look: Look,
    rng: np.random.Generator | None,
    noise: float = 2.0,
    shade: bool = True,
) -> View:
    """Render one camera.

    Args:
        camera: the camera (intrinsics at the output size).
        ego2global: [4, 4] ego pose.
        scene: packed primitives of the frame (global frame).
        ground, look: scene ground rasters (colours baked on demand by :func:`bake_ground`) and appearance.
        rng: generator of the sensor noise / exposure (None: no noise).
        noise: Gaussian noise std in 0-255 units.
        shade: False renders depth / class / instance only (RGB left black), e.g. for the LiDAR model.
    Returns:
        The :class:`View`.
    """
    h, w = camera.height, camera.width
    n = h * w
    if ground.occ is None:
        bake_ground(ground, look, np.zeros(0, np.int64), np.zeros(0, np.int64))  # allocate only
    cam2global = ego2global @ camera.cam2ego
    rot, origin = cam2global[:3, :3], cam2global[:3, 3]
    g2c = np.linalg.inv(cam2global)
    rays = camera.rays_cam  # [H*W, 3] camera frame, z = 1
    dirs = rays @ rot.T.astype(np.float32)  # [H*W, 3] world
    depth = np.full(n, np.inf, np.float32)
    prim_of = np.full(n, -1, np.int32)  # primitive hit by each pixel
    face_of = np.full(n, -1, np.int8)  # box face (0..5) or -1 for an ellipsoid
    # 1. ground plane z = 0
    down = np.nonzero(dirs[:, 2] < -1e-6)[0]
    tg = (-origin[2] / dirs[down, 2]).astype(np.float32)
    depth[down] = tg
    # 2. boxes: rasterise front faces, z-test with the face plane's exact depth
    corners_c = scene.corners @ g2c[:3, :3].T + g2c[:3, 3]  # [P, 8, 3]
    zc = corners_c[..., 2]
    normal_c = scene.face_normal @ g2c[:3, :3].T  # [P, 6, 3]
    point_c = scene.face_point @ g2c[:3, :3].T + g2c[:3, 3]
    plane_d = (normal_c * point_c).sum(-1)  # [P, 6]: n . p0 in the camera frame
    facing = plane_d < 0.0  # the camera is outside the face's plane
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = corners_c[..., :2] / zc[..., None] * [camera.K[0, 0], camera.K[1, 1]] + camera.K[:2, 2]  # [P, 8, 2]
    in_front = zc.min(1) >= NEAR
    candidate = (zc.max(1) > NEAR) & (zc.min(1) < FAR)
    lo = np.where(in_front[:, None], uv.min(1), -np.inf)
    hi = np.where(in_front[:, None], uv.max(1), np.inf)
    candidate &= (hi[:, 0] >= 0) & (lo[:, 0] < w) & (hi[:, 1] >= 0) & (lo[:, 1] < h)
    fx, fy, cx, cy = camera.K[0, 0], camera.K[1, 1], camera.K[0, 2], camera.K[1, 2]
    area = np.prod(np.clip(hi, -1, [w + 1, h + 1]) - np.clip(lo, -1, [w + 1, h + 1]), axis=1)
    candidate &= ~in_front | (area > 0.25)  # sub-pixel primitives cover no pixel centre
    scale = float(1 << SUBPIXEL_BITS)
    # fixed-point corner positions for OpenCV (pixel (col, row) has its centre at (col + 0.5, row + 0.5))
    uv_fixed = np.round(np.clip(np.nan_to_num(uv) - 0.5, -8 * w, 8 * w) * scale).astype(np.int32)
    zmin = np.maximum(zc.min(1), NEAR)
    depth2d = depth.reshape(h, w)
    # one pass per object: its boxes' front faces are filled far-to-near into one window (within an object the
    # painter's order is exact enough: parts only touch), then every covered pixel is z-tested against the buffer
    boxes = np.nonzero(candidate & (scene.kind == BOX))[0]
    obj = scene.object_of[boxes]
    starts = np.concatenate([[0], np.nonzero(np.diff(obj))[0] + 1]) if len(boxes) else np.zeros(0, np.int64)
    groups = np.split(boxes, starts[1:]) if len(boxes) else []
    # window of each object whose boxes are all in front of the camera, from the projected corner bounds
    g_lo = np.minimum.reduceat(lo[boxes], starts, axis=0) if len(boxes) else np.zeros((0, 2))
    g_hi = np.maximum.reduceat(hi[boxes], starts, axis=0) if len(boxes) else np.zeros((0, 2))
    g_front = np.minimum.reduceat(in_front[boxes].astype(np.int8), starts) > 0 if len(boxes) else np.zeros(0, bool)
    g_zmin = np.minimum.reduceat(zmin[boxes], starts) if len(boxes) else np.zeros(0)
    for g in np.argsort(g_zmin, kind="stable"):  # front to back
        members = groups[g]
        if g_front[g]:  # cheap occlusion test before any per-face work
            c0, r0 = max(int(g_lo[g, 0] - 0.5), 0), max(int(g_lo[g, 1] - 0.5), 0)
            c1, r1 = min(int(g_hi[g, 0] + 1.5), w), min(int(g_hi[g, 1] + 1.5), h)
            if c0 >= c1 or r0 >= r1:
                continue
            open_px = depth2d[r0:r1, c0:c1] > g_zmin[g]  # pixels whose current surface is farther
            if not open_px.any():
                continue
        faces = []  # (depth of the face centre, primitive, face, fixed-point polygon)
        for p in members:
            for f in np.nonzero(facing[p])[0]:
                if in_front[p]:
                    q = uv_fixed[p, _FACES[f]]
                else:
                    quad = _clip_near(corners_c[p, _FACES[f]])
                    if len(quad) == 0:
                        continue
                    q = np.stack([quad[:, 0] / quad[:, 2] * fx + cx, quad[:, 1] / quad[:, 2] * fy + cy], 1)
                    q = np.round(np.clip(q - 0.5, -8 * w, 8 * w) * scale).astype(np.int32)
                faces.append((point_c[p, f, 2], p, f, q))
        if not faces:
            continue
        if not g_front[g]:
            allpts = np.concatenate([fc[3] for fc in faces])
            c0, r0 = np.maximum((allpts.min(0) >> SUBPIXEL_BITS) - 1, 0)
            c1, r1 = np.minimum((allpts.max(0) >> SUBPIXEL_BITS) + 2, [w, h])
            if c0 >= c1 or r0 >= r1:
                continue
            open_px = depth2d[r0:r1, c0:c1] > g_zmin[g]
            if not open_px.any():
                continue
        window = np.zeros((r1 - r0, c1 - c0), np.uint8)
        offset = np.array([c0, r0], np.int32) << SUBPIXEL_BITS
        faces.sort(key=lambda item: -item[0])  # far to near
        face_prim = np.array([fc[1] for fc in faces])
        face_id = np.array([fc[2] for fc in faces])
        for k, (_, _, _, q) in enumerate(faces):
            cv2.fillConvexPoly(window, q - offset, k + 1, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
        window[~open_px] = 0
        rr, cc = np.nonzero(window)
        if len(rr) == 0:
            continue
        k = window[rr, cc].astype(np.int64) - 1
        pp, ff = face_prim[k], face_id[k]
        pix = (rr + r0) * w + (cc + c0)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = plane_d[pp, ff] / np.einsum("ij,ij->i", normal_c[pp, ff], rays[pix])
        closer = (t < depth[pix]) & (t > NEAR)
        pix = pix[closer]
        depth[pix] = t[closer]
        prim_of[pix] = pp[closer]
        face_of[pix] = ff[closer]
    # 3. ellipsoids: ray-quadric on their projected bounding rectangle
    for p in np.nonzero(candidate & (scene.kind != BOX))[0]:
        if in_front[p]:
            b_lo, b_hi = lo[p], hi[p]
        else:  # clip the bounding box's faces at the near plane, then bound their projections
            clipped = [q for q in (_clip_near(corners_c[p, fc]) for fc in _FACES) if len(q)]
            if not clipped:
                continue
            q = np.concatenate(clipped)
            proj = np.stack([q[:, 0] / q[:, 2] * fx + cx, q[:, 1] / q[:, 2] * fy + cy], 1)
            b_lo, b_hi = np.clip(proj.min(0), -1, [w, h]), np.clip(proj.max(0), -1, [w, h])
        c0, r0 = np.maximum(np.floor(b_lo).astype(np.int64), 0)
        c1, r1 = np.minimum(np.ceil(b_hi).astype(np.int64) + 1, [w, h])
        if c0 >= c1 or r0 >= r1:
            continue
        pix = (np.arange(r0, r1)[:, None] * w + np.arange(c0, c1)[None]).reshape(-1)
        d = dirs[pix]
        rel = origin - scene.center[p]
        c, s = scene.cos[p], scene.sin[p]
        r = scene.half[p]
        o = np.array([c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2]]) / r
        dl = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], 1) / r
        qa = (dl * dl).sum(1)
        qb = 2.0 * (dl @ o)
        qc = o @ o - 1.0
        disc = qb * qb - 4 * qa * qc
        t = (-qb - np.sqrt(np.maximum(disc, 0.0))) / (2 * qa)
        closer = (disc >= 0) & (t > NEAR) & (t < depth[pix])
        pix = pix[closer]
        depth[pix] = t[closer]
        prim_of[pix] = p
        face_of[pix] = -1
    # 4. buffers
    obj = np.nonzero(prim_of >= 0)[0]
    gnd = down[prim_of[down] < 0]
    hit_xy = origin[None, :2].astype(np.float32) + depth[gnd, None] * dirs[gnd, :2]
    row, col, inside = ground.cells(hit_xy[:, 0], hit_xy[:, 1])
    if shade:
        bake_ground(ground, look, row[inside], col[inside])
    cls = np.full(n, FREE, np.uint8)
    cls[gnd] = np.where(inside, ground.occ[row, col], SURFACE_TO_OCC[0])
    cls[obj] = scene.cls[prim_of[obj]]
    inst = np.full(n, -1, np.int32)
    inst[obj] = scene.instance[prim_of[obj]]
    view_depth = depth.reshape(h, w)
    if not shade:
        return View(np.zeros((h, w, 3), np.uint8), view_depth, cls.reshape(h, w), inst.reshape(h, w))
    # 5. colours: ground, objects, sky, haze
    rgb = np.zeros((n, 3), np.float32)
    rgb[gnd] = np.where(inside[:, None], ground.rgb[row, col], ground.rgb[0, 0]) * np.float32(1.0 / 255.0)
    shadow = _contact_shadows(scene, g2c, camera.K, w, h)
    if shadow is not None:
        rgb[gnd] *= np.where(shadow.reshape(-1)[gnd], np.float32(SHADOW_GAIN), np.float32(1.0))[:, None]
    if len(obj):
        p = prim_of[obj]
        f = face_of[obj].astype(np.int64)
        # flat box faces have one shade each: a [P, 6, 3] table, gathered per pixel
        face_rgb = scene.color[:, None, :] * _light(scene.face_normal, look)[..., None]
        emissive = scene.texture == TEX_EMISSIVE
        face_rgb[emissive] = scene.color[emissive, None, :]
        is_box = f >= 0
        rgb[obj[is_box]] = face_rgb[p[is_box], f[is_box]]
        # per-pixel work only where a texture or a curved surface needs it
        tex = scene.texture[p]
        win = is_box & (f < 4) & (tex == TEX_WINDOWS)  # side faces (0-3) of buildings: window grid
        if win.any():
            o, pw, fw = obj[win], p[win], f[win]
            xyz = origin.astype(np.float32) + depth[o, None] * dirs[o]
            rx, ry = xyz[:, 0] - scene.center[pw, 0], xyz[:, 1] - scene.center[pw, 1]
            c, sn = scene.cos[pw], scene.sin[pw]
            u = np.where(fw < 2, -sn * rx + c * ry, c * rx + sn * ry)  # along the face
            z = xyz[:, 2] - (scene.center[pw, 2] - scene.half[pw, 2])  # above the building's base
            fu, fz = np.modf(np.abs(u + 50.0) / 3.2)[0], np.modf(z / 3.3)[0]
            glass = (fu > 0.28) & (fu < 0.72) & (fz > 0.3) & (fz < 0.8) & (z > 1.0) & (z < 2 * scene.half[pw, 2] - 0.6)
            glass_rgb = np.array([0.16, 0.20, 0.26], np.float32) + 0.12 * look.sky_horizon
            light = _light(scene.face_normal[pw[glass], fw[glass]], look)
            rgb[o[glass]] = glass_rgb * light[:, None]
        band = is_box & (f < 4) & (tex == TEX_WINDOW_BAND)  # bus window band
        if band.any():
            o, pb, fb = obj[band], p[band], f[band]
            rz = (origin[2] + depth[o] * dirs[o, 2] - scene.center[pb, 2]) / scene.half[pb, 2]  # -1 bottom .. 1 top
            sel = (rz > 0.05) & (rz < 0.7)
            light = _light(scene.face_normal[pb[sel], fb[sel]], look)
            rgb[o[sel]] = np.array([0.12, 0.15, 0.2], np.float32) * light[:, None]
        detail = ~is_box | (tex == TEX_LEAVES)
        if detail.any():
            o, pd, fd = obj[detail], p[detail], f[detail]
            p_world = origin.astype(np.float32) + depth[o, None] * dirs[o]
            normal = np.empty((len(o), 3), np.float32)
            box = fd >= 0
            normal[box] = scene.face_normal[pd[box], fd[box]]
            if (~box).any():
                e = ~box
                rel = p_world[e] - scene.center[pd[e]]
                c, s = scene.cos[pd[e]], scene.sin[pd[e]]
                lx, ly = c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]
                r2 = scene.half[pd[e]] ** 2
                gx, gy, gz = lx / r2[:, 0], ly / r2[:, 1], rel[:, 2] / r2[:, 2]
                g = np.stack([c * gx - s * gy, s * gx + c * gy, gz], 1)
                normal[e] = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)
            rgb[o] = _shade(scene, pd, normal, p_world, look)
    # haze over every surface (full-array ops: cheaper than gathers), then the sky gradient
    dist = np.where(np.isfinite(depth), depth, 0.0) * camera.ray_norm
    fog = (1.0 - np.exp(-dist / np.float32(HAZE_DISTANCE)))[:, None]
    rgb *= 1.0 - fog
    rgb += look.sky_horizon * fog
    sky = np.nonzero(~np.isfinite(depth))[0]
    mix = np.clip(dirs[sky, 2] / camera.ray_norm[sky] * 2.5, 0.0, 1.0)[:, None]
    rgb[sky] = look.sky_horizon * (1 - mix) + look.sky_zenith * mix
    img = rgb.reshape(h, w, 3) * 255.0
    if rng is not None:
        img *= rng.uniform(0.95, 1.05)
        if noise > 0:
            bank = look.noise
            oy, ox = rng.integers(0, bank.shape[0]), rng.integers(0, bank.shape[1])
            tile = np.roll(bank, (-oy, -ox), axis=(0, 1))
            reps = (-(-h // bank.shape[0]), -(-w // bank.shape[1]), 1)
            img += noise * np.tile(tile, reps)[:h, :w]
    return View(np.clip(img, 0, 255).astype(np.uint8), view_depth, cls.reshape(h, w), inst.reshape(h, w))
