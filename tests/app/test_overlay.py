import io
import zlib

import numpy as np
import pytest
from PIL import Image

from app import overlay
from app.overlay import _table, colormap, encode, png_bytes, render


@pytest.fixture(params=["isal", "zlib"])
def deflate(request, monkeypatch):
    """The PNG writer with each deflate it can use: ISA-L (a dependency where it has wheels) and
    the standard library's zlib (the fallback)."""
    if request.param == "isal":
        pytest.importorskip("isal")
        assert overlay._deflate_lib is not None
    else:
        monkeypatch.setattr(overlay, "_deflate_lib", None)
    return request.param


@pytest.mark.parametrize("shape", [(37, 53, 3), (37, 53), (1, 1, 3), (2, 300)])
def test_png_writer_round_trips_exactly_through_pillow(shape, deflate):
    pixels = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    decoded = Image.open(io.BytesIO(png_bytes(pixels)))
    decoded.load()  # checks every chunk's CRC and the zlib stream
    assert decoded.mode == ("RGB" if len(shape) == 3 else "L")
    assert np.array_equal(np.asarray(decoded), pixels)


def test_png_writer_compresses_smooth_images(deflate):
    yy, xx = np.mgrid[0:240, 0:320]
    smooth = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    assert len(png_bytes(smooth)) < smooth.nbytes / 4


def test_colormap_is_the_table_lookup():
    heat = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    for name in ("turbo", "jet"):
        assert np.array_equal(np.asarray(colormap(heat, name)), _table(name)[np.arange(256).reshape(16, 16)])


def test_overlay_formats_decode_to_the_rendered_image():
    image = Image.new("RGB", (120, 80), (40, 90, 160))
    heat = np.zeros((80, 120), np.float32)
    heat[20:60, 30:90] = 1.0
    picture = render(image, heat, [[30, 20, 90, 60]], "circle")
    for fmt, media in (("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")):
        data, media_type = encode(picture, fmt)
        assert media_type == media
        decoded = Image.open(io.BytesIO(data)).convert("RGB")
        assert decoded.size == picture.size
        if fmt == "png":
            assert np.array_equal(np.asarray(decoded), np.asarray(picture))


def test_png_writer_pieces_make_one_valid_zlib_stream(deflate):
    """Large images are deflated in pieces on several threads; the stream must still be one."""
    pixels = np.random.default_rng(1).integers(0, 256, size=(400, 400, 3), dtype=np.uint8)
    pixels[100:300] = 7  # long runs as well as noise
    data = png_bytes(pixels)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    raw = zlib.decompress(idat)  # checks the adler32 of the whole
    assert len(raw) == 400 * (400 * 3 + 1)


def test_an_overlay_of_an_image_called_unknown_says_so_in_its_caption():
    from app.cam import DEFAULT_RULE, Geometry
    from app.store import StoredImage

    cams = np.zeros((2, 4, 4), np.float32)
    cams[0, 1:3, 1:3] = 1.0
    pictures = {}
    for unknown in (None, False, True):
        item = StoredImage("x.png", Image.new("RGB", (320, 240), (200, 200, 200)), Geometry.full(320, 240), 320, 240,
                           cams, unknown=unknown)
        data, _ = overlay.cam_picture(item, 0, "cross", "png", DEFAULT_RULE)
        pictures[unknown] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(pictures[None], pictures[False])  # no verdict, or known: the label alone
    black = {k: int((p == 0).all(axis=2).sum()) for k, p in pictures.items()}
    assert black[True] > 1.5 * black[False]  # the caption's black box: "cross (unknown)" is longer
