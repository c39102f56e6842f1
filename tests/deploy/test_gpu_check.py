"""The prepared GPU check (scripts/gpu-check.sh) runs every phase here, at toy sizes on the CPU,
so that it is ready when a GPU machine is: one JSON with every phase's figures."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_every_phase_and_writes_its_figures(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "RESCAM_GPU_PIECES": str(tmp_path / "no-pieces")}
    done = subprocess.run(["bash", "scripts/gpu-check.sh", "--tiny"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())["phases"]
    assert report["machine"]["tiny"] and report["machine"]["device"] == "cpu"
    assert report["train"]["eager"]["images_per_s"] > 0 and report["train"]["eager"]["channels_last"]
    assert set(report["export"]) == {"float32", "float16"}
    for precision in ("float32", "float16"):
        figures = report["agreement"][precision]
        assert figures["images"] == 32 and figures["labels_equal"] == 1.0
        assert figures["cam_correlation_min"] >= 0.999
    serve = report["serve"]
    runs = [v for k, v in serve.items() if k != "batching_on_over_off"]
    assert len(runs) == 6
    for run in runs:
        assert run["provider"] == "CPUExecutionProvider"
        assert [r["concurrency"] for r in run["results"]] == [1, 4]
        assert all(r["requests"] > 0 and r["p50_ms"] > 0 for r in run["results"])
    assert set(serve["batching_on_over_off"]) == {"1", "4"}
    assert (tmp_path / "gpu-check.log").read_text().strip().endswith("gpu-check.json")
