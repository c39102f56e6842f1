"""A report per trained model version: what a user looks at before deploying or rolling back.

    <export>/report/index.html        one self-contained page (the figures embedded): opens offline
    <export>/report/curves.png        training and validation loss and top-1 against steps
    <export>/report/confusion.png     the confusion matrix, counts and row-normalised
    <export>/report/localization.png  GT-known localization and the box's area against the threshold
    <export>/report/gallery/*.png     validation images (best, worst, most confused): CAM overlay,
                                      the served box (black and white) and the true box (green)
    <export>/report/images/*.png      the gallery's validation images as the model saw them, so
                                      another version can be run on the same images
    <export>/report/report.json       every figure's numbers

Written by `training.job.run_job` after export (it travels with the version into the registry)
and by `rescam report RUN_OR_VERSION`. The model is scored through ONNX Runtime, with the card's
preprocessing and box rule: the report shows what the service serves.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from app import (  # noqa: E402
    cam,
    overlay,
    scoring,  # noqa: E402
)
from app.curves import read_curves  # noqa: E402
from app.registry import CARD_FILE, REPORT_DIR  # noqa: E402

from .compare import Scored, scored_images  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .localization import IOU_NEEDED, IOUS_V2, LocalizationTally  # noqa: E402
from .open_world import mean_auroc  # noqa: E402
from .quantize import CONFIDENT  # noqa: E402

@dataclass
class Baseline:
    """Another version measured on the same validation images (a job's live version): its name,
    its figures (training.compare.evaluate_onnx) and its card."""

    name: str
    metrics: dict
    card: dict


def boxes_fitted(card: dict) -> int | None:
    """Training images whose CAM a version fitted to their box; None where its card cannot say
    (a card from before the count was kept, trained with the box-fit loss on)."""
    if "boxes_fitted" in card:
        return int(card["boxes_fitted"] or 0)
    return 0 if not (card.get("training_config") or {}).get("box_loss") else None


def box_training(card: dict, localization: dict, baseline: Baseline | None) -> dict | None:
    """Calibration alone against boxes fitted in training, where both were measured on these
    boxed images: this version's served GT-known beside the baseline's when exactly one of the two
    fitted its CAM to the boxes."""
    if baseline is None or not localization or "gt_known_loc" not in baseline.metrics:
        return None
    ours, theirs = boxes_fitted(card), boxes_fitted(baseline.card)
    if ours is None or theirs is None or (ours > 0) == (theirs > 0):
        return None
    return {"this": {"boxes_fitted": ours, "gt_known_loc": localization["gt_known_loc"],
                     "box_rule": localization["box_rule"]},
            "baseline": {"name": baseline.name, "boxes_fitted": theirs,
                         "gt_known_loc": baseline.metrics["gt_known_loc"], "box_rule": baseline.metrics.get("box_rule")},
            "images": localization["images_with_boxes"]}


CURVES_FILE = "curves.json"  # the training curves, kept so a report can be rewritten without the run
PER_GROUP = 4  # gallery images per group


def write_report(model_dir: str | Path, cfg: TrainConfig | None = None, metrics_jsonl: Path | None = None,
                 title: str | None = None, baseline: Baseline | None = None) -> Path:
    """Write model_dir/report (replacing an older one whole) and link it from model_dir's card.
    cfg: the data to score on (default: the card's training config); metrics_jsonl: the run's
    curves (default: the ones an earlier report kept); baseline: another version measured on the
    same images, drawn beside this one's localization where one of the two fitted boxes in training."""
    model_dir = Path(model_dir)
    card_path = model_dir / CARD_FILE
    card_json = json.loads(card_path.read_text())
    cfg = cfg or TrainConfig.from_dict(card_json["training_config"])
    old = model_dir / REPORT_DIR / CURVES_FILE
    curves = read_curves(metrics_jsonl) if metrics_jsonl is not None and metrics_jsonl.is_file() else \
        json.loads(old.read_text()) if old.is_file() else read_curves(None)
    staging = model_dir / f".{REPORT_DIR}-{uuid.uuid4().hex}"
    (staging / "gallery").mkdir(parents=True)
    (staging / "images").mkdir()
    try:
        figures = _build(model_dir, cfg, curves, staging, card_json, baseline)
        figures["title"] = title or f"{card_json.get('architecture')} · {card_json.get('created', '')}"
        (staging / CURVES_FILE).write_text(json.dumps(curves))
        (staging / "report.json").write_text(json.dumps(figures, indent=1))
        (staging / "index.html").write_text(_html(figures, staging))
        target = model_dir / REPORT_DIR
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if card_json.get("report") != f"{REPORT_DIR}/index.html":
        card_json["report"] = f"{REPORT_DIR}/index.html"
        tmp = card_path.with_name(f".{CARD_FILE}.tmp")
        tmp.write_text(json.dumps(card_json, indent=2) + "\n")
        os.replace(tmp, card_path)
    return model_dir / REPORT_DIR


def _build(model_dir: Path, cfg: TrainConfig, curves: dict, out: Path, card_json: dict,
           baseline: Baseline | None) -> dict[str, Any]:
    model, data, images = scored_images(model_dir, cfg, desc="report")
    card = model.card
    n = len(card.labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    tally = LocalizationTally(served=card.box_rule, foreground=model.has_foreground)
    rows = []  # per image: index, truth, prediction, its probability, the served box's IoU
    kept: dict[int, Scored] = {}
    known, right = [], []
    for s in images:
        probs, pred = s.verdict.probs, s.verdict.predicted
        known.append(s.verdict.ood_score)
        right.append((s.truth, s.logits))
        boxed = s.truth is not None and bool(np.isfinite(s.box).all())
        overlap = None
        if s.truth is not None:
            confusion[s.truth, pred] += 1
        if boxed:
            tally.add(s.cams[s.truth], pred == s.truth, s.box, s.window, s.foreground)
            found = cam.class_boxes(s.cams, [pred], s.window, s.window.image_width, s.window.image_height,
                                    card.box_rule, foreground=s.foreground)[0]
            overlap = cam.iou(found[0].as_list(), s.box) if found else 0.0
        rows.append((s.index, s.truth, pred, float(probs[pred]), overlap))
        kept[s.index] = s
    localization = tally.result()
    groups = _gallery(rows, confusion, card.labels)
    gallery = []
    for group, picks in groups.items():
        for k in picks:
            gallery.append(_gallery_item(group, kept[k], data.val[k][0].numpy().transpose(1, 2, 0), card, out))
    open_world = _open_world(model, cfg, np.array(known), right, out)
    figures = {"labels": list(card.labels), "images": len(rows), "box_rule": str(card.box_rule),
               "open_world": open_world, "precision": card.precision, "quantization": card.extra.get("quantization"),
               "metrics": {k: v for k, v in card.metrics.items() if not isinstance(v, dict)},
               "confusion": confusion.tolist(), "localization": localization, "gallery": gallery,
               "box_training": box_training(card_json, localization, baseline),
               "test_time_flip": card_json.get("test_time_flip"), "test_time_zoom": card_json.get("test_time_zoom"),
               "curves": {k: len(v) for k, v in curves.items()}}
    _plot_curves(curves, out / "curves.png")
    _plot_confusion(confusion, list(card.labels), out / "confusion.png")
    if localization:
        _plot_localization(localization, str(card.box_rule), out / "localization.png", figures["box_training"])
    return figures


def _gallery(rows: list[tuple], confusion: np.ndarray, labels: tuple[str, ...]) -> dict[str, list[int]]:
    """Validation images worth a look: the best (right, and the best box), the worst (wrong with the
    most confidence; else right with the least) and the most confused pair of classes."""
    known = [r for r in rows if r[1] is not None]
    right = [r for r in known if r[1] == r[2]]
    wrong = [r for r in known if r[1] != r[2]]
    best = sorted(right, key=lambda r: (-(r[4] if r[4] is not None else 1.0), -r[3]))[:PER_GROUP]
    worst = sorted(wrong, key=lambda r: -r[3])[:PER_GROUP] if wrong else \
        sorted(right, key=lambda r: ((r[4] if r[4] is not None else 1.0), r[3]))[:PER_GROUP]
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    groups = {"best": [r[0] for r in best], "worst": [r[0] for r in worst]}
    if off.max() > 0:
        a, b = np.unravel_index(int(off.argmax()), off.shape)
        shown = set(groups["worst"])
        pair = [r[0] for r in wrong if r[1] == a and r[2] == b and r[0] not in shown][:PER_GROUP]
        groups[f"most confused: {labels[a]} read as {labels[b]}"] = pair
    return groups


def _gallery_item(group: str, s: Scored, image: np.ndarray, card, out: Path) -> dict[str, Any]:
    """The image as the model saw it (the crop), the CAM of the predicted class over it, the served
    box and the true box, all in the crop's pixels."""
    side = image.shape[0]
    probs, pred = s.verdict.probs, s.verdict.predicted
    true_box = None
    if np.isfinite(s.box).all():
        w = s.window
        true_box = [float((s.box[0] - w.left) * side / w.width), float((s.box[1] - w.top) * side / w.height),
                    float((s.box[2] - w.left) * side / w.width), float((s.box[3] - w.top) * side / w.height)]
    drawn, box = overlay.answer_picture(Image.fromarray(image), s.cams, pred, cam.Geometry.full(side, side),
                                        card.box_rule, card.labels[pred], true_box, min_side=192,
                                        foreground=s.foreground)
    name = f"{len(list((out / 'gallery').iterdir())):02d}.png"
    drawn.save(out / "gallery" / name)
    Image.fromarray(image).save(out / "images" / name)
    served = [round(v, 1) for v in box] if box else None
    return {"group": group, "file": f"gallery/{name}", "image": f"images/{name}", "index": s.index,
            "truth": None if s.truth is None else card.labels[s.truth], "said": card.labels[pred],
            "score": round(float(probs[pred]), 4), "unknown": s.verdict.unknown, "served_box": served,
            "true_box": true_box,
            "iou": round(cam.iou(served, true_box), 3) if served and true_box else None}


def _open_world(model, cfg: TrainConfig, known: np.ndarray, rows: list, out: Path) -> dict[str, Any]:
    """The OOD scores of the validation images against the battery's (histograms, AUROC, FPR@95)
    and the reliability diagram before and after the temperature."""
    scorer = model.scorer
    battery, scores = model.battery(cfg, known)
    _plot_ood(known, scores, battery, scorer, out / "ood.png")
    labelled = [(t, lg) for t, lg in rows if t is not None]
    result = {"method": scorer.method, "threshold": scorer.threshold, "calibrated": scorer.calibrated,
              "temperature": scorer.temperature, "battery": battery, "battery_auroc": mean_auroc(battery),
              "val_called_unknown": None if scorer.threshold is None else
              round(float((known > scorer.threshold).mean()), 4)}
    if labelled:
        truth = np.array([t for t, _ in labelled])
        logits = np.stack([lg for _, lg in labelled])
        raw, calibrated = scoring.softmax(logits), scoring.softmax(logits, scorer.temperature or 1.0)
        result["ece_before"], result["ece_after"] = scoring.ece(raw, truth), scoring.ece(calibrated, truth)
        result["ece_by_chance"], result["ece_images"] = scoring.chance_ece(calibrated.max(axis=1)), len(truth)
        _plot_reliability(scoring.reliability(raw, truth), scoring.reliability(calibrated, truth), scorer,
                          out / "reliability.png")
    return result


def _plot_ood(known: np.ndarray, scores: dict[str, np.ndarray], battery: dict, scorer, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 3.6))
    everything = np.concatenate([known, *scores.values()])
    bins = np.linspace(everything.min(), everything.max(), 40)
    ax.hist(known, bins=bins, density=True, alpha=0.6, label=f"validation images ({len(known)})")
    for name, values in scores.items():
        ax.hist(values, bins=bins, density=True, histtype="step", lw=1.5,
                label=f"{name}: AUROC {battery[name]['auroc']:.3f}, FPR@95 {battery[name]['fpr_at_95']:.2f}")
    if scorer.threshold is not None:
        ax.axvline(scorer.threshold, color="black", ls="--", lw=1, label=f"threshold {scorer.threshold:.4f}")
    ax.set_xlabel(f"OOD score ({scorer.method}); higher is less like the training images")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("images of none of the model's classes against its validation images")
    _save(fig, path)


def _plot_reliability(before: list[dict], after: list[dict], scorer, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    for bins, name in ((before, "softmax"), (after, f"calibrated, T = {scorer.temperature or 1.0:.3f}")):
        shown = [(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
        if shown:
            ax.plot(*zip(*shown), "o-", label=name)
    ax.set_xlabel("confidence (top score)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability on the validation images")
    ax.legend(fontsize=8)
    _save(fig, path)


def _plot_curves(curves: dict, path: Path) -> None:
    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    if curves["step"]:
        loss_ax.plot(curves["step"], curves["loss"], lw=1, alpha=0.8, label="training (batch)")
        top = [(s, v) for s, v in zip(curves["step"], curves["train_top1"]) if v is not None]
        if top:
            top1_ax.plot(*zip(*top), lw=1, alpha=0.8, label="training (augmented batch)")
    if curves["val_step"]:
        loss_ax.plot(curves["val_step"], curves["val_loss"], "o-", label="validation")
        top1_ax.plot(curves["val_step"], curves["val_top1"], "o-", label="validation")
    for ax, name in ((loss_ax, "loss"), (top1_ax, "top-1")):
        ax.set_xlabel("optimizer step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no training curves recorded for this version", ha="center", transform=ax.transAxes)
    top1_ax.set_ylim(0, 1.02)
    _save(fig, path)


def _plot_confusion(confusion: np.ndarray, labels: list[str], path: Path) -> None:
    n = len(labels)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = min(5 + 0.25 * n, 14)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size * 0.9))
    for ax, values, name in ((axes[0], confusion, "counts"), (axes[1], rows, "share of each true class")):
        im = ax.imshow(values, cmap="Blues")
        ax.set_title(name)
        ax.set_xlabel("said")
        ax.set_ylabel("true")
        if n <= 30:
            ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
            ax.set_yticks(range(n), labels, fontsize=8)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    text = f"{values[i, j]:.2f}" if values is rows else str(values[i, j])
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > values.max() * 0.6 else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


def _fitted_text(n: int) -> str:
    return f"CAMs fitted to {n} boxes" if n else "boxes only calibrated the rule"


def _plot_localization(loc: dict, rule: str, path: Path, compared: dict | None = None) -> None:
    thresholds = [float(t) for t in loc["gt_known_by_threshold"]]
    fig, ax = plt.subplots(figsize=(10, 4))
    for k, need in enumerate(IOUS_V2):
        values = [loc["gt_known_v2_by_threshold"][f"{t:g}"][k] for t in thresholds]
        ax.plot(thresholds, values, "-" if need == IOU_NEEDED else ":", lw=2 if need == IOU_NEEDED else 1,
                label=f"GT-known, IoU >= {need}")
    if rule.startswith("threshold:"):
        ax.axvline(float(rule.split(":")[1]), color="black", ls="--", lw=1, label=f"served: {rule}")
    else:
        ax.axhline(loc["gt_known_loc"], color="black", ls="--", lw=1,
                   label=f"served: {rule} ({loc['gt_known_loc']:.2f})")
    if compared:  # the other version on the same images: calibration alone against boxes fitted
        b = compared["baseline"]
        ax.axhline(b["gt_known_loc"], color="tab:red", ls="-.", lw=1.5,
                   label=f"{b['name']}, {_fitted_text(b['boxes_fitted'])}: {b['box_rule']} ({b['gt_known_loc']:.2f})")
        ax.plot([], [], " ", label=f"this version: {_fitted_text(compared['this']['boxes_fitted'])}")
    ax.set_xlabel("threshold (fraction of the CAM's maximum)")
    ax.set_ylabel("share of boxed validation images")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    area = ax.twinx()
    area.plot(thresholds, [loc["box_area_ratio_by_threshold"][f"{t:g}"] for t in thresholds], color="grey",
              lw=1, label="box area / true area (median)")
    area.axhline(1.0, color="grey", lw=0.5)
    area.set_ylabel("box area / true area (median)")
    area.set_yscale("log")
    lines = ax.get_legend_handles_labels()
    more = area.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper left", bbox_to_anchor=(1.12, 1))
    ax.set_title(f"localization on {loc['images_with_boxes']} boxed validation images")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _embedded(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _open_world_table(ow: dict) -> str:
    e = html.escape
    rows = "".join(f"<tr><th>{e(name)}</th><td>{f['auroc']:.3f}</td><td>{f['fpr_at_95']:.2f}</td>"
                   f"<td>{'' if f.get('called_unknown') is None else format(f['called_unknown'], '.0%')}</td></tr>"
                   for name, f in ow["battery"].items())
    said = (f"threshold {ow['threshold']:.4f}, validation images called unknown: {ow['val_called_unknown']:.1%}"
            if ow["threshold"] is not None else "no threshold fitted: answers say unknown: null")
    ece = (f" ECE {ow['ece_before']:.3f} -> {ow['ece_after']:.3f} (T = {ow['temperature']:.3f}; a perfectly"
           f" calibrated model would read {ow['ece_by_chance']:.3f} on these {ow['ece_images']} images by chance)."
           if ow.get("ece_before") is not None and ow["calibrated"] else "")
    return (f"<p>{e(ow['method'])}: {e(said)}.{e(ece)}</p><table><tr><th>set</th><th>AUROC</th><th>FPR@95</th>"
            f"<th>called unknown</th></tr>{rows}</table>")


def _box_training_table(c: dict) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(name)}</td><td>{e(_fitted_text(v['boxes_fitted']))}</td><td>{e(str(v['box_rule']))}"
                   f"</td><td>{v['gt_known_loc']:.1%}</td></tr>"
                   for name, v in (("this version", c["this"]), (c["baseline"]["name"], c["baseline"])))
    return (f"<p>Boxes fitted in training against calibration alone, on the same {c['images']} boxed validation "
            "images (GT-known: the served box of the true class at IoU &gt;= 0.5):</p><table><tr><th>version</th>"
            f"<th>training</th><th>box rule</th><th>GT-known</th></tr>{rows}</table>")


def _precision_table(q: dict) -> str:
    """float32 and int8 side by side, as measured when the int8 model was made (training.quantize)."""
    e = html.escape
    near = q.get("near_ties") or {}
    head = ("<p>int8 kept: it serves in float32's place.</p>" if q.get("kept") and not near.get("kept") else
            f"<p>int8 kept, its near-ties answered by float32: an image whose int8 top-2 logit gap is at most "
            f"{near.get('margin', 0):.3f} runs again in float32 ({near.get('share', 0):.1%} of the validation images; "
            f"top-1 agreement {near.get('top1_agreement_held_out', 0):.1%} on images the gap was not fitted on, "
            f"about {near.get('cost', 0):.2f} of float32's time).</p>" if q.get("kept") else
            f"<p>int8 refused, float32 serves: {e(str(q.get('refused', '')))}</p>")
    if "float32" not in q:
        return head
    f, i = q["float32"], q["int8"]
    rows = [("validation top-1", f"{f['top1']:.1%}", f"{i['top1']:.1%}"),
            ("file", f"{f['bytes'] / 2**20:.2f} MiB", f"{i['bytes'] / 2**20:.2f} MiB"),
            ("ms per image (batch 8, 2 threads, the exporting machine)", f"{f['ms_per_image']:.3f}",
             f"{i['ms_per_image']:.3f}")]
    cells = "".join(f"<tr><th>{e(a)}</th><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in rows)
    return (f"{head}<table><tr><th></th><th>float32</th><th>int8</th></tr>{cells}</table>"
            f"<p>On {q['images']} validation images: int8 on its own gives float32's top-1 on {q['top1_agreement']:.1%}"
            + (f" ({q['top1_agreement_confident']:.1%} of the {q['confident_share']:.0%} where float32's top score "
               f"is at least {CONFIDENT})" if q.get("top1_agreement_confident") is not None else "") + ", "
            f"the top class's CAM correlates at {q['cam_correlation']:.4f} (lowest {q['cam_correlation_min']:.4f}), "
            f"its box overlaps float32's at median IoU {q['box_iou_median']:.3f} (mean {q['box_iou_mean']:.3f}); "
            f"bounds {e(json.dumps(q['bounds']))}.</p>")


def choice_text(choice: dict | None, on: str, measured: str, measured_as: str) -> str:
    """Whether the graph does something more at test time (test-time flip, test-time zoom): `on`
    says what; what decided it, with the validation top-1 alone and under `measured`."""
    if not choice:
        return "off (exported before the choice)"
    said = on if choice["on"] else f"off ({choice['left_off']})" if choice.get("left_off") else "off"
    if choice.get("decided_by") != "validation":
        return f"{said} (set for the run)"
    return (f"{said} (validation top-1 {choice['val_top1']:.1%} alone, {choice[measured]:.1%} {measured_as}, "
            f"{choice['images']} images)")


def flip_text(flip: dict | None) -> str:
    return choice_text(flip, "on: each image averaged with its mirror", "val_top1_averaged", "averaged")


def zoom_text(zoom: dict | None) -> str:
    return choice_text(zoom, "on: a second look around the object, averaged with the image's", "val_top1_zoomed",
                       "with a second look")


def _html(figures: dict, folder: Path) -> str:
    e = html.escape
    m = figures["metrics"]
    shown = [(k, m[k]) for k in ("top1", "top5", "loss", "chance_top1", "images", "gt_known_loc", "max_box_acc",
                                 "max_box_acc_v2", "best_threshold", "images_with_boxes") if k in m]
    table = "".join(f"<tr><th>{e(k)}</th><td>{v:.4g}</td></tr>" if isinstance(v, float) else
                    f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in shown)
    parts = [f"<h2>Figures</h2><table>{table}<tr><th>box rule</th><td>{e(figures['box_rule'])}</td></tr>"
             f"<tr><th>precision</th><td>{e(figures.get('precision') or 'float32')}</td></tr>"
             f"<tr><th>test-time flip</th><td>{e(flip_text(figures.get('test_time_flip')))}</td></tr>"
             f"<tr><th>test-time zoom</th><td>{e(zoom_text(figures.get('test_time_zoom')))}</td></tr></table>"]
    for name, heading in (("curves", "Training"), ("confusion", "Confusion"), ("localization", "Localization"),
                          ("ood", "Open world: images of none of its classes"),
                          ("reliability", "Calibration")):
        if (folder / f"{name}.png").is_file():
            parts.append(f"<h2>{heading}</h2><img alt='{name}' src='{_embedded(folder / f'{name}.png')}'>")
        if name == "localization" and figures.get("box_training"):
            parts.append(_box_training_table(figures["box_training"]))
        if name == "ood" and figures.get("open_world"):
            parts.append(_open_world_table(figures["open_world"]))
    if figures.get("quantization"):
        parts.append(f"<h2>Precision: float32 and int8</h2>{_precision_table(figures['quantization'])}")
    groups: dict[str, list] = {}
    for item in figures["gallery"]:
        groups.setdefault(item["group"], []).append(item)
    parts.append("<h2>Validation images</h2><p>CAM of the class the model said; its box (black and white, "
                 f"the served rule {e(figures['box_rule'])}) and the true box (green).</p>")
    for group, items in groups.items():
        cells = "".join(
            f"<figure><img alt='{e(i['said'])}' src='{_embedded(folder / i['file'])}'><figcaption>true "
            f"{e(str(i['truth']))} · said {e(i['said'])} ({i['score']:.2f})"
            + (f" · IoU {i['iou']:.2f}" if i["iou"] is not None else "") + "</figcaption></figure>" for i in items)
        parts.append(f"<h3>{e(group)}</h3><div class='row'>{cells}</div>")
    style = ("body{font:14px system-ui,sans-serif;margin:24px;max-width:1100px}img{max-width:100%}"
             "table{border-collapse:collapse}th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}"
             ".row{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:200px}figure img{width:200px}"
             "figcaption{font-size:12px}")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>rescam report: "
            f"{e(figures['title'])}</title><style>{style}</style></head><body><h1>{e(figures['title'])}</h1>"
            f"<p>{figures['images']} validation images, {len(figures['labels'])} labels.</p>{''.join(parts)}"
            "</body></html>\n")
