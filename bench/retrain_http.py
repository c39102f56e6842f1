"""Retrain through the HTTP API as a user would, on a real boxed data set, and measure what went
live on images that were never uploaded.

A real server (`rescam serve`, loopback) starts with the shipped default model; the digits data
set (bench/realsets.py: real handwriting, 10 classes) is uploaded as a zip, with its boxes.csv and
again without it; each upload gets one job with nothing but `{"dataset": NAME, "force": true}`
(force: its labels differ from the live model's). Then every held-out image is sent to
`POST /v1/predict` with no threshold: top-1, and GT-known localization (the box the service
draws for the true class has IoU >= 0.5 with the true box).

The `objects` set (real-object clip art on real photographs) is measured on its `test/` images
(new composites of the objects it trained on) and its `unseen/` ones (objects it never saw).
Each answer's open-world verdict is counted too: a held-out image of the model's own classes
called unknown is a cost of the verdict.

    python bench/retrain_http.py [--set digits|objects] [--data DIR] [--port 8765] [--variants boxes,no-boxes]
                                 [--keep DIR]   # keep the server's registry and data root there
                                 [--precision int8]  # the job asks for the int8 export
                                 [--settings JSON]  # research: settings added to each job request
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app import scoring  # noqa: E402
from app.cam import iou  # noqa: E402
from bench.realsets import BUILDERS, read_set_boxes, zip_bytes  # noqa: E402

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start_server(root: Path, port: int) -> subprocess.Popen:
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RESCAM_ADMIN_TOKEN": TOKEN, "RESCAM_DATA_ROOT": str(root / "data"),
           "PYTHONPATH": str(repo)}
    subprocess.run([sys.executable, "-m", "training.cli", "bootstrap", "--registry", str(root / "registry")],
                   check=True, env=env, cwd=repo)
    server = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--registry", str(root / "registry"),
                               "--port", str(port)], env=env, cwd=repo, stdout=subprocess.DEVNULL,
                              stderr=open(root / "server.log", "w"))
    for _ in range(120):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"the server did not start: {(root / 'server.log').read_text()[-2000:]}")


def retrain(client: httpx.Client, name: str, upload: bytes, settings: dict, precision: str = "float32") -> dict:
    r = client.post(f"/v1/datasets?name={name}", content=upload, headers={**AUTH, "content-type": "application/zip"})
    r.raise_for_status()
    started = time.time()
    request = {"dataset": name, "force": True, **({"options": settings} if settings else {}),
               **({"precision": precision} if precision != "float32" else {})}
    job = client.post("/v1/jobs", json=request, headers=AUTH).json()
    plan = None
    while True:
        job = client.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
        plan = (job.get("progress") or {}).get("plan") or plan  # the last: re-planned from the loop's speed
        if job["state"] not in ("queued", "running", "cancelling", "finishing"):
            break
        time.sleep(2)
    if job["state"] != "succeeded":
        raise SystemExit(f"job {job['id']} {job['state']}: {job.get('error')}")
    steps = (job.get("progress") or {}).get("step")
    return {"job_s": round(time.time() - started, 1), "plan": plan, "steps_trained": steps, "result": job["result"]}


def held_out(client: httpx.Client, root: Path, split: str = "test", route: str = "/v1/predict", query: str = ""
             ) -> dict:
    """Top-1, GT-known and the verdicts of the served model at `route` on the set's `split` images;
    `query` adds request parameters (`box_rule=mass:0.5`)."""
    right = found = count = unknown = 0
    rules = set()
    confidence: dict[str, list[float]] = {"score": [], "raw_score": []}
    hits = []
    for path, (label, box) in read_set_boxes(root).items():
        if not path.startswith(f"{split}/"):
            continue
        answer = client.post(f"{route}?top_k=10&cam=false{'&' + query if query else ''}", content=(root / path).read_bytes(),
                             headers={"content-type": "image/png"}).json()
        rules.add(answer["box_rule"]["rule"])
        predictions = answer["results"][0]["predictions"]
        unknown += bool(answer["results"][0]["open_world"]["unknown"])
        for key, values in confidence.items():
            values.append(predictions[0][key])
        hits.append(predictions[0]["label"] == label)
        right += predictions[0]["label"] == label
        truth = next(p for p in predictions if p["label"] == label)
        b = truth["boxes"][0] if truth["boxes"] else None
        found += b is not None and iou([b["x0"], b["y0"], b["x1"], b["y1"]], box) >= 0.5
        count += 1
    return {"split": split, "images": count, "top1": right / count, "gt_known_loc": found / count,
            "called_unknown": unknown / count, "box_rules": sorted(rules),
            **{f"ece_{key}": round(scoring.top_score_ece(np.array(values), np.array(hits)), 4)
               for key, values in confidence.items()},
            # the calibrated scores' ECE if they were exactly right: how much of ece_score is luck
            "ece_by_chance": round(scoring.chance_ece(np.array(confidence["score"])), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="digits", choices=("digits", "objects"))
    ap.add_argument("--data", help="where the set is (built if absent); default /tmp/rescam-SET")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--variants", default="boxes,no-boxes")
    ap.add_argument("--keep", type=Path, help="run the server in this folder and leave it there")
    ap.add_argument("--precision", default="float32", choices=("float32", "int8"),
                    help="the job's `precision`: int8 asks for the int8 export (a user's choice, not research)")
    ap.add_argument("--settings", type=json.loads, default={},
                    help="research only: training settings the job request adds, as JSON (a user's job sends none)")
    args = ap.parse_args()
    data = Path(args.data or f"/tmp/rescam-{args.set}")
    if not (data / "boxes.csv").exists():
        BUILDERS[args.set](data)
    splits = ("test", "unseen") if (data / "unseen").is_dir() else ("test",)
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        server = start_server(where, args.port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=60) as client:
                for variant in args.variants.split(","):
                    job = retrain(client, f"{args.set}-{variant}", zip_bytes(data, boxes=variant == "boxes"),
                                  args.settings, args.precision)
                    # a data set of new labels makes a model of its own beside the shipped one
                    route = f"/v1/models/{job['result']['model']}/predict"
                    figures = [held_out(client, data, split, route) for split in splits]
                    print(json.dumps({"set": args.set, "variant": variant, "settings": args.settings,
                                      "model": job["result"]["model"], "deployed": job["result"]["deployed"],
                                      "version": job["result"].get("version"),
                                      "precision": job["result"].get("precision"),
                                      **{k: job["result"][k] for k in ("int8_near_ties", "int8_refused")
                                         if k in job["result"]},
                                      "job_s": job["job_s"], "steps_trained": job["steps_trained"],
                                      "plan": job["plan"], "held_out": figures,
                                      "validation": {k: job["result"]["metrics"].get(k) for k in
                                                     ("top1", "gt_known_loc", "box_rule", "max_box_acc")}}), flush=True)
        finally:
            server.terminate()
            server.wait(20)


if __name__ == "__main__":
    main()
