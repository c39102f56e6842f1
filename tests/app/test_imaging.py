"""Decoding: every mode and format to RGB, EXIF orientation, big JPEGs, and bad input."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app.imaging import ImageError, decode
from tests.conftest import image_bytes

LIMIT = 10_000_000


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats_decode_to_rgb(fmt):
    d = decode(image_bytes(fmt), LIMIT, 1024)
    assert d.image.mode == "RGB" and (d.width, d.height) == (64, 48) and d.format == fmt


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16", "I", "F"])
def test_modes_decode_to_rgb(mode):
    fmt = {"CMYK": "JPEG", "I": "TIFF", "F": "TIFF"}.get(mode, "PNG")
    d = decode(image_bytes(fmt, mode=mode), LIMIT, 1024)
    assert d.image.mode == "RGB" and d.image.size == (64, 48)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    rgb = np.asarray(decode(buf.getvalue(), LIMIT, 1024).image)
    assert tuple(rgb[0, 0]) == (0, 0, 255) and tuple(rgb[4, 4]) == (255, 255, 255)
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    buf = io.BytesIO()
    p.save(buf, "PNG", transparency=1)
    assert tuple(np.asarray(decode(buf.getvalue(), LIMIT, 1024).image)[0, 0]) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif, quality=95)
    d = decode(buf.getvalue(), LIMIT, 1024)
    assert (d.width, d.height) == (20, 40) and d.image.size == (20, 40)
    top = np.asarray(d.image)[:8].mean()
    bottom = np.asarray(d.image)[-8:].mean()
    assert top > 200 and bottom < 50  # the stored left edge is on top once rotated


def test_first_frame_of_animated_gif():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(decode(buf.getvalue(), LIMIT, 1024).image)[0, 0, 0] > 200


def test_large_jpeg_is_reduced_in_the_dct_domain_and_keeps_its_size():
    big = image_bytes("JPEG", size=(4000, 3000), quality=80)
    d = decode(big, 50_000_000, 1024)
    assert (d.width, d.height) == (4000, 3000)
    assert max(d.image.size) == 1024


def png_header_only(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, status", [
    (b"", 400),
    (b"hello, I am text", 415),
    (image_bytes("PNG")[:200], 400),
    (image_bytes("PNG")[:60] + b"\0" * 40 + image_bytes("PNG")[100:], 400),
    (png_header_only(40000, 40000), 413),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 415),
    (np.random.default_rng(0).bytes(5000), 415),
])
def test_bad_inputs_raise_clear_errors(data, status):
    with pytest.raises(ImageError) as e:
        decode(data, LIMIT, 1024)
    assert e.value.status == status and e.value.message


def png_of(im: Image.Image, **info) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **info)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["I;16", "1", "P", "RGBA", "L", "RGB"])
def test_big_images_are_reduced_in_their_own_mode_to_the_same_picture(mode):
    """A 3000x2000 image reduced before conversion gives the picture a full-size conversion gives."""
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).resize((3000, 2000), Image.NEAREST)
    if mode == "I;16":
        im = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    else:
        im = base.convert(mode)
    decoded = decode(png_of(im), 10_000_000, 500)
    assert (decoded.width, decoded.height) == (3000, 2000) and decoded.image.width == 500
    reference = decode(png_of(im), 10_000_000, 5000).image.resize(decoded.image.size, Image.Resampling.BOX)
    diff = np.abs(np.asarray(decoded.image, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
    assert diff.mean() < 8, (mode, diff.mean())  # the same picture, up to the filters (1-bit: dithered, 4.5)


def test_a_reduced_image_keeps_its_exif_orientation():
    im = Image.fromarray(np.full((2000, 3000), 1000, np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    decoded = decode(png_of(im, exif=exif), 10_000_000, 500)
    assert (decoded.width, decoded.height) == (2000, 3000) and decoded.image.height == 500


def test_the_decode_memory_budget_refuses_what_exceeds_it_and_waits_for_the_rest():
    import threading
    import time

    from app.imaging import MemoryBudget, decode_bytes

    big = png_of(Image.new("RGBA", (4000, 4000), (1, 2, 3, 255)))
    assert decode_bytes(Image.open(io.BytesIO(big))) == 4000 * 4000 * 8  # loaded, and its premultiplied copy
    with pytest.raises(ImageError) as e:
        decode(big, 64_000_000, 1024, MemoryBudget(100 * 2**20))
    assert e.value.status == 413 and "122 MB to decode" in e.value.message
    budget = MemoryBudget(200 * 2**20, wait_s=0.2)
    with budget.reserve(150 * 2**20, "another upload"):
        with pytest.raises(ImageError) as e:  # the budget stays busy past the wait
            decode(big, 64_000_000, 1024, budget)
        assert e.value.status == 503
    budget.wait_s = 5
    held = threading.Event()

    def hold():
        with budget.reserve(150 * 2**20, "another upload"):
            held.set()
            time.sleep(0.3)

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    start = time.monotonic()
    assert decode(big, 64_000_000, 1024, budget).image.size == (1024, 1024)  # it waited its turn
    assert time.monotonic() - start >= 0.2
    t.join()
    assert budget.used == 0
