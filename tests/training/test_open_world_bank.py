"""The KNN bank: its k (one neighbour per 1,000 training images, at most 5, fewer over a share) and
the made-up outliers beside it for a model of other data than the shapes."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import scoring
from training import synthetic
from training.config import TrainConfig
from training.data import preprocessing
from training.open_world import IMAGES_PER_NEIGHBOUR, K, battery, made_up_outliers, neighbours


def test_k_grows_with_the_training_set_and_scales_with_the_share_the_bank_holds():
    assert (K, IMAGES_PER_NEIGHBOUR) == (5, 1000)
    assert neighbours(1149, 1149) == 1  # the digits: every image in the bank, a small set
    assert neighbours(2400, 2400) == 2  # the real-object composites
    assert neighbours(5000, 5000) == 5
    assert neighbours(5000, 100_000) == 1  # the shipped model: a twentieth of its images
    assert neighbours(5000, 6000) == 4
    assert neighbours(512, 100) == 1  # never fewer than 1
    assert neighbours(1, 10**9) == 1


def tiles_of(image: np.ndarray, grid: int = 4) -> list[bytes]:
    side = image.shape[0] // grid
    return sorted(image[r * side:(r + 1) * side, c * side:(c + 1) * side].tobytes()
                  for r in range(grid) for c in range(grid))


def test_made_up_outliers_are_new_shapes_and_shuffled_tiles_of_the_training_images():
    cfg = TrainConfig(data="folder:/x", image_size=32, seed=3)
    prep = preprocessing(cfg)
    training = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    out = made_up_outliers(cfg, ["cat", "dog"], prep, training, 9)
    assert out.shape == (9, 32, 32, 3) and out.dtype == np.uint8
    drawn = synthetic.generate(3, "outliers", 4, 64, workers=1)[0]
    np.testing.assert_array_equal(out[:4], np.stack([prep.crop_resize(Image.fromarray(a))[0] for a in drawn]))
    own = [tiles_of(im) for im in training]
    for tiled in out[4:]:
        assert tiles_of(tiled) in own and not any((tiled == im).all() for im in training)


@pytest.mark.parametrize("data, classes", [("synthetic", list(synthetic.CLASSES)), ("folder:/x", ["star", "moon"])])
def test_a_model_whose_classes_may_be_the_shapes_gets_no_made_up_outliers(data, classes):
    cfg = TrainConfig(data=data, image_size=32)
    images = np.zeros((4, 32, 32, 3), np.uint8)
    assert made_up_outliers(cfg, classes, preprocessing(cfg), images, 100) is None


@pytest.mark.parametrize("data, classes, shapes_measured", [
    ("synthetic", list(synthetic.CLASSES), False), ("folder:/x", ["star", "moon"], False),
    ("folder:/x", ["cat", "dog"], True)])
def test_the_battery_holds_the_shapes_only_where_they_cannot_be_the_models_own(data, classes, shapes_measured):
    cfg = TrainConfig(data=data, image_size=32)
    sets = dict(battery(cfg, classes, preprocessing(cfg), size=4))
    assert ("shapes" in sets) is shapes_measured
    assert {"noise", "colour fields"} <= set(sets) and all(len(images) == 4 for images in sets.values())


def test_a_model_of_other_data_serves_with_the_outliers_on_its_card_and_in_its_file(tmp_path):
    from app.jobspec import JobSpec
    from training.job import run_job

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 12)):
        for label, level in (("dark", 60), ("light", 190)):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(n):
                image = np.clip(rng.normal(level, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(tmp_path / "data" / split / label / f"{i}.png")
    spec = JobSpec(run_dir=str(tmp_path / "run"), data=f"folder:{tmp_path / 'data'}", settings={
        "architecture": "resnet8", "image_size": 32, "max_steps": 3, "warmup_steps": 0, "test_time_flip": False})
    export = Path(run_job(spec).export)
    ood = json.loads((export / "card.json").read_text())["ood"]
    assert ood["outliers"] == 2000 and ood["outlier_kinds"] == ["shapes", "shuffled tiles"]
    assert ood["fit_images"] == 48 and "shapes" in ood["battery"]
    scorer = scoring.Scorer.load(export, 1.0, scoring.OodSpec.from_card(ood))
    assert scorer.outliers.shape == (2000, ood["features"]) and "2000 made-up outliers" in scorer.method
    assert 0 < ood["threshold"] and ood["val_above_threshold"] >= 0
