"""Open world: method x model x set of images of none of the model's classes, AUROC and FPR@95,
every image through the service's own steps (decode, crop and normalise as the card says, the ONNX
graph, app.scoring).

The sets (bench/realsets.py, built under --sets if absent): the embedded shapes (new ones), real
photographs (scikit-image's, whole and cropped), real-object composites (`objects`, its `test/`
and its `unseen/` objects; `other objects`, drawings of tools, electronics, people and office things
on the same photographs: an objects model's near-OOD set), handwritten digits (`digits`, its
`test/`), and uniform noise. A model's own kind of images are its in-distribution test set: the
share of them called unknown is the cost of the verdict, the others' AUROC and FPR@95 its power.

Methods: the served one (the card's: KNN at the card's k, on the version's bank of every stage's pooled
features), and for comparison softmax (MSP), max-logit, energy, KNN at k=1 on the same bank, KNN
at k=1 on the last stage's pooled features alone (what the first version of this used), and
Mahalanobis on the last stage's (class means and a shared covariance of the training images'
features; Lee et al. 2018), each thresholded at 95% TPR on the version's own validation images.

    python bench/ood.py --model default:app/default_model --model digits:REGISTRY/digits/1 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app import scoring  # noqa: E402
from app.card import ModelCard  # noqa: E402
from app.registry import CARD_FILE  # noqa: E402
from bench.realsets import build_digits, build_objects, build_other_objects, build_photos  # noqa: E402
from models import create_model  # noqa: E402
from training import synthetic  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import load_data  # noqa: E402
from training.open_world import dataset_arrays, plain, run_batches, session_outputs  # noqa: E402


def folder_images(folder: Path) -> list[Image.Image]:
    out = []
    for p in sorted(folder.rglob("*.png")):
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def sets(root: Path, shapes: int = 600) -> dict[str, list[Image.Image]]:
    if not (root / "digits" / "boxes.csv").exists():
        build_digits(root / "digits")
    if not (root / "objects" / "boxes.csv").exists():
        build_objects(root / "objects")
    if not (root / "photos").is_dir():
        build_photos(root)
    if not (root / "other-objects" / "boxes.csv").exists():
        build_other_objects(root / "other-objects")
    rng = np.random.default_rng(1)
    return {"shapes": [Image.fromarray(a) for a in synthetic.generate(0, "test", shapes, 64)[0]],
            "photographs": folder_images(root / "photos"),
            "objects": folder_images(root / "objects" / "test"),
            "unseen objects": folder_images(root / "objects" / "unseen"),
            "other objects": folder_images(root / "other-objects" / "test"),
            "digits": folder_images(root / "digits" / "test"),
            "noise": [Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)) for _ in range(200)]}


def own_sets(labels: tuple[str, ...]) -> set[str]:
    """The sets of this model's own classes."""
    if set(labels) == set(synthetic.CLASSES):
        return {"shapes"}
    if set(labels) == {str(d) for d in range(10)}:
        return {"digits"}
    if set(labels) == {"bird", "insect", "mammal", "fish", "fruit", "flower", "vehicle", "house"}:
        return {"objects", "unseen objects"}
    return set()


def mahalanobis_fit(features: np.ndarray, labels: np.ndarray):
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    precision = np.linalg.pinv(centred.T @ centred / len(centred) + 1e-6 * np.eye(features.shape[1]))

    def score(f: np.ndarray) -> np.ndarray:
        return np.min([np.einsum("nd,de,ne->n", f - m, precision, f - m) for m in means], axis=0)

    return score


def evaluate(name: str, directory: Path, images: dict[str, list[Image.Image]]) -> list[dict]:
    card = ModelCard.load(directory / CARD_FILE)
    prep = card.preprocessing
    session, names = session_outputs(directory / "model.onnx", card.near_tie_margin)
    scorer = scoring.Scorer.load(directory, card.temperature, card.ood_spec)
    cfg = TrainConfig.from_dict(card.extra["training_config"])
    data = load_data(cfg.replace(synthetic_train=min(cfg.synthetic_train, 20_000), synthetic_val=cfg.synthetic_val))

    def outputs(arrays: np.ndarray):
        return run_batches(session, names, prep.normalize(arrays))

    train_x, train_y = dataset_arrays(plain(data.train), 20_000)
    _, train_f = outputs(train_x)
    val_x, _ = dataset_arrays(data.val, 10_000)
    last = create_model(card.architecture, num_classes=len(card.labels), **card.extra["model_kwargs"]).num_features
    maha = mahalanobis_fit(train_f[:, -last:], train_y)
    last_bank = train_f[:, -last:]  # the last stage's pooled features, at unit length already
    methods = {
        "served: " + scorer.method: lambda lg, f: scorer.ood_scores(lg, f),
        "msp": lambda lg, f: -scoring.softmax(lg).max(1),
        "max-logit": lambda lg, f: -lg.max(1),
        "energy": lambda lg, f: scoring.energy(lg),
        "knn k=1, every stage": lambda lg, f: scoring.knn_distance(f, scorer.bank, 1),
        "knn k=1, last stage": lambda lg, f: scoring.knn_distance(f[:, -last:], last_bank, 1),
        "mahalanobis, last stage": lambda lg, f: maha(f[:, -last:]),
    }
    # a smaller bank is a cheaper verdict (the similarity reads the whole bank per image): the
    # same KNN on a stable random share of the served bank, at the served k and at k scaled with it
    for size in (10_000, 5_000):
        if len(scorer.bank) > size:
            small = scorer.bank[np.sort(np.random.default_rng(0).choice(len(scorer.bank), size, replace=False))]
            for k in sorted({scorer.spec.k, max(1, round(scorer.spec.k * size / len(scorer.bank)))}):
                methods[f"knn k={k}, every stage, bank {size:,}"] = (
                    lambda lg, f, small=small, k=k: scoring.knn_distance(f, small, k))
    val = outputs(val_x)
    prepared = {k: outputs(np.stack([prep.crop_resize(im)[0] for im in v])) for k, v in images.items()}
    own = own_sets(card.labels)
    rows = []
    for method, fn in methods.items():
        known = fn(*val)
        threshold = scorer.threshold if method.startswith("served") else float(np.quantile(known, scoring.TPR))
        row = {"model": name, "method": method, "val_called_unknown": round(float((known > threshold).mean()), 4)}
        for set_name, out in prepared.items():
            unknown = fn(*out)
            called = round(float((unknown > threshold).mean()), 4)
            if set_name in own:
                row[f"{set_name} (own classes): called unknown"] = called
            else:
                row[set_name] = {"auroc": round(scoring.auroc(known, unknown), 4),
                                 "fpr95": round(scoring.fpr_at_tpr(known, unknown), 4), "called_unknown": called}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME:VERSION_DIR (repeatable)")
    ap.add_argument("--sets", type=Path, default=Path("/tmp/rescam-sets"))
    ap.add_argument("--shapes", type=int, default=600, help="new shapes (the shapes model's own images) to score")
    args = ap.parse_args()
    images = sets(args.sets, args.shapes)
    for spec in args.model:
        name, _, folder = spec.partition(":")
        evaluate(name, Path(folder), images)


if __name__ == "__main__":
    main()
