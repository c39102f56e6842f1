"""int8 export (training.quantize): the shipped model keeps its labels, CAMs and boxes in int8 and
serves; an int8 model that flips only near-ties is kept with float32 answering them; an int8 model
that misses its parity bounds is refused, never registered as int8."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from app.card import CardError, ModelCard
from app.engine import Engine
from app.main import create_app
from app.registry import CARD_FILE, FLOAT32_FILE, MODEL_FILE, Registry, RegistryError
from app.settings import Settings
from app.triton import export_triton
from tests.conftest import shape_jpeg
from training import quantize, synthetic
from training.cli import main, shipped_model_dir
from training.compare import evaluate_onnx
from training.export import export_checkpoint
from training.job import near_tie_share


def quantized_ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node} & {"QuantizeLinear", "DequantizeLinear"}


def normalised_shapes(card: ModelCard, split: str, count: int):
    images, labels, _ = synthetic.generate(7, split, count, card.preprocessing.crop)
    return card.preprocessing.normalize(images), labels


def shipped_in_int8(tmp_path):
    """The shipped model's folder, its int8 graph (calibrated on 128 shapes), 400 other shapes
    normalised, and the parity figures of the int8 graph on them."""
    shipped = shipped_model_dir()
    card = ModelCard.load(shipped / CARD_FILE)
    calibration, _ = normalised_shapes(card, "train", 128)
    val, labels = normalised_shapes(card, "val", 400)
    int8 = tmp_path / "int8.onnx"
    quantize.quantize_int8(shipped / MODEL_FILE, int8, calibration)
    return shipped, int8, val, quantize.parity(shipped / MODEL_FILE, int8, val, labels, card.box_rule)


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
    shipped, int8, val, figures = shipped_in_int8(tmp_path)
    assert quantized_ops(int8) == {"QuantizeLinear", "DequantizeLinear"}
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


# --- near-ties answered in float32 -----------------------------------------------------------------

def flip_near_ties(logits: np.ndarray, share: float) -> np.ndarray:
    """int8-like logits: the `share` of images nearest a tie get their top two swapped, every other
    image a small shift that keeps its top-1."""
    gap = quantize.top2_gap(logits)
    out = logits + 0.01 * np.sign(np.sin(np.arange(logits.size))).reshape(logits.shape) * gap[:, None] / 4
    near = np.argsort(gap)[: int(share * len(logits))]
    order = np.argsort(logits[near], axis=1)
    first, second = order[:, -1], order[:, -2]
    out[near, first], out[near, second] = logits[near, second], logits[near, first]
    return out


def test_the_near_tie_margin_sends_every_flipped_image_to_float32_and_few_others():
    # the held-out agreement misses a fold's flipped images whose gaps exceed every other fold's
    # flipped gaps: more than 40 of 4,000 only where the 41 largest share a fold (P = 10^-40)
    logits_f = np.random.default_rng().normal(0, 3, size=(4000, 8)).astype(np.float32)
    logits_q = flip_near_ties(logits_f, 0.04)
    flipped = logits_f.argmax(1) != logits_q.argmax(1)
    assert flipped.mean() == pytest.approx(0.04)
    margin = quantize.fallback_margin(logits_f, logits_q)
    assert (quantize.served_top1(logits_f, logits_q, margin) == logits_f.argmax(1)).all()
    assert (quantize.top2_gap(logits_q) <= margin).mean() < 0.1  # the near-ties, not the whole set
    assert quantize.fallback_margin(logits_f, logits_f) == -1.0  # nothing flipped: nothing sent

    figures = {"float32": {"ms_per_image": 2.0}, "int8": {"ms_per_image": 1.0}}
    near = quantize.near_tie_fallback(logits_f, logits_q, figures)
    assert near["kept"] and near["top1_agreement"] == 1.0 and near["top1_agreement_held_out"] >= 0.99
    assert near["cost"] == pytest.approx(0.5 + near["share"] / 1, abs=1e-3)
    slow = quantize.near_tie_fallback(logits_f, logits_q, {"float32": {"ms_per_image": 2.0},
                                                           "int8": {"ms_per_image": 1.9}})
    assert not slow["kept"] and "of float32's time" in slow["refused"]


@pytest.fixture
def int8_flips_near_ties(monkeypatch):
    """The int8 graph's logits, as parity reads them, with the nearest 10% of ties flipped (a
    real-object model's int8 flips 2.5-5%, BENCHMARKS.md), and bounds that its fallback meets on 400
    images whatever the CPU: agreement 95% (its held-out agreement is at least int8's own 90% plus
    all but a handful of the flips) and any cost (int8 is slower than float32 on some CPUs)."""
    real = quantize._outputs

    def outputs(path, x, batch=100):
        logits, cams, foreground = real(path, x, batch)
        int8 = Path(path).name in ("int8.onnx", f".int8-{MODEL_FILE}")  # this file's, the export's
        return (flip_near_ties(logits, 0.1) if int8 else logits), cams, foreground

    monkeypatch.setattr(quantize, "_outputs", outputs)
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 0.95)
    monkeypatch.setattr(quantize, "MAX_FALLBACK_COST", 10.0)


def test_an_int8_model_that_flips_near_ties_is_kept_with_float32_answering_them(tmp_path, int8_flips_near_ties):
    shipped, int8, val, figures = shipped_in_int8(tmp_path)
    assert figures["top1_agreement"] < 0.95
    near = figures["near_ties"]
    assert near["kept"] and near["file"] == FLOAT32_FILE and near["top1_agreement"] == 1.0
    assert near["top1_agreement_held_out"] >= 0.95

    # a version holding both graphs: the engine answers near-ties with float32, the rest with int8
    export = tmp_path / "export"
    shutil.copytree(shipped, export, ignore=shutil.ignore_patterns("report"))
    shutil.copy(shipped / MODEL_FILE, export / FLOAT32_FILE)
    shutil.copy(int8, export / MODEL_FILE)
    raw = json.loads((export / CARD_FILE).read_text())
    wide = {**figures, "near_ties": {**near, "margin": 1.0}}  # a margin that some of these shapes fall under
    (export / CARD_FILE).write_text(json.dumps({**raw, "precision": "int8", "quantization": {"kept": True, **wide}}))
    version_card = ModelCard.load(export / CARD_FILE)
    assert version_card.near_tie_margin == 1.0
    engine = Engine.load(export, version_card, "default", 1, ["CPUExecutionProvider"])
    x = np.concatenate([val[:64], 0.3 * val[64:128]])  # fainter shapes: nearer ties
    before = engine.near_tie_images  # its warm-up's
    served = engine.run(x)
    alone = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})
             for p in (export / MODEL_FILE, export / FLOAT32_FILE)]
    names = [o.name for o in engine.session.get_outputs()]
    q8, f32 = (dict(zip(names, a)) for a in alone)
    near_rows = quantize.top2_gap(q8["logits"]) <= 1.0
    assert 0 < near_rows.sum() < len(x) and engine.near_tie_images - before == near_rows.sum()
    assert np.array_equal(served.logits[near_rows], f32["logits"][near_rows])
    assert np.array_equal(served.cams[near_rows], f32["cam"][near_rows])
    assert np.array_equal(served.features[near_rows], f32["features"][near_rows])
    assert np.array_equal(served.logits[~near_rows], q8["logits"][~near_rows])
    assert np.array_equal(served.cams[~near_rows], q8["cam"][~near_rows])

    # registered and served: the answer says int8; without its float32 graph the version is broken
    registry = Registry(tmp_path / "registry")
    registry.deploy("default", registry.register("default", export))
    assert (tmp_path / "registry" / "default" / "1" / FLOAT32_FILE).is_file()
    settings = Settings(registry=tmp_path / "registry", providers=["CPUExecutionProvider"], max_batch_wait_ms=1)
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/predict", content=shape_jpeg(index=3, size=96), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        assert r.json()["model"]["precision"] == "int8"
    # Triton cannot send a batch's near-ties to another graph: its repository gets the float32 one
    triton = export_triton(registry, "default", 1, tmp_path / "triton")
    assert not quantized_ops(triton / "1" / MODEL_FILE)
    (tmp_path / "registry" / "default" / "1" / FLOAT32_FILE).unlink()
    with pytest.raises(RegistryError, match=f"answers near-ties with {FLOAT32_FILE}, which is missing"):
        registry.card("default", 1)


def test_a_near_tie_margin_that_is_not_a_number_is_a_broken_card():
    raw = json.loads((shipped_model_dir() / CARD_FILE).read_text())
    card = ModelCard.from_dict({**raw, "precision": "int8",
                                "quantization": {"kept": True, "near_ties": {"kept": True, "margin": "wide"}}})
    with pytest.raises(CardError, match="near_ties.margin is not a number"):
        _ = card.near_tie_margin
    assert ModelCard.from_dict(raw).near_tie_margin is None


def test_an_int8_export_that_flips_near_ties_keeps_its_float32_graph_and_is_measured_as_served(
        tiny_model, tmp_path, int8_flips_near_ties, monkeypatch):
    """Only the plumbing here (the bounds on CAMs and boxes are the shipped model's test's): the
    export keeps both graphs, names the margin, fits the open world on what serves, and a float32
    export into the same folder leaves no float32 graph of the int8 one behind."""
    monkeypatch.setattr(quantize, "MIN_CAM_CORRELATION", -1.0)
    monkeypatch.setattr(quantize, "MIN_BOX_IOU", -1.0)
    out = export_checkpoint(tiny_model.checkpoint, tmp_path / "near", "int8")
    card = json.loads((out / CARD_FILE).read_text())
    near = card["quantization"]["near_ties"]
    assert card["precision"] == "int8" and near["kept"] and 0 < near["share"] < 1
    assert quantized_ops(out / MODEL_FILE) and not quantized_ops(out / FLOAT32_FILE)
    assert ModelCard.load(out / CARD_FILE).near_tie_margin == near["margin"]
    assert near_tie_share(card) == near["share"]
    served = evaluate_onnx(out, tiny_model.config, battery=False)
    assert served["images"] == tiny_model.config.synthetic_val and 0 <= served["top1"] <= 1

    export_checkpoint(tiny_model.checkpoint, out, "float32")
    assert not (out / FLOAT32_FILE).exists() and ModelCard.load(out / CARD_FILE).near_tie_margin is None
