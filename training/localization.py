"""CAM localization metrics (Zhou et al. 2016; Choe et al., CVPR 2020), on numpy arrays.

Boxes come from app.cam, the same code the service uses.
"""

from __future__ import annotations

import numpy as np

from app.cam import PAPER_THRESHOLD, Geometry, boxes_from_heatmap, heatmap, iou

DEFAULT_THRESHOLD = PAPER_THRESHOLD
THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))
IOU_NEEDED = 0.5
MAX_SIDE = 256  # heatmaps of large images are evaluated on a copy at most this long


class LocalizationTally:
    """Accumulates, over images with a known box:
    - top-1 localization: the predicted class is right and its CAM box has IoU >= 0.5;
    - GT-known localization: the CAM box of the true class has IoU >= 0.5;
    - MaxBoxAcc: the GT-known accuracy at the best CAM threshold (Choe et al. 2020)."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, thresholds=THRESHOLDS) -> None:
        self.threshold = threshold
        self.thresholds = tuple(float(t) for t in thresholds)
        self.count = 0
        self.top1 = 0
        self.gt_known = 0
        self.per_threshold = np.zeros(len(self.thresholds), dtype=np.int64)

    def add(self, cam_true: np.ndarray, correct: bool, box: np.ndarray, geometry: Geometry) -> None:
        """cam_true: the (h, w) CAM of the true class; correct: whether top-1 was right (then the
        predicted class's CAM is cam_true, so top-1 localization needs nothing more)."""
        g = geometry.fitted(MAX_SIDE)
        sx, sy = geometry.image_width / g.image_width, geometry.image_height / g.image_height
        heat_true = heatmap(cam_true, g)

        def hit(heat: np.ndarray, t: float) -> bool:
            found = boxes_from_heatmap(heat, t)
            return bool(found) and iou(found[0].scaled(sx, sy).as_list(), box) >= IOU_NEEDED

        hits = {t: hit(heat_true, t) for t in {*self.thresholds, self.threshold}}  # each threshold once
        found = hits[self.threshold]
        self.count += 1
        self.gt_known += found
        self.top1 += correct and found
        self.per_threshold += np.array([hits[t] for t in self.thresholds])

    def result(self) -> dict[str, float]:
        if not self.count:
            return {}
        curve = self.per_threshold / self.count
        best = int(np.argmax(curve))
        return {"images_with_boxes": self.count, "cam_threshold": self.threshold,
                "top1_loc": self.top1 / self.count, "gt_known_loc": self.gt_known / self.count,
                "max_box_acc": float(curve[best]), "best_threshold": self.thresholds[best]}
