"""History H(t): every decision and its measured outcome, in SQLite (WAL), bounded in age and rows.

The paper's knowledge-persistence loop: the agent writes here, `dapb history` reads, the trainer learns from it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    class TEXT NOT NULL,
    source TEXT NOT NULL,
    fallback INTEGER NOT NULL,
    buffer_bytes INTEGER NOT NULL,
    timeout_ms REAL NOT NULL,
    enforced_timeout_ms REAL,
    rtt_ms REAL NOT NULL,
    loss REAL NOT NULL,
    jitter_ms REAL NOT NULL,
    urgency REAL NOT NULL,
    energy REAL NOT NULL,
    policy_version INTEGER
);
CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    class TEXT NOT NULL,
    interval_s REAL NOT NULL,
    sockets INTEGER NOT NULL,
    segments INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    retransmits INTEGER NOT NULL,
    messages INTEGER,
    rtt_ms REAL
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    context TEXT NOT NULL,
    rtt_ms REAL NOT NULL,
    loss REAL NOT NULL,
    jitter_ms REAL NOT NULL,
    bytes_per_s REAL NOT NULL,
    hold INTEGER NOT NULL,
    timeout_ms REAL NOT NULL,
    segments_per_message REAL NOT NULL,
    p50_ms REAL NOT NULL,
    p99_ms REAL NOT NULL,
    max_ms REAL NOT NULL,
    lost_bytes INTEGER NOT NULL,
    baseline_p99_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
CREATE INDEX IF NOT EXISTS outcomes_ts ON outcomes (ts);
"""


_SAMPLE_COLUMNS = (
    "context",
    "rtt_ms",
    "loss",
    "jitter_ms",
    "bytes_per_s",
    "hold",
    "timeout_ms",
    "segments_per_message",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "lost_bytes",
    "baseline_p99_ms",
)


class StoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class Outcome:
    """What one class did during one interval, measured by the kernel."""

    cls: str
    interval_s: float
    sockets: int
    segments: int
    bytes: int
    retransmits: int
    messages: int | None = None
    rtt_ms: float | None = None


class HistoryStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) == 1:  # version 2 only added the samples table, created above
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {row[0]}, this dapb reads {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def record_decision(self, cls: str, decision, policy_version: int | None, ts: float | None = None) -> None:
        c = decision.conditions
        self.db.execute(
            "INSERT INTO decisions (ts, class, source, fallback, buffer_bytes, timeout_ms, enforced_timeout_ms,"
            " rtt_ms, loss, jitter_ms, urgency, energy, policy_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                ts or time.time(),
                cls,
                decision.source.value,
                int(decision.fallback),
                decision.buffer_bytes,
                decision.timeout_ms,
                decision.enforced_timeout_ms,
                c.rtt_ms,
                c.loss,
                c.jitter_ms,
                decision.urgency,
                decision.energy,
                policy_version,
            ),
        )

    def record_outcome(self, outcome: Outcome, ts: float | None = None) -> None:
        self.db.execute(
            "INSERT INTO outcomes (ts, class, interval_s, sockets, segments, bytes, retransmits, messages, rtt_ms)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (
                ts or time.time(),
                outcome.cls,
                outcome.interval_s,
                outcome.sockets,
                outcome.segments,
                outcome.bytes,
                outcome.retransmits,
                outcome.messages,
                outcome.rtt_ms,
            ),
        )

    def record_sample(self, sample: dict) -> None:
        """One measured outcome of one candidate decision in one context (the predictor's training data)."""
        columns = [c for c in _SAMPLE_COLUMNS]
        missing = [c for c in columns if c not in sample]
        if missing:
            raise StoreError(f"sample lacks {', '.join(missing)}")
        self.db.execute(
            f"INSERT INTO samples (ts, {', '.join(columns)}) VALUES (?, {', '.join('?' * len(columns))})",
            (time.time(), *(sample[c] for c in columns)),
        )

    def samples(self) -> list[dict]:
        cur = self.db.execute("SELECT * FROM samples ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def prune(self, max_age_s: float, max_rows: int, now: float | None = None) -> int:
        """Delete history older than max_age_s and beyond max_rows per table; returns rows deleted."""
        cutoff = (now or time.time()) - max_age_s
        deleted = 0
        for table in ("decisions", "outcomes"):
            deleted += self.db.execute(f"DELETE FROM {table} WHERE ts < ?", (cutoff,)).rowcount
            deleted += self.db.execute(
                f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (max_rows,),
            ).rowcount
        return deleted

    def recent(self, table: str, limit: int = 20, cls: str | None = None) -> list[dict]:
        if table not in ("decisions", "outcomes"):
            raise StoreError(f"unknown table {table!r}: decisions or outcomes")
        query = f"SELECT * FROM {table}" + (" WHERE class = ?" if cls else "") + " ORDER BY id DESC LIMIT ?"
        cur = self.db.execute(query, (cls, limit) if cls else (limit,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def count(self, table: str) -> int:
        if table not in ("decisions", "outcomes", "samples"):
            raise StoreError(f"unknown table {table!r}")
        return self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
