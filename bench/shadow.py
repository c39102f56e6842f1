"""A shadow trial on live traffic: what it reports, and what it costs the live answers.

    .venv/bin/python bench/shadow.py [--rounds 6] [--seconds 4] [--concurrency 4] [--share 0.5]

The shipped shapes model serves (v1, float32). Two candidates are registered beside it: v2, its
int8 export (`rescam export --precision int8` from the shipped weights: the version a user would
want to try before it answers anyone), and v3, the float32 export again (a control whose figures
must be 100% agreement and IoU 1). A closed-loop client (`--concurrency` connections) sends a
mix a service meets: new synthetic shapes and real photographs scikit-image ships. Each round
runs a trial of v2 and one of v3 at `--share`, each followed by a phase without a trial; then v2
is promoted from its last trial while the client runs. Prints each trial's figures, and the live
p50 and throughput with a trial against the mean of the phases without one on either side (the
median over rounds).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reexport_shipped import SHIPPED, checkpoint_of  # noqa: E402
from serving import Server, closed_loop, emit  # noqa: E402

TOKEN = "bench-shadow"


def traffic(n_shapes: int = 24) -> list[bytes]:
    """New shapes (the model's own kind of image) and real photographs, as JPEGs."""
    from training.open_world import PHOTOS, photo
    from training.synthetic import render

    images = [render(11, "test", i, 96).image for i in range(n_shapes)]
    images += [photo(name) for name in PHOTOS[:8]]
    out = []
    for array in images:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(array)).convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build_registry(root: Path) -> Path:
    from app.registry import Registry
    from training.export import export_checkpoint

    registry = Registry(root / "registry")
    registry.deploy("default", registry.register("default", SHIPPED))
    checkpoint = checkpoint_of(SHIPPED, root / "shipped.pth")
    int8 = export_checkpoint(checkpoint, root / "int8", "int8", int8_fallback=True)
    precision = json.loads((int8 / "card.json").read_text())["precision"]
    emit("shadow_candidates", v2=precision, v3="float32 (the live export again)")
    registry.register("default", int8)
    registry.register("default", SHIPPED)
    return root / "registry"


def admin(server: Server, method: str, path: str, body: dict | None = None) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request(method, path, body=json.dumps(body) if body else None,
                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    r = conn.getresponse()
    answer = json.loads(r.read())
    conn.close()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {answer}")
    return answer


def phase(server: Server, name: str, bodies: list[bytes], seconds: float, concurrency: int, quiet: bool = False
          ) -> dict:
    times, failed, elapsed = closed_loop(server.port, "/v1/predict?top_k=1", bodies, concurrency, seconds)
    times.sort()
    figures = {"requests": len(times), "failed": failed, "rps": len(times) / elapsed,
               "p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * times[int(0.99 * (len(times) - 1))]}
    if not quiet:
        emit("shadow_phase", phase=name, **figures)
    return figures


def with_trial(server: Server, version: int, name: str, bodies: list[bytes], args) -> tuple[str, dict]:
    """A phase of live traffic with `version` in shadow; the trial stays open (stop or promote it)."""
    started = admin(server, "POST", "/v1/models/default/trials",
                    {"version": version, "share": args.share, "samples": 100_000, "reason": f"bench: {name}"})
    return started["id"], phase(server, name, bodies, args.seconds, args.concurrency, quiet=True)


def report(server: Server, name: str, trial_ids: list[str]) -> None:
    """What the trials of one candidate measured, one JSON line each (the last round's in full)."""
    time.sleep(1.0)  # the candidate's last tasks
    for trial_id in trial_ids:
        t = admin(server, "GET", f"/v1/models/default/trials/{trial_id}")
        emit("shadow_trial", candidate=name, share=t["share"], skipped=t["skipped"], **t["figures"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4, help="per phase")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--share", type=float, default=0.5)
    args = ap.parse_args()
    bodies = traffic()
    ratios: dict[str, list[tuple[float, float]]] = {"int8": [], "control": []}
    trials: dict[str, list[str]] = {"int8": [], "control": []}
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(build_registry(Path(tmp)), admin_token=TOKEN, data_root=Path(tmp) / "data", run_jobs="false")
        try:
            phase(server, "warm-up", bodies, 2, args.concurrency, quiet=True)
            # no trial, int8, no trial, control, no trial, ...: each trial phase is compared with
            # the mean of the phases without a trial on either side of it, so drift hits both alike
            base = phase(server, "no trial", bodies, args.seconds, args.concurrency, quiet=True)
            for r in range(args.rounds):
                for name, version in (("int8", 2), ("control", 3)):
                    trial_id, live = with_trial(server, version, name, bodies, args)
                    admin(server, "POST", f"/v1/models/default/trials/{trial_id}/stop")
                    after = phase(server, "no trial", bodies, args.seconds, args.concurrency, quiet=True)
                    base_rps, base_p50 = (base["rps"] + after["rps"]) / 2, (base["p50_ms"] + after["p50_ms"]) / 2
                    trials[name].append(trial_id)
                    ratios[name].append((live["p50_ms"] / base_p50, live["rps"] / base_rps))
                    failed += live["failed"] + after["failed"]
                    emit("shadow_round", round=r, candidate=name, rps_without=base_rps, rps=live["rps"],
                         p50_ms_without=base_p50, p50_ms=live["p50_ms"])
                    base = after
            report(server, "v2 int8", trials["int8"])
            report(server, "v3 float32 (control)", trials["control"])

            promoted: dict = {}
            mover = threading.Thread(target=lambda: (time.sleep(args.seconds / 3), promoted.update(
                admin(server, "POST", f"/v1/models/default/trials/{trials['int8'][-1]}/promote"))))
            mover.start()
            across = phase(server, "v2 promoted from its trial mid-phase", bodies, args.seconds, args.concurrency)
            mover.join()
            live = json.loads(server.request("POST", "/v1/predict", bodies[0])[1])["model"]
            emit("shadow_promotion", trial_state=promoted.get("state"), live_version=live["version"],
                 live_precision=live["precision"], failed=across["failed"])
        finally:
            server.stop()
    for name, pairs in ratios.items():
        emit("shadow_cost", candidate=name, share=args.share, rounds=args.rounds,
             live_p50_ratio_median=statistics.median(p for p, _ in pairs),
             live_rps_ratio_median=statistics.median(q for _, q in pairs), failed_all_phases=failed)


if __name__ == "__main__":
    main()
