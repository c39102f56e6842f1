"""Decoding uploads with Pillow: any common format and mode to RGB, EXIF orientation applied,
decompression bombs refused, big JPEGs reduced in the DCT domain before anything else."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")


class ImageError(Exception):
    """A bad upload: `status` is the HTTP status to answer with, the message says what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Decoded:
    image: Image.Image  # RGB, at most about work_side on its long side
    width: int  # the original's size, after EXIF orientation
    height: int
    format: str


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        im = Image.fromarray(a.astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode(data: bytes, max_pixels: int, work_side: int) -> Decoded:
    """Bytes to RGB. Raises ImageError (400 corrupt, 413 too many pixels, 415 not an image)."""
    if not data:
        raise ImageError(400, "the upload is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = im.format or "unknown"
            if fmt not in FORMATS:
                raise ImageError(415, f"unsupported image format {fmt}; send JPEG, PNG, WebP, GIF, BMP or TIFF")
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(413, f"image has {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
            if fmt in ("JPEG", "MPO") and max(w, h) > work_side:
                im.draft("RGB", (max(1, w * work_side // max(w, h)), max(1, h * work_side // max(w, h))))
            im.load()
            oriented = ImageOps.exif_transpose(im)
            swapped = oriented.size != im.size
            width, height = (h, w) if swapped else (w, h)
            rgb = _to_rgb(oriented)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(413, f"image is too large to decode safely: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(415, "the upload is not an image Pillow can read (JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageError(400, f"the image is corrupt or truncated: {e}") from None
    if max(rgb.size) > work_side:
        rgb.thumbnail((work_side, work_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return Decoded(rgb, width, height, fmt)


ImageFile.LOAD_TRUNCATED_IMAGES = False
