"""Decoding uploads with Pillow: any common format and mode to RGB, EXIF orientation applied,
decompression bombs refused, big JPEGs reduced in the DCT domain before anything else, other big
images reduced in their own mode before any conversion, and the memory a decode needs reserved
from a per-process budget first (a 124 KB 16-bit PNG can be a 64-megapixel image)."""

from __future__ import annotations

import ctypes
import io
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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


# Bytes a pixel takes in Pillow once loaded (RGB is stored in 4), plus what reducing it costs at full
# size: a copy where Pillow cannot reduce the mode itself (1-bit: to L; palette: to RGB; 16-bit goes
# to numpy a strip at a time), the premultiplied copy Pillow makes to reduce an image with alpha
# (bench/decode_memory.py measures them).
LOADED = {"1": 1, "L": 1, "P": 1, "I;16": 3, "I;16B": 3, "I;16L": 3, "I;16N": 3}  # 16-bit: 2, and its strips
TO_REDUCE = {"1": 1, "P": 4, "RGBA": 4, "LA": 4, "PA": 4, "La": 4, "RGBa": 4}


def decode_bytes(im: Image.Image, stored_size: tuple[int, int] | None = None) -> int:
    """The memory decoding `im` (opened, not loaded; drafted when a JPEG) holds at its peak, about:
    the image at its decoded size, what reducing it costs, and a progressive JPEG's coefficients
    (libjpeg keeps every coefficient of the image at its stored size, `stored_size` when drafted:
    2 bytes a sample)."""
    w, h = im.size
    need = w * h * (LOADED.get(im.mode, 4) + TO_REDUCE.get(im.mode, 0))
    if im.format in ("JPEG", "MPO") and im.info.get("progressive"):
        full_w, full_h = stored_size or im.size
        need += full_w * full_h * len(im.getbands()) * 2
    return need


class MemoryBudget:
    """Bytes that decodes may hold at once in this process: a decode reserves its estimate first and
    waits (up to `wait_s`) while others hold the rest; one that alone exceeds the budget is refused."""

    def __init__(self, limit: int, wait_s: float = 30.0) -> None:
        self.limit, self.wait_s, self.used = limit, wait_s, 0
        self.changed = threading.Condition()

    @contextmanager
    def reserve(self, n: int, what: str) -> Iterator[None]:
        if n > self.limit:
            raise ImageError(413, f"{what} needs about {n // 2**20} MB to decode; the limit is "
                                  f"{self.limit // 2**20} MB per image (RESCAM_DECODE_MEMORY_MB)")
        deadline = time.monotonic() + self.wait_s
        with self.changed:
            while self.used + n > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ImageError(503, "the service is decoding other large images; try again shortly")
                self.changed.wait(left)
            self.used += n
        try:
            yield
        finally:
            if n >= TRIM_AFTER:
                release_freed_memory()
            with self.changed:
                self.used -= n
                self.changed.notify_all()


TRIM_AFTER = 32 * 2**20  # decodes at least this big give their freed memory back to the OS at once


def release_freed_memory() -> None:
    """Give freed heap back to the OS. glibc keeps large freed blocks in the arena of the thread that
    freed them (its mmap threshold rises after the first big free), so decodes in several threads
    would each keep their peak: the budget would bound what is used, not what is held."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reduce_in_mode(im: Image.Image, work_side: int) -> Image.Image:
    """A loaded image a little over work_side long, reduced by an integer factor (box filter) before
    any conversion, so that conversions never run at full size."""
    factor = max(im.size) // work_side
    if factor < 2:
        return im
    if im.mode.startswith("I;16"):  # Pillow cannot reduce it: numpy, a strip of rows at a time
        w, h = im.width // factor * factor, im.height // factor * factor
        step = factor * 64
        rows = []
        for top in range(0, h, step):
            a = np.asarray(im.crop((0, top, w, min(top + step, h))))
            rows.append(a.reshape(a.shape[0] // factor, factor, w // factor, factor).mean(axis=(1, 3),
                                                                                           dtype=np.float32))
        out = Image.fromarray(np.concatenate(rows), "F")
        out.info = dict(im.info)  # the EXIF orientation, among others
        return out
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    return im.reduce(factor)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any mode to RGB as the service sees it: transparency on white, 16-bit and float images
    stretched to their own range. Training reads folders through it too (training.data), so that a
    model learns the pixels it will be served (Pillow's own convert("RGB") drops alpha, which leaves
    a cut-out on black, and clips 16-bit values at 255)."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float32)  # at most about 2 x work_side long here (reduce_in_mode)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        im = Image.fromarray(a.astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


UNBOUNDED = MemoryBudget(2**62)


def decode(data: bytes, max_pixels: int, work_side: int, memory: MemoryBudget = UNBOUNDED) -> Decoded:
    """Bytes to RGB at most work_side long. Raises ImageError (400 corrupt, 413 too many pixels or
    too much memory, 415 not an image, 503 the memory budget stayed busy)."""
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
                im.draft("RGB" if im.mode != "CMYK" else "CMYK",
                         (max(1, w * work_side // max(w, h)), max(1, h * work_side // max(w, h))))
            with memory.reserve(decode_bytes(im, (w, h)), f"a {w}x{h} {im.mode} {fmt}"):
                im.load()
                reduced = reduce_in_mode(im, work_side)
                del im
                oriented = ImageOps.exif_transpose(reduced)
                swapped = oriented.size != reduced.size
                width, height = (h, w) if swapped else (w, h)
                rgb = to_rgb(oriented)
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
