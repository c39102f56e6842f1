"""CAM localization metrics (Zhou et al. 2016; Choe et al., CVPR 2020), on numpy arrays.

Boxes come from app.cam, the same code the service uses.
"""

from __future__ import annotations

import numpy as np

from app.cam import (
    CALIBRATION_MIN_IMAGES,
    DEFAULT_RULE,
    PAPER_THRESHOLD,
    BoxRule,
    Geometry,
    boxes_from_heatmap,
    heatmap,
    iou,
)

THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))
IOU_NEEDED = 0.5
IOUS_V2 = (0.3, 0.5, 0.7)  # MaxBoxAccV2 averages the best accuracy at each (Choe et al. 2020)
MAX_SIDE = 256  # heatmaps of large images are evaluated on a copy at most this long
# the rules compared in BENCHMARKS.md; none of them needs boxes
MEASURED_RULES = (BoxRule("threshold", PAPER_THRESHOLD), BoxRule("otsu"),
                  *(BoxRule("mass", m) for m in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)),
                  *(BoxRule("spread", k) for k in (1.25, 1.5, 1.75, 2.0)))
# the same cuts of the foreground map, measured where the model has one (training/foreground.py)
FOREGROUND_RULES = tuple(BoxRule(r.name, r.value, "pc1") for r in MEASURED_RULES) + tuple(
    BoxRule("threshold", t, "pc1") for t in (0.35, 0.5))


class LocalizationTally:
    """Accumulates, over images with a known box:
    - GT-known localization: the CAM box of the true class has IoU >= 0.5 with the true box,
      at every threshold (MaxBoxAcc: the best; MaxBoxAccV2: the best at IoU 0.3, 0.5 and 0.7,
      averaged) and under every box-free rule;
    - top-1 localization: the same, and the predicted class is right.

    The served figures are those at the rule the service uses for this model: `served` when given
    (an exported model's own rule), else, when at least CALIBRATION_MIN_IMAGES images have boxes,
    the best on them of the thresholds and the measured per-image rules (it is calibrated on them),
    else `fallback`. With `foreground` every image comes with the model's foreground map, and the
    pc1 rules are measured (and may be calibrated) too; the threshold curve stays the CAM's."""

    def __init__(self, served: BoxRule | None = None, fallback: BoxRule = DEFAULT_RULE, thresholds=THRESHOLDS,
                 rules=MEASURED_RULES, foreground: bool = False) -> None:
        self.served, self.fallback = served, fallback
        self.thresholds = tuple(float(t) for t in thresholds)
        measured = (*rules, *(FOREGROUND_RULES if foreground else ()))
        self.rules = tuple(dict.fromkeys((*measured, fallback, *([served] if served else []))))
        self.foreground = foreground or any(r.on_foreground for r in self.rules)
        self.count = 0
        self.curve = np.zeros((len(IOUS_V2), len(self.thresholds)), dtype=np.int64)  # GT-known hits
        self.curve_top1 = np.zeros(len(self.thresholds), dtype=np.int64)
        self.rule_hits = np.zeros(len(self.rules), dtype=np.int64)
        self.rule_top1 = np.zeros(len(self.rules), dtype=np.int64)
        self.area_ratio = [[] for _ in self.rules]  # box area / true area, per image
        self.area_ratio_at = [[] for _ in self.thresholds]  # the same at each threshold

    def add(self, cam_true: np.ndarray, correct: bool, box: np.ndarray, geometry: Geometry,
            foreground: np.ndarray | None = None) -> None:
        """cam_true: the (h, w) CAM of the true class; correct: whether top-1 was right (then the
        predicted class's CAM is cam_true, so top-1 localization needs nothing more); foreground:
        the image's (h, w) foreground map (needed when the tally measures pc1 rules)."""
        if self.foreground and foreground is None:
            raise ValueError("this tally measures pc1 rules: every image needs its foreground map")
        g = geometry.fitted(MAX_SIDE)
        sx, sy = geometry.image_width / g.image_width, geometry.image_height / g.image_height
        heats = {"cam": heatmap(cam_true, g)}
        if foreground is not None:
            heats["pc1"] = heatmap(foreground, g)
        true_area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)

        # a threshold rule cuts where a curve point does: each cut once
        cuts: dict[tuple[str, float | BoxRule], tuple[float, float]] = {}

        def overlap(rule: float | BoxRule) -> tuple[float, float]:
            source = rule.source if isinstance(rule, BoxRule) else "cam"
            heat = heats[source]
            if isinstance(rule, BoxRule):  # a spread box is a box of its own, not a cut
                cut: float | BoxRule = rule if rule.name == "spread" else rule.threshold_for(heat)
            else:
                cut = float(rule)
            if (source, cut) not in cuts:
                found = boxes_from_heatmap(heat, cut)
                b = found[0].scaled(sx, sy) if found else None
                cuts[source, cut] = (0.0, 0.0) if b is None else \
                    (iou(b.as_list(), box), (b.x1 - b.x0) * (b.y1 - b.y0) / true_area)
            return cuts[source, cut]

        self.count += 1
        for j, t in enumerate(self.thresholds):
            value, ratio = overlap(t)
            self.area_ratio_at[j].append(ratio)
            self.curve[:, j] += [value >= need for need in IOUS_V2]
            self.curve_top1[j] += correct and value >= IOU_NEEDED
        for j, rule in enumerate(self.rules):
            value, ratio = overlap(rule)
            self.rule_hits[j] += value >= IOU_NEEDED
            self.rule_top1[j] += correct and value >= IOU_NEEDED
            self.area_ratio[j].append(ratio)

    def served_rule(self) -> BoxRule:
        if self.served is not None:
            return self.served
        if self.count >= CALIBRATION_MIN_IMAGES:
            # calibrated: the rule that localizes best on these boxes, a fixed threshold (MaxBoxAcc's)
            # or a per-image one where that does better (a threshold on a tie)
            at_half = self.curve[IOUS_V2.index(IOU_NEEDED)]
            # spread boxes are measured beside the cuts but not yet chosen by calibration: what they
            # do against calibrated cuts on boxed sets is unmeasured (BENCHMARKS.md, "A box from the
            # heat's spread")
            hits = np.where([r.name == "spread" for r in self.rules], -1, self.rule_hits)
            best, per_image = int(np.argmax(at_half)), int(np.argmax(hits))
            if hits[per_image] > at_half[best]:  # self.rules holds the fallback at least
                return self.rules[per_image]
            return BoxRule("threshold", self.thresholds[best])
        return self.fallback

    def result(self) -> dict:
        if not self.count:
            return {}
        curves = self.curve / self.count
        at_half = curves[IOUS_V2.index(IOU_NEEDED)]
        best = int(np.argmax(at_half))
        served = self.served_rule()
        if served.name == "threshold" and not served.on_foreground and served.value in self.thresholds:
            j = self.thresholds.index(served.value)
            gt_known, top1_loc = at_half[j], self.curve_top1[j] / self.count
            ratio = None
        else:
            j = self.rules.index(served)
            gt_known, top1_loc = self.rule_hits[j] / self.count, self.rule_top1[j] / self.count
            ratio = float(np.median(self.area_ratio[j]))
        paper = self.thresholds.index(PAPER_THRESHOLD)
        return {"images_with_boxes": self.count, "box_rule": str(served),
                "gt_known_loc": float(gt_known), "top1_loc": float(top1_loc),
                "max_box_acc": float(at_half[best]), "best_threshold": self.thresholds[best],
                "max_box_acc_v2": float(curves.max(axis=1).mean()),
                "gt_known_loc_paper": float(at_half[paper]),
                "gt_known_by_rule": {str(r): float(h / self.count) for r, h in zip(self.rules, self.rule_hits)},
                "box_area_ratio_by_rule": {str(r): float(np.median(a)) for r, a in zip(self.rules, self.area_ratio)},
                "gt_known_by_threshold": {f"{t:g}": float(a) for t, a in zip(self.thresholds, at_half)},
                "gt_known_v2_by_threshold": {f"{t:g}": [float(c) for c in curves[:, j]]
                                             for j, t in enumerate(self.thresholds)},
                "box_area_ratio_by_threshold": {f"{t:g}": float(np.median(a))
                                                for t, a in zip(self.thresholds, self.area_ratio_at)},
                **({"box_area_ratio": ratio} if ratio is not None else {})}
