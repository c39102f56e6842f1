"""From a decoded image to the network's input, as the model card prescribes. Shared by the
service and by training's evaluation, so the two can never disagree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .cam import Geometry


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize`, take the centre `crop` x `crop`, scale to [0, 1],
    subtract `mean`, divide by `std` (per RGB channel)."""

    crop: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> Preprocessing:
        p = card["preprocessing"]
        return cls(int(p["crop"]), int(p["resize"]), tuple(p["mean"]), tuple(p["std"]))

    def to_card(self) -> dict[str, Any]:
        return {"rule": "resize_shorter_then_center_crop", "interpolation": "bilinear", "crop": self.crop,
                "resize": self.resize, "mean": list(self.mean), "std": list(self.std),
                "layout": "NCHW", "channels": "RGB", "scale": "1/255"}

    def window(self, width: int, height: int) -> Geometry:
        """The part of a width x height image that becomes the network's input."""
        side = min(width, height) * self.crop / self.resize
        return Geometry(width, height, (width - side) / 2, (height - side) / 2, side, side)

    def crop_resize(self, image: Image.Image) -> tuple[np.ndarray, Geometry]:
        """uint8 (crop, crop, 3) and where it came from. One resampling, straight from the window."""
        g = self.window(*image.size)
        box = (g.left, g.top, g.left + g.width, g.top + g.height)
        out = image.resize((self.crop, self.crop), Image.Resampling.BILINEAR, box=box,
                           reducing_gap=None if max(g.width, g.height) < 3 * self.crop else 2.0)
        return np.asarray(out, dtype=np.uint8), g

    def network_input(self, image: Image.Image) -> tuple[np.ndarray, Geometry]:
        """float32 (3, crop, crop) of one image, cropped, resized and normalised, and its window."""
        array, window = self.crop_resize(image)
        return self.normalize(array[None])[0], window

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, 3, H, W)."""
        scale = np.float32(1 / 255)
        mean = np.asarray(self.mean, dtype=np.float32)
        inv_std = 1 / np.asarray(self.std, dtype=np.float32)
        x = (batch.astype(np.float32) * scale - mean) * inv_std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
