"""sensor_msgs/PointCloud2 layout <-> numpy structured arrays, for rclpy messages and rosbags messages alike.

The node (``conversions.py``, rclpy messages), the bag converter and ``eval-bag`` (``replay/``, rosbags messages) read
and write the same clouds; both message flavours have ``fields`` (name, offset, datatype, count), ``point_step``,
``width``, ``height``, ``is_bigendian`` and ``data``, so one decoder serves both.  No rclpy import here: ``eval-bag``
runs where only ``rosbags`` is installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: sensor_msgs/PointField datatype constants (INT8 = 1 ... FLOAT64 = 8) -> little-endian numpy dtype.
POINTFIELD_TO_NUMPY: dict[int, np.dtype] = {
    1: np.dtype("i1"),
    2: np.dtype("u1"),
    3: np.dtype("<i2"),
    4: np.dtype("<u2"),
    5: np.dtype("<i4"),
    6: np.dtype("<u4"),
    7: np.dtype("<f4"),
    8: np.dtype("<f8"),
}
_NUMPY_TO_POINTFIELD: dict[np.dtype, int] = {v.newbyteorder("="): k for k, v in POINTFIELD_TO_NUMPY.items()}


class PointCloudFormatError(ValueError):
    """A PointCloud2 layout this package cannot read (big-endian, a field count > 1, an unknown datatype)."""


def point_fields(dtype: np.dtype) -> list[tuple[str, int, int]]:
    """Structured dtype -> ``(name, offset, PointField datatype)`` per field, in dtype order."""
    out = []
    for name in dtype.names or ():
        dt, offset = dtype.fields[name][:2]
        out.append((name, int(offset), _NUMPY_TO_POINTFIELD[dt.newbyteorder("=")]))
    return out


def cloud_to_array(msg: Any) -> np.ndarray:
    """PointCloud2 (rclpy or rosbags) -> structured array [height * width] (fields by name and offset).

    Raises:
        PointCloudFormatError: big-endian data, a field count > 1 or an unknown datatype.
    """
    if msg.is_bigendian:
        raise PointCloudFormatError("big-endian PointCloud2 is not supported")
    names, formats, offsets = [], [], []
    for f in msg.fields:
        if f.count != 1 or f.datatype not in POINTFIELD_TO_NUMPY:
            raise PointCloudFormatError(
                f"PointCloud2 field '{f.name}' (datatype {f.datatype}, count {f.count}) is not supported"
            )
        names.append(f.name)
        formats.append(POINTFIELD_TO_NUMPY[f.datatype])
        offsets.append(f.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})
    n = int(msg.width) * int(msg.height)
    data = msg.data if isinstance(msg.data, (bytes, bytearray)) else np.asarray(msg.data, dtype=np.uint8).tobytes()
    return np.frombuffer(data, dtype=dtype, count=n)
