"""int8 export (training.quantize): the shipped model keeps its labels, CAMs and boxes in int8 and
serves; an int8 model that misses its parity bounds is refused, never registered as int8."""

import json
import shutil

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from app.card import ModelCard
from app.main import create_app
from app.registry import CARD_FILE, MODEL_FILE, Registry
from app.settings import Settings
from tests.conftest import shape_jpeg
from training import quantize, synthetic
from training.cli import main, shipped_model_dir
from training.export import export_checkpoint


def quantized_ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node} & {"QuantizeLinear", "DequantizeLinear"}


def normalised_shapes(card: ModelCard, split: str, count: int):
    images, labels, _ = synthetic.generate(7, split, count, card.preprocessing.crop)
    return card.preprocessing.normalize(images), labels


def test_cam_correlation_and_box_iou_are_one_for_the_same_maps_and_lower_for_moved_ones():
    rng = np.random.default_rng(0)
    cams = rng.random((4, 3, 8, 8)).astype(np.float32)
    cams[:, :, 2:5, 2:5] += 4  # one clear blob per map
    assert np.allclose(quantize.cam_correlation(cams[:, 0], cams[:, 0]), 1.0)
    moved = np.roll(cams, 3, axis=-1)
    assert (quantize.cam_correlation(cams[:, 0], moved[:, 0]) < 0.5).all()
    rule = ModelCard.load(shipped_model_dir() / CARD_FILE).box_rule
    classes = np.zeros(4, dtype=int)
    assert np.allclose(quantize.box_ious(cams, cams, classes, rule, 32), 1.0)
    assert (quantize.box_ious(cams, moved, classes, rule, 32) < 0.5).all()


def test_the_shipped_model_in_int8_keeps_its_labels_cams_and_boxes_and_serves(tmp_path):
    """Static int8 (QDQ) of the shipped model, calibrated on shapes, measured on 400 others: the
    bounds with a wide margin (measured 99.9% / 0.9998 / 1.0 on 1,000), a third of the bytes."""
    shipped = shipped_model_dir()
    card = ModelCard.load(shipped / CARD_FILE)
    calibration, _ = normalised_shapes(card, "train", 128)
    val, labels = normalised_shapes(card, "val", 400)
    int8 = tmp_path / "int8.onnx"
    quantize.quantize_int8(shipped / MODEL_FILE, int8, calibration)
    assert quantized_ops(int8) == {"QuantizeLinear", "DequantizeLinear"}
    figures = quantize.parity(shipped / MODEL_FILE, int8, val, labels, card.box_rule)
    assert figures["top1_agreement"] >= 0.99 and figures["cam_correlation"] >= 0.99
    assert figures["box_iou_median"] >= 0.9 and figures["int8"]["top1"] >= 0.97
    assert figures["int8"]["bytes"] < 0.5 * figures["float32"]["bytes"]

    # served as any version: the same labels on a shape, the answer saying int8
    export = tmp_path / "export"
    shutil.copytree(shipped, export, ignore=shutil.ignore_patterns("report"))
    shutil.copy(int8, export / MODEL_FILE)
    raw = json.loads((export / CARD_FILE).read_text())
    (export / CARD_FILE).write_text(json.dumps({**raw, "precision": "int8", "quantization": {"kept": True, **figures}}))
    registry = Registry(tmp_path / "registry")
    registry.deploy("default", registry.register("default", export))
    settings = Settings(registry=tmp_path / "registry", providers=["CPUExecutionProvider"], max_batch_wait_ms=1)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/predict", content=shape_jpeg(index=3, size=96), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"]["precision"] == "int8"
        top = body["results"][0]["predictions"][0]
        assert top["label"] == synthetic.CLASSES[synthetic.render(7, "test", 3, 96).label]
        assert top["boxes"] and body["results"][0]["open_world"]["unknown"] is not None
        listed = client.get("/v1/models/default/versions").json()["versions"]
        assert [v["precision"] for v in listed] == ["int8"]


@pytest.fixture
def impossible_bounds(monkeypatch):
    """Bounds no model meets (agreement above 100%): every int8 model is refused."""
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)


def test_an_int8_model_that_misses_its_bounds_is_refused_and_nothing_is_left(tiny_model, tmp_path, impossible_bounds):
    with pytest.raises(quantize.QuantizationError, match="top1_agreement"):
        export_checkpoint(tiny_model.checkpoint, tmp_path / "strict", "int8")
    assert not list((tmp_path / "strict").glob(".int8-*"))
    assert not (tmp_path / "strict" / CARD_FILE).exists()

    out = export_checkpoint(tiny_model.checkpoint, tmp_path / "fallback", "int8", int8_fallback=True)
    card = json.loads((out / CARD_FILE).read_text())
    assert card["precision"] == "float32" and not card["quantization"]["kept"]
    assert "top1_agreement" in card["quantization"]["refused"] and card["quantization"]["int8"]["bytes"] > 0
    assert not quantized_ops(out / MODEL_FILE) and not list(out.glob(".int8-*"))
    assert ModelCard.load(out / CARD_FILE).precision == "float32"


def test_rescam_export_int8_refusal_is_one_line_and_exit_1(tiny_model, tmp_path, impossible_bounds, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export", str(tiny_model.checkpoint), "--out", str(tmp_path / "x"), "--precision", "int8"])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rescam: error: the int8 model differs from float32: top1_agreement")
