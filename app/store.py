"""Recent predictions, kept so their overlays can be fetched: bounded in bytes, with a time-to-live."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .cam import BoxRule, Geometry


@dataclass
class StoredImage:
    filename: str
    image: Image.Image  # RGB, the working copy the heatmaps are drawn on
    geometry: Geometry  # the model's window on `image`
    width: int  # the original's size
    height: int
    cams: np.ndarray  # (classes, h, w) float32
    foreground: np.ndarray | None = None  # (h, w) the pc1 map, where the graph gives one
    unknown: bool | None = None  # the answer's open-world verdict: its overlays say so too

    @property
    def nbytes(self) -> int:
        extra = 0 if self.foreground is None else self.foreground.nbytes
        return self.image.width * self.image.height * 4 + self.cams.nbytes + extra  # Pillow keeps RGB in 4 bytes


@dataclass
class StoredPrediction:
    id: str
    model: str
    version: int
    labels: list[str]
    images: list[StoredImage]
    created: float
    rule: BoxRule  # the box rule its answer used; overlays draw the same boxes

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


class SharedPredictionStore(PredictionStore):
    """The same store, also written to a folder that every worker process of the service shares,
    so an overlay URL answers whichever worker receives it. Expired entries are swept from disk."""

    def __init__(self, max_bytes: int, ttl_s: float, root: Path) -> None:
        super().__init__(max_bytes, ttl_s)
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.puts = 0

    def put(self, p: StoredPrediction) -> None:
        super().put(p)
        tmp = self.root / f".{p.id}.tmp"
        tmp.mkdir()
        meta = {"id": p.id, "model": p.model, "version": p.version, "labels": p.labels, "created": p.created,
                "rule": str(p.rule),
                "images": [{"filename": i.filename, "width": i.width, "height": i.height, "unknown": i.unknown,
                            "geometry": dataclasses.asdict(i.geometry)} for i in p.images]}
        for k, i in enumerate(p.images):
            np.save(tmp / f"{k}.image.npy", np.asarray(i.image))
            np.save(tmp / f"{k}.cams.npy", i.cams)
            if i.foreground is not None:
                np.save(tmp / f"{k}.foreground.npy", i.foreground)
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, self.root / p.id)  # appears whole
        self.puts += 1
        if self.puts % 16 == 0:
            self.sweep(time.time())

    def get(self, pid: str) -> StoredPrediction | None:
        found = super().get(pid)
        if found is not None or not pid.isalnum():
            return found
        folder = self.root / pid
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        if time.time() - meta["created"] > self.ttl:
            return None
        images = [StoredImage(m["filename"], Image.fromarray(np.load(folder / f"{k}.image.npy")),
                              Geometry(**m["geometry"]), m["width"], m["height"], np.load(folder / f"{k}.cams.npy"),
                              _optional(folder / f"{k}.foreground.npy"), m.get("unknown"))
                  for k, m in enumerate(meta["images"])]
        return StoredPrediction(meta["id"], meta["model"], meta["version"], meta["labels"], images, meta["created"],
                                BoxRule.parse(meta["rule"]))

    def sweep(self, now: float) -> None:
        """Remove what expired, then the oldest until the folder holds at most the store's budget
        (every worker sweeps the folder they share; each counts it whole)."""
        kept = []
        for folder in self.root.iterdir():
            try:
                age = now - folder.stat().st_mtime
                if age > self.ttl:
                    shutil.rmtree(folder, ignore_errors=True)
                elif not folder.name.startswith("."):  # a prediction being written is left to finish
                    kept.append((age, sum(f.stat().st_size for f in folder.iterdir()), folder))
            except FileNotFoundError:  # another worker swept it
                pass
        total = sum(size for _, size, _ in kept)
        for _, size, folder in sorted(kept, key=lambda k: -k[0]):  # oldest first
            if total <= self.max_bytes:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size


def _optional(path: Path) -> np.ndarray | None:
    return np.load(path) if path.exists() else None
