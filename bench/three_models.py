"""Issue 24's walk-through as a script: the shapes model serves; two other data sets are uploaded
and get a job each with nothing but `{"dataset": NAME}`; afterwards three models answer on their
own routes and by OIP v2, and the shapes model never stopped serving.

A real server (`rescam serve`, loopback, the shipped model bootstrapped) runs from this checkout.
A load client sends new shapes to `POST /v1/models/default/predict` (two connections, closed
loop) from before the first upload until both jobs have ended and both new models serve; every
answer that is not a 200 is a failure. Then each model answers its own held-out images on its own
route (top-1 and GT-known localization) and an OIP v2 inference. One JSON line per step.

    python bench/three_models.py [--sets digits,objects] [--port 8766] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.realsets import BUILDERS, zip_bytes  # noqa: E402
from bench.retrain_http import AUTH, held_out, start_server  # noqa: E402


def emit(step: str, **fields) -> None:
    print(json.dumps({"bench": "three_models", "step": step, **fields}), flush=True)


class Load:
    """A closed-loop client on the default model's route until stopped: answers and failures."""

    def __init__(self, url: str, connections: int = 2) -> None:
        from training.synthetic import render

        self.bodies = []
        for i in range(16):
            buf = io.BytesIO()
            Image.fromarray(render(5, "test", i, 64).image).save(buf, "JPEG", quality=90)
            self.bodies.append(buf.getvalue())
        self.url, self.stop, self.ok, self.failed, self.errors = url, threading.Event(), 0, 0, []
        self.versions: set[int] = set()
        self.threads = [threading.Thread(target=self.client, args=(k,)) for k in range(connections)]
        for t in self.threads:
            t.start()

    def client(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            n = k
            while not self.stop.is_set():
                try:
                    r = c.post("/v1/models/default/predict?top_k=1", content=self.bodies[n % len(self.bodies)],
                               headers={"content-type": "image/jpeg"})
                    if r.status_code == 200:
                        self.ok += 1
                        self.versions.add(r.json()["model"]["version"])
                    else:
                        self.failed += 1
                        self.errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    self.failed += 1
                    self.errors.append(repr(e))
                n += 1
                time.sleep(0.05)  # traffic, not a saturation test: the jobs need the cores too

    def end(self) -> dict:
        self.stop.set()
        for t in self.threads:
            t.join()
        return {"answered": self.ok, "failed": self.failed, "default_versions": sorted(self.versions),
                "errors": self.errors[:5]}


def job(client: httpx.Client, name: str, upload: bytes) -> str:
    r = client.post(f"/v1/datasets?name={name}", content=upload, headers={**AUTH, "content-type": "application/zip"})
    r.raise_for_status()
    created = client.post("/v1/jobs", json={"dataset": name}, headers=AUTH)
    created.raise_for_status()
    return created.json()["id"]


def wait(client: httpx.Client, job_id: str) -> dict:
    while True:
        j = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        if j["state"] not in ("queued", "running", "cancelling", "finishing"):
            return j
        time.sleep(3)


def oip(client: httpx.Client, name: str) -> dict:
    meta = client.get(f"/v2/models/{name}").json()
    shape = [1, *meta["inputs"][0]["shape"][1:]]
    x = np.zeros(shape, np.float32)
    r = client.post(f"/v2/models/{name}/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": shape, "data": x.ravel().tolist()}],
        "outputs": [{"name": "logits"}, {"name": "unknown"}]})
    return {"status": r.status_code, "outputs": [o["name"] for o in r.json().get("outputs", [])]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="digits,objects")
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--keep", type=Path, help="keep the server's registry and data root here")
    args = ap.parse_args()
    names = args.sets.split(",")
    root = Path(tempfile.mkdtemp(prefix="three-models-"))
    sets = {n: BUILDERS[n](root / "sets" / n) for n in names}
    server = start_server(root, args.port)
    url = f"http://127.0.0.1:{args.port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            load = Load(url)
            started = time.time()
            jobs = {n: job(client, n, zip_bytes(sets[n])) for n in names}
            for n, job_id in jobs.items():
                j = wait(client, job_id)
                result = j.get("result") or {}
                emit("job", dataset=n, state=j["state"], model=result.get("model"), version=result.get("version"),
                     deployed=result.get("deployed"), why_not=result.get("not_deployed_because"),
                     error=(j.get("error") or "")[-300:] or None, minutes=round((time.time() - started) / 60, 1))
            time.sleep(3)  # the watcher's next look (RESCAM_REGISTRY_POLL_S)
            emit("load across both deploys", **load.end())
            index = client.get("/v1/models").json()
            emit("models", default=index["default"],
                 models={m["name"]: {"state": m["state"], "serving": m["serving"]} for m in index["models"]})
            for m in index["models"]:
                name = m["name"]
                if name in sets:
                    found = held_out(client, sets[name], route=f"/v1/models/{name}/predict")
                    emit("held out", model=name, **found)
                emit("oip v2", model=name, **oip(client, name))
            ready = client.get("/readyz")
            emit("readyz", status=ready.status_code, models=ready.json().get("models"))
    finally:
        server.terminate()
        server.wait(30)
        if args.keep:
            shutil.copytree(root, args.keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
