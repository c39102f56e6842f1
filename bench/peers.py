"""rescam side by side with the peers, one run, one client, one model, the same images:

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/peers.py [--model resnet50] [--seconds 10] [--rounds 2] [--no-int8]

- rescam's `/v1/predict` (labels, scores and the CAM boxes of the top 5, overlays kept);
- rescam serving the int8 version of the same model (`rescam export --precision int8`: ONNX Runtime
  static quantization, calibrated on the benchmark's own preprocessed images): what a CPU user gets;
- LitServe serving the same ONNX file with ONNX Runtime and its dynamic batching (labels only);
- a plain FastAPI + ONNX Runtime endpoint in a few lines (labels only): the floor.

Each server gets the same closed-loop multipart load (640x480 JPEGs) at each concurrency, the
servers taken in turn and the order reversed every round so that drift hits them alike. Prints one
JSON line per measurement (each naming its precision) and two tables of the medians over rounds:
the same float32 model in all three servers (the fair comparison), and rescam's int8 version
beside the peers' float32; rescam's ratios to the best peer, and int8's to rescam's float32.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import serving  # noqa: E402
from serving import Server, closed_loop, emit, free_port, jpeg, make_registry  # noqa: E402

BOUNDARY = "rescam-bench-boundary"


def multipart(data: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


class Peer:
    """A peer server (bench/peer_servers.py) in its own process."""

    def __init__(self, kind: str, model: Path, providers: str, **options) -> None:
        self.name, self.path, self.port = kind, "/predict", free_port()
        extra = [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        # a session of its own, so that stop() ends LitServe's worker processes too
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "peer_servers.py"), kind, str(model),
                                      str(self.port), "--providers", providers, *extra], start_new_session=True)
        wait_ready(self.port, self.path)

    def stop(self) -> None:
        stop_session(self.proc)


def stop_session(proc: subprocess.Popen, wait_s: float = 20) -> None:
    """End a server started with start_new_session=True and every process of its session (LitServe's
    workers, uvicorn's): SIGTERM, then SIGKILL if it lingers; one that already ended is fine."""
    for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    return serving.post(conn, path, body, MULTIPART)


def wait_ready(port: int, path: str, timeout: float = 180, alive=lambda: None) -> None:
    """Until a real prediction answers 200 (LitServe's workers start after its HTTP server);
    `alive`: the server process's poll(), so that one that died is not waited for."""
    body, deadline = multipart(jpeg(64, 64)), time.time() + timeout
    while time.time() < deadline:
        if alive() is not None:
            raise RuntimeError(f"the server on port {port} exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if post(conn, path, body)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"nothing answered on port {port} within {timeout} s")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of the process `pid` and of every process in its session (LitServe's
    workers), so far."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[3]) == pid:  # fields[3]: the session id
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def load(port: int, path: str, bodies: list[bytes], concurrency: int, seconds: float, pid: int | None = None
         ) -> dict:
    """Throughput and p50 of a closed-loop load; with `pid`, the server's CPU time per request."""
    cpu = cpu_seconds(pid) if pid else 0.0
    times, failed, elapsed = closed_loop(port, path, bodies, concurrency, seconds, MULTIPART)
    result = {"rps": len(times) / elapsed, "p50_ms": 1000 * statistics.median(times),
              "p99_ms": 1000 * float(np.quantile(times, 0.99)) if times else None, "requests": len(times),
              "failed": failed}
    if pid:
        result["server_cpu_ms_per_request"] = 1000 * (cpu_seconds(pid) - cpu) / max(1, len(times))
    return result


def int8_registry(float_registry: Path, root: Path, bodies: list[bytes]) -> Path:
    """A registry whose version 1 is the int8 version of float_registry's, calibrated on the
    benchmark's images as the service preprocesses them (the random-weight model has no training set)."""
    import io

    from PIL import Image

    from app.card import ModelCard
    from app.registry import CARD_FILE, MODEL_FILE, Registry
    from training.quantize import quantize_int8

    source = float_registry / "default" / "1"
    export = root / "export-int8"
    shutil.copytree(source, export)
    card = ModelCard.load(source / CARD_FILE)
    images = [card.preprocessing.crop_resize(Image.open(io.BytesIO(serving.jpeg(640, 480, seed=s))).convert("RGB"))[0]
              for s in range(32)]
    quantize_int8(source / MODEL_FILE, export / MODEL_FILE, card.preprocessing.normalize(np.stack(images)))
    raw = json.loads((export / CARD_FILE).read_text())
    (export / CARD_FILE).write_text(json.dumps({**raw, "precision": "int8"}))
    registry = Registry(root / "registry-int8")
    registry.deploy("default", registry.register("default", export))
    return registry.root


PRECISION = {"rescam": "float32", "plain": "float32", "litserve": "float32", "rescam-int8": "int8",
             "rescam-variant": "float32"}


def top1(port: int, path: str, body: bytes) -> int:
    status, data = post(http.client.HTTPConnection("127.0.0.1", port, timeout=60), path, body)
    answer = json.loads(data)
    first = answer["results"][0] if "results" in answer else answer
    return first["predictions"][0]["index"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet50")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--providers", default="CPUExecutionProvider")
    p.add_argument("--litserve-batch-timeout", type=float, default=0.005)
    p.add_argument("--rescam", nargs="*", default=[], metavar="NAME=VALUE",
                   help="settings for rescam's server, as RESCAM_NAME=VALUE (e.g. batching=false)")
    p.add_argument("--no-int8", action="store_true", help="leave out rescam's int8 version")
    p.add_argument("--variant", nargs="+", default=None, metavar="NAME=VALUE",
                   help="a second float32 rescam server with these settings on top of --rescam's, measured "
                        "in the same rounds (e.g. steps_on_inference_thread=false)")
    args = p.parse_args()
    bodies = [multipart(jpeg(640, 480, seed=s)) for s in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        registry = make_registry(args.model, args.classes, 224, Path(tmp))
        model = registry / "default" / "1" / "model.onnx"
        servers = {}
        try:
            rescam = Server(registry, providers=json.dumps(args.providers.split(",")),
                            **dict(kv.split("=", 1) for kv in args.rescam))
            rescam.name, rescam.path = "rescam", "/v1/predict"
            servers["rescam"] = rescam
            if args.variant:
                variant = Server(registry, providers=json.dumps(args.providers.split(",")),
                                 **dict(kv.split("=", 1) for kv in [*args.rescam, *args.variant]))
                variant.name, variant.path = "rescam-variant", "/v1/predict"
                servers["rescam-variant"] = variant
                emit("variant", settings=args.variant)
            servers["plain"] = Peer("plain", model, args.providers)
            servers["litserve"] = Peer("litserve", model, args.providers, max_batch=16,
                                       batch_timeout=args.litserve_batch_timeout)
            if not args.no_int8:
                int8 = Server(int8_registry(registry, Path(tmp), bodies),
                              providers=json.dumps(args.providers.split(",")),
                              **dict(kv.split("=", 1) for kv in args.rescam))
                int8.name, int8.path = "rescam-int8", "/v1/predict"
                servers["rescam-int8"] = int8
            emit("same_answers", **{name: [top1(s.port, s.path, b) for b in bodies[:4]] for name, s in servers.items()})
            for s in servers.values():  # warm-up
                load(s.port, s.path, bodies, 4, 2.0)
            runs: dict[tuple[str, int], list[dict]] = {}
            order = list(servers)
            for r in range(args.rounds):
                for conc in args.concurrency:
                    for name in order if r % 2 == 0 else order[::-1]:
                        s = servers[name]
                        result = load(s.port, s.path, bodies, conc, args.seconds, s.proc.pid)
                        runs.setdefault((name, conc), []).append(result)
                        emit("peers", server=name, precision=PRECISION[name], concurrency=conc, round=r, **result)
        finally:
            for s in servers.values():
                s.stop()
    summarize(runs, list(servers), args.concurrency)


def summarize(runs: dict, names: list[str], concurrency: list[int]) -> None:
    metrics = ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
    med = {k: {m: statistics.median(r[m] for r in v) for m in metrics} for k, v in runs.items()}
    peers = [n for n in names if n in ("plain", "litserve")]

    def table(title: str, shown: list[str], ours: str) -> None:
        heads = " | ".join(f"{n} ({PRECISION[n]}) rps / p50 / p99 ms / CPU ms" for n in shown)
        print(f"\n{title}\n\n| concurrency | {heads} | {ours} / best peer (rps) |")
        print("| --- |" + " --- |" * (len(shown) + 1))
        for c in concurrency:
            best = max(med[(n, c)]["rps"] for n in peers)
            cells = " | ".join(f"{med[(n, c)]['rps']:.2f} / {med[(n, c)]['p50_ms']:.1f} / {med[(n, c)]['p99_ms']:.1f}"
                               f" / {med[(n, c)]['server_cpu_ms_per_request']:.1f}" for n in shown)
            print(f"| {c} | {cells} | {med[(ours, c)]['rps'] / best:.2f} |")
            emit("throughput_vs_best_peer", server=ours, precision=PRECISION[ours], concurrency=c,
                 ratio=med[(ours, c)]["rps"] / best, target=">= 1.0")

    table("The same float32 model in every server", ["rescam", *peers], "rescam")
    if "rescam-variant" in names:
        table("rescam with the variant's settings", ["rescam-variant", *peers], "rescam-variant")
    if 1 in concurrency:
        emit("p50_at_1", precision="float32", rescam_ms=med[("rescam", 1)]["p50_ms"],
             plain_ms=med[("plain", 1)]["p50_ms"], ratio=med[("rescam", 1)]["p50_ms"] / med[("plain", 1)]["p50_ms"],
             target="<= 1.05")
    if "rescam-int8" in names:
        table("rescam's int8 version beside the peers' float32", ["rescam-int8", *peers], "rescam-int8")
        for c in concurrency:
            emit("int8_vs_float32", server="rescam", precision="int8", concurrency=c,
                 ratio=med[("rescam-int8", c)]["rps"] / med[("rescam", c)]["rps"], target=">= 1.8")


if __name__ == "__main__":
    main()
