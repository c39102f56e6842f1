"""The typed model card: what it reads, what it refuses, and the box rule it gives a model."""

import json

import pytest

from app.cam import DEFAULT_RULE, BoxRule
from app.card import CardError, ModelCard

BASE = {"format": "rescam.card/1", "labels": ["cat", "dog"], "cam_size": [4, 4], "architecture": "resnet20",
        "preprocessing": {"crop": 32, "resize": 36, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


def card(**changes) -> ModelCard:
    return ModelCard.from_dict({**BASE, **changes})


def test_a_card_round_trips_with_the_keys_training_wrote():
    written = {**BASE, "cam": {"rule": "threshold:0.55", "best_threshold": 0.55, "calibration_images": 40},
               "metrics": {"top1": 0.9}, "training_config": {"lr": 0.1}, "parity": {"same_top1": True}}
    c = ModelCard.from_dict(written)
    assert c.labels == ("cat", "dog") and c.preprocessing.crop == 32 and c.cam_size == (4, 4)
    again = ModelCard.from_dict(json.loads(c.to_json()))
    assert again == c and again.extra == {"training_config": {"lr": 0.1}, "parity": {"same_top1": True}}
    assert again.to_dict()["cam"] == written["cam"] and again.metrics == {"top1": 0.9}


def test_the_box_rule_the_card_gives():
    calibrated = card(cam={"rule": "threshold:0.55", "calibration_images": 40})
    assert calibrated.box_rule == BoxRule("threshold", 0.55) and calibrated.default_threshold == 0.55
    assert calibrated.rule_source == "calibrated on 40 boxed validation images"
    # an older card: its best threshold only when it was calibrated on enough boxed images
    assert card(cam={"best_threshold": 0.6}, metrics={"images_with_boxes": 500}).box_rule == BoxRule("threshold", 0.6)
    assert card(cam={"best_threshold": 0.6}, metrics={"images_with_boxes": 5}).box_rule == DEFAULT_RULE
    plain = card(cam={"best_threshold": None})
    assert plain.box_rule == DEFAULT_RULE and plain.default_threshold is None
    assert plain.rule_source.startswith("default rule")
    assert card(cam={"rule": "nonsense:7"}).box_rule == DEFAULT_RULE
    # calibration may choose a per-image rule, the default one included: it is still calibrated
    chosen = card(cam={"rule": "mass:0.5", "calibration_images": 288})
    assert chosen.box_rule == DEFAULT_RULE and chosen.rule_source == "calibrated on 288 boxed validation images"
    assert card(cam={"rule": "mass:0.5", "calibration_images": 5}).rule_source.startswith("default rule")


@pytest.mark.parametrize("changes, words", [
    ({"format": "rescam.card/2"}, "format"),
    ({"labels": []}, "no labels"),
    ({"preprocessing": None}, "preprocessing"),
    ({"cam_size": "big"}, "cam_size"),
])
def test_a_card_that_cannot_be_read_says_why(changes, words):
    with pytest.raises(CardError, match=words):
        card(**changes)


def test_loading_a_missing_or_broken_file_is_a_card_error(tmp_path):
    with pytest.raises(CardError, match="card.json"):
        ModelCard.load(tmp_path / "card.json")
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(CardError):
        ModelCard.load(tmp_path / "card.json")
