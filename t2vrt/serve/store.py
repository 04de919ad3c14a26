"""The job store: one SQLite database in WAL mode; every state change is one transaction.

A job's row holds its parameters (JSON), status, progress, timestamps, error and result, so a restart finds
everything: queued jobs stay queued (in submission order), a job found `in_progress` at start is queued again once
(its `attempts` count says whether it already was) or failed with the reason. Two connections, each behind a lock:
one writes (every transaction BEGIN IMMEDIATE .. COMMIT, fsynced), one reads, so a poll never waits for an fsync.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACTIVE = ("queued", "in_progress")
MAX_ATTEMPTS = 2  # a job the server died running is run once more, then failed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('queued', 'in_progress', 'completed', 'failed')),
    model TEXT NOT NULL,
    params TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER,
    expires_at INTEGER,
    error TEXT,
    result TEXT,
    remixed_from TEXT,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""


@dataclass(frozen=True)
class Job:
    seq: int
    id: str
    status: str
    model: str
    params: dict[str, Any]
    progress: int
    attempts: int
    created_at: int
    started_at: int | None
    completed_at: int | None
    expires_at: int | None
    error: dict[str, Any] | None
    result: dict[str, Any] | None
    remixed_from: str | None
    deleted: bool

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class QueueFull(Exception):
    def __init__(self, active: int) -> None:
        super().__init__(f"{active} jobs queued or running")
        self.active = active


def _job(row: sqlite3.Row) -> Job:
    return Job(
        seq=row["seq"],
        id=row["id"],
        status=row["status"],
        model=row["model"],
        params=json.loads(row["params"]),
        progress=row["progress"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        expires_at=row["expires_at"],
        error=json.loads(row["error"]) if row["error"] else None,
        result=json.loads(row["result"]) if row["result"] else None,
        remixed_from=row["remixed_from"],
        deleted=bool(row["deleted"]),
    )


def now() -> int:
    return int(time.time())


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"{path}: SQLite refused WAL mode (got {mode!r}); is --state on a network filesystem?")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed job survives power loss, not only a crash
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        self._reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._reader.row_factory = sqlite3.Row
        self._reader.execute("PRAGMA query_only=ON")

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception), holding the lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    # --- submitting and reading ---------------------------------------------------------------------------------

    def create(
        self, job_id: str, model: str, params: dict[str, Any], max_active: int, remixed_from: str | None = None
    ) -> Job:
        """Insert a queued job, unless `max_active` jobs are already queued or running (QueueFull)."""
        with self._tx() as db:
            active = db.execute("SELECT COUNT(*) FROM jobs WHERE status IN (?, ?) AND deleted = 0", ACTIVE).fetchone()[
                0
            ]
            if active >= max_active:
                raise QueueFull(active)
            db.execute(
                "INSERT INTO jobs (id, status, model, params, created_at, remixed_from) VALUES (?, 'queued', ?, ?, ?, ?)",
                (job_id, model, json.dumps(params), now(), remixed_from),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    def get(self, job_id: str) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ? AND deleted = 0", (job_id,))
        return _job(rows[0]) if rows else None

    def page(self, limit: int, after: str | None = None, order: str = "desc") -> tuple[list[Job], bool]:
        """Up to `limit` jobs after the job `after` (exclusive) in submission order or its reverse; and has_more.

        Raises KeyError when `after` names no job."""
        cmp, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        where, args = "deleted = 0", []
        if after is not None:
            rows = self._read("SELECT seq FROM jobs WHERE id = ?", (after,))
            if not rows:
                raise KeyError(after)
            where += f" AND seq {cmp} ?"
            args.append(rows[0]["seq"])
        rows = self._read(f"SELECT * FROM jobs WHERE {where} ORDER BY seq {direction} LIMIT ?", (*args, limit + 1))
        return [_job(r) for r in rows[:limit]], len(rows) > limit

    def active_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM jobs WHERE status IN (?, ?) AND deleted = 0", ACTIVE)[0][0])

    def ahead_of(self, job: Job) -> int:
        """Jobs that run before this queued one (the running job included)."""
        rows = self._read(
            "SELECT COUNT(*) FROM jobs WHERE deleted = 0 AND (status = 'in_progress' OR "
            "(status = 'queued' AND seq < ?))",
            (job.seq,),
        )
        return int(rows[0][0])

    def all_ids(self) -> list[str]:
        return [r["id"] for r in self._read("SELECT id FROM jobs ORDER BY seq")]

    # --- the worker's transitions -------------------------------------------------------------------------------

    def claim_next(self) -> Job | None:
        """The oldest queued job, now in_progress with one more attempt; None when the queue is empty."""
        with self._tx() as db:
            row = db.execute(
                "SELECT seq FROM jobs WHERE status = 'queued' AND deleted = 0 ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'in_progress', attempts = attempts + 1, progress = 0, started_at = ? "
                "WHERE seq = ?",
                (now(), row["seq"]),
            )
            claimed = db.execute("SELECT * FROM jobs WHERE seq = ?", (row["seq"],)).fetchone()
        return _job(claimed)

    def set_progress(self, job_id: str, progress: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ? AND status = 'in_progress'", (progress, job_id))

    def complete(self, job_id: str, result: dict[str, Any], ttl: int | None) -> None:
        t = now()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = 'completed', progress = 100, completed_at = ?, expires_at = ?, result = ?, "
                "error = NULL WHERE id = ?",
                (t, t + ttl if ttl else None, json.dumps(result), job_id),
            )

    def fail(self, job_id: str, code: str, message: str, ttl: int | None) -> None:
        t = now()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?, expires_at = ?, error = ? WHERE id = ?",
                (t, t + ttl if ttl else None, json.dumps({"code": code, "message": message}), job_id),
            )

    def requeue(self, job_id: str) -> None:
        """Back to the queue without spending an attempt (the server is draining, the job did not fail)."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = 'queued', progress = 0, started_at = NULL, attempts = MAX(attempts - 1, 0) "
                "WHERE id = ? AND status = 'in_progress'",
                (job_id,),
            )

    # --- deleting, expiring, recovering -------------------------------------------------------------------------

    def delete(self, job_id: str) -> Job | None:
        """Remove a job. A running one is only marked (the worker stops it, then calls purge). None if unknown."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ? AND deleted = 0", (job_id,)).fetchone()
            if row is None:
                return None
            if row["status"] == "in_progress":
                db.execute("UPDATE jobs SET deleted = 1 WHERE id = ?", (job_id,))
            else:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return _job(row)

    def is_deleted(self, job_id: str) -> bool:
        rows = self._read("SELECT deleted FROM jobs WHERE id = ?", (job_id,))
        return not rows or bool(rows[0]["deleted"])

    def purge(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def expire(self, at: int | None = None) -> list[str]:
        """Delete finished jobs whose expires_at has passed; their ids (the caller removes their files)."""
        t = now() if at is None else at
        with self._tx() as db:
            ids = [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE status IN ('completed', 'failed') AND expires_at IS NOT NULL "
                    "AND expires_at <= ?",
                    (t,),
                )
            ]
            db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
        return ids

    def recover(self, ttl: int | None) -> dict[str, list[str]]:
        """At start: finish deletions the last process did not, and settle jobs it left in_progress."""
        t = now()
        out: dict[str, list[str]] = {"requeued": [], "failed": [], "deleted": []}
        with self._tx() as db:
            out["deleted"] = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE deleted = 1")]
            db.execute("DELETE FROM jobs WHERE deleted = 1")
            for r in db.execute("SELECT id, attempts FROM jobs WHERE status = 'in_progress'").fetchall():
                if r["attempts"] < MAX_ATTEMPTS:
                    db.execute(
                        "UPDATE jobs SET status = 'queued', progress = 0, started_at = NULL WHERE id = ?", (r["id"],)
                    )
                    out["requeued"].append(r["id"])
                else:
                    error = {
                        "code": "interrupted",
                        "message": f"the server stopped while running this job {r['attempts']} times; not retrying it",
                    }
                    db.execute(
                        "UPDATE jobs SET status = 'failed', completed_at = ?, expires_at = ?, error = ? WHERE id = ?",
                        (t, t + ttl if ttl else None, json.dumps(error), r["id"]),
                    )
                    out["failed"].append(r["id"])
        return out
