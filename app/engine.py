"""One deployed model in ONNX Runtime: the session, its card, and the provider that really loaded."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .preprocess import Preprocessing
from .registry import CARD_FILE, MODEL_FILE

log = logging.getLogger("rescam.engine")


OPTIMIZATION_LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                       "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                       "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                       "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


class ModelLoadError(Exception):
    """The model cannot serve; the message says why."""


@dataclass
class Engine:
    name: str
    version: int
    card: dict[str, Any]
    session: ort.InferenceSession
    prep: Preprocessing
    labels: list[str]
    provider: str
    load_ms: float
    warm: bool = False

    @classmethod
    def load(cls, directory: Path, name: str, version: int, providers: list[str], intra_op_threads: int = 0,
             inter_op_threads: int = 0, graph_optimization: str = "all") -> Engine:
        start = time.perf_counter()
        try:
            card = json.loads((directory / CARD_FILE).read_text())
            options = ort.SessionOptions()
            options.graph_optimization_level = OPTIMIZATION_LEVELS[graph_optimization]
            options.intra_op_num_threads = intra_op_threads
            options.inter_op_num_threads = inter_op_threads
            available = set(ort.get_available_providers())
            wanted = [p for p in providers if p in available] or ["CPUExecutionProvider"]
            # ONNX Runtime logs an error when a GPU provider cannot load (no GPU, no CUDA 13 /
            # cuDNN 9); falling back to the CPU is expected here, so say it once in our own words.
            ort.set_default_logger_severity(4)
            try:
                session = ort.InferenceSession(str(directory / MODEL_FILE), options, providers=wanted)
            finally:
                ort.set_default_logger_severity(2)
            engine = cls(name, version, card, session, Preprocessing.from_card(card), list(card["labels"]),
                         session.get_providers()[0], 0.0)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises many kinds; all mean "does not load"
            raise ModelLoadError(f"{name} v{version} at {directory} does not load: {e}") from e
        engine.check()
        engine.load_ms = (time.perf_counter() - start) * 1000
        log.info("loaded %s v%d on %s (asked for %s) in %.0f ms", name, version, engine.provider, wanted,
                 engine.load_ms)
        if engine.provider != wanted[0]:
            log.warning("%s did not load (no GPU, or CUDA 13 / cuDNN 9 missing); serving on %s",
                        wanted[0], engine.provider)
        return engine

    def check(self) -> None:
        """Warm-up and smoke test: one inference of the right shapes, finite numbers."""
        x = np.zeros((1, 3, self.prep.crop, self.prep.crop), dtype=np.float32)
        logits, cams = self.run(x)
        n = len(self.labels)
        if logits.shape != (1, n) or cams.shape[:2] != (1, n) or not np.isfinite(logits).all():
            raise ModelLoadError(f"{self.name} v{self.version} fails its smoke test: logits {logits.shape}, "
                                 f"cams {cams.shape} for {n} labels")
        self.warm = True

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, cams = self.session.run(["logits", "cam"], {"input": batch})
        return logits, cams

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "provider": self.provider,
                "architecture": self.card.get("architecture"), "labels": self.labels,
                "input_size": self.prep.crop}
