"""rescam side by side with the peers, one run, one client, one model, the same images:

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/peers.py [--model resnet50] [--seconds 10] [--rounds 2]

- rescam's `/v1/predict` (labels, scores and the CAM boxes of the top 5, overlays kept);
- LitServe serving the same ONNX file with ONNX Runtime and its dynamic batching (labels only);
- a plain FastAPI + ONNX Runtime endpoint in a few lines (labels only): the floor.

Each server gets the same closed-loop multipart load (640x480 JPEGs) at each concurrency, the
servers taken in turn and the order reversed every round so that drift hits them alike. Prints one
JSON line per measurement and a table of the medians over rounds; rescam's ratios to the best peer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    result = {"rps": len(times) / elapsed, "p50_ms": 1000 * statistics.median(times), "requests": len(times),
              "failed": failed}
    if pid:
        result["server_cpu_ms_per_request"] = 1000 * (cpu_seconds(pid) - cpu) / max(1, len(times))
    return result


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
            servers["plain"] = Peer("plain", model, args.providers)
            servers["litserve"] = Peer("litserve", model, args.providers, max_batch=16,
                                       batch_timeout=args.litserve_batch_timeout)
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
                        emit("peers", server=name, concurrency=conc, round=r, **result)
        finally:
            for s in servers.values():
                s.stop()
    summarize(runs, list(servers), args.concurrency)


def summarize(runs: dict, names: list[str], concurrency: list[int]) -> None:
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("rps", "p50_ms")} for k, v in runs.items()}
    print("\n| concurrency | " + " | ".join(f"{n} rps / p50 ms" for n in names) + " | rescam / best peer (rps) |")
    print("| --- |" + " --- |" * (len(names) + 1))
    for c in concurrency:
        best = max(med[(n, c)]["rps"] for n in names if n != "rescam")
        cells = " | ".join(f"{med[(n, c)]['rps']:.2f} / {med[(n, c)]['p50_ms']:.1f}" for n in names)
        print(f"| {c} | {cells} | {med[('rescam', c)]['rps'] / best:.2f} |")
    if 1 in concurrency:
        emit("p50_at_1", rescam_ms=med[("rescam", 1)]["p50_ms"], plain_ms=med[("plain", 1)]["p50_ms"],
             ratio=med[("rescam", 1)]["p50_ms"] / med[("plain", 1)]["p50_ms"], target="<= 1.05")
    for c in concurrency:
        best = max(med[(n, c)]["rps"] for n in names if n != "rescam")
        emit("throughput_vs_best_peer", concurrency=c, ratio=med[("rescam", c)]["rps"] / best, target=">= 1.0")


if __name__ == "__main__":
    main()
