"""Results store: one SQLite row per (checkpoint fingerprint, measurement kind, config hash).

SQLite from the standard library in WAL mode: readers never block the writer, every ``put`` is its
own committed transaction, so a batch killed mid-way loses nothing it had finished, and a re-run
skips what is already there. The config hash covers everything that changes a result (data
fingerprint, options, library version), so a stale row is never returned for a new question.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import landscape
from landscape.foundation.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    fingerprint TEXT NOT NULL,
    kind        TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    config      TEXT NOT NULL,
    result      TEXT NOT NULL,
    seconds     REAL,
    version     TEXT,
    created     TEXT,
    PRIMARY KEY (fingerprint, kind, config_hash)
)
"""


def config_hash(config: dict) -> str:
    """SHA-256 of the canonical JSON of ``config`` (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


class Store:
    """``Store(path)``; ``None`` path keeps results in memory for this process only."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", timeout=60)
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(SCHEMA)
            self._db.commit()
        except (sqlite3.DatabaseError, OSError) as e:
            raise UserError(f"{self.path}: cannot open the results store ({e})") from None

    def get(self, fingerprint: str, kind: str, config: dict) -> dict | None:
        row = self._db.execute("SELECT result FROM results WHERE fingerprint=? AND kind=? AND config_hash=?",
                               (fingerprint, kind, config_hash(config))).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, fingerprint: str, kind: str, config: dict, result: dict, seconds: float | None = None) -> None:
        with self._db:  # one committed transaction per row
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (fingerprint, kind, config_hash(config), json.dumps(config, sort_keys=True, default=str),
                 json.dumps(result, default=float), seconds, landscape.__version__,
                 time.strftime("%Y-%m-%dT%H:%M:%S")))

    def cached(self, fingerprint: str, kind: str, config: dict, compute):
        """The stored result, or ``compute()`` stored then returned. Adds ``"cached": bool``."""
        hit = self.get(fingerprint, kind, config)
        if hit is not None:
            return {**hit, "cached": True}
        t0 = time.perf_counter()
        result = compute()
        self.put(fingerprint, kind, config, result, time.perf_counter() - t0)
        return {**result, "cached": False}

    def rows(self, kind: str | None = None) -> list[dict]:
        q = "SELECT fingerprint, kind, config, result, seconds, version, created FROM results"
        args: tuple = ()
        if kind:
            q += " WHERE kind=?"
            args = (kind,)
        return [{"fingerprint": f, "kind": k, "config": json.loads(c), "result": json.loads(r), "seconds": s,
                 "version": v, "created": t} for f, k, c, r, s, v, t in self._db.execute(q, args)]

    def close(self) -> None:
        self._db.close()
