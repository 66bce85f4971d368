"""Static scenery of a synthetic scene: road layout, ground surfaces and markings, buildings, vegetation, signals.

Three layouts (all right-hand traffic, lanes 3.2-3.7 m, optional median island and parking strips):

* ``straight`` - one straight road with a signalised mid-block pedestrian crossing;
* ``curve`` - a straight road bending through a circular arc of radius 50-120 m by 45-90 degrees;
* ``intersection`` - two perpendicular roads crossing at a signalised 4-way intersection with crosswalks.

Geometry is built in a layout-local frame and placed in the global frame by a random rigid transform, so
global ego headings vary like in real logs.  The ground is a 0.1 m raster of surface codes (road / sidewalk /
terrain / other flat) plus a marking raster (white / yellow paint); the same raster is the devkit map mask,
drives the ground colour in the renderer and gives the Occ3D ground classes (layer 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..batch import occ3d_class
from .paths import Path, bezier, offset_polyline
from .primitives import TEX_EMISSIVE, TEX_LEAVES, TEX_WINDOWS, ObjectBuilder, SceneObject

# Ground surface codes of the raster and their Occ3D classes.
SURF_TERRAIN, SURF_ROAD, SURF_SIDEWALK, SURF_OTHER_FLAT = 0, 1, 2, 3
SURFACE_TO_OCC = np.array(
    [occ3d_class(name) for name in ("terrain", "driveable_surface", "sidewalk", "other_flat")], dtype=np.uint8
)
MARK_NONE, MARK_WHITE, MARK_YELLOW = 0, 1, 2

MAP_SIZE_M = 400.0  # side of the square map, m; the layout centre sits in its middle
MAP_RES = 0.1  # m per raster cell (the devkit map-mask resolution)

# Occ3D class ids used by scenery.
OCC_OTHERS, OCC_MANMADE, OCC_VEGETATION = (occ3d_class(name) for name in ("others", "manmade", "vegetation"))

SIGNAL_STATES: tuple[str, ...] = ("green", "yellow", "red")
YELLOW_S = 3.0  # amber duration, s
ALL_RED_S = 1.0  # both groups red between phases, s

_BUILDING_COLORS = np.array(
    [
        [0.62, 0.36, 0.28],
        [0.72, 0.70, 0.66],
        [0.82, 0.76, 0.62],
        [0.55, 0.57, 0.60],
        [0.78, 0.62, 0.50],
        [0.45, 0.47, 0.52],
        [0.86, 0.84, 0.80],
    ],
    dtype=np.float32,
)


@dataclass
class GroundMap:
    """Surface and marking rasters; cell (row, col) covers global x in [col, col+1) * res, y in [row, row+1) * res.

    Args:
        surface: [N, N] uint8 surface codes (SURF_*).
        marking: [N, N] uint8 paint codes (MARK_*).
        res: m per cell.
    """

    surface: np.ndarray
    marking: np.ndarray
    res: float = MAP_RES
    rgb: np.ndarray | None = None  # [N, N, 3] uint8 baked ground colour (render.bake_ground)
    occ: np.ndarray | None = None  # [N, N] uint8 Occ3D class of the surface
    baked: np.ndarray | None = None  # [T, T] bool, which colour tiles are baked

    def cells(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, inside) of global points."""
        col = (np.asarray(x) * (1.0 / self.res)).astype(np.int64)  # truncation; negatives are outside anyway
        row = (np.asarray(y) * (1.0 / self.res)).astype(np.int64)
        n = self.surface.shape[0]
        inside = (col >= 0) & (col < n) & (row >= 0) & (row < n) & (np.asarray(x) >= 0) & (np.asarray(y) >= 0)
        return np.clip(row, 0, n - 1), np.clip(col, 0, n - 1), inside

    def lookup(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(surface code, marking code) at global points; outside the map: terrain, no paint."""
        row, col, inside = self.cells(x, y)
        return np.where(inside, self.surface[row, col], SURF_TERRAIN), np.where(inside, self.marking[row, col], 0)


@dataclass
class Road:
    """A two-way road: centreline and cross-section (all widths in m).

    Args:
        centerline: the road centre, direction of travel of the "forward" lanes.
        lanes: lanes per direction.
        lane_width: lane width.
        median: median island width (0: a double yellow line separates the directions).
        parking: parking strip width on each side (0: none).
        sidewalk: sidewalk width on each side.
    """

    centerline: Path
    lanes: int
    lane_width: float
    median: float
    parking: float
    sidewalk: float

    @property
    def kerb(self) -> float:
        """Lateral distance from the centreline to the kerb."""
        return 0.5 * self.median + self.lanes * self.lane_width + self.parking

    def lane_offset(self, lane: int) -> float:
        """Signed lateral offset (left positive) of forward lane ``lane`` (0 = next to the centre)."""
        return -(0.5 * self.median + (lane + 0.5) * self.lane_width)


@dataclass
class Route:
    """A drivable (or walkable) route with the signal stop points on it.

    Args:
        path: the route polyline.
        stops: (arc length of the stop line, signal group) in order along the route.
        maneuver: "straight", "left" or "right" (what the route does at its signalised junction).
        turn_span: (s_start, s_end) of the turning connector, or None.
        walk: True for pedestrian routes: they may pass a stop only while its group is red for vehicles.
    """

    path: Path
    stops: list = field(default_factory=list)
    maneuver: str = "straight"
    turn_span: tuple | None = None
    walk: bool = False


@dataclass
class SignalProgram:
    """Fixed-time two-group signal plan: group 0 green first, then group 1 (if present).

    Args:
        green_s: green duration per group, s.
        offset_s: time into the cycle at simulation t = 0, s.
        groups: 1 (mid-block crossing: group 0 vehicles, pedestrians walk on red) or 2 (intersection).
        ped_s: pedestrian phase length for the 1-group plan (vehicles red), s.
    """

    green_s: float
    offset_s: float
    groups: int
    ped_s: float = 10.0

    @property
    def cycle_s(self) -> float:
        if self.groups == 2:
            return 2.0 * (self.green_s + YELLOW_S + ALL_RED_S)
        return self.green_s + YELLOW_S + ALL_RED_S + self.ped_s

    def state(self, group: int, t: float) -> str:
        """'green', 'yellow' or 'red' of vehicle group ``group`` at time ``t`` (s)."""
        tc = (t + self.offset_s) % self.cycle_s
        start = 0.0 if group == 0 else self.green_s + YELLOW_S + ALL_RED_S
        local = tc - start
        if 0.0 <= local < self.green_s:
            return "green"
        if self.green_s <= local < self.green_s + YELLOW_S:
            return "yellow"
        return "red"


@dataclass
class SignalHead:
    """One traffic-light head: which group it shows and which primitives are its lamps.

    Args:
        group: signal group.
        object_index: index of its object in ``StaticWorld.scenery``.
        lamp_parts: primitive indices of the (red, yellow, green) lamps in that object.
    """

    group: int
    object_index: int
    lamp_parts: tuple[int, int, int]


@dataclass
class StaticWorld:
    """Everything that does not move (plus the routes movers follow).

    Args:
        layout: "straight", "curve" or "intersection".
        ground: surface / marking rasters.
        roads: the roads.
        scenery: unannotated objects (buildings, trees, poles, signals, bins).
        parked: annotated static objects (category, x, y, yaw, (l, w, h), attribute, colour index).
        vehicle_routes: (route, lane index counted from the kerb side: 0 = rightmost) candidates for traffic.
        ego_route: the ego's route.
        walk_routes: pedestrian routes.
        signals: the signal plan, or None when the layout has no signal.
        heads: traffic-light heads.
        junction_center: global xy of the intersection / crossing (None for the curve).
        frame_yaw: rotation of the layout frame in the global frame, rad.
        description: words used by the QA ("a four-way intersection" ...).
    """

    layout: str
    ground: GroundMap
    roads: list
    scenery: list
    parked: list
    vehicle_routes: list
    ego_route: Route
    walk_routes: list
    signals: SignalProgram | None
    heads: list
    junction_center: np.ndarray | None
    frame_yaw: float
    description: str


class _Frame:
    """Layout-local -> global rigid transform."""

    def __init__(self, yaw: float) -> None:
        self.yaw = yaw
        self.c, self.s = np.cos(yaw), np.sin(yaw)
        self.origin = np.array([0.5 * MAP_SIZE_M, 0.5 * MAP_SIZE_M])

    def xy(self, pts) -> np.ndarray:
        p = np.asarray(pts, dtype=np.float64)
        x = self.c * p[..., 0] - self.s * p[..., 1]
        y = self.s * p[..., 0] + self.c * p[..., 1]
        return np.stack([x, y], axis=-1) + self.origin

    def heading(self, h: float) -> float:
        return float(h + self.yaw)


def _px(xy: np.ndarray) -> np.ndarray:
    """Global metres -> integer raster pixel coordinates (x, y) for OpenCV drawing (sub-pixel shift 2 bits)."""
    return np.round(np.asarray(xy) / MAP_RES * 4.0).astype(np.int32)


def _draw_band(img: np.ndarray, polyline: np.ndarray, width: float, value: int) -> None:
    """Paint a band of ``width`` m centred on a polyline (thick polyline)."""
    cv2.polylines(
        img,
        [_px(polyline)],
        False,
        int(value),
        thickness=max(1, int(round(width / MAP_RES))),
        lineType=cv2.LINE_8,
        shift=2,
    )


def _draw_quad(img: np.ndarray, corners: np.ndarray, value: int) -> None:
    cv2.fillConvexPoly(img, _px(corners), int(value), lineType=cv2.LINE_8, shift=2)


def _dashes(polyline: np.ndarray, dash: float, gap: float) -> list[np.ndarray]:
    path = Path(polyline)
    out = []
    for s0 in np.arange(0.0, path.length - dash, dash + gap):
        pts, _ = path.pose(np.linspace(s0, s0 + dash, 4))
        out.append(pts)
    return out


def _rect(center, heading: float, length: float, width: float) -> np.ndarray:
    c, s = np.cos(heading), np.sin(heading)
    fx, fy = np.array([c, s]) * 0.5 * length, np.array([-s, c]) * 0.5 * width
    p = np.asarray(center, float)
    return np.array([p + fx + fy, p - fx + fy, p - fx - fy, p + fx - fy])


# ----------------------------------------------------------------------------------------------- scenery objects
def building_object(x, y, yaw, length, depth, height, color) -> SceneObject:
    """A block building (façade with a window grid) plus a darker roof slab."""
    b = ObjectBuilder()
    b.box(0.0, 0.0, 0.0, height, depth, length, color, OCC_MANMADE, TEX_WINDOWS)
    b.box(0.0, 0.0, height, height + 0.4, depth + 0.3, length + 0.3, color * 0.6, OCC_MANMADE)
    return b.build(x, y, yaw, hollow=True)


def tree_object(x, y, trunk_h, crown_r, crown_h, color) -> SceneObject:
    """Trunk + ellipsoidal crown (both vegetation, as in nuScenes-lidarseg)."""
    b = ObjectBuilder()
    b.box(0.0, 0.0, 0.0, trunk_h + 0.5 * crown_h, 0.3, 0.3, np.array([0.35, 0.25, 0.16]), OCC_VEGETATION)
    b.ellipsoid(0.0, 0.0, trunk_h + crown_h * 0.5, crown_r, crown_r, 0.5 * crown_h, color, OCC_VEGETATION, TEX_LEAVES)
    return b.build(x, y, 0.0)


def hedge_object(x, y, yaw, length, color) -> SceneObject:
    b = ObjectBuilder()
    b.box(0.0, 0.0, 0.0, 1.1, length, 1.0, color, OCC_VEGETATION, TEX_LEAVES)
    return b.build(x, y, yaw)


def pole_object(height: float = 7.0) -> ObjectBuilder:
    """Street lamp: pole + lamp arm (manmade), in its local frame (the arm points to the right)."""
    b = ObjectBuilder()
    grey = np.array([0.42, 0.43, 0.45])
    b.box(0.0, 0.0, 0.0, height, 0.22, 0.22, grey, OCC_MANMADE)
    b.box(0.0, -0.9, height - 0.2, height, 0.3, 1.8, grey, OCC_MANMADE)
    return b


def bin_object(x, y, yaw) -> SceneObject:
    b = ObjectBuilder()
    b.box(0.0, 0.0, 0.0, 1.0, 0.6, 0.6, np.array([0.18, 0.35, 0.22]), OCC_OTHERS)
    return b.build(x, y, yaw)


def traffic_light_object(x, y, facing: float, head_offset: float) -> tuple[SceneObject, tuple[int, int, int]]:
    """Pole at the kerb with an arm over the lanes and a 3-lamp head facing the approaching traffic.

    Args:
        x, y: pole foot, global.
        facing: direction the lamps face (towards approaching traffic), rad.
        head_offset: lateral distance from the pole to the head, to the right when looking along ``facing``.
    Returns:
        (object, primitive indices of the red, yellow, green lamps).
    """
    b = ObjectBuilder()
    dark = np.array([0.12, 0.12, 0.13])
    grey = np.array([0.40, 0.41, 0.43])
    b.box(0.0, 0.0, 0.0, 5.9, 0.25, 0.25, grey, OCC_MANMADE)
    b.box(0.0, -0.5 * head_offset, 5.6, 5.85, 0.18, head_offset + 0.3, grey, OCC_MANMADE)
    b.box(0.0, -head_offset, 4.3, 5.6, 0.35, 0.45, dark, OCC_MANMADE)
    lamps = []
    for z, color in ((5.3, (1.0, 0.1, 0.05)), (4.95, (1.0, 0.7, 0.05)), (4.6, (0.1, 1.0, 0.35))):
        lamps.append(len(b.parts))
        b.box(0.2, -head_offset, z - 0.13, z + 0.13, 0.06, 0.26, np.array(color), OCC_MANMADE, TEX_EMISSIVE)
    return b.build(x, y, facing), (lamps[0], lamps[1], lamps[2])


# ----------------------------------------------------------------------------------------------- layout builder
class _LayoutBuilder:
    def __init__(self, layout: str, rng: np.random.Generator) -> None:
        self.layout = layout
        self.rng = rng
        self.frame = _Frame(float(rng.uniform(-np.pi, np.pi)))
        n = int(round(MAP_SIZE_M / MAP_RES))
        self.surface = np.zeros((n, n), np.uint8)
        self.marking = np.zeros((n, n), np.uint8)
        self.blocked = np.zeros((n, n), np.uint8)  # ground already used by scenery
        self.roads: list[Road] = []
        self.scenery: list[SceneObject] = []
        self.parked: list = []
        self.vehicle_routes: list = []
        self.walk_routes: list = []
        self.heads: list[SignalHead] = []
        self.no_parking: list = []  # (global xy, radius) zones without parked cars / roadside furniture

    # --- roads -------------------------------------------------------------------------------------------------
    def cross_section(self, lanes: int | None = None) -> dict:
        r = self.rng
        lanes = int(r.choice([1, 2], p=[0.45, 0.55])) if lanes is None else lanes
        return dict(
            lanes=lanes,
            lane_width=float(r.uniform(3.2, 3.7)),
            median=float(r.choice([0.0, 2.0])) if lanes == 2 and r.random() < 0.4 else 0.0,
            parking=float(r.choice([0.0, 2.4], p=[0.4, 0.6])),
            sidewalk=float(r.uniform(2.5, 4.0)),
        )

    def add_road(self, local_pts: np.ndarray, section: dict) -> Road:
        road = Road(Path(self.frame.xy(local_pts)), **section)
        self.roads.append(road)
        return road

    def paint_roads(self, junction_local: np.ndarray | None, junction_half: float) -> None:
        """Sidewalks, then carriageways, then medians and markings of every road."""
        for road in self.roads:
            _draw_band(self.surface, road.centerline.points, 2 * (road.kerb + road.sidewalk), SURF_SIDEWALK)
        for road in self.roads:
            _draw_band(self.surface, road.centerline.points, 2 * road.kerb, SURF_ROAD)
        for road in self.roads:
            if road.median > 0:
                _draw_band(self.surface, road.centerline.points, road.median, SURF_OTHER_FLAT)
            self._paint_lane_lines(road)
        if junction_local is not None:
            # clear the junction box of lane paint and medians
            box = self.frame.xy(_rect(junction_local, 0.0, 2 * junction_half, 2 * junction_half))
            _draw_quad(self.marking, box, MARK_NONE)
            surf = np.zeros_like(self.surface)
            _draw_quad(surf, box, 1)
            self.surface[(surf == 1) & (self.surface == SURF_OTHER_FLAT)] = SURF_ROAD

    def _paint_lane_lines(self, road: Road) -> None:
        pts = road.centerline.points
        w = 0.15
        if road.median == 0:
            for off in (-0.15, 0.15):
                _draw_band(self.marking, offset_polyline(pts, off), w, MARK_YELLOW)
        for side in (-1.0, 1.0):
            for lane in range(1, road.lanes):
                line = offset_polyline(pts, side * (0.5 * road.median + lane * road.lane_width))
                for dash in _dashes(line, 3.0, 6.0):
                    _draw_band(self.marking, dash, w, MARK_WHITE)
            edge = side * (0.5 * road.median + road.lanes * road.lane_width)
            _draw_band(self.marking, offset_polyline(pts, edge), w, MARK_WHITE)

    def paint_crosswalk(self, center_local, heading_local: float, road: Road, depth: float = 3.0) -> None:
        """Zebra across ``road`` (stripes parallel to the traffic), centred at a local point."""
        span = 2 * road.kerb
        c = np.asarray(center_local, float)
        along = np.array([np.cos(heading_local), np.sin(heading_local)])
        across = np.array([-along[1], along[0]])
        for off in np.arange(-0.5 * span + 0.3, 0.5 * span - 0.3, 1.0):
            self._quad_local(self.marking, c + off * across, heading_local, depth, 0.5, MARK_WHITE)

    def paint_stop_line(self, center_local, heading_local: float, road: Road) -> None:
        width = road.lanes * road.lane_width
        along = np.array([np.cos(heading_local), np.sin(heading_local)])
        across = np.array([-along[1], along[0]])
        mid = np.asarray(center_local, float) - across * (0.5 * road.median + 0.5 * width)
        self._quad_local(self.marking, mid, heading_local, 0.4, width, MARK_WHITE)

    def _quad_local(self, img, center_local, heading_local, length, width, value) -> None:
        _draw_quad(img, self.frame.xy(_rect(center_local, heading_local, length, width)), value)

    # --- routes ------------------------------------------------------------------------------------------------
    def lane_routes(self, road: Road, local_pts: np.ndarray) -> list:
        """Straight-through routes for every lane of both directions: [(Route, direction, lane)]."""
        out = []
        for direction in (1, -1):
            pts = local_pts if direction == 1 else local_pts[::-1]
            for lane in range(road.lanes):
                off = road.lane_offset(lane)
                path = Path(self.frame.xy(offset_polyline(pts, off)))
                out.append((Route(path), direction, lane))
        return out

    # --- scenery -----------------------------------------------------------------------------------------------
    def free(self, corners_global: np.ndarray, margin_cells: int = 5) -> bool:
        """True when a footprint lies on terrain that no other scenery uses (checked on the raster)."""
        lo = np.floor(corners_global.min(axis=0) / MAP_RES).astype(int) - margin_cells
        hi = np.ceil(corners_global.max(axis=0) / MAP_RES).astype(int) + margin_cells
        n = self.surface.shape[0]
        if (lo < 0).any() or (hi >= n).any():
            return False
        sub_s = self.surface[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1]
        sub_b = self.blocked[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1]
        mask = np.zeros(sub_s.shape, np.uint8)
        local = (corners_global / MAP_RES - lo) * 4.0
        cv2.fillConvexPoly(mask, np.round(local).astype(np.int32), 1, shift=2)
        mask = cv2.dilate(mask, np.ones((2 * margin_cells + 1, 2 * margin_cells + 1), np.uint8))
        sel = mask.astype(bool)
        return bool(np.all(sub_s[sel] == SURF_TERRAIN) and not np.any(sub_b[sel]))

    def block(self, corners_global: np.ndarray) -> None:
        _draw_quad(self.blocked, corners_global, 1)

    def roadside(self, road: Road, s_range: tuple[float, float]) -> None:
        """Buildings, trees, hedges, street lamps and bins along both sides of a road."""
        r = self.rng
        path = road.centerline
        for side in (-1.0, 1.0):
            # buildings
            s = s_range[0] + r.uniform(0, 10)
            while s < s_range[1]:
                frontage, depth = r.uniform(8, 26), r.uniform(8, 20)
                setback = r.uniform(2.0, 9.0)
                xy, h = path.pose(s + 0.5 * frontage)
                lateral = side * (road.kerb + road.sidewalk + setback + 0.5 * depth)
                center = xy + lateral * np.array([-np.sin(h), np.cos(h)])
                corners = _rect(center, h, frontage, depth)
                if self.free(corners):
                    color = _BUILDING_COLORS[r.integers(len(_BUILDING_COLORS))] * r.uniform(0.85, 1.1)
                    height = float(r.choice([r.uniform(4, 9), r.uniform(9, 24)], p=[0.4, 0.6]))
                    self.scenery.append(
                        building_object(
                            center[0], center[1], h + np.pi / 2, frontage, depth, height, np.clip(color, 0, 1)
                        )
                    )
                    self.block(corners)
                s += frontage + r.uniform(1.5, 9.0)
            # trees on the terrain strip / verge
            s = s_range[0] + r.uniform(0, 8)
            while s < s_range[1]:
                xy, h = path.pose(s)
                lateral = side * (road.kerb + road.sidewalk + r.uniform(1.2, 3.0))
                p = xy + lateral * np.array([-np.sin(h), np.cos(h)])
                crown = r.uniform(1.3, 2.6)
                corners = _rect(p, 0.0, 0.8, 0.8)
                if self.free(corners, margin_cells=3):
                    green = np.array([0.20, 0.38, 0.14]) * r.uniform(0.75, 1.25) + r.uniform(-0.03, 0.03, 3)
                    self.scenery.append(
                        tree_object(p[0], p[1], r.uniform(1.8, 3.2), crown, r.uniform(2.4, 4.5), np.clip(green, 0, 1))
                    )
                    self.block(_rect(p, 0.0, 1.6 * crown, 1.6 * crown))
                s += r.uniform(7.0, 16.0)
            # hedges
            for _ in range(int(r.integers(0, 4))):
                s = r.uniform(*s_range)
                xy, h = path.pose(s)
                p = xy + side * (road.kerb + road.sidewalk + 0.8) * np.array([-np.sin(h), np.cos(h)])
                length = r.uniform(4, 10)
                corners = _rect(p, h, length, 1.0)
                if self.free(corners, margin_cells=2):
                    self.scenery.append(hedge_object(p[0], p[1], h, length, np.array([0.17, 0.33, 0.13])))
                    self.block(corners)
            # street lamps and bins on the sidewalk, next to the kerb
            s = s_range[0] + r.uniform(0, 20)
            while s < s_range[1]:
                xy, h = path.pose(s)
                normal = np.array([-np.sin(h), np.cos(h)])
                p = xy + side * (road.kerb + 0.5) * normal
                if self._clear_of_zones(p):
                    pole = pole_object()
                    # the lamp arm points over the road
                    self.scenery.append(pole.build(p[0], p[1], h + (np.pi if side < 0 else 0.0)))
                    if r.random() < 0.4:
                        q = xy + side * (road.kerb + 0.6) * normal + 2.0 * np.array([np.cos(h), np.sin(h)])
                        self.scenery.append(bin_object(q[0], q[1], h))
                s += r.uniform(25.0, 35.0)

    def _clear_of_zones(self, p: np.ndarray) -> bool:
        return all(np.linalg.norm(p - c) > rad for c, rad in self.no_parking)

    def parked_cars(self, road: Road, local_pts: np.ndarray, s_range: tuple[float, float]) -> None:
        """Cars (and the odd truck) parked in the parking strips, facing the direction of their side."""
        if road.parking <= 0:
            return
        r = self.rng
        for direction in (1, -1):
            pts = local_pts if direction == 1 else local_pts[::-1]
            off = -(0.5 * road.median + road.lanes * road.lane_width + 0.5 * road.parking)
            path = Path(self.frame.xy(offset_polyline(pts, off)))
            lo, hi = s_range if direction == 1 else (path.length - s_range[1], path.length - s_range[0])
            s = lo + r.uniform(0, 12)
            while s < hi:
                category = "vehicle.car" if r.random() < 0.9 else "vehicle.truck"
                size = _vehicle_size(category, r)
                xy, h = path.pose(s + 0.5 * size[0])
                if self._clear_of_zones(xy) and r.random() < 0.65:
                    self.parked.append(
                        (
                            category,
                            float(xy[0]),
                            float(xy[1]),
                            float(h),
                            size,
                            "vehicle.parked",
                            int(r.integers(1 << 30)),
                        )
                    )
                s += size[0] + r.uniform(1.0, 9.0)

    def work_zone(self, road: Road, local_pts: np.ndarray, s_center: float) -> None:
        """A closed parking strip: cones along its lane-side edge, barriers on the sidewalk edge, maybe a digger
        parked just beyond the cones (roads without parking strips get no work zone)."""
        if road.parking <= 0:
            return
        r = self.rng
        direction = int(r.choice([1, -1]))
        pts = local_pts if direction == 1 else local_pts[::-1]
        path0 = Path(self.frame.xy(pts))
        s0 = s_center if direction == 1 else path0.length - s_center
        length = r.uniform(12, 24)
        lane_edge = 0.5 * road.median + road.lanes * road.lane_width
        cone_path = Path(self.frame.xy(offset_polyline(pts, -(lane_edge + 0.35))))
        for s in np.arange(s0, s0 + length, r.uniform(2.5, 4.0)):
            xy, h = cone_path.pose(s)
            self.parked.append(
                ("movable_object.trafficcone", float(xy[0]), float(xy[1]), float(h), (0.41, 0.41, 1.0), None, 0)
            )
        bar_path = Path(self.frame.xy(offset_polyline(pts, -(road.kerb + 0.45))))
        for s in np.arange(s0 + 1.0, s0 + length, 2.6):
            xy, h = bar_path.pose(s)
            self.parked.append(
                ("movable_object.barrier", float(xy[0]), float(xy[1]), float(h + np.pi / 2), (0.5, 2.4, 1.0), None, 0)
            )
        if r.random() < 0.6:
            ppath = Path(self.frame.xy(offset_polyline(pts, -(lane_edge + 0.5 * road.parking))))
            xy, h = ppath.pose(s0 + length + 5.0)
            self.parked.append(
                ("vehicle.construction", float(xy[0]), float(xy[1]), float(h), (5.5, 2.3, 3.0), "vehicle.parked", 0)
            )
        xy, _ = path0.pose(s0 + 0.5 * length)
        self.no_parking.append((xy, 0.5 * length + 12.0))

    def parked_bicycles(self, road: Road, s: float, side: float) -> None:
        xy, h = road.centerline.pose(s)
        normal = np.array([-np.sin(h), np.cos(h)])
        base = xy + side * (road.kerb + road.sidewalk - 0.6) * normal
        for k in range(int(self.rng.integers(1, 4))):
            p = base + k * 0.8 * np.array([np.cos(h), np.sin(h)])
            self.parked.append(
                (
                    "vehicle.bicycle",
                    float(p[0]),
                    float(p[1]),
                    float(h + np.pi / 2),
                    (1.7, 0.6, 1.1),
                    "cycle.without_rider",
                    0,
                )
            )

    def signal(self, stop_local, heading_local: float, road: Road, group: int, far: float) -> None:
        """A traffic light for the approach whose stop line is at ``stop_local`` heading ``heading_local``.

        The head hangs over the approach lanes ``far`` m beyond the stop line, on the far side.
        """
        along = np.array([np.cos(heading_local), np.sin(heading_local)])
        right = np.array([along[1], -along[0]])
        base = np.asarray(stop_local, float) + far * along
        pole = base + right * (road.kerb + 0.6)
        head_lat = 0.5 * road.median + 0.5 * road.lanes * road.lane_width
        pole_g = self.frame.xy(pole)
        obj, lamps = traffic_light_object(
            pole_g[0], pole_g[1], self.frame.heading(heading_local + np.pi), head_offset=(road.kerb + 0.6) - head_lat
        )
        self.heads.append(SignalHead(group, len(self.scenery), lamps))
        self.scenery.append(obj)
        self.no_parking.append((pole_g, 8.0))

    def ground(self) -> GroundMap:
        return GroundMap(self.surface, self.marking)


def _vehicle_size(category: str, r: np.random.Generator) -> tuple[float, float, float]:
    """(length, width, height) in m, spread around nuScenes-typical sizes of the category."""
    if category == "vehicle.car":
        return (float(r.uniform(4.1, 5.0)), float(r.uniform(1.75, 2.0)), float(r.uniform(1.45, 1.9)))
    if category == "vehicle.truck":
        return (float(r.uniform(6.0, 9.0)), float(r.uniform(2.3, 2.6)), float(r.uniform(2.7, 3.4)))
    if category == "vehicle.bus.rigid":
        return (float(r.uniform(10.5, 12.5)), float(r.uniform(2.8, 3.0)), float(r.uniform(3.2, 3.6)))
    if category == "vehicle.motorcycle":
        return (float(r.uniform(1.9, 2.3)), float(r.uniform(0.7, 0.9)), float(r.uniform(1.4, 1.6)))
    if category == "vehicle.bicycle":
        return (float(r.uniform(1.6, 1.9)), float(r.uniform(0.55, 0.7)), float(r.uniform(1.6, 1.8)))
    raise ValueError(f"no size model for {category}")


def vehicle_size(category: str, r: np.random.Generator) -> tuple[float, float, float]:
    """Public wrapper of the size model (used by traffic.py)."""
    return _vehicle_size(category, r)


# ----------------------------------------------------------------------------------------------- layouts
def build_world(layout: str, rng: np.random.Generator, ego_travel_m: float) -> StaticWorld:
    """Generate the static world of one scene.

    Args:
        layout: "straight", "curve" or "intersection".
        rng: the scene's generator (consumed in a fixed order: deterministic per seed).
        ego_travel_m: roughly how far the ego may drive during the scene, m (sizes the scenery extent).
    """
    if layout == "straight":
        return _straight(rng, ego_travel_m)
    if layout == "curve":
        return _curve(rng, ego_travel_m)
    if layout == "intersection":
        return _intersection(rng, ego_travel_m)
    raise ValueError(f"unknown layout {layout!r}; choose one of straight, curve, intersection")


def _line(x0, x1, y=0.0, step=1.0) -> np.ndarray:
    xs = np.arange(x0, x1 + step, step)
    return np.stack([xs, np.full_like(xs, y)], axis=1)


def _finish(b: _LayoutBuilder, ego_route: Route, signals, junction_local, description: str) -> StaticWorld:
    return StaticWorld(
        layout=b.layout,
        ground=b.ground(),
        roads=b.roads,
        scenery=b.scenery,
        parked=b.parked,
        vehicle_routes=b.vehicle_routes,
        ego_route=ego_route,
        walk_routes=b.walk_routes,
        signals=signals,
        heads=b.heads,
        junction_center=None if junction_local is None else b.frame.xy(junction_local),
        frame_yaw=b.frame.yaw,
        description=description,
    )


def _sidewalk_walks(b: _LayoutBuilder, road: Road, local_pts: np.ndarray) -> None:
    for side in (-1.0, 1.0):
        line = offset_polyline(local_pts, side * (road.kerb + 0.5 * road.sidewalk))
        for pts in (line, line[::-1]):
            b.walk_routes.append(Route(Path(b.frame.xy(pts)), walk=True))


def _straight(rng: np.random.Generator, travel: float) -> StaticWorld:
    b = _LayoutBuilder("straight", rng)
    half = 190.0
    local = _line(-half, half)
    road = b.add_road(local, b.cross_section())
    start = -0.5 * travel - 10.0
    x_cross = float(rng.uniform(start + 40.0, start + 0.55 * travel + 50.0))
    b.no_parking.append((b.frame.xy([x_cross, 0.0]), 14.0))
    b.paint_roads(None, 0.0)
    # signalised mid-block crossing: zebra, stop lines 2 m before it on both sides, heads on the far side
    cw_depth = 4.0
    b.paint_crosswalk([x_cross, 0.0], 0.0, road, cw_depth)
    stops = {}
    for direction in (1, -1):
        stop_x = x_cross - direction * (0.5 * cw_depth + 2.0)
        heading = 0.0 if direction == 1 else np.pi
        b.paint_stop_line([stop_x, 0.0], heading, road)
        b.signal([stop_x, 0.0], heading, road, group=0, far=cw_depth + 3.0)
        stops[direction] = stop_x
    for route, direction, lane in b.lane_routes(road, local):
        stop_s = (stops[1] + half) if direction == 1 else (half - stops[-1])
        route.stops = [(float(stop_s), 0)]
        b.vehicle_routes.append((route, road.lanes - 1 - lane))
    # pedestrians: along both sidewalks, and crossing at the zebra (walking while vehicles have red)
    _sidewalk_walks(b, road, local)
    y_sw = road.kerb + 0.5 * road.sidewalk
    for sign in (1.0, -1.0):
        pts = np.array(
            [
                [x_cross - 25.0, -sign * y_sw],
                [x_cross - 0.8, -sign * y_sw],
                [x_cross - 0.8, sign * y_sw],
                [x_cross - 25.0, sign * y_sw],
            ]
        )
        dense = np.concatenate(
            [Path(pts[i : i + 2]).pose(np.arange(0, np.linalg.norm(pts[i + 1] - pts[i]), 0.5))[0] for i in range(3)]
            + [pts[-1:]]
        )
        path = Path(b.frame.xy(dense))
        b.walk_routes.append(Route(path, stops=[(24.2 + (y_sw - road.kerb) - 0.3, 0)], walk=True))
    ego_lane = road.lanes - 1 if rng.random() < 0.5 else 0
    ego = Route(
        Path(b.frame.xy(offset_polyline(local, road.lane_offset(ego_lane)))), stops=[(float(stops[1] + half), 0)]
    )
    ego.start_s = float(start + half)  # type: ignore[attr-defined]
    _scenery(b, road, local, half, x_cross)
    signals = SignalProgram(
        green_s=float(rng.uniform(8, 14)), offset_s=float(rng.uniform(0, 40)), groups=1, ped_s=float(rng.uniform(8, 12))
    )
    desc = f"a straight {_lanes_words(road)} road with a signalised pedestrian crossing"
    return _finish(b, ego, signals, np.array([x_cross, 0.0]), desc)


def _curve(rng: np.random.Generator, travel: float) -> StaticWorld:
    b = _LayoutBuilder("curve", rng)
    radius = float(rng.uniform(50, 120))
    angle = float(rng.uniform(np.pi / 4, np.pi / 2)) * (1 if rng.random() < 0.5 else -1)
    pre = 60.0 + 0.2 * travel
    arc_n = max(8, int(abs(angle) * radius))
    theta = np.linspace(0.0, abs(angle), arc_n)
    sign = np.sign(angle)
    arc = np.stack([radius * np.sin(theta), sign * radius * (1 - np.cos(theta))], axis=1)
    end = arc[-1]
    heading = angle
    tail = end + np.arange(1.0, 200.0, 1.0)[:, None] * np.array([np.cos(heading), np.sin(heading)])
    head = _line(-pre - 120.0, -1.0)
    local = np.concatenate([head, arc, tail], axis=0)
    road = b.add_road(local, b.cross_section())
    b.paint_roads(None, 0.0)
    for route, _direction, lane in b.lane_routes(road, local):
        b.vehicle_routes.append((route, road.lanes - 1 - lane))
    _sidewalk_walks(b, road, local)
    ego_lane = road.lanes - 1 if rng.random() < 0.5 else 0
    ego = Route(
        Path(b.frame.xy(offset_polyline(local, road.lane_offset(ego_lane)))), maneuver="left" if angle > 0 else "right"
    )
    ego.start_s = float(120.0)  # type: ignore[attr-defined]
    ego.turn_span = (pre + 120.0 - 1.0, pre + 120.0 + abs(angle) * radius)
    _scenery(b, road, local, None, None)
    desc = f"a {_lanes_words(road)} road curving to the {'left' if angle > 0 else 'right'}"
    return _finish(b, ego, None, None, desc)


def _intersection(rng: np.random.Generator, travel: float) -> StaticWorld:
    b = _LayoutBuilder("intersection", rng)
    half = 190.0
    main = b.cross_section()
    cross = b.cross_section()
    local_a = _line(-half, half)
    local_b = local_a[:, ::-1].copy()  # along +y
    road_a = b.add_road(local_a, main)
    road_b = b.add_road(local_b, cross)
    junction = max(road_a.kerb, road_b.kerb) + 1.0
    b.no_parking.append((b.frame.xy([0.0, 0.0]), junction + 18.0))
    b.paint_roads(np.zeros(2), junction)
    cw_depth = 3.0
    # the 4 arms: (road, arm heading local = direction traffic travels *towards* the junction, group)
    arms = [(road_a, 0.0, 0), (road_a, np.pi, 0), (road_b, np.pi / 2, 1), (road_b, -np.pi / 2, 1)]
    stop_dist = {}
    for road, heading, group in arms:
        other = road_b if road is road_a else road_a
        box = other.kerb + 0.5
        along = np.array([np.cos(heading), np.sin(heading)])
        b.paint_crosswalk(-along * (box + 0.5 * cw_depth), heading, road, cw_depth)
        stop = box + cw_depth + 1.0
        b.paint_stop_line(-along * stop, heading, road)
        b.signal(-along * stop, heading, road, group, far=2 * stop)
        stop_dist[heading] = (stop, box)

    def approach_routes(road: Road, heading: float, group: int):
        """Routes of one arm: through, right turn (kerb lane), left turn (inner lane), in local coordinates."""
        c, s = np.cos(heading), np.sin(heading)
        rot = np.array([[c, -s], [s, c]])
        stop, box = stop_dist[heading]
        other = road_b if road is road_a else road_a
        out = []
        for lane in range(road.lanes):
            off = road.lane_offset(lane)
            entry = np.array([-box, off])
            through = _line(-half, half, off)
            out.append((through, "straight", lane, half - stop, None))
            if lane == road.lanes - 1:
                exit_off = other.lane_offset(other.lanes - 1)
                p_exit = np.array([exit_off, -box])  # exit road heads -y: its lane at offset o lies at x = o
                conn = bezier(entry, 0.0, p_exit, -np.pi / 2)
                pts = np.concatenate(
                    [
                        _line(-half, -box - 1.0, off),
                        conn,
                        np.stack([np.full(150, exit_off), -box - 1.0 - np.arange(150.0)], axis=1),
                    ]
                )
                out.append((pts, "right", lane, half - stop, (half - box - 1.0, half - box + Path(conn).length)))
            if lane == 0:
                exit_off = other.lane_offset(0)
                p_exit = np.array([-exit_off, box])
                conn = bezier(entry, 0.0, p_exit, np.pi / 2)
                pts = np.concatenate(
                    [
                        _line(-half, -box - 1.0, off),
                        conn,
                        np.stack([np.full(150, -exit_off), box + 1.0 + np.arange(150.0)], axis=1),
                    ]
                )
                out.append((pts, "left", lane, half - stop, (half - box - 1.0, half - box + Path(conn).length)))
        return [(pts @ rot.T, man, lane, stop_s, span) for pts, man, lane, stop_s, span in out]

    ego = None
    ego_choice = rng.choice(["straight", "left", "right"], p=[0.5, 0.25, 0.25])
    for road, heading, group in arms:
        for pts, man, lane, stop_s, span in approach_routes(road, heading, group):
            route = Route(Path(b.frame.xy(pts)), stops=[(float(stop_s), group)], maneuver=man, turn_span=span)
            if heading == 0.0 and man == ego_choice and ego is None:
                ego = Route(route.path, stops=route.stops, maneuver=man, turn_span=span)
            if man != "left":  # background traffic never turns left across oncoming traffic
                b.vehicle_routes.append((route, road.lanes - 1 - lane))
    start = float(rng.uniform(45.0, 80.0))
    ego.start_s = float(half - stop_dist[0.0][0] - start)  # type: ignore[attr-defined]
    # pedestrians on the four sidewalks, crossing the other road on its crosswalk while that road has red
    for road, other, group_cross in ((road_a, road_b, 1), (road_b, road_a, 0)):
        local = local_a if road is road_a else local_b
        for side in (-1.0, 1.0):
            line = offset_polyline(local, side * (road.kerb + 0.5 * road.sidewalk))
            for pts in (line, line[::-1]):
                path = Path(b.frame.xy(pts))
                # kerb of the other road: stop 0.3 m before it
                s_kerb = half - other.kerb - 0.3
                b.walk_routes.append(Route(path, stops=[(float(s_kerb), group_cross)], walk=True))
    _scenery(b, road_a, local_a, half, 0.0, junction)
    _scenery(b, road_b, local_b, half, 0.0, junction)
    signals = SignalProgram(green_s=float(rng.uniform(9, 15)), offset_s=float(rng.uniform(0, 40)), groups=2)
    desc = f"a four-way signalised intersection of a {_lanes_words(road_a)} road and a {_lanes_words(road_b)} road"
    return _finish(b, ego, signals, np.zeros(2), desc)


def _lanes_words(road: Road) -> str:
    total = 2 * road.lanes
    return {2: "two-lane", 4: "four-lane"}.get(total, f"{total}-lane")


def _scenery(b: _LayoutBuilder, road: Road, local: np.ndarray, half, x_special, junction: float = 0.0) -> None:
    """Parked cars, a work zone, parked bicycles and roadside scenery along one road."""
    r = b.rng
    length = road.centerline.length
    if r.random() < 0.55:
        s_wz = float(r.uniform(0.3, 0.7) * length)
        if junction == 0.0 or abs(s_wz - 0.5 * length) > junction + 25:
            b.work_zone(road, local, s_wz)
    b.parked_cars(road, local, (10.0, length - 10.0))
    for _ in range(int(r.integers(0, 3))):
        b.parked_bicycles(road, float(r.uniform(0.3, 0.7) * length), float(r.choice([-1.0, 1.0])))
    b.roadside(road, (5.0, length - 5.0))
