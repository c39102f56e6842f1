"""The promotion gate: may a retrained model go live? Both models are scored by one code path
(ONNX Runtime, each with its card's preprocessing and box rule) on the same validation images
(training.compare); this module only decides."""

from __future__ import annotations

from typing import Any

from app.deploy_policy import blockers as never_deployable


def gate(new: dict[str, Any], live: dict[str, Any] | None, margin: float, new_labels: list[str] | None = None,
         ) -> dict[str, Any]:
    """The promotion decision for a retrained model, both models scored by one code path (ONNX
    Runtime, each with its card's preprocessing and box rule) on the same validation images:

    - `deployable` is False, even with force, for a run that diverged or whose top-1 does not
      clear chance by a clear margin: such a model must never serve;
    - `passed` (deploy without force) also needs the live model's labels (other labels make a new
      task, deployed only when forced), top-1 at least the live model's, where both have boxes,
      localization at each model's own rule no more than `margin` below the live one's, and, where
      both were measured, the open-world AUROC on the battery of images of none of their classes
      (training/open_world.py, against the same validation images) no more than `margin` below."""
    blockers, reasons = never_deployable(new), []
    shown = ("top1", "gt_known_loc", "box_rule", "images_with_boxes", "ood_auroc")
    decision = {"new": {k: new.get(k) for k in (*shown, "chance_top1")},
                "live": {k: live.get(k) for k in shown} if live else None}
    if live and new_labels is not None and live.get("labels") is not None and \
            set(new_labels) != set(live["labels"]):
        added, gone = sorted(set(new_labels) - set(live["labels"])), sorted(set(live["labels"]) - set(new_labels))
        reasons.append(f"a new task: its labels differ from the live model's (new {added[:5]}, missing {gone[:5]}); "
                       "deploy it with force")
    elif live:
        if new["top1"] < live["top1"]:
            reasons.append(f"top-1 {new['top1']:.4f} < live {live['top1']:.4f}")
        if new.get("images_with_boxes") and live.get("images_with_boxes") and "gt_known_loc" in new \
                and "gt_known_loc" in live and new["gt_known_loc"] < live["gt_known_loc"] - margin:
            reasons.append(f"localization (GT-known at {new.get('box_rule')}) {new['gt_known_loc']:.4f} < live "
                           f"{live['gt_known_loc']:.4f} (at {live.get('box_rule')}) - {margin}")
        if new.get("ood_auroc") is not None and live.get("ood_auroc") is not None \
                and new["ood_auroc"] < live["ood_auroc"] - margin:
            reasons.append(f"open world: AUROC on images of none of its classes {new['ood_auroc']:.4f} < live "
                           f"{live['ood_auroc']:.4f} - {margin}")
    passed = not blockers and not reasons
    if passed:
        reason = "as good as the live model" if live else "no live model to compare with; clears chance"
    else:
        reason = "; ".join(blockers + reasons)
    return {**decision, "passed": passed, "deployable": not blockers, "reason": reason}
