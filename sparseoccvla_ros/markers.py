"""RViz debug markers of one driving-node step (``~/debug/markers``, visualization_msgs/MarkerArray).

Voxels as one CUBE_LIST per Occ3D class in the package palette (:data:`sparseoccvla_core.batch.OCC3D_COLORS`,
the same colours as the ``rgb`` field of the occupancy clouds), the scored anchors, the chosen path and the
explanation text.  Message building only; the node (``sparseoccvla_ros/driving_node.py``) publishes.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from sparseoccvla_core.batch import OCC3D_COLORS
from sparseoccvla_core.pipeline import StepResult

from .conversions import make_header

#: Marker colour per Occ3D class, RGB in [0, 1] (the package palette), index = class id.
CLASS_COLORS: np.ndarray = np.asarray(OCC3D_COLORS, dtype=np.float32) / 255.0

#: Default height of the explanation text, m, and its position above the ego origin, m.
TEXT_HEIGHT_M = 2.0
TEXT_Z_M = 4.0
#: Line widths of the anchors and of the chosen path, m.
ANCHOR_LINE_M = 0.1
PLAN_LINE_M = 0.4


def _color(r: float, g: float, b: float, a: float = 1.0) -> ColorRGBA:
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(a))


def score_color(score: float) -> ColorRGBA:
    """Anchor colour: low score blue -> high score red, more opaque when higher."""
    s = float(np.clip(score, 0.0, 1.0))
    return _color(s, 0.2, 1.0 - s, 0.35 + 0.65 * s)


def result_to_markers(
    result: StepResult,
    frame_id: str,
    voxel_size: float,
    show_text: bool = True,
    text_height_m: float = TEXT_HEIGHT_M,
    max_voxels: int = 10000,
) -> MarkerArray:
    """Debug markers of one step, all stamped with the input stamp.

    Voxels are one CUBE_LIST per class (namespace ``occupancy``, id = Occ3D class, class colour), anchors are
    LINE_STRIPs coloured by score (``anchors``), the chosen path a thick LINE_STRIP (``plan``) and the explanation a
    TEXT_VIEW_FACING above the car (``explanation``).  The first marker is DELETEALL so stale markers vanish.

    Markers need one Python object per voxel, so at most ``max_voxels`` voxels (the highest-scoring) are drawn;
    the PointCloud2 on ``~/output/occupancy`` always carries all of them.

    Args:
        result: the pipeline step.
        frame_id: ego frame of the markers.
        voxel_size: cube edge, m (the checkpoint's occupancy grid voxel).
        show_text: add the explanation marker.
        text_height_m: text height, m.
        max_voxels: cap on drawn voxels.
    """
    header = make_header(result.stamp_ns, frame_id)
    markers = [Marker(header=header, action=Marker.DELETEALL)]

    occ = result.occupancy
    keep = np.argsort(-occ.scores, kind="stable")[:max_voxels] if len(occ.scores) > max_voxels else slice(None)
    pts, classes = occ.points[keep], occ.classes[keep].astype(np.int64)
    for cls in np.unique(classes):
        voxels = Marker(header=header, ns="occupancy", id=int(cls), type=Marker.CUBE_LIST, action=Marker.ADD)
        voxels.pose.orientation.w = 1.0
        voxels.scale.x = voxels.scale.y = voxels.scale.z = float(voxel_size)
        r, g, b = CLASS_COLORS[min(int(cls), len(CLASS_COLORS) - 1)].tolist()
        voxels.color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        voxels.points = [Point(x=x, y=y, z=z) for x, y, z in pts[classes == cls].tolist()]
        markers.append(voxels)

    for k, (traj, score) in enumerate(zip(result.plan.anchors, result.plan.anchor_scores)):
        line = Marker(header=header, ns="anchors", id=k, type=Marker.LINE_STRIP, action=Marker.ADD)
        line.pose.orientation.w = 1.0
        line.scale.x = ANCHOR_LINE_M
        line.color = score_color(score)
        line.points = [Point(x=0.0, y=0.0, z=0.0)] + [Point(x=float(x), y=float(y), z=0.0) for x, y in traj]
        markers.append(line)

    chosen = Marker(header=header, ns="plan", id=0, type=Marker.LINE_STRIP, action=Marker.ADD)
    chosen.pose.orientation.w = 1.0
    chosen.scale.x = PLAN_LINE_M
    chosen.color = _color(0.1, 1.0, 0.1)
    chosen.points = [Point(x=0.0, y=0.0, z=0.05)] + [
        Point(x=float(x), y=float(y), z=0.05) for x, y in result.plan.waypoints
    ]
    markers.append(chosen)

    if show_text:
        text = Marker(header=header, ns="explanation", id=0, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        text.pose.position.z = TEXT_Z_M
        text.pose.orientation.w = 1.0
        text.scale.z = float(text_height_m)
        text.color = _color(1.0, 1.0, 1.0)
        text.text = result.explanation or "(no explanation)"
        markers.append(text)
    return MarkerArray(markers=markers)


__all__ = ["CLASS_COLORS", "result_to_markers", "score_color"]
