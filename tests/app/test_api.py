"""The HTTP API through the ASGI app, with a real model in a real registry."""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.cam import BoxRule
from app.main import create_app
from app.settings import Settings
from tests.conftest import image_bytes, shape_jpeg


@pytest.fixture(scope="module")
def client(tiny_model):
    settings = Settings(registry=tiny_model.registry, max_batch_wait_ms=1, max_upload_bytes=2_000_000,
                        max_pixels=5_000_000, providers=["CPUExecutionProvider"])
    with TestClient(create_app(settings)) as c:
        yield c


def test_health_ready_and_metrics(client, tiny_model):
    health = client.get("/healthz").json()
    assert health["status"] == "alive" and health["provider"] == "CPUExecutionProvider"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["version"] == tiny_model.version
    client.post("/v1/predict", content=shape_jpeg(), headers={"content-type": "image/jpeg"})
    text = client.get("/metrics").text
    assert 'rescam_model_version{model="default",provider="CPUExecutionProvider"} 1.0' in text
    assert 'rescam_http_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert "rescam_batch_size_bucket" in text and "rescam_cam_seconds_bucket" in text


def test_predict_multipart_answers_labels_boxes_and_overlay_urls(client, tiny_model):
    r = client.post("/v1/predict?top_k=3", files={"file": ("shape.jpg", shape_jpeg(), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "default", "version": tiny_model.version, "architecture": "resnet8",
                             "precision": "float32", "test_time_flip": False, "test_time_zoom": False}
    [result] = body["results"]
    assert (result["width"], result["height"]) == (64, 64)
    preds = result["predictions"]
    assert len(preds) == 3 and preds[0]["score"] >= preds[1]["score"] >= preds[2]["score"]
    assert abs(sum(p["score"] for p in preds)) <= 1.0 + 1e-6
    for p in preds:
        [box] = p["boxes"]
        assert 0 <= box["x0"] < box["x1"] <= 64 and 0 <= box["y0"] < box["y1"] <= 64
        overlay = client.get(p["cam_url"])
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(overlay.content)).size == (64, 64)
    assert {"decode_ms", "queue_ms", "inference_ms", "cam_ms"} <= result["timings"].keys()


def test_several_files_and_raw_body(client):
    files = [("file", (f"{i}.jpg", shape_jpeg(index=i), "image/jpeg")) for i in range(3)]
    body = client.post("/v1/predict", files=files).json()
    assert [r["filename"] for r in body["results"]] == ["0.jpg", "1.jpg", "2.jpg"]
    raw = client.post("/v1/predict", content=image_bytes("PNG"), headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["results"][0]["format"] == "PNG"


def test_cam_of_any_label_by_name_or_index_and_formats(client):
    pid = client.post("/v1/predict?top_k=1", content=shape_jpeg(), headers={"content-type": "image/jpeg"}).json()["id"]
    base = f"/v1/predictions/{pid}/cam"
    by_name = client.get(base, params={"label": "star"})
    by_index = client.get(base, params={"label": 3})
    assert by_name.status_code == 200 and by_name.content == by_index.content
    assert client.get(base, params={"label": "circle"}).content != by_name.content
    for fmt, media in (("jpeg", "image/jpeg"), ("webp", "image/webp"), ("heatmap.png", "image/png")):
        r = client.get(base, params={"label": "star", "format": fmt})
        assert r.headers["content-type"] == media and Image.open(io.BytesIO(r.content)).size == (64, 64)
    enlarged = client.get(base, params={"label": "star", "min_side": 256})
    assert Image.open(io.BytesIO(enlarged.content)).size == (256, 256)
    capped = client.get(base, params={"label": "star", "min_side": 256, "max_side": 100})
    assert Image.open(io.BytesIO(capped.content)).size == (100, 100)
    heat = np.load(io.BytesIO(client.get(base, params={"label": "star", "format": "npy"}).content))
    assert heat.shape == (64, 64) and heat.min() >= 0 and heat.max() == pytest.approx(1)
    assert client.get(base, params={"label": "unicorn"}).status_code == 404
    assert client.get(f"/v1/predictions/{'0' * 32}/cam", params={"label": 0}).status_code == 404


def test_models_list_and_card(client, tiny_model):
    index = client.get("/v1/models").json()
    assert index["default"] == "default" and [m["name"] for m in index["models"]] == ["default"]
    assert index["models"][0]["state"] == "serving" and index["models"][0]["labels"][0] == "circle"
    listing = client.get("/v1/models/default/versions").json()
    assert listing["deployed"] == tiny_model.version and listing["state"] == "serving"
    assert listing["versions"][0]["serving"] is True
    card = client.get(f"/v1/models/default/versions/{tiny_model.version}").json()["card"]
    assert card["labels"][0] == "circle"
    assert client.get("/v1/models/default/versions/99").status_code == 404


def test_open_inference_protocol_v2(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/default").json()
    assert meta["inputs"][0]["shape"] == [-1, 3, 32, 32]
    x = np.zeros((2, 3, 32, 32), dtype=np.float32)
    r = client.post("/v2/models/default/infer", json={"inputs": [
        {"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}],
        "outputs": [{"name": "logits"}]})
    assert r.status_code == 200, r.text
    [out] = r.json()["outputs"]
    assert out["name"] == "logits" and out["shape"] == [2, 8] and len(out["data"]) == 16
    bad = client.post("/v2/models/default/infer", json={"inputs": [
        {"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}]})
    assert bad.status_code == 400 and "shape" in bad.json()["error"]
    assert client.get("/v2/models/other").status_code == 404


def test_a_v2_batch_runs_through_the_images_batcher_and_answers_as_its_rows_would(client):
    import re

    def images_batched() -> float:
        return float(re.search(r"^rescam_batch_size_sum (\S+)$", client.get("/metrics").text, re.M).group(1))

    def logits(x: np.ndarray) -> np.ndarray:
        r = client.post("/v2/models/default/infer", json={"inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "logits"}, {"name": "unknown"}]})
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["unknown"]["shape"] == [len(x)]
        return np.array(out["logits"]["data"], dtype=np.float32).reshape(out["logits"]["shape"])

    x = np.random.default_rng(7).normal(size=(3, 3, 32, 32)).astype(np.float32)
    before = images_batched()
    together = logits(x)
    assert images_batched() - before == 3  # each row went through the one inference thread's batcher
    alone = np.concatenate([logits(x[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)
    assert len({tuple(np.round(row, 3)) for row in together}) == 3  # three images, three answers


def test_default_box_rule_is_the_cards_calibrated_rule(client, tiny_model):
    calibrated = BoxRule.parse(tiny_model.card["cam"]["rule"])  # training chose it on 64 boxed images
    default = client.post("/v1/predict?top_k=8", content=shape_jpeg(), headers={"content-type": "image/jpeg"}).json()
    assert default["box_rule"]["rule"] == str(calibrated)
    on_cam = calibrated.name == "threshold" and not calibrated.on_foreground
    assert default["cam_threshold"] == (calibrated.value if on_cam else None)
    assert default["box_rule"]["source"] == "calibrated on 64 boxed validation images"
    assert default["box_rule"]["map"] == calibrated.source
    asked, higher = (client.post(f"/v1/predict?top_k=8&threshold={t}", content=shape_jpeg(),
                                 headers={"content-type": "image/jpeg"}).json() for t in (0.05, 0.5))
    assert asked["cam_threshold"] == 0.05 and asked["box_rule"] == {"rule": "threshold:0.05", "name": "threshold",
                                                                   "value": 0.05, "map": "cam", "source": "request"}
    area = [sum((b["x1"] - b["x0"]) * (b["y1"] - b["y0"]) for p in a["results"][0]["predictions"] for b in p["boxes"])
            for a in (higher, asked)]
    assert area[1] >= area[0]  # a lower threshold keeps more of every CAM


def test_a_request_may_name_a_box_rule(client):
    r = client.post("/v1/predict?top_k=3&box_rule=mass:0.5", content=shape_jpeg(),
                    headers={"content-type": "image/jpeg"}).json()
    assert r["cam_threshold"] is None and r["box_rule"]["name"] == "mass" and r["box_rule"]["value"] == 0.5
    boxes = [b for p in r["results"][0]["predictions"] for b in p["boxes"]]
    assert boxes and all(0 < b["threshold"] <= 1 for b in boxes)  # each box says where its map was cut
    for bad in ("mass:2", "median", "mass"):
        answer = client.post(f"/v1/predict?box_rule={bad}", content=shape_jpeg(),
                             headers={"content-type": "image/jpeg"})
        assert answer.status_code == 422 and "rule" in answer.json()["error"], answer.text
    both = client.post("/v1/predict?box_rule=otsu&threshold=0.3", content=shape_jpeg(),
                       headers={"content-type": "image/jpeg"})
    assert both.status_code == 422
