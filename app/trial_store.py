"""Shadow trials and what they measured, in SQLite under the data root, shared by every worker and
host that shares it (like jobs.sqlite).

States: running -> complete (its sample target reached) | stopped | promoted | failed (the
candidate would not load). One sample per live image that the candidate also answered.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .job_store import SqliteFile

OPEN = ("running", "complete")  # trials that may still be promoted or stopped
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS trials (
        id TEXT PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL, live_version INTEGER,
        share REAL NOT NULL, target INTEGER NOT NULL, state TEXT NOT NULL, started REAL NOT NULL,
        ended REAL, started_by TEXT, reason TEXT, note TEXT, skipped INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS samples (
        trial TEXT NOT NULL, at REAL NOT NULL, live_version INTEGER, agree INTEGER, iou REAL,
        live_ms REAL, candidate_ms REAL, live_unknown INTEGER, candidate_unknown INTEGER, error TEXT)""",
    "CREATE INDEX IF NOT EXISTS samples_by_trial ON samples (trial)",
)
SAMPLE_FIELDS = ("live_version", "agree", "iou", "live_ms", "candidate_ms", "live_unknown", "candidate_unknown",
                 "error")


class TrialStore(SqliteFile):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path, *SCHEMA)

    def create(self, model: str, version: int, live_version: int | None, share: float, target: int,
               started_by: str, reason: str) -> dict[str, Any] | None:
        """A running trial, or None when the model already has an open one (the check and the
        insert are one transaction, so two workers never open two)."""
        trial_id = uuid.uuid4().hex[:12]
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            busy = db.execute("SELECT 1 FROM trials WHERE model = ? AND state = 'running'", (model,)).fetchone()
            if busy is None:
                db.execute("INSERT INTO trials (id, model, version, live_version, share, target, state, started, "
                           "started_by, reason) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                           (trial_id, model, version, live_version, share, target, time.time(), started_by, reason))
            db.execute("COMMIT")
        return None if busy else self.get(trial_id)

    def get(self, trial_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM trials WHERE id = ?", (trial_id,)).fetchone()
        return dict(row) if row else None

    def running(self, model: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM trials WHERE model = ? AND state = 'running'", (model,)).fetchone()
        return dict(row) if row else None

    def list(self, model: str, limit: int = 20) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM trials WHERE model = ? ORDER BY started DESC LIMIT ?",
                              (model, limit)).fetchall()
        return [dict(r) for r in rows]

    def end(self, trial_id: str, state: str, note: str | None = None, from_states: tuple[str, ...] = OPEN) -> bool:
        """Move an open trial to `state`; False when it was not in one of `from_states`."""
        marks = ", ".join("?" * len(from_states))
        with self._db() as db:
            return db.execute(f"UPDATE trials SET state = ?, ended = ?, note = COALESCE(?, note) "
                              f"WHERE id = ? AND state IN ({marks})",
                              (state, time.time(), note, trial_id, *from_states)).rowcount == 1

    def add(self, trial_id: str, samples: list[dict[str, Any]], skipped: dict[str, int] | None = None) -> None:
        """Record samples of a running trial, and the drawn requests trials skipped ({trial id:
        count}); a trial is complete once it holds its target."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("UPDATE trials SET skipped = skipped + ? WHERE id = ?",
                           [(n, t) for t, n in (skipped or {}).items()])
            trial = db.execute("SELECT target, state FROM trials WHERE id = ?", (trial_id,)).fetchone()
            if trial is None or trial["state"] != "running":
                db.execute("COMMIT")
                return
            held = db.execute("SELECT COUNT(*) FROM samples WHERE trial = ?", (trial_id,)).fetchone()[0]
            room = max(trial["target"] - held, 0)
            now = time.time()
            db.executemany(f"INSERT INTO samples (trial, at, {', '.join(SAMPLE_FIELDS)}) "
                           f"VALUES (?, ?, {', '.join('?' * len(SAMPLE_FIELDS))})",
                           [(trial_id, now, *(s.get(k) for k in SAMPLE_FIELDS)) for s in samples[:room]])
            if held + min(len(samples), room) >= trial["target"]:
                db.execute("UPDATE trials SET state = 'complete', ended = ? WHERE id = ? AND state = 'running'",
                           (now, trial_id))
            db.execute("COMMIT")

    def figures(self, trial_id: str) -> dict[str, Any]:
        """What the trial measured: agreement, box IoU, both sides' latency and unknown rates."""
        with self._db() as db:
            rows = db.execute(f"SELECT {', '.join(SAMPLE_FIELDS)} FROM samples WHERE trial = ?",
                              (trial_id,)).fetchall()
        answered = [r for r in rows if r["error"] is None]
        ious = np.array([r["iou"] for r in answered if r["iou"] is not None], dtype=float)

        def share(key: str) -> float | None:
            values = [r[key] for r in answered if r[key] is not None]
            return round(float(np.mean(values)), 4) if values else None

        def quantile(key: str, q: float) -> float | None:
            values = [r[key] for r in answered if r[key] is not None]
            return round(float(np.quantile(values, q)), 2) if values else None

        return {"images": len(answered), "failed": len(rows) - len(answered),
                "top1_agreement": share("agree"),
                "box_iou_median": round(float(np.median(ious)), 4) if len(ious) else None,
                "box_iou_at_least_half": round(float(np.mean(ious >= 0.5)), 4) if len(ious) else None,
                "boxes_compared": int(len(ious)),
                "live_ms_p50": quantile("live_ms", 0.5), "candidate_ms_p50": quantile("candidate_ms", 0.5),
                "candidate_ms_p95": quantile("candidate_ms", 0.95),
                "live_unknown_rate": share("live_unknown"), "candidate_unknown_rate": share("candidate_unknown"),
                "last_error": next((r["error"] for r in reversed(rows) if r["error"]), None)}
