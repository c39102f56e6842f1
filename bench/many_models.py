"""Three models in one service, all loaded against a bound of two: what the swap costs.

    .venv/bin/python bench/many_models.py [--model resnet50] [--seconds 20]

One registry holds the same export under three names (default, birds, fruit). Two live servers
run side by side on it: one with no bound (all three loaded) and one with
RESCAM_MAX_LOADED_MODELS=2. One client sends the same JPEG to each model in turn (the worst case
for a bound of two: every request finds its model unloaded), then to one model only. Prints one
JSON line per measurement and the ratios: latency per request, the load each request waited for
(`model_load_ms`), resident memory, and each loaded model's memory from /metrics.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import Server, emit, jpeg, make_registry  # noqa: E402  (bench/serving.py)

MODELS = ("default", "birds", "fruit")


def three_models(registry_root: Path) -> None:
    from app.registry import Registry

    registry = Registry(registry_root)
    source = registry.version_dir("default", registry.deployed("default"))
    for name in MODELS[1:]:
        registry.deploy(name, registry.register(name, source))


def turns(server: Server, names: tuple[str, ...], body: bytes, seconds: float) -> dict:
    """One client, the models in turn: each request's ms, the loads it waited for, failures."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    times, loads, failed = [], [], 0
    stop, k = time.perf_counter() + seconds, 0
    while time.perf_counter() < stop:
        t = time.perf_counter()
        status, data = server.request("POST", f"/v1/models/{names[k % len(names)]}/predict?top_k=1", body, conn)
        times.append((time.perf_counter() - t) * 1000)
        k += 1
        if status != 200:
            failed += 1
            continue
        waited = json.loads(data).get("model_load_ms")
        if waited is not None:
            loads.append(waited)
    conn.close()
    times.sort()
    return {"requests": len(times), "failed": failed, "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2), "mean_ms": round(statistics.fmean(times), 2),
            "loads": len(loads), "load_ms_p50": round(statistics.median(loads), 1) if loads else None}


def model_memory_mb(server: Server) -> dict[str, float]:
    text = server.request("GET", "/metrics")[1].decode()
    found = re.findall(r'rescam_model_memory_bytes\{model="([\w-]+)",version="\d+"\} ([0-9.e+]+)', text)
    return {name: round(float(v) / 2**20, 1) for name, v in found}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=20)
    args = p.parse_args()
    body = jpeg(640, 480)
    with tempfile.TemporaryDirectory() as tmp:
        registry = make_registry(args.model, 1000 if args.model.startswith("resnet") and args.size >= 128 else 10,
                                 args.size, Path(tmp))
        three_models(registry)
        common = {"registry_poll_s": 2, "run_jobs": "false", "data_root": str(Path(tmp) / "data"),
                  "providers": '["CPUExecutionProvider"]'}
        servers = {"unbounded": Server(registry, **common), "bound_2": Server(registry, max_loaded_models=2, **common)}
        try:
            results = {}
            for name, server in servers.items():
                results[name] = {
                    "rss_mb_at_start": round(server.rss_mb(), 1),
                    "one_model": turns(server, ("default",), body, args.seconds / 2),
                    "three_in_turn": turns(server, MODELS, body, args.seconds),
                    "rss_mb": round(server.rss_mb(), 1), "model_memory_mb": model_memory_mb(server)}
                emit("many_models", model=args.model, server=name, **results[name])
        finally:
            for server in servers.values():
                server.stop()
    a, b = results["unbounded"], results["bound_2"]
    emit("many_models_ratio", model=args.model,
         three_in_turn_p50_bound_vs_unbounded=round(b["three_in_turn"]["p50_ms"] / a["three_in_turn"]["p50_ms"], 2),
         one_model_p50_bound_vs_unbounded=round(b["one_model"]["p50_ms"] / a["one_model"]["p50_ms"], 2),
         rss_bound_vs_unbounded=round(b["rss_mb"] / a["rss_mb"], 2),
         failed=a["three_in_turn"]["failed"] + b["three_in_turn"]["failed"])


if __name__ == "__main__":
    main()
