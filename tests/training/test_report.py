"""A version's report: the files it writes, what they hold, and that it travels with the version."""

import json
import re
import shutil

import pytest

from app.registry import Registry
from training.report import write_report


@pytest.fixture(scope="module")
def reported(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reported") / "export"
    shutil.copytree(tiny_model.export, folder)
    write_report(folder, metrics_jsonl=tiny_model.root / "run" / "metrics.jsonl")
    return folder


def test_the_report_holds_every_figure_as_a_file(reported, tiny_model):
    report = reported / "report"
    for name in ("index.html", "curves.png", "confusion.png", "localization.png", "report.json"):
        assert (report / name).stat().st_size > 1000, name
    figures = json.loads((report / "report.json").read_text())
    assert figures["labels"] == tiny_model.card["labels"]
    assert sum(map(sum, figures["confusion"])) == figures["images"] == 64  # every validation image, once
    loc = figures["localization"]
    assert loc["images_with_boxes"] == 64 and len(loc["gt_known_by_threshold"]) == 19
    assert len(loc["box_area_ratio_by_threshold"]) == 19
    groups = {g["group"] for g in figures["gallery"]}
    assert {"best", "worst"} <= groups
    for item in figures["gallery"]:
        assert (report / item["file"]).is_file() and (report / item["image"]).is_file()
        assert item["said"] in tiny_model.card["labels"] and len(item["true_box"]) == 4


def test_the_page_opens_offline_and_the_card_links_it(reported):
    html = (reported / "report" / "index.html").read_text()
    sources = re.findall(r"src='([^']*)'", html)
    assert len(sources) >= 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in html and "Confusion" in html and "Localization" in html
    assert json.loads((reported / "card.json").read_text())["report"] == "report/index.html"


def test_the_report_travels_with_the_version_and_can_be_rewritten(reported, tmp_path):
    registry = Registry(tmp_path / "registry")
    version = registry.register("default", reported)
    folder = registry.version_dir("default", version)
    curves = json.loads((folder / "report" / "curves.json").read_text())
    assert curves["step"] and curves["val_step"]
    (folder / "report" / "confusion.png").unlink()
    write_report(folder)  # `rescam report N`: no run folder, the kept curves
    assert (folder / "report" / "confusion.png").is_file()
    assert json.loads((folder / "report" / "curves.json").read_text()) == curves
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_boxes_fitted_in_training_are_shown_beside_calibration_alone_on_the_same_images(tiny_model, tmp_path):
    from training.compare import evaluate_onnx
    from training.config import TrainConfig
    from training.report import Baseline

    folder = tmp_path / "export"
    shutil.copytree(tiny_model.export, folder)
    card = json.loads((folder / "card.json").read_text())
    assert card["boxes_fitted"] == 512  # the demo recipe fits every training image's box
    cfg = TrainConfig.from_dict(card["training_config"])
    live = evaluate_onnx(tiny_model.export, cfg)  # the same images the report scores
    unfitted = Baseline("v1 (live)", {**live, "gt_known_loc": 0.125, "box_rule": "threshold:0.35"},
                        {**card, "boxes_fitted": 0})
    write_report(folder, metrics_jsonl=tiny_model.root / "run" / "metrics.jsonl", baseline=unfitted)
    figures = json.loads((folder / "report" / "report.json").read_text())
    compared = figures["box_training"]
    assert compared["baseline"] == {"name": "v1 (live)", "boxes_fitted": 0, "gt_known_loc": 0.125,
                                    "box_rule": "threshold:0.35"}
    assert compared["this"]["gt_known_loc"] == figures["localization"]["gt_known_loc"]
    assert compared["images"] == 64
    page = (folder / "report" / "index.html").read_text()
    assert "CAMs fitted to 512 boxes" in page and "boxes only calibrated the rule" in page and "12.5%" in page

    # a baseline that fitted boxes too is no comparison of the two: nothing is drawn
    write_report(folder, baseline=Baseline("v1 (live)", live, card))
    assert json.loads((folder / "report" / "report.json").read_text())["box_training"] is None
