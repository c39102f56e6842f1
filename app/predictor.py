"""Predictions, in named steps: decode -> prepare -> infer -> postprocess; the route encodes.

`Predictor` owns the batcher, the kept predictions (for overlay URLs) and the prediction metrics;
it asks LiveModels for the named model's live engine once per request, so a request keeps the
model it started with across a deploy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import cam, imaging, overlay
from .batcher import Batcher, BatchResult
from .engine import Engine, Outputs, leave_cores_to_onnxruntime
from .live_models import LiveModels
from .metrics import Metrics
from .schemas import (
    BoxAnswer,
    BoxRuleAnswer,
    ImageAnswer,
    LabelAnswer,
    ModelRef,
    OpenWorldAnswer,
    PredictAnswer,
    Timings,
)
from .scoring import Scorer, Verdict
from .settings import Settings
from .store import PredictionStore, SharedPredictionStore, StoredImage, StoredPrediction

if TYPE_CHECKING:
    from .shadow import ShadowTrials

# how long a batch waits for company on a GPU when RESCAM_MAX_BATCH_WAIT_MS is unset: a GPU runs a
# batch of 8 in little more time than one image; on the CPU batches are greedy (wait 0)
GPU_BATCH_WAIT_MS = 2.0


class Overloaded(Exception):
    """No answer within the request timeout."""


class NotFound(Exception):
    """A kept prediction, image or label that does not exist (or has expired)."""


@dataclass(frozen=True)
class Options:
    top_k: int
    cams: bool = True
    boxes: bool = True
    rule: cam.BoxRule | None = None  # None: the configured rule, else the model card's
    all_boxes: bool = False
    min_area: float = 0.0


@dataclass
class Prepared:
    decoded: imaging.Decoded
    x: np.ndarray  # (3, crop, crop) float32, normalised as the card says
    window: cam.Geometry  # the part of decoded.image the network sees
    decode_ms: float


def batch_wait_s(setting_ms: float | None, engine: Engine) -> float:
    """How long a batch for `engine` waits for company: the setting when set, else by device."""
    if setting_ms is None:
        setting_ms = GPU_BATCH_WAIT_MS if engine.on_gpu else 0.0
    return setting_ms / 1000


def open_world_answer(scorer: Scorer, verdict: Verdict) -> OpenWorldAnswer:
    return OpenWorldAnswer(unknown=verdict.unknown, ood_score=round(verdict.ood_score, 6),
                           threshold=None if scorer.threshold is None else round(scorer.threshold, 6),
                           method=scorer.method, calibrated=scorer.calibrated,
                           temperature=None if scorer.temperature is None else round(scorer.temperature, 4))


def make_store(settings: Settings) -> PredictionStore:
    budget = settings.prediction_store_mb * 1024 * 1024
    if settings.prediction_store == "shared":
        return SharedPredictionStore(budget, settings.prediction_ttl_s, settings.data_root / "predictions")
    return PredictionStore(budget, settings.prediction_ttl_s)


class Predictor:
    def __init__(self, settings: Settings, models: LiveModels, metrics: Metrics) -> None:
        self.settings, self.models, self.metrics = settings, models, metrics
        self.store = make_store(settings)
        self.batcher = Batcher(settings.max_batch_size, settings.batching, on_batch=metrics.observe_batch)
        self.configured_rule = settings.configured_rule()
        self.decode_memory = imaging.MemoryBudget(settings.decode_memory_mb * 2**20, settings.request_timeout_s)
        self.shadow: ShadowTrials | None = None  # a running trial's candidate sees some answered requests

    async def start(self) -> None:
        leave_cores_to_onnxruntime()
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    # --- the steps -----------------------------------------------------------------------------

    def prepare(self, engine: Engine, data: bytes) -> Prepared:
        """Decode (ImageError for a bad upload) and crop, resize and normalise as the card says."""
        t0 = time.perf_counter()
        decoded = imaging.decode(data, self.settings.max_pixels, self.settings.work_max_side, self.decode_memory)
        x, window = engine.prep.network_input(decoded.image)
        return Prepared(decoded, x, window, (time.perf_counter() - t0) * 1000)

    async def infer(self, engine: Engine, x: np.ndarray) -> BatchResult:
        timeout = self.settings.request_timeout_s
        try:
            wait = batch_wait_s(self.settings.max_batch_wait_ms, engine)
            result = await self.batcher.submit(engine.run, x, timeout, wait)
        except asyncio.TimeoutError:
            raise Overloaded(f"no answer within {timeout} s; the service is overloaded") from None
        self.metrics.queue.observe(result.queue_ms / 1000)
        return result

    async def infer_batch(self, engine: Engine, x: np.ndarray) -> Outputs:
        """A client's own batch (N, 3, H, W; OIP v2) through the same batcher as single images: the one
        inference thread, batched with whatever else waits, the same timeout (Overloaded past it)."""
        rows = await asyncio.gather(*(self.infer(engine, row) for row in x))

        def stacked(values: list) -> np.ndarray | None:
            return None if values[0] is None else np.stack(values)

        return Outputs(np.stack([r.logits for r in rows]), np.stack([r.cams for r in rows]),
                       stacked([r.features for r in rows]), stacked([r.foreground for r in rows]))

    def postprocess(self, engine: Engine, filename: str, p: Prepared, result: BatchResult, opts: Options
                    ) -> ImageAnswer:
        """Scores, the top-k labels and each one's CAM boxes in the original image's pixels."""
        t0 = time.perf_counter()
        verdict = engine.scorer.verdict(result.logits, result.features)
        top = verdict.top(opts.top_k)
        boxes = self.boxes(result.cams, top, p, opts, result.foreground) if opts.boxes else [None] * len(top)
        predictions = [LabelAnswer(label=engine.labels[i], index=i, score=round(float(verdict.probs[i]), 6),
                                   raw_score=round(float(verdict.raw[i]), 6), boxes=b) for i, b in zip(top, boxes)]
        self.metrics.count_verdict(engine.name, engine.version, verdict.unknown)
        cam_ms = (time.perf_counter() - t0) * 1000
        self.metrics.cam.observe(cam_ms / 1000)
        timings = Timings(decode_ms=round(p.decode_ms, 3), queue_ms=round(result.queue_ms, 3),
                          inference_ms=round(result.inference_ms, 3), cam_ms=round(cam_ms, 3),
                          batch_size=result.batch_size)
        d = p.decoded
        return ImageAnswer(filename=filename, width=d.width, height=d.height, format=d.format, predictions=predictions,
                           open_world=open_world_answer(engine.scorer, verdict), timings=timings)

    @staticmethod
    def boxes(cams: np.ndarray, indices: list[int], p: Prepared, opts: Options,
              foreground: np.ndarray | None = None) -> list[list[BoxAnswer]]:
        w, h = p.decoded.width, p.decoded.height
        pixels = cam.grid_pixels(p.window)
        return [[BoxAnswer(x0=round(b.x0, 1), y0=round(b.y0, 1), x1=round(b.x1, 1), y1=round(b.y1, 1),
                           area_fraction=round(b.area / pixels, 4), peak=round(b.peak, 4),
                           threshold=round(b.threshold, 4)) for b in found]
                for found in cam.class_boxes(cams, indices, p.window, w, h, opts.rule, opts.all_boxes, opts.min_area,
                                             foreground)]

    # --- one request ---------------------------------------------------------------------------

    def rule_for(self, engine: Engine, asked: cam.BoxRule | None) -> tuple[cam.BoxRule, str]:
        """The box rule of a request and where it came from: the request's, the settings', the card's.
        A `pc1:` rule asked of a version without the foreground map is refused (cam.NoForeground);
        configured for the service, it applies to the versions that have the map."""
        has_map = "foreground" in engine.outputs
        if asked is not None:
            if asked.on_foreground and not has_map:
                raise cam.NoForeground(f"model {engine.name} v{engine.version} has no foreground map (exported "
                                       f"before pc1 rules), so box rule {asked} cannot apply; use a CAM rule "
                                       "such as mass:0.5")
            return asked, "request"
        if self.configured_rule is not None and (has_map or not self.configured_rule.on_foreground):
            return self.configured_rule, "settings"
        return engine.card.box_rule, engine.card.rule_source

    async def predict_image(self, engine: Engine, filename: str, data: bytes, opts: Options
                            ) -> tuple[ImageAnswer, StoredImage | None]:
        """One image's answer (or its error, the others unaffected) and what to keep for its overlays."""
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(None, self.prepare, engine, data)
        except imaging.ImageError as e:
            self.metrics.images.labels("rejected").inc()
            return ImageAnswer(filename=filename, error={"status": e.status, "message": e.message}), None
        result = await self.infer(engine, prepared.x)
        # off the event loop, which meanwhile reads other requests; numpy and scipy release the GIL
        answer = await loop.run_in_executor(None, self.postprocess, engine, filename, prepared, result, opts)
        self.metrics.images.labels("answered").inc()
        d = prepared.decoded
        verdict = answer.open_world.unknown if answer.open_world is not None else None
        return answer, StoredImage(filename, d.image, prepared.window, d.width, d.height, result.cams,
                                   result.foreground, verdict)

    async def predict(self, uploads: list[tuple[str, bytes]], opts: Options, model: str | None = None
                      ) -> PredictAnswer:
        """Answers of model `model` (the default one when None) for each (filename, bytes) upload;
        with opts.cams the images and CAMs are kept for overlays, each answered image numbered by
        `ImageAnswer.image`."""
        started = time.perf_counter()
        engine, load_ms = await self.models.engine(model)
        asked = opts.rule
        rule, source = self.rule_for(engine, asked)
        opts = dataclasses.replace(opts, rule=rule)
        outcomes = await asyncio.gather(*(self.predict_image(engine, f, d, opts) for f, d in uploads))
        pid = uuid.uuid4().hex
        kept = []
        for answer, image in outcomes:
            if image is not None and opts.cams:
                answer.image = len(kept)
                kept.append(image)
        if self.shadow is not None:  # after the answer is made; it never waits for the candidate
            self.shadow.offer(engine, [(a, image) for a, image in outcomes if image is not None], asked)
        if kept:  # off the event loop: the shared store writes files
            await asyncio.get_running_loop().run_in_executor(None, self.store.put, StoredPrediction(
                pid, engine.name, engine.version, list(engine.labels), kept, time.time(), rule))
        return PredictAnswer(
            id=pid, model=ModelRef(name=engine.name, version=engine.version,
                                   architecture=engine.card.architecture, precision=engine.card.precision,
                                   test_time_flip=engine.card.test_time_flip,
                                   test_time_zoom=engine.card.test_time_zoom),
            cam_threshold=rule.value if rule.name == "threshold" and not rule.on_foreground else None,
            box_rule=BoxRuleAnswer(rule=str(rule), name=rule.name, value=rule.value, map=rule.source, source=source),
            provider=engine.provider, results=[a for a, _ in outcomes],
            model_load_ms=None if load_ms is None else round(load_ms, 1),
            total_ms=round((time.perf_counter() - started) * 1000, 3))

    # --- kept predictions ----------------------------------------------------------------------

    def kept(self, pid: str, image: int) -> tuple[StoredPrediction, StoredImage]:
        stored = self.store.get(pid)
        if stored is None:
            raise NotFound(f"prediction {pid!r} is unknown or has expired "
                           f"(predictions are kept {self.settings.prediction_ttl_s:.0f} s)")
        if not 0 <= image < len(stored.images):
            raise NotFound(f"prediction {pid!r} has {len(stored.images)} image(s); no image {image}")
        return stored, stored.images[image]

    def cam_picture(self, pid: str, image: int, label: str, fmt: str, alpha: float = 0.5, cmap: str = "turbo",
                    threshold: float | None = None, max_side: int | None = None, min_side: int = 0
                    ) -> tuple[bytes, str]:
        """A kept image's CAM of `label` (a name or an index) as `fmt` (app.overlay.cam_picture),
        its boxes drawn with the prediction's rule unless a threshold is given."""
        stored, item = self.kept(pid, image)
        index = resolve_label(stored.labels, label)
        if index is None:
            raise NotFound(f"model {stored.model} v{stored.version} has no label {label!r}")
        rule = cam.BoxRule("threshold", threshold) if threshold else stored.rule
        return overlay.cam_picture(item, index, stored.labels[index], fmt, rule, alpha, cmap,
                                   max_side or self.settings.overlay_max_side, min_side)


@asynccontextmanager
async def standalone(settings: Settings) -> AsyncIterator[Predictor]:
    """A started predictor on the registry's live model, without HTTP, a registry watcher or a job
    runner: for `rescam predict`, benchmarks and tests."""
    metrics = Metrics()
    models = LiveModels(settings.model_copy(update={"registry_poll_s": 0}), metrics, keep_scratch_in_data_root=False)
    predictor = Predictor(settings, models, metrics)
    await predictor.start()
    await models.start()
    try:
        yield predictor
    finally:
        await models.stop()
        await predictor.stop()


def resolve_label(labels: list[str], label: str | int) -> int | None:
    """A label's index from its index (ASCII digits) or its name; None when there is no such label."""
    if isinstance(label, int) or (label.isascii() and label.isdigit()):
        i = int(label)
        return i if 0 <= i < len(labels) else None
    return labels.index(label) if label in labels else None
