"""The inference pipeline: decode -> preprocess -> batch -> infer -> CAM -> answer.

`Service` holds the live model (an Engine), the batcher and the prediction store; the HTTP
routes only translate between HTTP and these calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from . import cam, imaging
from .batcher import Batcher
from .datasets import Datasets
from .engine import Engine, ModelLoadError, leave_cores_to_onnxruntime
from .jobs import JobRunner, JobStore
from .metrics import Metrics
from .registry import Registry
from .settings import Settings
from .store import PredictionStore, SharedPredictionStore, StoredImage, StoredPrediction

log = logging.getLogger("rescam.pipeline")
BOX_GRID = 160  # boxes are found on a heatmap at most this long, then scaled to original pixels


@dataclass
class Options:
    top_k: int
    cams: bool = True
    boxes: bool = True
    rule: cam.BoxRule | None = None  # None: the engine's default_rule
    all_boxes: bool = False
    min_area: float = 0.0


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def cam_boxes(cams: np.ndarray, indices: list[int], g: cam.Geometry, width: int, height: int, rule: cam.BoxRule,
              all_components: bool = False, min_area: float = 0.0) -> list[list[cam.Box]]:
    """CAM boxes of each class in `indices` (the CAM paper's rule), found on a heatmap at most
    BOX_GRID long and scaled to a width x height picture of g's image: the original for the JSON
    answer, the overlay for the drawing, so both show the same boxes."""
    grid = g.fitted(BOX_GRID)
    sx, sy = width / grid.image_width, height / grid.image_height
    return [[b.scaled(sx, sy) for b in cam.boxes_from_heatmap(heat, rule, all_components, min_area)]
            for heat in cam.heatmaps(cams[indices], grid)]


def find_boxes(cams: np.ndarray, indices: list[int], g: cam.Geometry, width: int, height: int, opts: Options
               ) -> list[list[dict[str, float]]]:
    """CAM boxes of each class in `indices`, in the original image's pixels, as the API answers them."""
    grid = g.fitted(BOX_GRID)
    grid_pixels = grid.image_width * grid.image_height
    return [[{"x0": round(b.x0, 1), "y0": round(b.y0, 1), "x1": round(b.x1, 1), "y1": round(b.y1, 1),
              "area_fraction": round(b.area / grid_pixels, 4), "peak": round(b.peak, 4),
              "threshold": round(b.threshold, 4)} for b in boxes]
            for boxes in cam_boxes(cams, indices, g, width, height, opts.rule, opts.all_boxes, opts.min_area)]


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry)
        self.metrics = Metrics()
        budget = settings.prediction_store_mb * 1024 * 1024
        self.store = (SharedPredictionStore(budget, settings.prediction_ttl_s, settings.data_root / "predictions")
                      if settings.prediction_store == "shared" else PredictionStore(budget, settings.prediction_ttl_s))
        self.batcher = Batcher(settings.max_batch_size, settings.max_batch_wait_ms, settings.batching,
                               on_batch=self.metrics.observe_batch)
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.failed: dict[int, str] = {}  # versions that did not load, and why
        self.watcher: asyncio.Task | None = None
        self.datasets = Datasets(settings.data_root / "datasets")
        self.jobs = JobStore(settings.data_root / "jobs.sqlite")
        self.runner = JobRunner(self.jobs, self.registry, settings.model_name, settings.data_root,
                                settings.max_concurrent_jobs, settings.gate_margin, self.deploy_checked,
                                processes=settings.train_processes)
        self.runner_task: asyncio.Task | None = None

    # --- model life cycle --------------------------------------------------------------------

    def load_version(self, version: int) -> Engine:
        """A fresh, smoke-tested engine for `version`; raises ModelLoadError with the reason."""
        name = self.settings.model_name
        try:
            directory = self.registry.version_dir(name, version)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(str(e)) from e
        return Engine.load(directory, name, version, self.settings.providers, self.settings.intra_op_threads,
                           self.settings.inter_op_threads, self.settings.graph_optimization,
                           self.settings.lean_cpu_session)

    def swap(self, engine: Engine) -> None:
        """Make `engine` live. Requests already running keep the engine they started with."""
        old, self.engine, self.load_error = self.engine, engine, None
        if old is not None:
            self.metrics.model_version.remove(old.name, old.provider)
        self.metrics.model_version.labels(engine.name, engine.provider).set(engine.version)
        log.info("now serving %s v%d on %s", engine.name, engine.version, engine.provider)

    def deploy_checked(self, version: int, audit: dict[str, Any]) -> Engine:
        """Load and smoke-test `version`, then move the live pointer and swap; raises
        ModelLoadError with the reason (and changes nothing) when it cannot load."""
        engine = self.load_version(version)
        audit = dict(audit)
        actor, reason = audit.pop("actor", "job"), audit.pop("reason", "")
        self.registry.deploy(self.settings.model_name, version, actor=actor, reason=reason, **audit)
        self.failed.pop(version, None)
        self.swap(engine)
        return engine

    def load_deployed(self) -> None:
        """Follow the registry's live version; keep the current engine if the new one fails."""
        name = self.settings.model_name
        version = self.registry.deployed(name)
        if version is None:
            self.load_error = f"no version of model {name!r} is deployed in {self.settings.registry}"
            return
        if (self.engine is not None and self.engine.version == version) or version in self.failed:
            return
        try:
            self.swap(self.load_version(version))
        except Exception as e:  # noqa: BLE001 - a bad model must never take the service down
            self.failed[version] = self.load_error = str(e)
            log.error("model %s v%s not loaded, %s: %s", name, version,
                      f"still serving v{self.engine.version}" if self.engine else "serving nothing", e)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                await loop.run_in_executor(None, self.load_deployed)
            except Exception:  # noqa: BLE001 - keep watching whatever one look found
                log.exception("registry check failed")

    async def start(self) -> None:
        leave_cores_to_onnxruntime()
        self.batcher.start()
        await asyncio.get_running_loop().run_in_executor(None, self.load_deployed)
        loop = asyncio.get_running_loop()
        if self.settings.registry_poll_s > 0:
            self.watcher = loop.create_task(self._watch())
        if self.settings.run_jobs:
            self.runner_task = loop.create_task(self.runner.run())

    async def stop(self) -> None:
        for task in (self.watcher, self.runner_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        await self.batcher.stop()

    # --- predictions ---------------------------------------------------------------------------

    def resolve_label(self, labels: list[str], label: str | int) -> int:
        if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
            i = int(label)
            if 0 <= i < len(labels):
                return i
        elif label in labels:
            return labels.index(label)
        raise KeyError(label)

    async def predict(self, uploads: list[tuple[str, bytes]], opts: Options) -> dict[str, Any]:
        engine = self.engine
        if engine is None:
            raise ModelLoadError(self.load_error or "no model is loaded")
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        s = self.settings
        source = "request"
        if opts.rule is None:
            configured = s.configured_rule()
            source = "settings" if configured is not None else engine.rule_source
            opts = dataclasses.replace(opts, rule=engine.default_rule(configured))

        def prepare(data: bytes) -> tuple[imaging.Decoded, np.ndarray, cam.Geometry]:
            """Decode and preprocess, off the event loop."""
            decoded = imaging.decode(data, s.max_pixels, s.work_max_side)
            array, window = engine.prep.crop_resize(decoded.image)
            return decoded, engine.prep.normalize(array[None])[0], window

        async def one(filename: str, data: bytes) -> tuple[dict[str, Any], StoredImage]:
            t0 = time.perf_counter()
            decoded, x, window = await loop.run_in_executor(None, prepare, data)
            t1 = time.perf_counter()
            result = await self.batcher.submit(engine.run, x, s.request_timeout_s)
            t2 = time.perf_counter()
            probs = softmax(result.logits.astype(np.float64))
            top = np.argsort(-probs)[: opts.top_k]
            predictions = [{"label": engine.labels[i], "index": int(i), "score": round(float(probs[i]), 6)}
                           for i in top]
            if opts.boxes:
                boxes = find_boxes(result.cams, [int(i) for i in top], window, decoded.width, decoded.height, opts)
                for entry, found in zip(predictions, boxes):
                    entry["boxes"] = found
            t3 = time.perf_counter()
            self.metrics.queue.observe(result.queue_ms / 1000)
            self.metrics.cam.observe(t3 - t2)
            timings = {"decode_ms": (t1 - t0) * 1000, "queue_ms": result.queue_ms,
                       "inference_ms": result.inference_ms, "cam_ms": (t3 - t2) * 1000,
                       "batch_size": result.batch_size}
            answer = {"filename": filename, "width": decoded.width, "height": decoded.height,
                      "format": decoded.format, "predictions": predictions,
                      "timings": {k: round(v, 3) for k, v in timings.items()}}
            stored = StoredImage(filename, decoded.image, window, decoded.width, decoded.height, result.cams)
            return answer, stored

        outcomes = await asyncio.gather(*(one(f, d) for f, d in uploads), return_exceptions=True)
        pid = uuid.uuid4().hex
        results, stored = [], []
        for (filename, _), outcome in zip(uploads, outcomes):
            if isinstance(outcome, imaging.ImageError):
                self.metrics.images.labels("rejected").inc()
                results.append({"filename": filename, "error": {"status": outcome.status, "message": outcome.message}})
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            answer, image = outcome
            self.metrics.images.labels("answered").inc()
            if opts.cams:
                for p in answer["predictions"]:
                    p["cam_url"] = f"/v1/predictions/{pid}/cam?image={len(stored)}&label={p['index']}"
            answer["image"] = len(stored) if opts.cams else None
            results.append(answer)
            stored.append(image)
        if stored and opts.cams:  # off the event loop: the shared store writes files
            await loop.run_in_executor(None, self.store.put, StoredPrediction(
                pid, engine.name, engine.version, engine.labels, stored, time.time(), opts.rule))
        return {"id": pid, "model": {"name": engine.name, "version": engine.version,
                                     "architecture": engine.card.get("architecture")},
                "cam_threshold": opts.rule.value if opts.rule.name == "threshold" else None,
                "box_rule": {"rule": str(opts.rule), "name": opts.rule.name, "value": opts.rule.value,
                             "source": source},
                "provider": engine.provider, "results": results,
                "total_ms": round((time.perf_counter() - started) * 1000, 3)}

    def overlay_image(self, stored: StoredImage, index: int, label: str, alpha: float, cmap: str,
                      rule: cam.BoxRule, max_side: int) -> Image.Image:
        from . import overlay

        g = stored.geometry.fitted(max_side)
        image = stored.image
        if image.size != (g.image_width, g.image_height):
            image = image.resize((g.image_width, g.image_height), Image.Resampling.BILINEAR)
        heat = cam.heatmap(stored.cams[index], g)
        boxes = cam_boxes(stored.cams, [index], stored.geometry, g.image_width, g.image_height, rule)[0]
        return overlay.render(image, heat, [b.as_list() for b in boxes], label, alpha=alpha, cmap=cmap)

    def heatmap(self, stored: StoredImage, index: int) -> np.ndarray:
        return cam.heatmap(stored.cams[index], stored.geometry)
