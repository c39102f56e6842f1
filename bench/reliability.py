"""Schemathesis over the service's own OpenAPI: every operation, generated cases and stateful
sequences (predict, then fetch its overlays; register, deploy, roll back, delete), with the admin
token, with the prediction token and with none, counting answers that are server errors (5xx);
predicts across deploys; kill -9 during a training job and during deploys.

    .venv/bin/python bench/reliability.py --examples 100

Needs `pip install schemathesis` (a bench tool, not a dependency). The service runs from this
checkout with the shipped model as v1 and again as v2 (so deploys and rollbacks have something to
do), RESCAM_RUN_JOBS=false (a generated job request would otherwise train). Memory under the worst
uploads is bench/decode_memory.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from serving import ROOT, free_port

TOKENS = {"admin": "bench-admin", "predict": "bench-predict", "none": None}


def load_across_deploys(port: int, seconds: float, clients: int = 8) -> dict:
    """`clients` predicting without pause while v2 and v1 are deployed in turn: failures, and
    whether every answer came from a registered version."""
    import http.client
    import threading
    import time

    from serving import jpeg

    body, stop = jpeg(320, 240), time.monotonic() + seconds
    answers: list[tuple[int, int | None]] = []

    def request(method: str, path: str, token: str, data: bytes | None = None) -> tuple[int, dict]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request(method, path, body=data, headers={"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"})
        r = c.getresponse()
        out = (r.status, json.loads(r.read() or b"{}"))
        c.close()
        return out

    def client() -> None:
        while time.monotonic() < stop:
            status, answer = request("POST", "/v1/predict?cam=false", TOKENS["predict"], body)
            answers.append((status, (answer.get("model") or {}).get("version")))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    changes = 0
    while time.monotonic() < stop:
        assert request("POST", f"/v1/models/{2 if changes % 2 == 0 else 1}/deploy", TOKENS["admin"])[0] == 200
        changes += 1
        time.sleep(0.5)
    for t in threads:
        t.join()
    return {"load_across_deploys": {"requests": len(answers), "failed": sum(s != 200 for s, _ in answers),
                                    "versions_answered": sorted({v for _, v in answers if v is not None}),
                                    "deploys": changes, "clients": clients, "seconds": seconds}}


def kill_during_training_and_deploys(root: Path, env: dict) -> dict:
    """kill -9 of a live service during a training job, and during deploys: how long until it is
    ready again, and whether the job ends with its model registered and deployed once."""
    import signal
    import time
    import urllib.request

    sys.path.insert(0, str(ROOT))
    from tests.app.test_retrain import dataset_zip  # a small, learnable data set

    port = free_port()
    registry = root / "registry"
    log = open(root / "kill.log", "a")

    def serve() -> tuple[subprocess.Popen, float]:
        start = time.monotonic()
        p = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--port", str(port), "--registry",
                              str(registry)], cwd=ROOT, env={**env, "RESCAM_RUN_JOBS": "true"}, stdout=log,
                             stderr=subprocess.STDOUT)
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                return p, time.monotonic() - start
            except OSError:
                time.sleep(0.1)

    def call(method: str, path: str, data: bytes | None = None, kind: str = "application/json") -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {TOKENS['admin']}", "Content-Type": kind})
        return json.loads(urllib.request.urlopen(req, timeout=60).read())

    server, _ = serve()
    call("POST", "/v1/datasets?name=shapes", dataset_zip(60, val_per_class=40, coloured=True), "application/zip")
    versions_before = len(call("GET", "/v1/models")["versions"])
    job = call("POST", "/v1/jobs", json.dumps({"dataset": "shapes", "architecture": "resnet8", "image_size": 32,
                                               "batch_size": 16, "epochs": 12, "force": True}).encode())
    while not (call("GET", f"/v1/jobs/{job['id']}").get("progress") or {}).get("step"):
        time.sleep(0.3)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    server, ready_s = serve()
    while call("GET", f"/v1/jobs/{job['id']}")["state"] in ("running", "finishing"):
        time.sleep(0.5)
    done = call("GET", f"/v1/jobs/{job['id']}")
    registered = len(call("GET", "/v1/models")["versions"]) - versions_before
    deploy_kills = []
    for k in range(6):  # deploys in flight when the process dies
        versions = [v["version"] for v in call("GET", "/v1/models")["versions"]]
        target = versions[k % len(versions)]
        deploying = subprocess.Popen([sys.executable, "-c", "import sys, urllib.request as u; u.urlopen(u.Request("
                                             f"'http://127.0.0.1:{port}/v1/models/{target}/deploy', method='POST', "
                                             f"headers={{'Authorization': 'Bearer {TOKENS['admin']}'}}))"],
                                            stderr=subprocess.DEVNULL)
        time.sleep(0.05 * k)
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        deploying.wait()
        server, ready_s_deploy = serve()
        live = call("GET", "/v1/models")["deployed"]
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read())
        deploy_kills.append({"ready_s": round(ready_s_deploy, 2), "serving": health["model"]["version"], "live": live})
    server.terminate()
    server.wait(10)
    return {"kill_during_training": {"ready_again_s": round(ready_s, 2), "job": done["state"],
                                     "registered": registered, "deployed": (done["result"] or {}).get("deployed")},
            "kill_during_deploys": deploy_kills}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=100, help="examples per operation and phase")
    p.add_argument("--seconds", type=float, default=20, help="of predicts across deploys and rollbacks")
    args = p.parse_args()
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        raise SystemExit("bench/reliability.py: pip install schemathesis first")
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "registry"
        subprocess.run([sys.executable, "-m", "training.cli", "bootstrap", "--registry", str(registry)], cwd=ROOT,
                       check=True, capture_output=True)
        subprocess.run([sys.executable, "-c", "import sys; from app.registry import Registry; "
                        "from training.cli import shipped_model_dir; "
                        "Registry(sys.argv[1]).register('default', shipped_model_dir())", str(registry)],
                       cwd=ROOT, check=True)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RESCAM_ADMIN_TOKEN": TOKENS["admin"],
               "RESCAM_PREDICT_TOKEN": TOKENS["predict"], "RESCAM_RUN_JOBS": "false",
               "RESCAM_DATA_ROOT": str(Path(tmp) / "data")}
        with open(Path(tmp) / "server.log", "w") as log:
            server = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--port", str(port),
                                       "--registry", str(registry)], cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
            try:
                subprocess.run([sys.executable, "-c", "import time, urllib.request as u\n"
                                f"for _ in range(300):\n  try: u.urlopen('http://127.0.0.1:{port}/readyz'); break\n"
                                "  except OSError: time.sleep(0.2)"], check=True)
                print(json.dumps(load_across_deploys(port, args.seconds)), flush=True)
                for who, token in TOKENS.items():
                    command = [st, "run", f"http://127.0.0.1:{port}/openapi.json", "-c", "not_a_server_error",
                               "-n", str(args.examples), "--phases", "examples,coverage,fuzzing,stateful",
                               "--continue-on-failure", "--seed", "1"]
                    if token:
                        command += ["-H", f"Authorization: Bearer {token}"]
                    out = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=tmp)  # its cache too
                    summary = re.search(r"(\d+) generated, (.*)", out.stdout)
                    print(json.dumps({"token": who, "exit": out.returncode,
                                      "cases": int(summary.group(1)) if summary else None,
                                      "outcome": summary.group(2).strip() if summary else out.stdout[-500:]}),
                          flush=True)
            finally:
                server.terminate()
                server.wait(10)
        errors = [line for line in (Path(tmp) / "server.log").read_text().splitlines() if " 500 " in line]
        print(json.dumps({"server_log_500_lines": len(errors), "first": errors[:3]}), flush=True)
        print(json.dumps(kill_during_training_and_deploys(Path(tmp), env)))


if __name__ == "__main__":
    main()
