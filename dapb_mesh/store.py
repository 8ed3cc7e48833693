"""History H(t): every decision and its measured outcome, in SQLite (WAL), bounded in age and rows.

The paper's knowledge-persistence loop: the agent writes here, `dapb history` reads, the trainer learns from it.
A file that is not a usable history (not SQLite, corrupt, tables of another shape) is moved aside as
``<name>.corrupt-<time>`` with the reason logged, and a fresh history starts: the agent never fails to start for it.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dapb.store")

SCHEMA_VERSION = 3

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
    rtt_ms REAL,
    held INTEGER,
    interactive INTEGER,
    unbounded INTEGER,
    guard_releases INTEGER
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


class _Unusable(Exception):
    """The file is not a history this dapb can use (the message says why): it is moved aside."""


def _corrupt(error: sqlite3.Error, at_open: bool = False) -> bool:
    """Whether SQLite's error says the file itself is bad (rather than busy, locked, read-only or out of space).
    At open, a plain SQL error can only come from the file's schema: our statements are fixed."""
    name = getattr(error, "sqlite_errorname", "") or ""
    return name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB" or (at_open and name == "SQLITE_ERROR")


@functools.cache
def _expected_columns() -> dict[str, tuple[str, ...]]:
    """Column names per table, from _SCHEMA itself (one definition)."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: tuple(r[1] for r in db.execute(f"PRAGMA table_info({t})")) for t in tables}
    finally:
        db.close()


_GUARD_COLUMNS = ("held", "interactive", "unbounded", "guard_releases")  # added in schema version 3


def _migrate(db: sqlite3.Connection) -> None:
    """Bring an older history's tables to this schema before they are checked: version 3 added the hold guard's
    view to outcomes (nullable columns; older rows keep NULL there)."""
    kinds = dict(db.execute("SELECT name, type FROM sqlite_master").fetchall())
    if kinds.get("outcomes") != "table":
        return
    present = {r[1] for r in db.execute("PRAGMA table_info(outcomes)")}
    for column in _GUARD_COLUMNS:
        if column not in present:
            db.execute(f"ALTER TABLE outcomes ADD COLUMN {column} INTEGER")


def _check_tables(db: sqlite3.Connection) -> None:
    """Tables this dapb writes must take its rows: every column present, none extra that it cannot fill."""
    kinds = dict(db.execute("SELECT name, type FROM sqlite_master").fetchall())
    for table, columns in _expected_columns().items():
        kind = kinds.get(table)
        if kind is None:
            continue  # created by _SCHEMA
        if kind != "table":
            raise _Unusable(f"{table} is a {kind}, not a table")
        info = {r[1]: r for r in db.execute(f"PRAGMA table_info({table})")}  # cid, name, type, notnull, default, pk
        missing = [c for c in columns if c not in info]
        if missing:
            raise _Unusable(f"table {table} lacks column{'s' * (len(missing) > 1)} {', '.join(missing)}")
        unfillable = [name for name, r in info.items() if name not in columns and r[3] and r[4] is None]
        if unfillable:
            raise _Unusable(f"table {table} has column {', '.join(unfillable)}, which this dapb cannot fill")


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
    held: int | None = None  # the hold guard's view at the end of the interval (docs/kernel.md)
    interactive: int | None = None
    unbounded: int | None = None
    guard_releases: int | None = None  # holds released during the interval because replies came


class HistoryStore:
    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            raise StoreError(f"{path}: a directory, not a history file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"{path}: cannot create {error.filename or path.parent}: {error.strerror}") from None
        try:
            self.db = self._open()
        except _Unusable as error:
            self._set_aside(str(error))
            self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        """A connection to a usable history; _Unusable when the file is not one, StoreError when SQLite cannot
        use it now (locked, read-only, ...: nothing is moved for a condition that passes)."""
        try:
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: {error}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            _migrate(db)
            _check_tables(db)
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            else:
                try:
                    version = int(row[0])
                except (TypeError, ValueError):
                    raise _Unusable(f"schema version {str(row[0])[:40]!r} is not a number") from None
                if version < 1:
                    raise _Unusable(f"schema version {version} was never written by dapb")
                if version in (1, 2):  # 2 added the samples table (created above), 3 the guard's columns (_migrate)
                    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
                elif version != SCHEMA_VERSION:  # a newer dapb's history: not corrupt, and not ours to move
                    raise StoreError(f"{self.path}: schema version {version}, this dapb reads {SCHEMA_VERSION}")
        except sqlite3.Error as error:
            db.close()
            if _corrupt(error, at_open=True):
                raise _Unusable(f"{error}") from None
            raise StoreError(f"{self.path}: {error}") from None
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self, reason: str) -> None:
        """Move an unusable history (and its journal files, which must not be replayed into the fresh one) to
        <name>.corrupt-<time>: kept for a post-mortem, out of the agent's way."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while dest.exists():
            dest = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{n}")
            n += 1
        try:
            self.path.rename(dest)
            for suffix in ("-wal", "-shm", "-journal"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.rename(dest.with_name(dest.name + suffix))
        except OSError as error:
            raise StoreError(f"{self.path}: unusable ({reason}) and cannot be moved aside: {error.strerror}") from None
        log.error("history %s is unusable (%s): moved it to %s, starting a fresh one", self.path, reason, dest)

    def _write(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        """A write; when it finds the file corrupt (a page open() did not read), the file is moved aside and the
        write goes to a fresh history: recording must never stop the agent."""
        try:
            return self.db.execute(sql, params)
        except sqlite3.DatabaseError as error:
            if not _corrupt(error):
                raise
            self.db.close()
            self._set_aside(str(error))
            self.db = self._open()
            return self.db.execute(sql, params)

    def _read(self, sql: str, params: tuple = ()) -> list[dict]:
        """A query's rows; a corrupt file is reported naming it (a reader does not move what the agent writes)."""
        try:
            cur = self.db.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: {error}") from None

    def close(self) -> None:
        self.db.close()

    def record_decision(self, cls: str, decision, policy_version: int | None, ts: float | None = None) -> None:
        c = decision.conditions
        self._write(
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
        self._write(
            "INSERT INTO outcomes (ts, class, interval_s, sockets, segments, bytes, retransmits, messages, rtt_ms,"
            " held, interactive, unbounded, guard_releases) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                outcome.held,
                outcome.interactive,
                outcome.unbounded,
                outcome.guard_releases,
            ),
        )

    def record_sample(self, sample: dict) -> None:
        """One measured outcome of one candidate decision in one context (the predictor's training data)."""
        columns = [c for c in _SAMPLE_COLUMNS]
        missing = [c for c in columns if c not in sample]
        if missing:
            raise StoreError(f"sample lacks {', '.join(missing)}")
        self._write(
            f"INSERT INTO samples (ts, {', '.join(columns)}) VALUES (?, {', '.join('?' * len(columns))})",
            (time.time(), *(sample[c] for c in columns)),
        )

    def samples(self) -> list[dict]:
        return self._read("SELECT * FROM samples ORDER BY id")

    def prune(self, max_age_s: float, max_rows: int, now: float | None = None) -> int:
        """Delete history older than max_age_s and beyond max_rows per table; returns rows deleted."""
        cutoff = (now or time.time()) - max_age_s
        deleted = 0
        for table in ("decisions", "outcomes"):
            deleted += self._write(f"DELETE FROM {table} WHERE ts < ?", (cutoff,)).rowcount
            deleted += self._write(
                f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (max_rows,),
            ).rowcount
        return deleted

    def recent(self, table: str, limit: int = 20, cls: str | None = None) -> list[dict]:
        if table not in ("decisions", "outcomes"):
            raise StoreError(f"unknown table {table!r}: decisions or outcomes")
        query = f"SELECT * FROM {table}" + (" WHERE class = ?" if cls else "") + " ORDER BY id DESC LIMIT ?"
        return self._read(query, (cls, limit) if cls else (limit,))

    def count(self, table: str) -> int:
        if table not in ("decisions", "outcomes", "samples"):
            raise StoreError(f"unknown table {table!r}")
        return self._read(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
