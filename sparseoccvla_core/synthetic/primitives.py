"""Solid primitives the synthetic world is made of: oriented boxes and ellipsoids, grouped into objects.

An *object* (a car, a tree, a building, a traffic light) is a group of primitives sharing an instance id.
Each primitive carries its Occ3D class (for the occupancy labels), its colour and texture (for the renderer).
Both the renderer and the occupancy labeller read the same arrays, so pixels and voxels agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BOX, ELLIPSOID = 0, 1

# Surface textures the renderer knows (see render.py).
TEX_PLAIN, TEX_WINDOWS, TEX_WINDOW_BAND, TEX_LEAVES, TEX_EMISSIVE = 0, 1, 2, 3, 4


@dataclass
class SceneObject:
    """One rigid object made of primitives, posed in the global frame.

    Args:
        center: [K, 3] primitive centres (global frame), m.
        half: [K, 3] half extents along the primitive's own (forward, left, up) axes (box) or radii (ellipsoid).
        yaw: [K] heading of each primitive, rad.
        kind: [K] BOX or ELLIPSOID.
        color: [K, 3] base RGB in [0, 1].
        cls: [K] Occ3D class id of each primitive.
        texture: [K] renderer texture id.
        instance: annotation index of the object (-1 for unannotated scenery).
        hollow: True for buildings: only their outer 0.4 m shell is occupied in the Occ3D labels (the real
            labels come from accumulated LiDAR surfaces; interiors are never observed).
    """

    center: np.ndarray
    half: np.ndarray
    yaw: np.ndarray
    kind: np.ndarray
    color: np.ndarray
    cls: np.ndarray
    texture: np.ndarray
    instance: int = -1
    hollow: bool = False


@dataclass
class ObjectBuilder:
    """Accumulates primitives in an object-local frame (x forward, y left, z up, origin on the ground)."""

    parts: list = field(default_factory=list)

    def box(self, x, y, z0, z1, length, width, color, cls, texture=TEX_PLAIN, yaw=0.0) -> "ObjectBuilder":
        """Box spanning z in [z0, z1] centred at local (x, y)."""
        self.parts.append(
            (BOX, (x, y, 0.5 * (z0 + z1)), (0.5 * length, 0.5 * width, 0.5 * (z1 - z0)), yaw, color, cls, texture)
        )
        return self

    def ellipsoid(self, x, y, z, rx, ry, rz, color, cls, texture=TEX_LEAVES) -> "ObjectBuilder":
        self.parts.append((ELLIPSOID, (x, y, z), (rx, ry, rz), 0.0, color, cls, texture))
        return self

    def build(self, x: float, y: float, yaw: float, instance: int = -1, hollow: bool = False) -> SceneObject:
        """Place the object at global (x, y) with heading ``yaw``."""
        kind = np.array([p[0] for p in self.parts], dtype=np.int8)
        local = np.array([p[1] for p in self.parts], dtype=np.float64)
        c, s = np.cos(yaw), np.sin(yaw)
        center = np.stack(
            [x + c * local[:, 0] - s * local[:, 1], y + s * local[:, 0] + c * local[:, 1], local[:, 2]], axis=1
        )
        return SceneObject(
            center=center,
            half=np.array([p[2] for p in self.parts], dtype=np.float64),
            yaw=np.array([yaw + p[3] for p in self.parts], dtype=np.float64),
            kind=kind,
            color=np.array([p[4] for p in self.parts], dtype=np.float32),
            cls=np.array([p[5] for p in self.parts], dtype=np.uint8),
            texture=np.array([p[6] for p in self.parts], dtype=np.int8),
            instance=instance,
            hollow=hollow,
        )
