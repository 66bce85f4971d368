"""Settings of the synthetic nuScenes-format driving world (``sparseoccvla synth``).

One typed dataclass; the command line maps onto it one flag per field.  Defaults give ~20 s scenes at the
nuScenes key-frame rate (2 Hz) rendered at 704 x 396, i.e. the native 1600 x 900 nuScenes images scaled by 0.44,
the resize the paper's 256 x 704 input uses before cropping (so the loader only crops).
"""

from __future__ import annotations

from dataclasses import dataclass

LAYOUTS: tuple[str, ...] = ("straight", "curve", "intersection")


@dataclass
class SynthConfig:
    """What to generate.

    Args:
        num_scenes: scenes to write.
        seed: master seed; scene ``i`` uses ``SeedSequence([seed, i])`` so a scene's bytes do not depend on how
            many scenes or worker processes there are.
        num_frames: key frames per scene (2 Hz; 40 = 20 s, the nuScenes scene length).
        width: rendered camera image width, pixels (native nuScenes 1600; intrinsics are scaled to it).
        height: rendered camera image height, pixels (native nuScenes 900).
        jpeg_quality: OpenCV JPEG quality of the camera images (0-100).
        version: nuScenes version folder name.
        layouts: road layouts to cycle through, scene ``i`` uses ``layouts[i % len(layouts)]``.
        sim_dt: simulation step, s (key frames are every ``5 * sim_dt`` = 0.5 s).
        warmup_s: simulated seconds before the first key frame, so queues at lights have formed.
        val_every: scene ``i`` is in the val split when ``i % val_every == val_every - 1``; with 2..val_every-1
            scenes the last scene is val so a val split always exists when ``num_scenes >= 2``.
        write_lidar: also write a simulated 32-beam LIDAR_TOP sweep per key frame (``.pcd.bin``).
        image_noise: std of the per-pixel sensor noise added to the images, in 0-255 units.
    """

    num_scenes: int = 1
    seed: int = 0
    num_frames: int = 40
    width: int = 704
    height: int = 396
    jpeg_quality: int = 90
    version: str = "v1.0-synth"
    layouts: tuple[str, ...] = LAYOUTS
    sim_dt: float = 0.1
    warmup_s: float = 4.0
    val_every: int = 5
    write_lidar: bool = True
    image_noise: float = 2.0

    def __post_init__(self) -> None:
        if self.num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {self.num_scenes}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not (32 <= self.width <= 4096 and 32 <= self.height <= 4096):
            raise ValueError(f"width/height must be in [32, 4096], got {self.width}x{self.height}")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [0, 100], got {self.jpeg_quality}")
        self.layouts = tuple(self.layouts)
        unknown = [name for name in self.layouts if name not in LAYOUTS]
        if unknown or not self.layouts:
            raise ValueError(f"layouts must be a non-empty subset of {LAYOUTS}, got {self.layouts}")
        if self.val_every < 2:
            raise ValueError(f"val_every must be >= 2, got {self.val_every}")
        if abs(round(0.5 / self.sim_dt) * self.sim_dt - 0.5) > 1e-9:
            raise ValueError(f"sim_dt must divide the 0.5 s key-frame interval, got {self.sim_dt}")

    @property
    def steps_per_key_frame(self) -> int:
        """Simulation steps between two 2 Hz key frames."""
        return int(round(0.5 / self.sim_dt))

    def split_of(self, scene_index: int) -> str:
        """'train' or 'val' for scene ``scene_index`` (see ``val_every``)."""
        if scene_index % self.val_every == self.val_every - 1:
            return "val"
        if 2 <= self.num_scenes < self.val_every and scene_index == self.num_scenes - 1:
            return "val"
        return "train"
