"""Kept predictions count what they hold and stay within their budget, in memory and on disk."""

import time

import numpy as np
from PIL import Image

from app.cam import DEFAULT_RULE, Geometry
from app.store import PredictionStore, SharedPredictionStore, StoredImage, StoredPrediction


def prediction(pid: str, side: int = 200) -> StoredPrediction:
    image = Image.new("RGB", (side, side), (10, 20, 30))
    cams = np.ones((8, 4, 4), np.float32)
    kept = StoredImage("x.png", image, Geometry.full(side, side), side, side, cams)
    return StoredPrediction(pid, "default", 1, ["a"] * 8, [kept], time.time(), DEFAULT_RULE)


def test_a_kept_image_counts_the_four_bytes_a_pixel_pillow_holds():
    assert prediction("a").nbytes == 200 * 200 * 4 + 8 * 4 * 4 * 4
    store = PredictionStore(max_bytes=3 * prediction("a").nbytes, ttl_s=1e9)
    for i in range(5):
        store.put(prediction(f"p{i}"))
    assert store.bytes <= store.max_bytes and list(store.items) == ["p2", "p3", "p4"]  # the oldest went


def test_the_shared_store_keeps_its_folder_within_the_budget(tmp_path):
    one = prediction("a")
    store = SharedPredictionStore(max_bytes=5 * one.nbytes, ttl_s=1e9, root=tmp_path)
    for i in range(40):
        store.put(prediction(f"p{i:02d}"))
    on_disk = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert on_disk <= 5 * one.nbytes + 16 * (one.nbytes + 4096)  # swept every 16 predictions
    assert store.get("p39") is not None  # the newest stays
    store.sweep(1e12)  # long after: everything expired
    assert not list(tmp_path.iterdir())


def test_the_shared_store_keeps_each_images_verdict(tmp_path):
    kept = prediction("v")
    kept.images[0].unknown = True
    SharedPredictionStore(max_bytes=10 * kept.nbytes, ttl_s=1e9, root=tmp_path).put(kept)
    read = SharedPredictionStore(max_bytes=10 * kept.nbytes, ttl_s=1e9, root=tmp_path).get("v")  # another worker
    assert read is not None and read.images[0].unknown is True
