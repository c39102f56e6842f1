"""Retrain jobs' state, in one SQLite table that every worker and host sharing the data root uses.

States: queued -> running (-> cancelling) -> finishing -> succeeded | failed | cancelled |
interrupted. Claims and endings are single UPDATEs guarded by the state, so two runners never take
the same job or end it twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

ACTIVE = ("running", "cancelling")  # states whose training process may be alive
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    request TEXT NOT NULL, run_dir TEXT NOT NULL, pid INTEGER, worker TEXT, resume INTEGER DEFAULT 0,
    progress TEXT, result TEXT, error TEXT
)"""


class SqliteFile:
    """One SQLite file that several processes share: WAL, autocommit, rows as mappings."""

    def __init__(self, path: str | Path, *schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            for statement in schema:
                db.execute(statement)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db


class JobStore(SqliteFile):
    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA)

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row)
        for key in ("request", "progress", "result"):
            job[key] = json.loads(job[key]) if job[key] else None
        job["resume"] = bool(job["resume"])
        return job

    def create(self, request: dict[str, Any], runs_root: Path) -> dict[str, Any]:
        job_id = uuid.uuid4().hex[:12]
        with self._db() as db:
            db.execute("INSERT INTO jobs (id, state, created, request, run_dir) VALUES (?, 'queued', ?, ?, ?)",
                       (job_id, time.time(), json.dumps(request), str(runs_root / job_id)))
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            return self._row(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [self._row(r) for r in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        for key in ("progress", "result"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def claim(self, worker: str) -> dict[str, Any] | None:
        """Take the oldest queued job for this worker; several workers never take the same one."""
        with self._db() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return None
            taken = db.execute("UPDATE jobs SET state = 'running', started = ?, worker = ? "
                               "WHERE id = ? AND state = 'queued'", (time.time(), worker, row["id"])).rowcount
        return self.get(row["id"]) if taken else None

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """A queued job is cancelled at once; a running one is `cancelling` until its process stops."""
        with self._db() as db:
            db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ? AND state = 'queued'",
                       (time.time(), job_id))
            db.execute("UPDATE jobs SET state = 'cancelling' WHERE id = ? AND state = 'running'", (job_id,))
        return self.get(job_id)

    def begin_finish(self, job_id: str) -> str | None:
        """Take the job's ending for this runner: its state before (running or cancelling), or None
        when another runner (another worker of this host) took it first."""
        with self._db() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] not in ACTIVE:
                return None
            taken = db.execute("UPDATE jobs SET state = 'finishing' WHERE id = ? AND state = ?",
                               (job_id, row["state"])).rowcount
        return row["state"] if taken else None

    def requeue(self, job_id: str) -> bool:
        with self._db() as db:
            return db.execute("UPDATE jobs SET state = 'queued', resume = 1, error = NULL, finished = NULL "
                              "WHERE id = ? AND state = 'interrupted'", (job_id,)).rowcount == 1
