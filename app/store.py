"""Recent predictions, kept so their overlays can be fetched: bounded in bytes, with a time-to-live."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .cam import Geometry


@dataclass
class StoredImage:
    filename: str
    image: Image.Image  # RGB, the working copy the heatmaps are drawn on
    geometry: Geometry  # the model's window on `image`
    width: int  # the original's size
    height: int
    cams: np.ndarray  # (classes, h, w) float32

    @property
    def nbytes(self) -> int:
        return self.image.width * self.image.height * 3 + self.cams.nbytes


@dataclass
class StoredPrediction:
    id: str
    model: str
    version: int
    labels: list[str]
    images: list[StoredImage]
    created: float

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.images)


class PredictionStore:
    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.max_bytes, self.ttl = max_bytes, ttl_s
        self.items: OrderedDict[str, StoredPrediction] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def put(self, p: StoredPrediction) -> None:
        with self.lock:
            self.items[p.id] = p
            self.bytes += p.nbytes
            self._evict(time.time())

    def get(self, pid: str) -> StoredPrediction | None:
        with self.lock:
            self._evict(time.time())
            return self.items.get(pid)

    def _evict(self, now: float) -> None:
        while self.items:
            oldest = next(iter(self.items.values()))
            if self.bytes <= self.max_bytes and now - oldest.created <= self.ttl:
                break
            self.items.popitem(last=False)
            self.bytes -= oldest.nbytes
