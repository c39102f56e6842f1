"""CAM overlays: a colormap heatmap blended over the image, with boxes and labels drawn."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Turbo (Mikhailov 2019), polynomial approximation of the published lookup table.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
], dtype=np.float64)

FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "jpg": ("JPEG", "image/jpeg"),
           "webp": ("WEBP", "image/webp")}


def colormap(heat: np.ndarray, name: str = "turbo") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, through a 256-entry table."""
    index = (np.clip(heat, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return _table(name)[index]


@lru_cache(maxsize=4)
def _table(name: str) -> np.ndarray:
    t = np.linspace(0.0, 1.0, 256)
    if name == "jet":
        rgb = np.clip(np.stack([1.5 - np.abs(4 * t - 3), 1.5 - np.abs(4 * t - 2), 1.5 - np.abs(4 * t - 1)], -1), 0, 1)
    elif name == "turbo":
        powers = np.stack([t ** k for k in range(6)], axis=-1)
        rgb = np.clip(powers @ _TURBO.T, 0, 1)
    else:
        raise ValueError(f"unknown colormap {name!r}: use turbo or jet")
    return (rgb * 255 + 0.5).astype(np.uint8)


def render(image: Image.Image, heat: np.ndarray, boxes: list[list[float]], label: str, alpha: float = 0.5,
           cmap: str = "turbo") -> Image.Image:
    """Blend colormap(heat) over image (same size) and draw the boxes (image coordinates) and the
    label."""
    out = Image.blend(image.convert("RGB"), Image.fromarray(colormap(heat, cmap)), alpha)
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 250))
    font = ImageFont.load_default(size=max(10, round(max(out.size) / 40)))
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255), width=width + 1)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 0, 0), width=max(1, width - 1))
    if label:
        x0, y0 = boxes[0][:2] if boxes else (2, 2)
        text_box = draw.textbbox((0, 0), label, font=font)
        ty = max(0, y0 - (text_box[3] - text_box[1]) - 4)
        draw.rectangle([x0, ty, x0 + text_box[2] + 4, ty + text_box[3] + 4], fill=(0, 0, 0))
        draw.text((x0 + 2, ty + 1), label, fill=(255, 255, 255), font=font)
    return out


def encode(image: Image.Image, fmt: str) -> tuple[bytes, str]:
    pil_format, media_type = FORMATS[fmt]
    buf = io.BytesIO()
    image.save(buf, pil_format, **({"quality": 90} if pil_format in ("JPEG", "WEBP") else {"compress_level": 1}))
    return buf.getvalue(), media_type


def grey_png(heat: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(heat, 0, 1) * 255 + 0.5).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()
