"""Usage accounting: per key and model, requests, errors, prompt and generated tokens and
the runner's busy seconds, in a small SQLite file in the state dir (`usage.sqlite3`).

Rows are per minute, key, model (an upsert adds to them), so the file stays small and
`--since` is exact to the minute. The database runs in WAL mode and every request is
committed before its answer returns (in a worker thread, never on the event loop), so
a `kill -9` of the daemon loses nothing it had answered. A file that is not a readable
database is moved aside (`usage.sqlite3.corrupt-<time>`), the daemon logs it, starts a
new one, and `/api/usage` carries the notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("localserve.access.usage")

FILE_NAME = "usage.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    minute INTEGER NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    generated_tokens INTEGER NOT NULL DEFAULT 0,
    busy_seconds REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, key, model)
)
"""
UPSERT = """
INSERT INTO usage (minute, key, model, requests, errors, rate_limited, prompt_tokens,
                   generated_tokens, busy_seconds)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (minute, key, model) DO UPDATE SET
    requests = requests + excluded.requests,
    errors = errors + excluded.errors,
    rate_limited = rate_limited + excluded.rate_limited,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    generated_tokens = generated_tokens + excluded.generated_tokens,
    busy_seconds = busy_seconds + excluded.busy_seconds
"""


@dataclass(frozen=True)
class UsageRecord:
    """One request's usage."""

    key: str
    model: str
    error: bool = False
    rate_limited: bool = False
    prompt_tokens: int = 0
    generated_tokens: int = 0
    busy_seconds: float = 0.0
    at: float = 0.0  # wall clock; 0: now


class UsageStore:
    """The usage database. `open()` once (it recovers a bad file), then `record` and
    `summary` from the event loop; both run in a worker thread."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self.notice: str | None = None  # what start-up had to do (a bad file moved aside)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # ---- opening -------------------------------------------------------------------------

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{FILE_NAME}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(str(self.path) + suffix).rename(str(aside) + suffix)
            self.notice = (
                f"the usage database was unreadable ({exc}); moved it to {aside.name} "
                "and started a new one"
            )
            log.warning("%s", self.notice)
            self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: survives a killed process
            db.execute(SCHEMA)
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {row[0] if row else 'no answer'}")
            db.execute("SELECT count(*) FROM usage").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ---- writing and reading ------------------------------------------------------------

    def record_now(self, record: UsageRecord) -> None:
        """Add one request (blocking: call it through `record`)."""
        at = record.at or time.time()
        values = (
            int(at // 60) * 60,
            record.key,
            record.model,
            0 if record.rate_limited else 1,  # a refused request is counted apart
            int(record.error),
            int(record.rate_limited),
            record.prompt_tokens,
            record.generated_tokens,
            record.busy_seconds,
        )
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute(UPSERT, values)
            except sqlite3.Error:
                log.exception("could not record usage for key %s", record.key)

    async def record(self, record: UsageRecord) -> None:
        await asyncio.to_thread(self.record_now, record)

    def summary_now(
        self, since: float | None = None, key: str | None = None
    ) -> list[dict[str, Any]]:
        query = (
            "SELECT key, model, sum(requests), sum(errors), sum(rate_limited),"
            " sum(prompt_tokens), sum(generated_tokens), sum(busy_seconds),"
            " min(minute), max(minute) FROM usage WHERE minute >= ?"
        )
        params: list[Any] = [int(since // 60) * 60 if since else 0]
        if key is not None:
            query += " AND key = ?"
            params.append(key)
        query += " GROUP BY key, model ORDER BY key, model"
        with self._lock:
            if self._db is None:
                return []
            rows = self._db.execute(query, params).fetchall()
        return [
            {
                "key": row[0],
                "model": row[1],
                "requests": row[2],
                "errors": row[3],
                "rate_limited": row[4],
                "prompt_tokens": row[5],
                "generated_tokens": row[6],
                "busy_seconds": round(row[7], 3),
                "first_minute": row[8],
                "last_minute": row[9],
            }
            for row in rows
        ]

    async def summary(
        self, since: float | None = None, key: str | None = None
    ) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.summary_now, since, key)
