"""Image folders (with a boxes CSV and an unreadable file), CIFAR's python format, and the recipes."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import recipe
from training.data import FolderSet, decoded, load_data
from training.synthetic import render
from training.train import train


def make_folder(root, per_class=6):
    rows = ["path,label,x0,y0,x1,y1"]
    for label, kind in ((0, "circle"), (1, "square")):
        (root / kind).mkdir(parents=True)
        found = 0
        for i in range(400):
            s = render(5, "train", i, 40)
            if s.label != label:
                continue
            name = f"{kind}/{found}.png"
            Image.fromarray(s.image).resize((80, 60)).save(root / name)  # not square: the crop matters
            x0, y0, x1, y1 = s.box
            rows.append(f"{name},{kind},{x0 * 2},{y0 * 1.5},{x1 * 2},{y1 * 1.5}")
            found += 1
            if found == per_class:
                break
    (root / "circle" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")


def test_image_folder_with_boxes_skips_unreadable_files(tmp_path, caplog):
    make_folder(tmp_path / "data")
    cfg = recipe("demo", data=f"folder:{tmp_path / 'data'}", boxes_csv=str(tmp_path / "data" / "boxes.csv"),
                 image_size=32, val_fraction=0.3, architecture="resnet8", batch_size=4, epochs=1, warmup_steps=0)
    data = load_data(cfg)
    assert data.classes == ["circle", "square"]
    assert len(data.train) + len(data.val) == 12  # the broken file is skipped...
    assert "broken.jpg" in caplog.text  # ...and reported
    image, label, box, window = data.val[0]
    assert image.shape == (3, 32, 32) and window.tolist()[:2] == [80, 60]  # original size kept
    assert np.isfinite(box.numpy()).all()
    ckpt = train(cfg.replace(data=cfg.data), tmp_path / "run")
    import torch

    metrics = torch.load(ckpt, weights_only=False)["metrics"]
    assert metrics["images_with_boxes"] == len(data.val) and "gt_known_loc" in metrics


def test_cifar_python_format_and_the_papers_split(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {"data": rng.integers(0, 256, size=(20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    cfg = recipe("paper-cifar", data=f"cifar10:{root}", architecture="resnet8")
    data = load_data(cfg)
    assert len(data.classes) == 10 and (len(data.train), len(data.val)) == (90, 10)  # 45k/5k at full size
    image, label, _, _ = data.train[0]
    assert image.shape == (3, 32, 32)
    run = train(cfg.replace(epochs=1, batch_size=30, max_steps=2), tmp_path / "run")
    assert run.exists()


def test_named_recipes_hold_the_papers_numbers():
    cifar = recipe("paper-cifar")
    assert (cifar.batch_size, cifar.lr, cifar.weight_decay, cifar.momentum) == (128, 0.1, 1e-4, 0.9)
    assert cifar.milestones == (32_000, 48_000) and cifar.max_steps == 64_000 and cifar.augment == "cifar"
    imagenet = recipe("paper-imagenet")
    assert (imagenet.batch_size, imagenet.lr, imagenet.schedule, imagenet.image_size) == (256, 0.1, "plateau", 224)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("fast-and-furious")


def test_cifar_augmentation_pads_crops_and_flips():
    import torch

    from training.data import cifar_augment

    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = cifar_augment(x, g)
    assert out.shape == x.shape and not torch.equal(out, x)
    # every output row is a (possibly flipped, shifted, zero-padded) piece of an input row
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


@pytest.mark.parametrize("augment", ["shift-scale", "shift-scale-colour"])
def test_batch_augmentations_read_files_as_evaluation_does_never_mirrored(tmp_path, augment):
    # a mirrored 2 or 7 is no digit: only the "imagenet" augmentation (Sec. 3.4) flips, at the file
    (tmp_path / "a").mkdir(parents=True)
    picture = np.zeros((32, 32, 3), dtype=np.uint8)
    picture[4:28, 2:10] = 255  # a bar on the left
    Image.fromarray(picture).save(tmp_path / "a" / "bar.png")
    cfg = recipe("auto", data=f"folder:{tmp_path}", image_size=32, augment=augment, val_fraction=0.0)
    train_set = load_data(cfg).train
    views = [train_set[0][0].numpy() for _ in range(20)]
    assert all(np.array_equal(v, picture.transpose(2, 0, 1)) for v in views)


def test_colour_augmentation_permutes_channels_and_inverts_some_images():
    import torch

    from training.data import shift_scale_augment

    x = torch.zeros(64, 3, 16, 16)
    x[:, 0], x[:, 1], x[:, 2] = 1.0, 2.0, 3.0  # each channel flat: zoom and shift keep the centre's value
    out = shift_scale_augment(x, torch.Generator().manual_seed(0), jitter=0.0, colour=True)
    centres = out[:, :, 8, 8]
    assert torch.allclose(centres.abs().sort(dim=1).values, torch.tensor([[1.0, 2.0, 3.0]]).expand(64, 3))
    orders = {tuple(c.abs().round().tolist()) for c in centres}
    signs = {bool((c < 0).all()) for c in centres}
    assert len(orders) > 1 and signs == {True, False}


def test_decoded_folder_items_are_the_files_items_and_a_large_set_stays_on_disk(tmp_path):
    make_folder(tmp_path / "data")
    cfg = recipe("auto", data=f"folder:{tmp_path / 'data'}", boxes_csv=str(tmp_path / "data" / "boxes.csv"),
                 image_size=32, val_fraction=0.3)
    files = load_data(cfg).train
    held = decoded(files, 32)
    assert held is not files and len(held) == len(files)
    for i in range(len(files)):
        for a, b in zip(files[i], held[i]):
            assert torch.equal(a, b) or (torch.isnan(a).all() and torch.isnan(b).all())
    assert decoded(files, 32, max_bytes=len(files) * 3 * 32 * 32 - 1) is files
    # per-image augmentation gives other pixels at every epoch: nothing to keep
    assert decoded(load_data(cfg.replace(augment="imagenet")).train, 32) is not held
    assert isinstance(decoded(load_data(cfg.replace(augment="imagenet")).train, 32), FolderSet)


def _cutout(mode: str) -> Image.Image:
    """A red disc on a transparent (black underneath, as clip art stores it) or 16-bit background."""
    yy, xx = np.mgrid[:60, :80]
    disc = (yy - 30) ** 2 + (xx - 50) ** 2 < 18**2
    if mode == "I;16":
        return Image.fromarray(np.where(disc, 40000, 3000).astype(np.uint16))
    rgba = np.zeros((60, 80, 4), dtype=np.uint8)
    rgba[disc] = (220, 30, 30, 255)
    im = Image.fromarray(rgba, "RGBA")
    return {"RGBA": im, "LA": im.convert("LA"), "P": im.convert("P")}[mode]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16"])
def test_folder_images_are_read_as_the_service_decodes_them(tmp_path, mode):
    # a cut-out's transparency is white where the service answers, so it must be white in training
    from app.imaging import decode
    from training.data import preprocessing

    (tmp_path / "disc").mkdir()
    path = tmp_path / "disc" / "cutout.png"
    _cutout(mode).save(path, **({"transparency": 0} if mode == "P" else {}))
    cfg = recipe("auto", data=f"folder:{tmp_path}", image_size=32, val_fraction=0.0)
    trained_on = load_data(cfg).train[0][0].numpy().transpose(1, 2, 0)
    served, _ = preprocessing(cfg).crop_resize(decode(path.read_bytes(), 10**7, 1024).image)
    assert np.array_equal(trained_on, served)
    assert served[0, 0].tolist() == ([255, 255, 255] if mode != "I;16" else [0, 0, 0])  # the background
