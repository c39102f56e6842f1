"""The trainer's metrics.jsonl read back: its records and the training curves. Pure reading, shared by
the job runner (progress, the live curve) and the report (training/report.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def metrics_records(metrics_jsonl: Path | None, last: int | None = None, keep_events: tuple[str, ...] = ()
                    ) -> list[dict[str, Any]]:
    """The trainer's metrics.jsonl records (the `last` ones only, when given, and before them every
    record of `keep_events`: a run's plan is written at its start, hundreds of lines before its last
    ones); none when there is no file yet. Only the records returned are parsed."""
    try:
        lines = metrics_jsonl.read_text().splitlines() if metrics_jsonl is not None else []
    except FileNotFoundError:
        return []
    chosen = lines[-last:] if last else lines
    if last and keep_events:  # json.dumps writes each record's event as '"event": "NAME"'
        marks = tuple(f'"event": "{event}"' for event in keep_events)
        chosen = [line for line in lines[:-last] if any(m in line for m in marks)] + chosen
    records = []
    for line in chosen:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return records



def read_curves(metrics_jsonl: Path | None) -> dict[str, list]:
    """Training loss and top-1 at each logged step, validation loss and top-1 at each epoch's end."""
    curves: dict[str, list] = {"step": [], "loss": [], "train_top1": [], "val_step": [], "val_loss": [],
                               "val_top1": []}
    for r in metrics_records(metrics_jsonl):
        if r.get("event") == "step" and r.get("loss") is not None:
            curves["step"].append(r["step"])
            curves["loss"].append(r["loss"])
            curves["train_top1"].append(r.get("train_top1"))
        elif r.get("event") == "epoch":
            curves["val_step"].append(r["step"])
            curves["val_loss"].append(r.get("val_loss"))
            curves["val_top1"].append(r.get("val_top1"))
    return curves
