"""One deployed model in ONNX Runtime: the session, its card, and the provider that really loaded."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
from threadpoolctl import threadpool_limits

from .card import ModelCard
from .imaging import release_freed_memory
from .preprocess import Preprocessing
from .registry import FLOAT32_FILE, MODEL_FILE
from .scoring import OpenWorldError, Scorer, top2_gap

log = logging.getLogger("rescam.engine")


OPTIMIZATION_LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                       "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                       "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                       "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


class ModelLoadError(Exception):
    """The model cannot serve; the message says why."""


def _options(graph_optimization: str, intra_op_threads: int, inter_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[graph_optimization]
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    # ONNX Runtime's idle threads spin for a while after a run; on a busy CPU that time belongs to
    # the overlays and decoding that come next (a PNG overlay: about 2 ms faster; BENCHMARKS.md)
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def _session(path: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    # ONNX Runtime logs an error when a GPU provider cannot load (no GPU, no CUDA 13 / cuDNN 9);
    # falling back to the CPU is expected here, so the caller says it once in its own words.
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    finally:
        ort.set_default_logger_severity(2)


def leave_cores_to_onnxruntime() -> None:
    """One thread for numpy's and scipy's BLAS in this process. OpenBLAS keeps its threads spinning
    for a while after each matrix product; on the cores ONNX Runtime computes on, the spinning made
    the inference after an overlay about 50% slower (BENCHMARKS.md). The products here (CAM
    resampling) are small enough that one thread loses nothing. Called by the thread that starts
    the service: threadpoolctl lets the first thread that sets an OpenBLAS limit keep that control."""
    threadpool_limits(1, user_api="blas")


SCRATCH_PREFIX = "rescam-ort-"


def remove_stale_scratch(scratch: Path | None = None, older_than_s: float = 600.0) -> list[Path]:
    """Scratch folders of loads that never finished (the process was killed mid-load; each holds an
    optimized copy of a model), in `scratch` (the data root's tmp/) and the system's temporary
    folder (where older versions put them): removed at start. Younger ones may be another worker's."""
    gone = []
    places = [p for p in (scratch, Path(tempfile.gettempdir())) if p is not None and p.is_dir()]
    for folder in (f for place in places for f in place.glob(f"{SCRATCH_PREFIX}*")):
        try:
            if time.time() - folder.stat().st_mtime > older_than_s:
                shutil.rmtree(folder, ignore_errors=True)
                gone.append(folder)
        except FileNotFoundError:
            pass
    return gone


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def padded_size(n: int, limit: int) -> int:
    """The batch size a batch of n runs at on a GPU: the next power of two, at most `limit` (never
    less than n). Each new input shape costs the CUDA provider a cuDNN algorithm search (tens of
    milliseconds), so batches keep to a few shapes, all of them run once at load (Engine.check)."""
    size = 1
    while size < n:
        size *= 2
    return max(n, min(size, limit))


@functools.cache
def preload_gpu_libraries() -> tuple[str, ...]:
    """Load the CUDA, cuBLAS, cuFFT, cuRAND and cuDNN libraries of the `nvidia-*` wheels (the
    `gpu` extra) before the first GPU session, so that the CUDA provider finds them without
    LD_LIBRARY_PATH (`onnxruntime.preload_dlls`). Returns the ones that did not load: none in the
    API image; all of them on a machine without those wheels, where the CPU serves."""
    if not hasattr(ort, "preload_dlls"):
        return ()
    said = io.StringIO()
    with contextlib.redirect_stdout(said):  # it prints what it could not load; the log says it once
        ort.preload_dlls()
    missing = tuple(re.findall(r"Failed to load (\S+?):", said.getvalue()))
    if missing:
        log.info("GPU libraries not found (%s): a GPU provider will not load here", ", ".join(missing))
    return missing


def installed_providers(providers: list[str]) -> list[str]:
    """The providers this ONNX Runtime build has, in the asked order; the CPU if none."""
    available = set(ort.get_available_providers())
    return [p for p in providers if p in available] or ["CPUExecutionProvider"]


def open_session(model: Path, providers: list[str], graph_optimization: str = "all", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, lean: bool = True, scratch: Path | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session on the first of `providers` (see installed_providers) that loads.

    lean: on the CPU provider, a session that optimized the graph itself keeps the original weights
    beside their re-laid-out copies; the graph it wrote out, loaded with no further optimization,
    runs the same and holds one copy (resnet50: about 150 MB less; BENCHMARKS.md). The optimized
    file is specific to this machine, so it lives in a temporary folder (in `scratch`, else the
    system's) for the load only."""
    options = _options(graph_optimization, intra_op_threads, inter_op_threads)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=scratch) as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        if lean and graph_optimization != "disabled":
            options.optimized_model_filepath = str(optimized)
        try:
            session = _session(model, options, providers)
        except Exception:  # noqa: BLE001 - retried without writing the optimized graph, then raised
            if not options.optimized_model_filepath:
                raise
            options = _options(graph_optimization, intra_op_threads, inter_op_threads)
            session = _session(model, options, providers)
        if session.get_providers()[0] == "CPUExecutionProvider" and optimized.exists():
            del session
            session = _session(optimized, _options("disabled", intra_op_threads, inter_op_threads),
                               ["CPUExecutionProvider"])
            release_freed_memory()
    return session


def answer_near_ties(outputs: list[np.ndarray], logits: np.ndarray, batch: np.ndarray, float32: ort.InferenceSession,
                     names: list[str], margin: float) -> int:
    """Rewrite in place the rows of `outputs` (the int8 graph's, for `names`) whose top-2 logit gap
    is at most `margin` with the float32 graph's answer for them; returns how many (int8 flips
    near-ties; training/quantize.py)."""
    near = np.flatnonzero(top2_gap(logits) <= margin)
    if len(near):
        for kept, fresh in zip(outputs, float32.run(names, {"input": np.ascontiguousarray(batch[near])})):
            kept[near] = fresh
    return len(near)


class NearTieSession:
    """An int8 session whose near-ties the float32 one answers, run as one session is run (for
    figures taken offline of what a version serves: training/compare.py, training/open_world.py)."""

    def __init__(self, int8: ort.InferenceSession, float32: ort.InferenceSession, margin: float) -> None:
        self.int8, self.float32, self.margin = int8, float32, margin

    def get_outputs(self):
        return self.int8.get_outputs()

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(names) if names else [o.name for o in self.int8.get_outputs()]
        wanted = names if "logits" in names else ["logits", *names]
        out = self.int8.run(wanted, feed)
        answer_near_ties(out, out[wanted.index("logits")], feed["input"], self.float32, wanted, self.margin)
        return out if wanted is names else out[1:]


class Outputs(NamedTuple):
    """A batch of n through the graph. `features` and `foreground` are None for a graph exported
    without them (before the open-world verdict, before pc1 box rules)."""

    logits: np.ndarray  # (n, classes)
    cams: np.ndarray  # (n, classes, h, w)
    features: np.ndarray | None  # (n, channels) every stage pooled, unit length
    foreground: np.ndarray | None  # (n, h, w) the last feature map on its first principal component


OPTIONAL_OUTPUTS = ("features", "foreground")


@dataclass
class Engine:
    name: str
    version: int
    card: ModelCard
    session: ort.InferenceSession
    provider: str
    load_ms: float
    warm: bool = False
    max_batch: int = 1  # on a GPU: batches are padded to padded_size(n, max_batch) (see check)
    io_binding: bool = True  # on a GPU: inputs and outputs through an I/O binding
    # calibration and the OOD verdict (app.scoring); the logit-based fallback for older versions
    scorer: Scorer = field(default_factory=Scorer)
    outputs: tuple[str, ...] = ("logits", "cam")  # and those of OPTIONAL_OUTPUTS the graph has
    memory_bytes: int = 0  # how much the process grew while it loaded (ModelManager measures it)
    # an int8 version's float32 graph, which answers the images whose int8 top-2 logit gap is at most
    # near_tie_margin (int8 flips near-ties; training/quantize.py); None for every other version
    near_ties: ort.InferenceSession | None = None
    near_tie_margin: float = -1.0
    near_tie_images: int = 0  # images answered by it since load

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    @classmethod
    def load(cls, directory: Path, card: ModelCard, name: str, version: int, providers: list[str],
             intra_op_threads: int = 0, inter_op_threads: int = 0, graph_optimization: str = "all",
             lean: bool = True, scratch: Path | None = None, max_batch: int = 1, io_binding: bool = True) -> Engine:
        start = time.perf_counter()
        wanted = installed_providers(providers)
        if wanted[0] in GPU_PROVIDERS:
            preload_gpu_libraries()
        try:
            scorer = Scorer.load(directory, card.temperature, card.ood_spec)
        except OpenWorldError as e:
            raise ModelLoadError(f"{name} v{version} at {directory} does not load: {e}") from e
        margin = card.near_tie_margin
        try:
            session = open_session(directory / MODEL_FILE, wanted, graph_optimization, intra_op_threads,
                                   inter_op_threads, lean, scratch)
            near_ties = None if margin is None else open_session(
                directory / FLOAT32_FILE, wanted, graph_optimization, intra_op_threads, inter_op_threads, lean, scratch)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises many kinds; all mean "does not load"
            raise ModelLoadError(f"{name} v{version} at {directory} does not load: {e}") from e
        present = {o.name for o in session.get_outputs()}
        outputs = ("logits", "cam", *(o for o in OPTIONAL_OUTPUTS if o in present))
        if near_ties is not None and {o.name for o in near_ties.get_outputs()} != present:
            raise ModelLoadError(f"{name} v{version} at {directory} does not load: its {FLOAT32_FILE} has other "
                                 f"outputs than its {MODEL_FILE}")
        engine = cls(name, version, card, session, session.get_providers()[0], 0.0, max_batch=max_batch,
                     io_binding=io_binding, scorer=scorer, outputs=outputs, near_ties=near_ties,
                     near_tie_margin=-1.0 if margin is None else margin)
        engine.check()
        engine.load_ms = (time.perf_counter() - start) * 1000
        log.info("loaded %s v%d on %s (asked for %s) in %.0f ms", name, version, engine.provider, wanted,
                 engine.load_ms)
        if engine.provider != wanted[0]:
            log.warning("%s did not load (no GPU, or CUDA 13 / cuDNN 9 missing); serving on %s",
                        wanted[0], engine.provider)
        return engine

    @property
    def prep(self) -> Preprocessing:
        return self.card.preprocessing

    @property
    def labels(self) -> tuple[str, ...]:
        return self.card.labels

    def batch_shapes(self) -> list[int]:
        """The batch sizes this engine runs at: 1 on the CPU; on a GPU each padded size."""
        return sorted({padded_size(n, self.max_batch) for n in range(1, self.max_batch + 1)}) if self.on_gpu else [1]

    def check(self) -> None:
        """Warm-up and smoke test: an inference at every batch shape it will run (on a GPU, each
        shape's cuDNN search happens here, not in a request), the right shapes, finite numbers."""
        try:
            for size in self.batch_shapes():
                logits, cams, features, foreground = self.run(np.zeros((size, 3, self.prep.crop, self.prep.crop),
                                                                       dtype=np.float32))
        except Exception as e:  # noqa: BLE001 - a graph that does not run is a model that does not load
            raise ModelLoadError(f"{self.name} v{self.version} fails its smoke test: {e}") from e
        logits, cams = logits[:1], cams[:1]
        n = len(self.labels)
        if logits.shape != (1, n) or cams.shape[:2] != (1, n) or not np.isfinite(logits).all():
            raise ModelLoadError(f"{self.name} v{self.version} fails its smoke test: logits {logits.shape}, "
                                 f"cams {cams.shape} for {n} labels")
        wanted = self.scorer.feature_size
        if wanted is not None and (features is None or features.shape[1:] != (wanted,)):
            raise ModelLoadError(f"{self.name} v{self.version} fails its smoke test: its OOD bank holds "
                                 f"{wanted} features, the graph gives {None if features is None else features.shape}")
        if self.card.box_rule.on_foreground and foreground is None:
            raise ModelLoadError(f"{self.name} v{self.version} fails its smoke test: its card's box rule "
                                 f"{self.card.box_rule} needs a foreground output the graph does not have")
        if foreground is not None and foreground.shape[1:] != cams.shape[2:]:
            raise ModelLoadError(f"{self.name} v{self.version} fails its smoke test: its foreground map is "
                                 f"{foreground.shape[1:]}, its CAMs {cams.shape[2:]}")
        self.warm = True

    def run(self, batch: np.ndarray) -> Outputs:
        """The graph's outputs for a batch of n normalised inputs (an int8 version's near-ties run
        again in float32, their rows replaced)."""
        out = self._run(batch)
        if self.near_ties is not None:
            named = {"logits": out.logits, "cam": out.cams, "features": out.features, "foreground": out.foreground}
            self.near_tie_images += answer_near_ties([named[o] for o in self.outputs], out.logits, batch,
                                                     self.near_ties, list(self.outputs), self.near_tie_margin)
        return out

    def _run(self, batch: np.ndarray) -> Outputs:
        n = len(batch)
        if not self.on_gpu:
            return self._unpacked(self.session.run(list(self.outputs), {"input": batch}), n)
        size = padded_size(n, self.max_batch)
        if size > n:
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), dtype=batch.dtype)])
        if self.io_binding:
            binding = self.session.io_binding()
            binding.bind_cpu_input("input", np.ascontiguousarray(batch))
            for name in self.outputs:
                binding.bind_output(name)
            self.session.run_with_iobinding(binding)
            return self._unpacked(binding.copy_outputs_to_cpu(), n)
        return self._unpacked(self.session.run(list(self.outputs), {"input": batch}), n)

    def _unpacked(self, outputs: list[np.ndarray], n: int) -> Outputs:
        named = dict(zip(self.outputs, outputs))
        return Outputs(named["logits"][:n], named["cam"][:n],
                       *(named[o][:n] if o in named else None for o in OPTIONAL_OUTPUTS))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "provider": self.provider,
                "architecture": self.card.architecture, "precision": self.card.precision, "labels": list(self.labels),
                "input_size": self.prep.crop, "open_world": self.scorer.method, "calibrated": self.scorer.calibrated,
                "test_time_flip": self.card.test_time_flip, "test_time_zoom": self.card.test_time_zoom,
                **({"near_tie_margin": self.near_tie_margin} if self.near_ties is not None else {})}
