"""Where a model's boxes miss, by object size, and two ways one might fix it, measured on the
shipped shapes model and the synthetic validation set:
- MaxBoxAcc (the best fixed threshold) per object size, with the CAM of the 64 px image (the served
  one) and of the same image upsampled to larger inputs (a finer CAM grid, each object bigger);
- a threshold chosen per bin of the CAM's own spread (the share of the map above 0.3 of its
  maximum, which grows with the object), 2-fold cross-validated on the validation images.

    python bench/cam_scales.py [--model app/default_model] [--scales 64,96,128]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.cam import Geometry, boxes_from_heatmap, heatmap, iou  # noqa: E402
from app.card import ModelCard  # noqa: E402
from app.registry import CARD_FILE, WEIGHTS_FILE  # noqa: E402
from models import create_model  # noqa: E402
from training import synthetic  # noqa: E402
from training.evaluate import normalize_batch  # noqa: E402
from training.localization import THRESHOLDS, LocalizationTally  # noqa: E402
from training.weights import load_state  # noqa: E402

SIDES = ((0, 16), (16, 24), (24, 32), (32, 65))  # the longer side of the true box, pixels of 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="app/default_model", help="an exported model folder (card.json, weights.pth)")
    ap.add_argument("--scales", default="64,96,128", help="input sides the 64 px images are resized to")
    ap.add_argument("--images", type=int, default=1000)
    args = ap.parse_args()
    card = ModelCard.load(Path(args.model) / CARD_FILE)
    model = create_model(card.architecture, num_classes=len(card.labels), **card.extra.get("model_kwargs", {}))
    model.load_state_dict(load_state(str(Path(args.model) / WEIGHTS_FILE)))
    model.eval()
    prep = card.preprocessing
    size = prep.crop
    images, labels, boxes = synthetic.generate(0, "val", args.images, size)
    x = normalize_batch(torch.from_numpy(images).permute(0, 3, 1, 2), torch.tensor(prep.mean).view(1, 3, 1, 1),
                        torch.tensor(prep.std).view(1, 3, 1, 1))
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    full = Geometry.full(size, size)
    print(f"{args.model}: MaxBoxAcc (threshold) per object side; images per group: "
          + ", ".join(f"{lo}-{hi - 1} px: {((sides >= lo) & (sides < hi)).sum()}" for lo, hi in SIDES))
    groups = " | ".join(f"side {lo}-{hi - 1}" for lo, hi in SIDES)
    print(f"| input | CAM grid | top-1 | MaxBoxAcc, all | {groups} |")
    print("| --- |" + " --- |" * (3 + len(SIDES)))
    for scale in (int(s) for s in args.scales.split(",")):
        with torch.no_grad():
            xs = x if scale == size else F.interpolate(x, size=(scale, scale), mode="bilinear", align_corners=False)
            features = model.forward_features(xs)
            predicted = model.forward_head(features).argmax(1).numpy()
            cams = model.forward_cam(features).numpy()
        tallies = {"all": LocalizationTally(rules=()), **{g: LocalizationTally(rules=()) for g in SIDES}}
        for i, label in enumerate(labels):
            group = next(g for g in SIDES if g[0] <= sides[i] < g[1])
            for tally in (tallies["all"], tallies[group]):
                tally.add(cams[i, label], bool(predicted[i] == label), boxes[i], full)
        results = [t.result() for t in tallies.values()]
        cells = [f"{r['max_box_acc']:.1%} ({r['best_threshold']:g})" for r in results]
        print(f"| {scale} px | {cams.shape[-1]}x{cams.shape[-2]} | {(predicted == labels).mean():.1%} | "
              + " | ".join(cells) + " |")
        if scale == size:
            served_cams = cams
            one = f"{results[0]['best_threshold']:g}"  # every group at the single best threshold
            at_one = "; ".join(f"side {lo}-{hi - 1}: {r['gt_known_by_threshold'][one]:.1%}"
                               for (lo, hi), r in zip(SIDES, results[1:]))
    print(f"\nThe served CAM at the one threshold {one}: {at_one}")
    spread_bins(served_cams, labels, boxes, full)


def spread_bins(cams: np.ndarray, labels: np.ndarray, boxes: np.ndarray, geometry: Geometry) -> None:
    """GT-known localization when the threshold depends on how far the CAM spreads: bins of the
    spread (quantiles of the calibration half), the best threshold per bin on one half of the
    images, scored on the other half and the other way round."""
    hits = np.zeros((len(labels), len(THRESHOLDS)), dtype=bool)
    spread = np.zeros(len(labels))
    for i, label in enumerate(labels):
        heat = heatmap(cams[i, label], geometry)
        spread[i] = (heat >= 0.3).mean()
        for k, t in enumerate(THRESHOLDS):
            found = boxes_from_heatmap(heat, float(t))
            hits[i, k] = bool(found) and iou(found[0].as_list(), boxes[i]) >= 0.5
    order = np.random.default_rng(0).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2:])
    print("\n| spread bins | thresholds (fitted on all) | GT-known, 2-fold cross-validated |\n| --- | --- | --- |")
    def fit(idx: np.ndarray, bins: int) -> tuple[np.ndarray, list[int]]:
        edges = np.quantile(spread[idx], np.linspace(0, 1, bins + 1)[1:-1])
        which = np.digitize(spread[idx], edges)
        return edges, [int(hits[idx][which == b].mean(0).argmax()) for b in range(bins)]

    for bins in (1, 2, 3, 4, 6):
        scores = []
        for fit_on, score_on in (halves, halves[::-1]):
            edges, best = fit(fit_on, bins)
            which = np.digitize(spread[score_on], edges)
            scores.append(np.mean([hits[i, best[b]] for i, b in zip(score_on, which)]))
        print(f"| {bins} | {', '.join(f'{THRESHOLDS[k]:g}' for k in fit(order, bins)[1])} | {np.mean(scores):.1%} |")


if __name__ == "__main__":
    main()
