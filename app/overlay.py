"""CAM overlays: a colormap heatmap blended over the image, with boxes and labels drawn."""

from __future__ import annotations

import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import cam
from .cam import BoxRule
from .store import StoredImage

try:  # Intel ISA-L's deflate: about four times as fast as zlib's fastest level on overlays
    from isal import isal_zlib as _deflate_lib
except ImportError:  # no wheel for this platform: zlib, with run-length matching (its fastest useful mode)
    _deflate_lib = None

# Turbo (Mikhailov 2019), polynomial approximation of the published lookup table.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
], dtype=np.float64)

FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "jpg": ("JPEG", "image/jpeg"),
           "webp": ("WEBP", "image/webp")}


def colormap(heat: np.ndarray, name: str = "turbo") -> Image.Image:
    """(H, W) in [0, 1] -> an RGB image, through a 256-entry table (Pillow's palette lookup)."""
    index = Image.fromarray((np.clip(heat, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), "L")
    index.putpalette(_table(name).tobytes())
    return index.convert("RGB")


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


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")  # convert() copies even RGB


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render(image: Image.Image, heat: np.ndarray, boxes: list[list[float]], label: str, alpha: float = 0.5,
           cmap: str = "turbo") -> Image.Image:
    """Blend colormap(heat) over image (same size) and draw the boxes (image coordinates) and the
    label."""
    out = Image.blend(_rgb(image), colormap(heat, cmap), alpha)
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 250))
    font = _font(max(10, round(max(out.size) / 40)))
    for x0, y0, x1, y1 in boxes:
        corners = [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)]  # a box thinner than a pixel at a small size
        draw.rectangle(corners, outline=(255, 255, 255), width=width + 1)
        draw.rectangle(corners, outline=(0, 0, 0), width=max(1, width - 1))
    if label:
        x0, y0 = boxes[0][:2] if boxes else (2, 2)
        text_box = draw.textbbox((0, 0), label, font=font)
        ty = max(0, y0 - (text_box[3] - text_box[1]) - 4)
        draw.rectangle([x0, ty, x0 + text_box[2] + 4, ty + text_box[3] + 4], fill=(0, 0, 0))
        draw.text((x0 + 2, ty + 1), label, fill=(255, 255, 255), font=font)
    return out


TRUE_BOX_COLOUR = (40, 220, 90)  # a known true box, beside the CAM's black-and-white one


def draw_true_box(image: Image.Image, box: list[float]) -> Image.Image:
    """Draw a true (x0, y0, x1, y1) box in place, in green, its line about as thick as the CAM box's."""
    width = max(2, round(max(image.size) / 120))
    ImageDraw.Draw(image).rectangle([box[0], box[1], max(box[0], box[2] - 1), max(box[1], box[3] - 1)],
                                    outline=TRUE_BOX_COLOUR, width=width)
    return image


def answer_picture(image: Image.Image, cams: np.ndarray, index: int, window: cam.Geometry, rule: BoxRule, label: str,
                   true_box: list[float] | None = None, min_side: int = 224, foreground: np.ndarray | None = None
                   ) -> tuple[Image.Image, list[float] | None]:
    """One answer drawn on `image` (the picture `window` maps the model's input into): the CAM of
    class `index`, its box under `rule` with `label`, and the true box (in `image`'s pixels) in
    green; enlarged to at least `min_side` so that small inputs can be read. Returns the drawing
    and the box in `image`'s pixels (None when the map has no region)."""
    found = cam.class_boxes(cams, [index], window, image.width, image.height, rule, foreground=foreground)[0]
    box = found[0].as_list() if found else None
    scale = max(1.0, min_side / max(image.size))
    size = (round(image.width * scale), round(image.height * scale))
    drawn = render(image.resize(size, Image.Resampling.BILINEAR), cam.heatmap(cams[index], window.scaled(*size)),
                   [[v * scale for v in box]] if box else [], label)
    if true_box is not None:
        draw_true_box(drawn, [v * scale for v in true_box])
    return drawn, box


def cam_picture(item: StoredImage, index: int, label: str, fmt: str, rule: BoxRule, alpha: float = 0.5,
                cmap: str = "turbo", max_side: int = 1024, min_side: int = 0) -> tuple[bytes, str]:
    """A kept image's CAM of class `index`, encoded as `fmt`: png/jpeg/webp overlays (the heatmap
    blended over the image, at most max_side long, with the boxes the JSON answer gave and the
    label, `(unknown)` after it where the answer called the image none of the model's classes), the raw
    heatmap as a grey PNG (`heatmap.png`) or as float32 `.npy`, at the image's working resolution.
    An overlay of a picture shorter than min_side (capped by max_side) is drawn enlarged to it: on a
    96 px picture the label, at the smallest legible font, would cover the object."""
    if fmt in ("npy", "heatmap.png"):
        heat = cam.heatmap(item.cams[index], item.geometry)
        if fmt == "heatmap.png":
            return grey_png(heat), "image/png"
        buf = io.BytesIO()
        np.save(buf, heat)
        return buf.getvalue(), "application/octet-stream"
    g = item.geometry.fitted(max_side)
    enlarge = min(min_side, max_side) / max(g.image_width, g.image_height)
    if enlarge > 1:
        g = g.scaled(round(g.image_width * enlarge), round(g.image_height * enlarge))
    image = item.image
    if image.size != (g.image_width, g.image_height):
        image = image.resize((g.image_width, g.image_height), Image.Resampling.BILINEAR)
    heat = cam.heatmap(item.cams[index], g)
    boxes = cam.class_boxes(item.cams, [index], item.geometry, g.image_width, g.image_height, rule,
                            foreground=item.foreground)[0]
    caption = f"{label} (unknown)" if item.unknown else label  # an overlay seen alone says it too
    return encode(render(image, heat, [b.as_list() for b in boxes], caption, alpha=alpha, cmap=cmap), fmt)


def encode(image: Image.Image, fmt: str) -> tuple[bytes, str]:
    pil_format, media_type = FORMATS[fmt]
    if pil_format == "PNG":
        return png_bytes(np.asarray(_rgb(image))), media_type
    buf = io.BytesIO()
    image.save(buf, pil_format, quality=90)
    return buf.getvalue(), media_type


def grey_png(heat: np.ndarray) -> bytes:
    return png_bytes((np.clip(heat, 0, 1) * 255 + 0.5).astype(np.uint8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_DEFLATE_THREADS = min(4, os.cpu_count() or 1)
_deflate_pool = ThreadPoolExecutor(_DEFLATE_THREADS, thread_name_prefix="png") if _DEFLATE_THREADS > 1 else None


def _compressor():
    """Raw deflate at the fastest level."""
    if _deflate_lib is not None:
        return _deflate_lib.compressobj(1, _deflate_lib.DEFLATED, -15, 9)
    return zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)


def _deflate_piece(data: memoryview, last: bool) -> bytes:
    z = _compressor()
    return z.compress(data) + z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _zlib_stream(data: bytes | memoryview) -> bytes:
    """One zlib stream of `data`, its pieces deflated in parallel as pigz does: every piece but the
    last ends on a byte-aligned sync flush, so the raw deflate pieces simply concatenate (zlib
    and ISA-L release the GIL while they compress)."""
    n = _DEFLATE_THREADS if _deflate_pool is not None and len(data) >= 256 * 1024 else 1
    bounds = [len(data) * i // n for i in range(n + 1)]
    view = memoryview(data)
    pieces = [view[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    lasts = [i == n - 1 for i in range(n)]
    body = list(_deflate_pool.map(_deflate_piece, pieces, lasts)) if n > 1 else [_deflate_piece(view, True)]
    return b"\x78\x01" + b"".join(body) + struct.pack(">I", zlib.adler32(data))


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of uint8 (H, W) grey or (H, W, 3) RGB pixels: every row with the "Up" filter, the
    fastest deflate level (ISA-L's, else zlib's with run-length matching), deflated on several
    cores. Several times as fast as Pillow's encoder for overlays (BENCHMARKS.md)."""
    h, w = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(h, -1)
    raw = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter "Up": each byte minus the one above it (modulo 256); row 0 stays as is
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    colour_type = 2 if pixels.ndim == 3 else 0
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
            + _chunk(b"IDAT", _zlib_stream(memoryview(raw).cast("B"))) + _chunk(b"IEND", b""))
