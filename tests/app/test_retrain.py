"""Retrain and redeploy through the HTTP API: data sets, jobs, the promotion gate, cancel,
failure, restart and resume, and the uploads that must be refused."""

import io
import json
import random
import shutil
import stat
import time
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.registry import Registry
from app.settings import Settings
from tests.conftest import shape_jpeg
from training.synthetic import CLASSES, render

TOKEN = "retrain-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL_JOB = {"recipe": "demo", "architecture": "resnet8", "image_size": 32, "batch_size": 16, "epochs": 4,
             "options": {"val_fraction": 0.3, "warmup_steps": 0, "lr": 0.05}}
CLASS_COLOURS = ((230, 40, 40), (40, 80, 240), (40, 200, 60), (240, 220, 40))
# the default recipe (auto: size from the images, augmentation, best epoch kept), kept short: its
# floor of 60 steps or 20 epochs, whichever is more. The budget is a cap that never binds: the steps
# are the test's to assert (120 s cut a plan of 140 steps to 59 on a machine busy with other work)
AUTO_JOB = {"architecture": "resnet8", "batch_size": 32,
            "options": {"epochs": 20, "min_steps": 60, "time_budget_s": 1200}}


def dataset_zip(per_class=24, classes=("circle", "square"), top="shapes", val_per_class=0, boxes=False,
                shuffle_labels=False, coloured=False) -> bytes:
    """Synthetic shapes as an uploaded data set: `<class>/<i>.png`, or train/ and val/ folders when
    val_per_class > 0; boxes.csv with each shape's exact box; labels drawn at random (each image's
    folder independent of its shape) with shuffle_labels. coloured: each class's shapes in a colour
    of their own, which a small model learns in a few dozen steps (from a few hundred images, shape
    alone takes it far longer: it memorises the images first)."""
    buf = io.BytesIO()
    rng = random.Random(5)
    want = {"train": per_class, "val": val_per_class}
    counts = {(split, c): 0 for split in want for c in classes}
    rows = ["path,label,x0,y0,x1,y1"]
    with zipfile.ZipFile(buf, "w") as z:
        i = 0
        while any(counts[(split, c)] < want[split] for split, c in counts):
            s = render(11, "train", i, 32)
            i += 1
            name = CLASSES[s.label]
            split = next((sp for sp in want if (sp, name) in counts and counts[(sp, name)] < want[sp]), None)
            if split is None:
                continue
            folder = rng.choice(classes) if shuffle_labels else name
            image = s.image.copy()
            if coloured:
                image[s.mask] = CLASS_COLOURS[classes.index(name) % len(CLASS_COLOURS)]
            png = io.BytesIO()
            Image.fromarray(image).save(png, "PNG")
            path = f"{split}/{folder}/{i}.png" if val_per_class else f"{folder}/{i}.png"
            z.writestr(f"{top}/{path}", png.getvalue())
            rows.append(f"{path},{folder},{','.join(str(v) for v in s.box)}")
            counts[(split, name)] += 1
        z.writestr(f"{top}/README.txt", "not an image: skipped")
        if boxes:
            z.writestr(f"{top}/boxes.csv", "\n".join(rows) + "\n")
    return buf.getvalue()


@pytest.fixture
def env(tiny_model, tmp_path):
    shutil.copytree(tiny_model.registry, tmp_path / "registry")
    settings = Settings(registry=tmp_path / "registry", data_root=tmp_path / "data", admin_token=TOKEN,
                        registry_poll_s=0.2)
    return Registry(tmp_path / "registry"), settings


def wait_for(client, job_id, states, timeout=240):
    deadline, seen_progress = time.time() + timeout, False
    while time.time() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        seen_progress |= bool(job["progress"] and job["progress"].get("step"))
        if job["state"] in states:
            return job, seen_progress
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} stayed {job['state']}: {client.get(f'/v1/jobs/{job_id}/logs', headers=AUTH).text[-2000:]}")


def predict_version(client):
    r = client.post("/v1/predict?top_k=2", content=shape_jpeg(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["model"]["version"], [p["label"] for p in body["results"][0]["predictions"]]


def test_new_labels_make_a_new_model_and_replacing_a_models_labels_needs_force(env):
    """A data set whose labels no model has becomes a new model, live beside the shapes model
    with no force (issue 24); naming the shapes model makes it a new task for that model, registered
    but not deployed (issue 12), and force replaces its labels, which the audit log says."""
    registry, settings = env
    with TestClient(create_app(settings)) as c:
        upload = c.post("/v1/datasets?name=shapes", content=dataset_zip(60, val_per_class=50, boxes=True,
                                                                            coloured=True),
                        headers={**AUTH, "content-type": "application/zip"})
        assert upload.status_code == 201, upload.text
        described = upload.json()
        assert described["classes"] == {"circle": 110, "square": 110} and described["boxed_images"] == 220
        assert described["splits"]["val"]["classes"]["circle"] == {"images": 50, "boxed": 50}
        job = c.post("/v1/jobs", json={"dataset": "shapes", **AUTO_JOB}, headers=AUTH)
        assert job.status_code == 202 and job.json()["request"]["model"] == "shapes", job.text
        done, progressed = wait_for(c, job.json()["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        assert progressed and done["progress"]["step"] == done["progress"]["total_steps"]
        plan = done["progress"]["plan"]  # the plan, shown in the job before and after timing the loop
        assert plan["steps"] == done["progress"]["total_steps"] and plan["image_size"] == 32, plan
        assert plan["augment"].startswith("shift-scale") and plan["steps"] >= 60  # the floor, or 20 epochs if more
        result = done["result"]
        assert result["model"] == "shapes" and result["version"] == 1 and result["deployed"], result
        assert registry.deployed("shapes") == 1 and registry.deployed("default") == 1
        assert result["metrics"]["images"] == 100 and result["metrics"]["images_with_boxes"] == 100
        m = result["metrics"]  # the rule calibrated on its 100 boxes: the best fixed or per-image one
        assert m["gt_known_loc"] == max(m["max_box_acc"], *m["gt_known_by_rule"].values()), m
        both = c.post("/v1/models/shapes/predict?top_k=2", content=shape_jpeg(), headers={"content-type": "image/jpeg"})
        assert both.json()["model"]["name"] == "shapes" and both.json()["model"]["version"] == 1
        assert {p["label"] for p in both.json()["results"][0]["predictions"]} == {"circle", "square"}
        assert predict_version(c)[0] == 1 and len(c.get("/v1/models").json()["models"]) == 2  # the shapes model

        replace = {"dataset": "shapes", "model": "default", **AUTO_JOB}
        refused, _ = wait_for(c, c.post("/v1/jobs", json=replace, headers=AUTH).json()["id"], ("succeeded", "failed"))
        result = refused["result"]
        assert result["model"] == "default" and result["version"] == 2 and not result["deployed"], result
        assert "new task" in result["not_deployed_because"] and result["gate"]["deployable"], result
        assert registry.deployed("default") == 1

        forced, _ = wait_for(c, c.post("/v1/jobs", json={**replace, "force": True}, headers=AUTH).json()["id"],
                             ("succeeded", "failed"))
        assert forced["result"]["deployed"] and registry.deployed("default") == 3, forced["result"]
        entry = registry.audit_log("default")[-1]
        assert entry["forced"] is True and entry["job"] == forced["id"] and "new task" in entry["reason"]
        version, labels = predict_version(c)
        assert version == 3 and set(labels) == {"circle", "square"}
        card = c.get("/v1/models/default/versions/3").json()
        assert card["card"]["cam"]["rule"] == forced["result"]["metrics"]["box_rule"]
        assert "registered" not in c.get(f"/v1/jobs/{forced['id']}/logs", headers=AUTH).text  # the runner registers
        assert c.post("/v1/models/default/rollback", headers=AUTH).status_code == 200
        assert predict_version(c)[0] == 1


def test_a_model_at_chance_never_deploys_even_forced(env):
    """Labels drawn at random: nothing to learn, so validation top-1 stays at chance, and no force
    puts such a model live."""
    registry, settings = env
    with TestClient(create_app(settings)) as c:
        c.post("/v1/datasets?name=noise", content=dataset_zip(40, val_per_class=60, shuffle_labels=True,
                                                                       coloured=True),
               headers={**AUTH, "content-type": "application/zip"})
        done, _ = wait_for(c, c.post("/v1/jobs", json={"dataset": "noise", **SMALL_JOB, "force": True},
                                     headers=AUTH).json()["id"], ("succeeded", "failed"))
        result = done["result"]  # its labels are no model's: the first version of a new model, "noise"
        assert result["model"] == "noise" and not result["deployed"] and not result["gate"]["deployable"], result
        assert "does not clear chance" in result["not_deployed_because"]
        assert registry.versions("noise") == [1] and registry.deployed("noise") is None
        assert registry.deployed("default") == 1 and registry.versions("default") == [1]
        assert c.get("/v1/models/noise/versions").json()["state"] == "undeployed"


def test_cancelled_and_failed_jobs_leave_the_registry_untouched(env):
    registry, settings = env
    before = (registry.versions("default"), registry.deployed("default"))
    with TestClient(create_app(settings)) as c:
        c.post("/v1/datasets?name=shapes", content=dataset_zip(), headers={**AUTH, "content-type": "application/zip"})
        long = c.post("/v1/jobs", json={"dataset": "shapes", **SMALL_JOB, "epochs": 500}, headers=AUTH).json()
        deadline = time.time() + 60
        while not (c.get(f"/v1/jobs/{long['id']}", headers=AUTH).json()["progress"] or {}).get("step"):
            assert time.time() < deadline
            time.sleep(0.2)
        asked = c.delete(f"/v1/jobs/{long['id']}", headers=AUTH)
        assert asked.status_code == 200 and asked.json()["state"] in ("cancelling", "cancelled")
        assert asked.json()["error"] is None  # cancelling is a state, not an error
        cancelled, _ = wait_for(c, long["id"], ("cancelled", "succeeded", "failed"), timeout=60)
        assert cancelled["state"] == "cancelled"
        broken = {**SMALL_JOB, "options": {"model_kwargs": {"shortcut": "Z"}}}
        failed, _ = wait_for(c, c.post("/v1/jobs", json={"dataset": "shapes", **broken}, headers=AUTH).json()["id"],
                             ("succeeded", "failed"))
        assert failed["state"] == "failed" and "shortcut" in failed["error"]
        assert c.get("/readyz").status_code == 200  # the API stayed up and answering throughout
    assert (registry.versions("default"), registry.deployed("default")) == before


def test_restart_marks_the_job_interrupted_and_resume_finishes_it(env):
    registry, settings = env
    with TestClient(create_app(settings)) as c:
        c.post("/v1/datasets?name=shapes", content=dataset_zip(), headers={**AUTH, "content-type": "application/zip"})
        job = c.post("/v1/jobs", json={"dataset": "shapes", **SMALL_JOB, "epochs": 40}, headers=AUTH).json()
        deadline = time.time() + 120
        while (c.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()["progress"] or {}).get("epoch", 0) < 2:
            assert time.time() < deadline
            time.sleep(0.2)
    # the service stopped mid-job; a new one finds it interrupted
    with TestClient(create_app(settings)) as c:
        assert c.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()["state"] == "interrupted"
        assert c.post(f"/v1/jobs/{job['id']}/resume", headers=AUTH).status_code == 202
        done, _ = wait_for(c, job["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        assert "resumed from" in c.get(f"/v1/jobs/{job['id']}/logs", headers=AUTH).text


def zip_with(name, data=b"x", link=False, compress=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo(name)
        info.compress_type = compress
        if link:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize("name, body, status", [
    ("slip", zip_with("../../evil/x.png"), 400),
    ("absolute", zip_with("/etc/cron.d/x.png"), 400),
    ("link", zip_with("cls/link.png", b"/etc/passwd", link=True), 400),
    ("bomb", zip_with("cls/bomb.png", b"\0" * 50_000_000, compress=zipfile.ZIP_DEFLATED), 413),
    ("notzip", b"PK this is no zip", 400),
    ("empty", zip_with("notes.txt"), 422),
])
def test_dangerous_uploads_are_refused_and_leave_nothing(env, name, body, status):
    registry, settings = env
    with TestClient(create_app(settings)) as c:
        r = c.post(f"/v1/datasets?name={name}", content=body, headers={**AUTH, "content-type": "application/zip"})
        assert r.status_code == status, r.text
        assert r.json()["error"]
    datasets = settings.data_root / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []
    assert not (settings.data_root.parent / "evil").exists()


def test_admin_and_predict_tokens(env):
    registry, settings = env
    with TestClient(create_app(Settings(**{**dict(settings), "predict_token": "p-token"}))) as c:
        assert c.post("/v1/jobs", json={"dataset": "synthetic"}).status_code == 401
        assert c.post("/v1/jobs", json={"dataset": "synthetic"}, headers={"Authorization": "Bearer bad"}).status_code == 403
        assert c.post("/v1/datasets?name=x", content=b"", headers={"content-type": "application/zip"}).status_code == 401
        assert c.get("/v1/jobs", headers=AUTH).json() == {"jobs": []}
        data = {"content": shape_jpeg(), "headers": {"content-type": "image/jpeg"}}
        assert c.post("/v1/predict", **data).status_code == 401
        ok = c.post("/v1/predict", content=shape_jpeg(), headers={"content-type": "image/jpeg",
                                                                   "Authorization": "Bearer p-token"})
        assert ok.status_code == 200
        assert c.post("/v1/jobs", json={"dataset": "../etc"}, headers=AUTH).status_code == 422


def test_feedback_samples_grow_a_dataset(env):
    registry, settings = env
    with TestClient(create_app(settings)) as c:
        c.post("/v1/datasets?name=shapes", content=dataset_zip(per_class=2), headers={**AUTH, "content-type": "application/zip"})
        r = c.post("/v1/datasets/shapes/samples?label=star", content=shape_jpeg(), headers={**AUTH, "content-type": "image/jpeg"})
        assert r.status_code == 201, r.text
        assert c.get("/v1/datasets/shapes", headers=AUTH).json()["classes"] == {"circle": 2, "square": 2, "star": 1}
        bad = c.post("/v1/datasets/shapes/samples?label=../x", content=shape_jpeg(), headers={**AUTH, "content-type": "image/jpeg"})
        assert bad.status_code == 422
        assert c.post("/v1/datasets/shapes/samples?label=star", content=b"junk",
                      headers={**AUTH, "content-type": "image/jpeg"}).status_code == 415


def test_samples_carry_boxes_and_splits_and_bad_ones_write_nothing(env):
    registry, settings = env
    jpeg = {**AUTH, "content-type": "image/jpeg"}  # shape_jpeg() is 64x64
    with TestClient(create_app(settings)) as c:
        c.post("/v1/datasets?name=split", content=dataset_zip(per_class=2, val_per_class=2, boxes=True),
               headers={**AUTH, "content-type": "application/zip"})
        before = c.get("/v1/datasets/split", headers=AUTH).json()
        assert before["splits"]["val"]["boxed_images"] == 4
        ok = c.post("/v1/datasets/split/samples?label=star&split=val&x0=10&y0=12&x1=40.5&y1=50", content=shape_jpeg(),
                    headers=jpeg)
        assert ok.status_code == 201 and ok.json()["box"] == [10, 12, 40.5, 50], ok.text
        after = c.get("/v1/datasets/split", headers=AUTH).json()
        assert after["splits"]["val"]["classes"]["star"] == {"images": 1, "boxed": 1}
        for query, words in (("x0=10&y0=12&x1=70&y1=50", "outside the 64x64 image"),
                             ("x0=10&y0=12&x1=10&y1=50", "empty"),
                             ("x0=10&y0=12", "all of x0, y0, x1, y1"),
                             ("split=test", "split")):
            bad = c.post(f"/v1/datasets/split/samples?label=star&{query}", content=shape_jpeg(), headers=jpeg)
            assert bad.status_code == 422 and words in bad.json()["error"], (query, bad.text)
        assert c.get("/v1/datasets/split", headers=AUTH).json() == after  # nothing written
        c.post("/v1/datasets?name=flat", content=dataset_zip(per_class=2), headers={**AUTH, "content-type": "application/zip"})
        flat = c.post("/v1/datasets/flat/samples?label=star&split=val", content=shape_jpeg(), headers=jpeg)
        assert flat.status_code == 422 and "no train/val folders" in flat.json()["error"]


@pytest.mark.parametrize("row, words", [
    ("train/circle/nope.png,circle,1,1,5,5", "names no image"),
    ("{path},{label},1,1,40,5", "outside the 32x32 image"),
    ("{path},{label},5,5,5,9", "empty"),
    ("{path},square-ish,1,1,5,5", "class folder"),
    ("{path},{label},a,1,5,5", "numbers"),
    ("{path},{label},1,1,5,5\n{path},{label},2,2,6,6", "line 3: a second box"),
])
def test_a_bad_boxes_csv_row_is_named_and_nothing_is_written(env, row, words):
    registry, settings = env
    good = dataset_zip(per_class=2, val_per_class=1, boxes=True)
    with zipfile.ZipFile(io.BytesIO(good)) as z:
        text = z.read("shapes/boxes.csv").decode()
        path, label = text.splitlines()[1].split(",")[:2]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as out:
            for m in z.infolist():
                data = z.read(m)
                if m.filename.endswith("boxes.csv"):
                    lines = text.splitlines()
                    lines[1] = row.format(path=path, label=label)  # the first image's row, broken
                    data = ("\n".join(lines) + "\n").encode()
                out.writestr(m, data)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/datasets?name=bad", content=buf.getvalue(), headers={**AUTH, "content-type": "application/zip"})
        assert r.status_code == 422 and words in r.json()["error"] and "line" in r.json()["error"], r.text
    datasets = settings.data_root / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []


def test_a_separate_worker_process_runs_the_jobs(env):
    import os
    import subprocess
    import sys
    from pathlib import Path

    registry, settings = env
    api_settings = Settings(**{**dict(settings), "run_jobs": False})
    root = Path(__file__).resolve().parents[2]
    with TestClient(create_app(api_settings)) as c:
        c.post("/v1/datasets?name=shapes", content=dataset_zip(), headers={**AUTH, "content-type": "application/zip"})
        job = c.post("/v1/jobs", json={"dataset": "shapes", **SMALL_JOB, "epochs": 1}, headers=AUTH).json()
        time.sleep(1.5)
        assert c.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()["state"] == "queued"  # the API runs none
        env_vars = {**os.environ, "PYTHONPATH": str(root), "RESCAM_DATA_ROOT": str(settings.data_root)}
        worker = subprocess.Popen([sys.executable, "-m", "training.cli", "worker", "--registry", str(settings.registry)],
                                  cwd=root, env=env_vars, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            done, _ = wait_for(c, job["id"], ("succeeded", "failed"))
        finally:
            worker.terminate()
            worker.wait(20)
        assert done["state"] == "succeeded", done["error"]
        assert done["result"]["model"] == "shapes" and registry.versions("shapes") == [1]
        if done["result"]["deployed"]:  # the API follows the worker's deploy through the registry
            deadline = time.time() + 10
            while c.get("/v1/models/shapes/versions").json()["state"] != "serving":
                assert time.time() < deadline
                time.sleep(0.2)


def test_a_job_can_start_from_a_torchvision_format_file(env):
    import torch

    from models import create_model

    registry, settings = env
    (settings.data_root / "weights").mkdir(parents=True)
    torch.save(create_model("resnet8", num_classes=5).state_dict(), settings.data_root / "weights" / "tv.pth")
    with TestClient(create_app(settings)) as c:
        c.post("/v1/datasets?name=shapes", content=dataset_zip(per_class=8), headers={**AUTH, "content-type": "application/zip"})
        assert c.post("/v1/jobs", json={"dataset": "shapes", "init": "file:missing.pth"}, headers=AUTH).status_code == 404
        assert c.post("/v1/jobs", json={"dataset": "shapes", "init": "/etc/passwd"}, headers=AUTH).status_code == 422
        job = c.post("/v1/jobs", json={"dataset": "shapes", **SMALL_JOB, "epochs": 1, "init": "file:tv.pth",
                                       "deploy": False}, headers=AUTH).json()
        done, _ = wait_for(c, job["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        assert "replaced the classifier head" in c.get(f"/v1/jobs/{job['id']}/logs", headers=AUTH).text
        assert registry.deployed("default") == 1  # deploy: false


@pytest.mark.parametrize("options", [{"data": "folder:/etc"}, {"data=folder:/etc": 1}, {"init": "/tmp/w.pth"},
                                     {"device": "cuda"}, {"boxes_csv": "/etc/passwd"}])
def test_job_options_are_allow_listed(env, options):
    """Where the data, the starting weights and the device come from is the runner's to decide."""
    registry, settings = env
    with TestClient(create_app(settings.model_copy(update={"run_jobs": False}))) as c:
        r = c.post("/v1/jobs", json={"dataset": "synthetic", "options": options}, headers=AUTH)
        assert r.status_code == 422 and "options may not set" in r.json()["error"], r.json()
        assert c.get("/v1/jobs", headers=AUTH).json()["jobs"] == []


def test_a_job_spec_names_absolute_paths_whatever_the_settings_say(tiny_model, tmp_path, monkeypatch):
    """The job's process runs in its run folder: relative settings (the defaults: registry, data)
    must not be read from there."""
    from app.job_store import JobStore
    from app.jobs import JobRunner

    shutil.copytree(tiny_model.registry, tmp_path / "registry")
    (tmp_path / "data" / "datasets" / "pets").mkdir(parents=True)
    (tmp_path / "data" / "datasets" / "pets" / "boxes.csv").write_text("path,label,x0,y0,x1,y1\n")
    monkeypatch.chdir(tmp_path)
    store = JobStore(Path("data") / "jobs.sqlite")
    runner = JobRunner(store, Registry("registry"), "default", Path("data"), 1, 0.02, lambda *a, **k: None)
    job = store.create({"dataset": "pets", "init": "live", "options": {"lr": 0.01}}, Path("data") / "runs")
    spec = runner.spec_for(job)
    for path in (spec.run_dir, spec.registry, spec.data.removeprefix("folder:"), spec.boxes_csv, spec.init):
        assert Path(path).is_absolute() and Path(path).resolve().is_relative_to(tmp_path.resolve()), path
    assert spec.settings == {"lr": 0.01} and spec.model_name == "default"
    assert spec.export_precision == "float32"
    int8 = runner.spec_for(store.create({"dataset": "pets", "precision": "int8"}, Path("data") / "runs"))
    assert int8.export_precision == "int8"
    # where the weights begin: the recipe's choice unless the job names scratch or the shapes model's
    for init, settings in (("auto", {}), ("scratch", {"shapes_start": False}), ("shapes", {"shapes_start": True})):
        spec = runner.spec_for(store.create({"dataset": "pets", "init": init}, Path("data") / "runs"))
        assert spec.settings == settings and spec.init is None, init


def test_a_trainer_outlives_a_killed_service_and_its_result_is_promoted_once(env):
    """The service dies (no runner stops anything); its trainer goes on in its own process group.
    The next runner adopts it, and the result is registered and deployed once, however many runners
    (workers of the host) look."""
    from app.job_store import JobStore
    from app.jobs import JobRunner, trainer_of

    registry, settings = env
    store = JobStore(settings.data_root / "jobs.sqlite")
    deployed = []

    def runner():
        return JobRunner(store, registry, "default", settings.data_root, 1, 0.5,
                         lambda model, version, *a, **k: deployed.append(version), poll_s=0.1)

    from app.datasets import Datasets, Limits

    data = dataset_zip(40, val_per_class=30, coloured=True)  # learnt in a few steps: the gate lets force deploy it
    Datasets(settings.data_root / "datasets").import_zip("shapes", data, Limits(2**30, 10_000, 2**31))
    job = store.create({"dataset": "shapes", **SMALL_JOB, "deploy": True, "force": True}, settings.data_root / "runs")
    first = runner()
    first.tick()  # starts the trainer
    pid = store.get(job["id"])["pid"]
    del first  # the service is gone: nothing stopped the trainer
    second, third = runner(), runner()  # the restarted service's workers
    second.recover()
    third.recover()
    assert second.adopted == third.adopted == {job["id"]: pid}
    assert store.get(job["id"])["state"] == "running"
    second.tick()
    assert not second.running  # its one slot is the adopted trainer's: nothing new started
    deadline = time.time() + 240
    while store.get(job["id"])["state"] == "running":
        assert time.time() < deadline
        second.tick()
        third.tick()
        time.sleep(0.2)
    done = store.get(job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["version"] == 2 and registry.versions("default") == [1, 2]
    assert deployed == [2], done["result"]  # once, though two runners watched
    runner().recover()  # a later restart finds nothing to do
    assert deployed == [2] and store.get(job["id"])["state"] == "succeeded"
    assert not trainer_of(store.get(job["id"]))  # ended (here a zombie of this test process: nobody waited)


def test_a_result_written_while_no_service_ran_is_promoted_at_the_next_start(env):
    from app.datasets import Datasets, Limits
    from app.job_store import JobStore
    from app.jobs import JobRunner, trainer_of

    registry, settings = env
    store = JobStore(settings.data_root / "jobs.sqlite")
    deployed = []
    data = dataset_zip(40, val_per_class=30, coloured=True)
    Datasets(settings.data_root / "datasets").import_zip("shapes", data, Limits(2**30, 10_000, 2**31))
    job = store.create({"dataset": "shapes", **SMALL_JOB, "force": True}, settings.data_root / "runs")

    def runner():
        return JobRunner(store, registry, "default", settings.data_root, 1, 0.5,
                         lambda model, version, *a, **k: deployed.append(version))

    first = runner()
    first.tick()
    del first  # the service died; the trainer finishes on its own
    deadline = time.time() + 240
    while trainer_of(store.get(job["id"])):
        assert time.time() < deadline
        time.sleep(0.2)
    runner().recover()
    done = store.get(job["id"])
    assert done["state"] == "succeeded" and done["result"]["version"] == 2 and deployed == [2], done
    runner().recover()
    assert deployed == [2]


def test_a_misspelt_job_field_is_named_not_ignored(env):
    registry, settings = env
    with TestClient(create_app(settings.model_copy(update={"run_jobs": False}))) as c:
        r = c.post("/v1/jobs", json={"dataset": "synthetic", "settings": {"box_loss": 1.0}}, headers=AUTH)
        assert r.status_code == 422 and "settings" in r.text, r.text
        r = c.post("/v1/jobs", json={"dataset": "synthetic", "precision": "int4"}, headers=AUTH)
        assert r.status_code == 422 and "precision" in r.text and "int8" in r.text, r.text
        assert c.get("/v1/jobs", headers=AUTH).json()["jobs"] == []


def test_a_jobs_progress_says_whether_its_model_was_still_learning_at_the_end(tmp_path):
    from app.jobs import read_progress

    lines = [{"event": "plan", "step": 0, "steps": 40, "architecture": "resnet20 16/32/64"},
             {"event": "epoch", "epoch": 20, "step": 40, "val_top1": 0.71},
             {"event": "done", "epoch": 20, "step": 40, "top1": 0.71, "late_gain": 0.021, "late_epochs": 4,
              "still_learning": True, "confusion": [[1]]}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    progress = read_progress(tmp_path)
    assert progress["still_learning"] is True and progress["late_gain"] == 0.021 and progress["late_epochs"] == 4
    assert progress["plan"]["architecture"] == "resnet20 16/32/64" and "confusion" not in progress


def test_a_long_jobs_progress_keeps_its_plan_hundreds_of_lines_later(tmp_path):
    """The plan is written at a run's start and again at its re-plan; a real-photo job writes
    hundreds of step and epoch lines after them, and its view must still show the re-planned one."""
    from app.jobs import read_progress

    lines = [{"event": "plan", "step": 0, "steps": 2880, "architecture": "resnet20 16/32/64"},
             {"event": "step", "epoch": 0, "step": 10, "loss": 2.0, "total_steps": 2880},
             {"event": "plan", "step": 50, "steps": 2700, "replanned": True, "architecture": "resnet20 16/32/64"}]
    for s in range(51, 2701):  # a step line every 10 steps, an epoch line every 18
        if s % 10 == 0:
            lines.append({"event": "step", "epoch": s // 18, "step": s, "loss": 1.0, "total_steps": 2700})
        if s % 18 == 0:
            lines.append({"event": "epoch", "epoch": s // 18, "step": s, "val_top1": round(s / 2700, 4)})
    assert len(lines) > 400
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    progress = read_progress(tmp_path)
    assert progress["plan"]["steps"] == 2700 and progress["plan"]["replanned"] is True  # the last plan wins
    assert progress["step"] == 2700 and progress["val_top1"] == 1.0  # and the latest lines are still read
