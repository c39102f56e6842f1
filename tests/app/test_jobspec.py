"""The training-job contract round-trips through JSON and says what is wrong with a bad file."""

import json

import pytest

from app.jobspec import JobFileError, JobResult, JobSpec


def test_spec_and_result_round_trip(tmp_path):
    spec = JobSpec(run_dir=str(tmp_path / "run"), data="folder:/d", boxes_csv="/d/boxes.csv", recipe="auto",
                   settings={"epochs": 3, "milestones": [1, 2]}, init="/w.pth", resume=True, registry="/r",
                   model_name="m", gate_margin=0.05)
    assert JobSpec.load(spec.save()) == spec
    result = JobResult("ck.pth", True, 12.5, {"top1": 0.9}, ["a", "b"], "/export", 3, 2, {"top1": 0.8},
                       {"passed": True, "deployable": True, "reason": "as good as the live model"})
    assert JobResult.load(result.save(tmp_path / "run")) == result
    assert json.loads((tmp_path / "run" / "result.json").read_text())["format"] == "rescam.job-result/1"


def test_bad_job_files_say_why(tmp_path):
    with pytest.raises(JobFileError, match="result.json"):
        JobResult.load(tmp_path / "result.json")
    with pytest.raises(JobFileError, match="lacks"):
        JobResult.from_json(json.dumps({"checkpoint": "x"}))
    with pytest.raises(JobFileError, match="not JSON"):
        JobSpec.from_json("{")
    # keys a newer writer added are ignored, so an older reader still reads the file
    assert JobSpec.from_json(json.dumps({"run_dir": "r", "added_later": 1})) == JobSpec(run_dir="r")
