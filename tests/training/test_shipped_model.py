"""The default model the repository ships (app/default_model): what serve.sh deploys in seconds."""

import json

import numpy as np
import onnx

from app.card import ModelCard
from app.registry import CARD_FILE, MODEL_FILE, WEIGHTS_FILE
from training.cli import shipped_model_dir
from training.compare import evaluate_onnx
from training.config import TrainConfig

MAX_BYTES = 10 * 1024 * 1024


def test_the_shipped_model_is_small_and_its_card_is_the_one_inside_it():
    folder = shipped_model_dir()
    assert folder is not None, "app/default_model is missing: `rescam bootstrap --train` makes it"
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= MAX_BYTES
    card = json.loads((folder / CARD_FILE).read_text())
    inside = {e.key: e.value for e in onnx.load(str(folder / MODEL_FILE)).metadata_props}
    embedded = json.loads(inside["rescam.card"])
    after = ("parity", "report")  # measured and written after the export
    assert {k: v for k, v in card.items() if k not in after} == embedded
    assert (folder / WEIGHTS_FILE).is_file()  # `init: live` fine-tunes from it
    assert (folder / card["report"]).is_file()  # its report travels with it: the page shows v1's too


def test_the_shipped_model_reaches_its_cards_figures_through_onnx_runtime():
    """The card's figures were measured in torch at the end of training; the ONNX file, run as the
    service runs it, must give the same ones on the same validation images."""
    folder = shipped_model_dir()
    card = json.loads((folder / CARD_FILE).read_text())
    m = card["metrics"]
    # the images those figures were measured on: the first of the validation split (a synthetic image
    # is a function of its index), which a re-export may have drawn more of (bench/reexport_shipped.py)
    trained = TrainConfig.from_dict(card["training_config"]).replace(synthetic_val=m["images"])
    measured = evaluate_onnx(folder, trained)
    assert measured["images"] == m["images"]
    assert abs(measured["top1"] - m["top1"]) <= 0.005, (measured["top1"], m["top1"])
    assert measured["box_rule"] == card["cam"]["rule"]
    assert abs(measured["gt_known_loc"] - m["gt_known_loc"]) <= 0.01, (measured["gt_known_loc"], m["gt_known_loc"])
    assert np.isclose(measured["max_box_acc"], m["max_box_acc"], atol=0.01)


def test_the_shipped_model_tells_its_shapes_from_photographs_and_noise():
    """New shapes are known, the photographs scikit-image ships (and noise, and smooth colour fields)
    are not: the verdict every answer carries, computed as the service computes it. Measured: 5% of
    new shapes called unknown (the threshold keeps 95% of the validation images known), 94-100% of
    the others (BENCHMARKS.md, "Open world"); the bounds leave room for another CPU's rounding."""
    from app.scoring import Scorer
    from training import synthetic
    from training.open_world import battery, run_batches, session_outputs

    folder = shipped_model_dir()
    card = ModelCard.load(folder / CARD_FILE)
    prep = card.preprocessing
    scorer = Scorer.load(folder, card.temperature, card.ood_spec)
    session, names = session_outputs(folder / MODEL_FILE)

    def called_unknown(images: np.ndarray) -> float:
        verdicts = scorer.verdicts(*run_batches(session, names, prep.normalize(images)))
        return float(np.mean([v.unknown for v in verdicts]))

    shapes = synthetic.generate(0, "test", 400, prep.crop)[0]
    assert called_unknown(shapes) <= 0.10
    others = dict(battery(TrainConfig.from_dict(card.extra["training_config"]), list(card.labels), prep))
    assert set(others) == {"noise", "colour fields", "photographs"}
    for name, images in others.items():
        assert called_unknown(images) >= 0.85, name
    assert card.calibration["ece_after"] <= 0.02 and card.temperature is not None
