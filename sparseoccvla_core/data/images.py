"""Camera images for the model input: JPEG decoding, resize / crop to ``cfg.image_size`` (intrinsics updated).

Speed: a JPEG is decoded straight at 1/2, 1/4 or 1/8 resolution when the target is that much smaller
(libjpeg's DCT-domain scaling through ``cv2.IMREAD_REDUCED_COLOR_*``, several times faster than a full decode),
then resized once with ``cv2.INTER_AREA`` and cropped.  A reduced decode is only used when both sides divide
exactly, so pixel ``j`` of the decoded image covers input pixels ``[r j, r (j + 1))`` and the intrinsics of
:class:`~sparseoccvla_core.geometry.camera.ResizeCrop` stay exact.

Corrupt input: a file that does not start with the JPEG SOI marker, does not end with the EOI marker
(truncated download) or that OpenCV cannot decode raises :class:`CorruptImageError` naming the file; the
dataset decides whether to skip the item or raise (``DatasetOptions.on_bad_image``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..geometry.camera import ResizeCrop

_REDUCED_FLAGS: dict[int, int] = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


class CorruptImageError(ValueError):
    """A camera image exists but cannot be decoded (corrupt or truncated)."""


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(H, W) from a JPEG's SOF header without decoding it.

    Raises:
        CorruptImageError: no SOF marker found.
    """
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        seg_len = (data[i + 2] << 8) | data[i + 3]
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = (data[i + 5] << 8) | data[i + 6]
            w = (data[i + 7] << 8) | data[i + 8]
            return h, w
        i += 2 + seg_len
    raise CorruptImageError("no JPEG frame header (SOF) found")


def _reduction(in_hw: tuple[int, int], resized_hw: tuple[int, int]) -> int:
    """Largest r in {8, 4, 2, 1} dividing both sides with the reduced image still >= the resized size."""
    (h, w), (rh, rw) = in_hw, resized_hw
    for r in (8, 4, 2):
        if h % r == 0 and w % r == 0 and h // r >= rh and w // r >= rw:
            return r
    return 1


def load_image(path: str | Path, transform: ResizeCrop, in_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read one JPEG and return it resized and cropped.

    Args:
        path: image file.
        transform: the resize / crop (built for the image's original size).
        in_hw: original (H, W) if known (skips reading the header).
    Returns:
        [H', W', 3] uint8 RGB with (H', W') = ``transform.out_hw``.
    Raises:
        FileNotFoundError: missing file; CorruptImageError: undecodable, truncated or a size other than expected.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"camera image {path} not found (download the nuScenes camera blobs for this split, "
            "or check the dataset root)"
        ) from None
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise CorruptImageError(f"{path} is not a JPEG (no SOI marker)")
    if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        raise CorruptImageError(f"{path} is truncated (no JPEG EOI marker); re-download it")
    if in_hw is None:
        in_hw = jpeg_size(data)
    r = _reduction(in_hw, transform.resized_hw)
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED_FLAGS[r])
    if img is None:
        raise CorruptImageError(f"{path} could not be decoded by OpenCV")
    if img.shape[:2] != (in_hw[0] // r, in_hw[1] // r):
        raise CorruptImageError(
            f"{path} decodes to {img.shape[1]}x{img.shape[0]} at 1/{r}, expected {in_hw[1]}x{in_hw[0]} "
            "(the image size disagrees with its calibration)"
        )
    return resize_crop_array(img, transform, bgr=True)


def resize_crop_array(img: np.ndarray, transform: ResizeCrop, bgr: bool = False) -> np.ndarray:
    """Resize ([H, W, 3] uint8) with INTER_AREA and crop (zero padding where the window leaves the image).

    Args:
        img: [H, W, 3] uint8 image (any size whose aspect matches the transform's input).
        transform: resize / crop.
        bgr: input is OpenCV BGR; the output is always RGB.
    Returns:
        [H', W', 3] uint8 RGB.
    """
    rh, rw = transform.resized_hw
    if img.shape[:2] != (rh, rw):
        shrink = rh <= img.shape[0] and rw <= img.shape[1]
        img = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    oh, ow = transform.out_hw
    x0, y0 = transform.crop_xy
    if x0 >= 0 and y0 >= 0 and x0 + ow <= rw and y0 + oh <= rh:
        out = img[y0 : y0 + oh, x0 : x0 + ow]
    else:
        out = np.zeros((oh, ow, 3), dtype=img.dtype)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + ow, rw), min(y0 + oh, rh)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    if bgr:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out)
