"""Serving benchmarks: every figure is a ratio of two measurements taken side by side in this run.

    .venv/bin/python bench/serving.py [--model resnet50] [--seconds 8]

Builds a model export (random weights: speed does not depend on them) in a scratch registry,
starts live uvicorn servers on loopback and prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_registry(model: str, classes: int, size: int, root: Path) -> Path:
    """Export `model` with random weights through the real exporter into a scratch registry."""
    import torch

    from app.card import ModelCard
    from app.preprocess import Preprocessing
    from app.registry import CARD_FILE, MODEL_FILE, Registry
    from models import create_model
    from training.config import IMAGENET_MEAN, IMAGENET_STD
    from training.export import export_onnx

    export = root / "export"
    net = create_model(model, num_classes=classes).eval()
    with torch.no_grad():
        h, w = net.forward_features(torch.zeros(1, 3, size, size)).shape[-2:]
    card = ModelCard(labels=tuple(f"class{i}" for i in range(classes)), architecture=model, cam_size=(h, w),
                     preprocessing=Preprocessing(size, round(size * 256 / 224), IMAGENET_MEAN, IMAGENET_STD))
    export_onnx(net, export / MODEL_FILE, size, card.to_dict())
    with torch.no_grad():
        width = sum(m.shape[1] for m in net.forward_stages(torch.zeros(1, 3, size, size)))
    card = with_open_world(card, export, width)
    (export / CARD_FILE).write_text(card.to_json())
    reg = Registry(root / "registry")
    reg.deploy("default", reg.register("default", export))
    return root / "registry"


def with_open_world(card, export: Path, width: int):
    """The card with a temperature and a KNN bank of random unit features as large as the exporter
    makes for this width (speed does not depend on the bank's values), the bank written beside it."""
    import dataclasses

    from app import scoring
    from training.open_world import BANK_IMAGES, BANK_MAX_BYTES, K

    rows = min(BANK_IMAGES, BANK_MAX_BYTES // (2 * width))
    bank = scoring.l2_normalised(np.random.default_rng(0).normal(size=(rows, width))).astype(np.float16)
    blob = scoring.bank_bytes(bank)
    (export / scoring.OOD_FILE).write_bytes(blob)
    ood = {"method": "knn", "k": K, "file": scoring.OOD_FILE, "sha256": scoring.file_digest(blob), "bytes": len(blob),
           "threshold": 0.5, "features": width, "fit_images": rows}
    return dataclasses.replace(card, calibration={"temperature": 1.5}, ood=ood)


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth gradients and shapes, not noise, so it compresses like a photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([127 + 100 * np.sin(xx / (width / rng.uniform(2, 6)) + c) * np.cos(yy / (height / 3))
                    for c in range(3)], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def git_tree(revision: str, folder: Path) -> Iterator[Path]:
    """A checkout of `revision` in folder/base (a git worktree) while the block runs."""
    base = folder / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), revision], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        yield base
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)


class Server:
    """`app.main:create_app` under uvicorn, from the source tree `source` (this checkout by default)."""

    def __init__(self, registry: Path, source: Path = ROOT, **settings) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(source), "RESCAM_REGISTRY": str(registry),
               **{f"RESCAM_{k.upper()}": str(v) for k, v in settings.items()}}
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
                                      "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
                                     env=env, cwd=source)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def request(self, method: str, path: str, body: bytes | None = None, conn=None) -> tuple[int, bytes]:
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request(method, path, body=body, headers={"Content-Type": "image/jpeg"} if body else {})
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r.status, data

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def post(conn: http.client.HTTPConnection, path: str, body: bytes, content_type: str = "image/jpeg"
         ) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    r = conn.getresponse()
    return r.status, r.read()


def closed_loop(port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float,
                content_type: str = "image/jpeg") -> tuple[list[float], int, float]:
    """`concurrency` clients, each sending its next body (in turn) when the last is answered.
    Returns each request's seconds, the count of answers that were not 200, and the wall time."""
    times: list[float] = []
    failed = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        n = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            status, _ = post(conn, path, bodies[n % len(bodies)], content_type)
            with lock:
                times.append(time.perf_counter() - t)
                failed[0] += status != 200
            n += 1
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, failed[0], time.perf_counter() - start


def load(server: Server, path: str, body: bytes, concurrency: int, seconds: float) -> dict:
    """Closed-loop load of one JPEG body: throughput, p50 and failures."""
    times, failed, elapsed = closed_loop(server.port, path, [body], concurrency, seconds)
    return {"rps": len(times) / elapsed, "p50_ms": 1000 * statistics.median(times), "failed": failed,
            "requests": len(times)}


def alternate(server: Server, requests: list[tuple[str, str, bytes | None]], seconds: float) -> list[float]:
    """One client sending the given requests in turn, so that noise hits each alike; p50 ms of each."""
    times: list[list[float]] = [[] for _ in requests]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        for k, (method, path, body) in enumerate(requests):
            t = time.perf_counter()
            status, _ = server.request(method, path, body, conn)
            assert status == 200, (path, status)
            times[k].append(time.perf_counter() - t)
    conn.close()
    return [1000 * statistics.median(t) for t in times]


def with_predictor(registry: Path, work):
    """asyncio.run(work(predictor)) on a started in-process Predictor: batching off, no HTTP."""
    import asyncio

    from app.predictor import standalone
    from app.settings import Settings

    async def run():
        async with standalone(Settings(registry=registry, batching=False)) as predictor:
            return await work(predictor)

    return asyncio.run(run())


def in_process_rps(registry: Path, body: bytes, seconds: float) -> float:
    """The same work without HTTP: decode + preprocess + inference + CAM boxes, in a loop."""
    from app.predictor import Options

    async def work(predictor) -> float:
        n, stop = 0, time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < stop:
            await predictor.predict([("x", body)], Options(top_k=5))
            n += 1
        return n / (time.perf_counter() - start)

    return with_predictor(registry, work)


def in_process_cam_cost(registry: Path, body: bytes, rounds: int = 40) -> tuple[float, float]:
    """p50 ms of Predictor.predict without and with CAM boxes, the two interleaved, no HTTP."""
    from app.predictor import Options

    async def work(predictor) -> tuple[float, float]:
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(rounds):
            for opts, out in ((Options(5, cams=False, boxes=False), times[0]), (Options(5), times[1])):
                t = time.perf_counter()
                await predictor.predict([("x", body)], opts)
                out.append(1000 * (time.perf_counter() - t))
        return statistics.median(times[0]), statistics.median(times[1])

    return with_predictor(registry, work)


def in_process_open_world_cost(registry: Path, body: bytes, rounds: int = 60) -> tuple[float, float]:
    """p50 ms of Predictor.predict (CAM boxes on) with the open-world verdict off (the scorer of a
    version without one: plain softmax and energy) and on (temperature and KNN), interleaved."""
    from app.predictor import Options
    from app.scoring import Scorer

    async def work(predictor) -> tuple[float, float]:
        engine = predictor.models.live()  # the default model
        full, off = engine.scorer, Scorer()
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(rounds):
            for scorer, out in ((off, times[0]), (full, times[1])):
                engine.scorer = scorer
                t = time.perf_counter()
                answer = await predictor.predict([("x", body)], Options(5))
                out.append(1000 * (time.perf_counter() - t))
                assert (answer.results[0].open_world.unknown is None) == (scorer is off)
        engine.scorer = full
        return statistics.median(times[0]), statistics.median(times[1])

    return with_predictor(registry, work)


def raw_session_rates(registry: Path, size: int, seconds: float) -> dict:
    """Images/s of the bare ONNX Runtime session at batch 1 and 8: what batching can gain at most."""
    import onnxruntime as ort

    from app.registry import MODEL_FILE, Registry

    model = Registry(registry).version_dir("default", 1) / MODEL_FILE
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rates = {}
    for batch in (1, 8):
        x = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
        session.run(None, {"input": x})
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {"input": x})
            n += batch
        rates[f"images_per_s_batch{batch}"] = n / (time.perf_counter() - start)
    rates["ratio"] = rates["images_per_s_batch8"] / rates["images_per_s_batch1"]
    return rates


def emit(name: str, **fields) -> None:
    print(json.dumps({"bench": name, **{k: round(v, 3) if isinstance(v, float) else v for k, v in fields.items()}}),
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet50")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    s = args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        registry = make_registry(args.model, args.classes, args.size, Path(tmp))
        small, big = jpeg(640, 480), jpeg(4000, 3000, seed=1)
        on = Server(registry, batching=True)
        off = Server(registry, batching=False)
        try:
            for srv in (on, off):  # warm both
                load(srv, "/v1/predict", small, 2, 1.0)
            lean = Server(registry, graph_optimization="extended")
            lean.request("POST", "/v1/predict", small)
            emit("memory", model=args.model, rss_mb_all=on.rss_mb(), rss_mb_extended=lean.rss_mb(), limit_mb=400.0)
            lean.stop()

            base = in_process_rps(registry, small, s)
            http8 = load(on, "/v1/predict", small, 8, s)
            emit("service_overhead", concurrency=8, http_rps=http8["rps"], in_process_rps=base,
                 ratio=http8["rps"] / base, target=">= 0.9", failed=http8["failed"])

            _, body = off.request("POST", "/v1/predict", small)
            cam_url = json.loads(body)["results"][0]["predictions"][0]["cam_url"]
            plain_ms, cam_ms = alternate(off, [("POST", "/v1/predict?cam=false&boxes=false", small),
                                               ("POST", "/v1/predict", small)], s)
            emit("cam_and_boxes_cost", p50_without_ms=plain_ms, p50_with_ms=cam_ms, ratio=cam_ms / plain_ms,
                 target="<= 1.05")
            without, with_verdict = in_process_open_world_cost(registry, small)
            emit("open_world_verdict_cost_in_process", model=args.model, p50_without_ms=without,
                 p50_with_ms=with_verdict, ratio=with_verdict / without, target="<= 1.05")
            plain_in, cam_in = in_process_cam_cost(registry, small)
            emit("cam_and_boxes_cost_in_process", p50_without_ms=plain_in, p50_with_ms=cam_in,
                 ratio=cam_in / plain_in, target="<= 1.05")
            # the share is taken of the predict p50 above; a predict that follows an overlay request in
            # turn is slowed by it (ONNX Runtime's idle threads have gone to sleep), which is reported too
            after_ms, overlay_ms = alternate(off, [("POST", "/v1/predict", small), ("GET", cam_url, None)], s)
            emit("png_overlay_cost", overlay_p50_ms=overlay_ms, predict_p50_ms=cam_ms, ratio=1 + overlay_ms / cam_ms,
                 predict_p50_ms_when_alternating_with_overlays=after_ms, target="<= 1.15")
            small_ms, big_ms = alternate(off, [("POST", "/v1/predict", small), ("POST", "/v1/predict", big)], s)
            emit("large_jpeg", p50_12mp_ms=big_ms, p50_640x480_ms=small_ms, ratio=big_ms / small_ms, target="<= 2.5",
                 jpeg_bytes=len(big))

            emit("raw_onnxruntime_ceiling", **raw_session_rates(registry, args.size, s / 2))
            for conc in (16, 1):
                a = load(on, "/v1/predict", small, conc, s)
                b = load(off, "/v1/predict", small, conc, s)
                emit("batching", concurrency=conc, rps_on=a["rps"], rps_off=b["rps"], throughput_ratio=a["rps"] / b["rps"],
                     p50_on_ms=a["p50_ms"], p50_off_ms=b["p50_ms"], latency_ratio=a["p50_ms"] / b["p50_ms"],
                     target=">= 1.15 throughput at 16; latency within 1.10 at 1", failed=a["failed"] + b["failed"])
        finally:
            on.stop()
            off.stop()


if __name__ == "__main__":
    main()
