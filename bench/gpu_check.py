"""The GPU check (issue 14): every GPU figure in one command and one JSON file.

    scripts/gpu-check.sh                       # on the GPU machine; results in $OUT or ./gpu-check
    .venv/bin/python bench/gpu_check.py --tiny --out /tmp/gc   # the same phases on this CPU, in seconds

Phases, each written to the JSON as it ends (a run cut short still reports what it did):
1. train: resnet50 at 224 with bf16 autocast and channels_last, SGD as `rescam train` runs it, on a
   pool of the embedded synthetic images held on the GPU (so the figure is the GPU's, not the
   loader's); images/s eager, then compiled (torch.compile) while time allows.
2. export: those weights through rescam's exporter, float32 and float16 (both parity-checked).
3. agreement: the CUDA provider against the CPU provider on the same validation images: labels
   equal, correlation of the top class's CAM (target >= 0.999), float16 too.
4. serve: `rescam serve` on the CUDA provider, 640x480 JPEGs in, labels and CAM boxes out
   (`cam=false`: no overlay kept), closed-loop clients in several processes; throughput and p50 at
   concurrency 1, 8, 32 and 64 with batching on and off, then float16, one worker, the batch wait.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peers import MULTIPART, multipart, stop_session, wait_ready  # noqa: E402
from serving import closed_loop, free_port, jpeg  # noqa: E402


class Report:
    """The JSON of figures, rewritten after every phase."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path, self.started, self.budget_s = path, time.monotonic(), budget_s
        self.data: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "phases": {}}
        path.parent.mkdir(parents=True, exist_ok=True)

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def put(self, phase: str, **figures) -> None:
        self.data["phases"].setdefault(phase, {}).update(figures)
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        print(json.dumps({"phase": phase, **figures}, default=str), flush=True)


def machine() -> dict:
    import onnxruntime as ort
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "ort_providers": ort.get_available_providers(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


# --- 1. training speed -------------------------------------------------------------------------

def synthetic_pool(count: int, size: int, device) -> tuple:
    """`count` embedded synthetic images (uint8 NCHW) and labels on `device`."""
    import torch

    from training.synthetic import generate

    images, labels, _ = generate(0, "train", count, size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    return x, torch.from_numpy(labels).to(device)


def train_speed(model_name: str, size: int, batch: int, steps: int, warmup: int, device, compiled: bool,
                pool: tuple) -> dict:
    """Images/s of rescam's training step (bf16 autocast, channels_last, SGD with momentum and
    weight decay), batches drawn from a pool already on the device, flips as augmentation."""
    import torch
    import torch.nn.functional as F

    from models import create_model
    from training.evaluate import normalize_batch

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = create_model(model_name, num_classes=8).to(device, memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-5, nesterov=True)
    mean = torch.tensor([0.5, 0.5, 0.5], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.25, 0.25], device=device).view(1, 3, 1, 1)
    images, labels = pool
    amp = device.type == "cuda"

    def step() -> torch.Tensor:
        idx = torch.randint(0, len(images), (batch,), device=device)
        x = normalize_batch(images[idx], mean, std)
        x = torch.where(torch.rand(batch, 1, 1, 1, device=device) < 0.5, x.flip(3), x)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    seconds = time.perf_counter() - started
    return {"model": model_name, "size": size, "batch": batch, "steps": steps, "compiled": compiled,
            "images_per_s": round(batch * steps / seconds, 1), "warmup_s": round(warm_s, 1),
            "final_loss": round(loss.item(), 4), "bf16": amp, "channels_last": True, "_model": model}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# --- 2. export ---------------------------------------------------------------------------------

def export_versions(model, size: int, root: Path) -> tuple[Path, dict]:
    """The model exported float32 and float16 into a registry (versions 1 and 2), parity-checked."""
    import torch

    from app.card import ModelCard
    from app.preprocess import Preprocessing
    from app.registry import CARD_FILE, MODEL_FILE, Registry
    from training.export import ParityError, check_parity, export_onnx

    model = model.float().to("cpu", memory_format=torch.contiguous_format).eval()
    inputs = normalized_images(size, 16)
    with torch.no_grad():
        h, w = model.forward_features(torch.zeros(1, 3, size, size)).shape[-2:]
    registry, figures = Registry(root / "registry"), {}
    for precision in ("float32", "float16"):
        card = ModelCard(labels=tuple(f"class{i}" for i in range(model.fc.out_features)), architecture="resnet50",
                         cam_size=(h, w), preprocessing=Preprocessing(size, round(size * 256 / 224), (0.5,) * 3,
                                                                      (0.25,) * 3))
        export = root / precision
        started = time.perf_counter()
        export_onnx(model, export / MODEL_FILE, size, card.to_dict(), precision)
        try:
            parity = check_parity(model, export / MODEL_FILE, inputs, precision)
        except ParityError as e:  # reported, and the check goes on: the agreement phase measures it again
            parity = f"failed: {e}"
        (export / CARD_FILE).write_text(card.to_json())
        registry.register("default", export)
        figures[precision] = {"export_s": round(time.perf_counter() - started, 1), "parity": parity,
                              "mb": round((export / MODEL_FILE).stat().st_size / 2**20, 1)}
    registry.deploy("default", 1)
    return root / "registry", figures


def normalized_images(size: int, count: int) -> np.ndarray:
    from training.synthetic import generate

    images, _, _ = generate(0, "val", count, size)
    return ((images.astype(np.float32) / 255 - 0.5) / 0.25).transpose(0, 3, 1, 2).copy()


# --- 3. GPU and CPU answers agree ----------------------------------------------------------------

def agreement(registry: Path, size: int, providers: list[str]) -> dict:
    from app.engine import installed_providers, open_session, preload_gpu_libraries
    from app.registry import MODEL_FILE, Registry

    preload_gpu_libraries()
    x = normalized_images(size, 32)
    def model(version: int) -> Path:
        return Registry(registry).version_dir("default", version) / MODEL_FILE

    cpu = open_session(model(1), ["CPUExecutionProvider"], lean=False)
    want_logits, want_cams = cpu.run(["logits", "cam"], {"input": x})
    out = {}
    for version, precision in ((1, "float32"), (2, "float16")):
        session = open_session(model(version), installed_providers(providers), lean=False)
        logits, cams = session.run(["logits", "cam"], {"input": x})
        top = want_logits.argmax(1)
        corr = [float(np.corrcoef(cams[i, c].ravel(), want_cams[i, c].ravel())[0, 1]) for i, c in enumerate(top)]
        out[precision] = {"provider": session.get_providers()[0], "images": len(x),
                          "labels_equal": float((logits.argmax(1) == top).mean()),
                          "cam_correlation_min": round(min(corr), 6), "cam_correlation_median": round(
                              statistics.median(corr), 6), "max_abs_logits": float(np.abs(logits - want_logits).max())}
    return out


# --- 4. serving --------------------------------------------------------------------------------

def _client(args) -> list[float]:
    port, path, bodies, concurrency, seconds = args
    return closed_loop(port, path, bodies, concurrency, seconds, MULTIPART)[0]


def load(port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float, processes: int) -> dict:
    """Closed-loop load from `processes` client processes (one Python client cannot send thousands
    of requests a second), `concurrency` connections in all."""
    shares = [concurrency // processes + (k < concurrency % processes) for k in range(processes)]
    shares = [s for s in shares if s]
    started = time.perf_counter()
    from training.synthetic import worker_context

    with worker_context().Pool(len(shares)) as pool:  # this process has run ONNX Runtime and torch
        parts = pool.map(_client, [(port, path, bodies, s, seconds) for s in shares])
    elapsed = time.perf_counter() - started
    times = [t for part in parts for t in part]
    return {"concurrency": concurrency, "rps": round(len(times) / elapsed, 1),
            "p50_ms": round(1000 * statistics.median(times), 2), "p99_ms": round(1000 * np.quantile(times, 0.99), 2),
            "requests": len(times)}


class Rescam:
    """`rescam serve` (the CLI, several uvicorn workers) in its own process session."""

    def __init__(self, registry: Path, workers: int, version: int, **settings) -> None:
        self.port = free_port()
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # carried wheels too
        env = {**os.environ, "PYTHONPATH": path, "RESCAM_PREDICTION_STORE": "memory",
               "RESCAM_RUN_JOBS": "false", "RESCAM_DATA_ROOT": str(registry.parent / "data"),
               **{f"RESCAM_{k.upper()}": str(v) for k, v in settings.items()}}
        from app.registry import Registry

        Registry(registry).deploy("default", version)
        self.proc = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--registry", str(registry),
                                      "--port", str(self.port), "--workers", str(workers)], env=env, cwd=ROOT,
                                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_ready(self.port, "/v1/predict", timeout=300, alive=self.proc.poll)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"rescam did not start: {self.proc.stderr.read().decode()[-2000:]}") from None
        answer = json.loads(self.request())
        self.provider = answer["provider"]

    def request(self) -> bytes:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", "/v1/predict", body=jpeg(640, 480), headers={"Content-Type": "image/jpeg"})
        return conn.getresponse().read()

    def stop(self) -> None:
        stop_session(self.proc)


def serve(report: Report, registry: Path, providers: list[str], concurrency: list[int], seconds: float,
          workers: int, clients: int) -> None:
    bodies = [multipart(jpeg(640, 480, seed=s)) for s in range(16)]
    path = "/v1/predict?cam=false&top_k=5"
    base = {"providers": json.dumps(providers), "max_batch_size": 64}
    runs = [("float32, batching on", workers, 1, {}), ("float32, batching off", workers, 1, {"batching": "false"}),
            ("float16, batching on", workers, 2, {}), ("float32, batching on, 1 worker", 1, 1, {}),
            ("float32, batching on, greedy (wait 0)", workers, 1, {"max_batch_wait_ms": 0}),
            ("float32, batching on, no I/O binding", workers, 1, {"io_binding": "false"})]
    for name, w, version, extra in runs:
        if report.left_s() < seconds * len(concurrency) + 60:
            report.put("serve", **{name: "skipped: out of time"})
            continue
        try:
            server = Rescam(registry, w, version, **base, **extra)
        except RuntimeError as e:
            report.put("serve", **{name: f"failed: {e}"[:3000]})
            continue
        try:
            load(server.port, path, bodies, min(8, max(concurrency)), 2.0, clients)  # warm every worker
            results = [load(server.port, path, bodies, c, seconds, clients) for c in concurrency]
            report.put("serve", **{name: {"provider": server.provider, "workers": w, "results": results}})
        finally:
            server.stop()
    figures = report.data["phases"].get("serve", {})
    on, off = figures.get("float32, batching on"), figures.get("float32, batching off")
    if isinstance(on, dict) and isinstance(off, dict):
        report.put("serve", batching_on_over_off={r["concurrency"]: round(r["rps"] / s["rps"], 2)
                                                  for r, s in zip(on["results"], off["results"])})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-check"), help="folder for gpu-check.json")
    p.add_argument("--budget-s", type=float, default=450.0, help="phases that would not fit are skipped")
    p.add_argument("--tiny", action="store_true", help="every phase at toy sizes (a CPU dry run)")
    args = p.parse_args()
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type == "cpu"
    size, batch, steps, warmup = (64, 4, 2, 1) if tiny else (224, 256, 150, 20)
    report = Report(Path(args.out) / "gpu-check.json", args.budget_s)
    from training.export import git_revision

    report.put("machine", **machine(), device=device.type, tiny=tiny, git=git_revision())
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with tempfile.TemporaryDirectory() as tmp:
        pool = synthetic_pool(64 if tiny else 2048, size, device)
        eager = train_speed("resnet50", size, batch, steps, warmup, device, False, pool)
        model = eager.pop("_model")
        report.put("train", eager=eager)
        if not tiny and report.left_s() > 330:
            try:
                compiled = train_speed("resnet50", size, batch, steps, warmup, device, True, pool)
                compiled.pop("_model")
                report.put("train", compiled=compiled)
            except Exception as e:  # noqa: BLE001 - a compiler failure is a figure too
                report.put("train", compiled=f"failed: {type(e).__name__}: {e}"[:500])
        del pool
        registry, exports = export_versions(model, size, Path(tmp))
        report.put("export", **exports)
        report.put("agreement", **agreement(registry, size, providers))
        concurrency = [1, 4] if tiny else [1, 8, 32, 64]
        seconds = 0.5 if tiny else 6.0
        workers = 1 if tiny else max(2, min(8, (os.cpu_count() or 2) // 2))
        clients = 1 if tiny else max(2, (os.cpu_count() or 2) // 4)
        serve(report, registry, providers, concurrency, seconds, workers, clients)
    print(f"wrote {report.path}")


if __name__ == "__main__":
    main()
