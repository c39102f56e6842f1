import json

import pytest
import torch

from training.config import TrainConfig, recipe
from training.train import load_checkpoint_model, train

TINY = dict(architecture="resnet8", image_size=24, synthetic_train=256, synthetic_val=32, batch_size=32, warmup_steps=0,
            lr=0.05, log_every=1, channels_last=False)


def test_a_short_run_lowers_the_loss(tmp_path):
    # 64 images seen 15 times: the network memorises them, so the training loss must fall.
    cfg = recipe("demo", **{**TINY, "synthetic_train": 64}, epochs=15, schedule="step")
    train(cfg, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["event"] == "step"]
    assert {"step", "epoch", "loss", "lr", "images_per_s", "eta_s"} <= steps[0].keys()
    first = sum(r["loss"] for r in steps[:4]) / 4
    last = sum(r["loss"] for r in steps[-4:]) / 4
    assert last < first * 0.75, (first, last)
    done = lines[-1]
    assert done["event"] == "done" and {"top1", "top5", "gt_known_loc", "max_box_acc"} <= done.keys()


def test_stopped_and_resumed_equals_uninterrupted(tmp_path):
    cfg = recipe("demo", **TINY, epochs=2)
    whole = train(cfg, tmp_path / "whole")
    train(cfg.replace(stop_after_epochs=1), tmp_path / "split")
    first_half = torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=False)
    assert first_half["epoch"] == 1
    train(cfg, tmp_path / "split", resume=True)
    a, _ = load_checkpoint_model(whole)
    b, ckpt = load_checkpoint_model(tmp_path / "split" / "checkpoint.pth")
    assert ckpt["epoch"] == 2
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_init_from_a_torchvision_style_state_dict_replaces_the_head(tmp_path):
    from models import create_model

    source = create_model("resnet8", num_classes=3)
    torch.save(source.state_dict(), tmp_path / "init.pth")
    cfg = recipe("demo", **{**TINY, "lr": 0.0}, epochs=1, init=str(tmp_path / "init.pth"), weight_decay=0.0)
    model, ckpt = load_checkpoint_model(train(cfg, tmp_path / "run"))
    assert model.fc.out_features == 8
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)  # lr 0: the body is the init


def test_recipe_model_options_stay_with_the_recipes_model():
    assert recipe("demo").architecture_kwargs == {"stem_stride": 2}
    assert recipe("demo", architecture="resnet50").architecture_kwargs == {}  # resnet50 has no CIFAR stem to stride
    strided = recipe("demo", architecture="resnet8", architecture_kwargs={"stem_stride": 2})
    assert strided.architecture_kwargs == {"stem_stride": 2}


def test_shuffled_tiles_keep_each_images_tiles_and_move_them():
    import torch

    from training.outliers import shuffled_tiles

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    y = shuffled_tiles(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(y, x)
    for i in range(2):  # the same pixels, per image and channel; each 2x2 tile whole
        assert torch.equal(y[i].flatten(1).sort(1).values, x[i].flatten(1).sort(1).values)
        tiles = {tuple(x[i, :, r:r + 2, c:c + 2].flatten().tolist()) for r in range(0, 8, 2) for c in range(0, 8, 2)}
        assert all(tuple(y[i, :, r:r + 2, c:c + 2].flatten().tolist()) in tiles for r in range(0, 8, 2)
                   for c in range(0, 8, 2))


def test_shape_outliers_are_synthetic_shapes_of_no_training_split_normalised_as_the_batch():
    import numpy as np
    import torch

    from training import synthetic
    from training.outliers import Outliers

    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    batch = torch.zeros(16, 3, 24, 24)
    drawn = Outliers("shapes", "none", False, mean, std)(batch, torch.Generator().manual_seed(0))
    assert drawn.shape == (4, 3, 24, 24)  # a quarter of the batch, at its size
    pool = synthetic.generate(0, "outliers", 2048, 24)[0]
    raw = ((drawn * std + mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert all(any(np.array_equal(r, p) for p in pool) for r in raw)  # each one a drawn image of the pool
    train = synthetic.generate(0, "train", 64, 24)[0]
    assert not any(np.array_equal(p, t) for p in pool[:64] for t in train)  # not the training split
    mixed = Outliers("mixed", "none", False, mean, std)(batch, torch.Generator().manual_seed(0))
    assert mixed.shape == (4, 3, 24, 24) and torch.equal(mixed[:2], torch.zeros(2, 3, 24, 24))  # tiles of zeros
    assert mixed[2:].abs().sum() > 0
    with pytest.raises(ValueError, match="unknown outlier source"):
        Outliers("noise", "none", False, mean, std)


def test_logit_norm_scales_each_row_to_one_over_tau():
    import torch

    from training.train import logit_normalised

    z = torch.tensor([[3.0, 4.0], [0.0, 10.0]])
    assert torch.allclose(logit_normalised(z, 0.5).norm(dim=1), torch.tensor([2.0, 2.0]))
    assert torch.equal(logit_normalised(z, 0.0), z)


def test_cutmix_pastes_one_rectangle_of_another_image_and_says_how_much_is_still_its_own():
    from training.train import cutmix

    generator = torch.Generator().manual_seed(1)
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(6)])  # image i is all i
    for _ in range(20):
        out, donor, own = cutmix(x, generator)
        for i in range(6):
            from_donor = (out[i] == donor[i].item()).all(dim=0)
            assert ((out[i] == i) | from_donor).all()  # every pixel is its own or its donor's
            if donor[i] != i:
                rows, cols = from_donor.nonzero(as_tuple=True)
                rectangle = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) if len(rows) else 0
                assert rectangle == len(rows)  # one solid rectangle
                assert own == pytest.approx(1 - len(rows) / 256)


def test_a_model_of_the_synthetic_shapes_is_never_taught_that_shapes_are_unknown(tmp_path, caplog):
    import logging

    from training.outliers import outlier_source
    from training.train import train

    cfg = recipe("demo", **TINY, epochs=1, outlier_exposure=0.5, outliers="shapes")
    assert outlier_source(cfg, ["circle", "square"]) == "tiles"
    folder = cfg.replace(data="folder:/x")
    assert outlier_source(folder, ["bird", "fish"]) == "shapes"
    assert outlier_source(folder, ["bird", "star"]) == "tiles"  # a class of its own is one of the shapes
    assert outlier_source(folder.replace(outliers="mixed"), ["bird", "fish"]) == "mixed"
    with caplog.at_level(logging.INFO, logger="training.outliers"):
        train(cfg, tmp_path)
    assert "outliers: tiles, not shapes" in caplog.text


def test_the_architectures_older_setting_names_still_read():
    # run configs, job specs and scripts written while the settings were called model/model_kwargs
    old = recipe("demo", model="resnet32", model_kwargs={"widths": [8, 16, 32]})
    assert (old.architecture, old.architecture_kwargs) == ("resnet32", {"widths": [8, 16, 32]})
    saved = TrainConfig.from_dict({"model": "resnet44", "model_kwargs": {}, "lr": 0.05})
    assert (saved.architecture, saved.architecture_kwargs, saved.lr) == ("resnet44", {}, 0.05)
    assert TrainConfig.from_dict({"model": "resnet44", "architecture": "resnet56"}).architecture == "resnet56"


def test_a_budget_far_larger_than_the_plan_trains_a_wider_network_for_more_steps(tmp_path):
    # 2 steps planned and a 60 s budget: on any CPU, even one busy with other work, a step of resnet8
    # at 24 px, four times as wide, takes well under the 7.5 s that would leave no room, so the plan
    # grows (a GPU's case); the steps stay bounded by MAX_STEPS_SCALE
    cfg = recipe("auto", **{**TINY, "synthetic_train": 64}, data="synthetic", epochs=1, min_steps=2,
                 time_budget_s=60, box_loss=0.0, test_time_flip=False)
    train(cfg.replace(stop_after_epochs=1), tmp_path)
    train(cfg, tmp_path, resume=True)  # a resumed run builds the network its plan chose
    model, ckpt = load_checkpoint_model(tmp_path / "checkpoint.pth")
    first = model.stages[0][0].conv1.out_channels
    assert first in (32, 64) and ckpt["model_kwargs"]["widths"] == [first, 2 * first, 4 * first]
    assert ckpt["plan"]["architecture"] == f"resnet8 {first}/{2 * first}/{4 * first}"
    assert 8 <= ckpt["step"] <= 100 and ckpt["finished"]
    plans = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [p["steps"] for p in plans if p["event"] == "plan"][0] == ckpt["step"]


def test_a_run_asked_to_start_from_the_shipped_shapes_model_where_the_network_is_the_same(tmp_path):
    from training.weights import SHAPES_WEIGHTS, load_state

    shipped = load_state(str(SHAPES_WEIGHTS))
    cfg = recipe("auto", **{**TINY, "architecture": "resnet20", "synthetic_train": 64, "lr": 0.0}, data="synthetic",
                 epochs=1, min_steps=0, weight_decay=0.0, time_budget_s=None, fill_budget=False, box_loss=0.0,
                 test_time_flip=False, shapes_start=True)
    model, ckpt = load_checkpoint_model(train(cfg, tmp_path / "run"))
    assert ckpt["plan"]["start"] == "the shapes model's weights"
    torch.testing.assert_close(model.layer3[2].conv2.weight, shipped["layer3.2.conv2.weight"])  # lr 0
    assert not torch.equal(model.fc.weight, shipped["fc.weight"])  # the head's classes are shapes: fresh


def test_a_network_the_shapes_weights_do_not_fit_is_left_as_built():
    from models import create_model
    from training.weights import start_from_shapes

    for net in (create_model("resnet20", num_classes=8, widths=[8, 16, 32]), create_model("resnet8", num_classes=8)):
        before = {k: v.clone() for k, v in net.state_dict().items()}
        assert not start_from_shapes(net)
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
