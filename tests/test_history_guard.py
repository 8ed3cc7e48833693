"""The hold guard's view reaches the history: every outcome row says how many sockets held, were kept sending
as request/response, could never hold, and how many holds the kernel released. Pure: no kernel."""

import sqlite3

from dapb_mesh.agent import Agent, SocketSample, columns_from_samples
from dapb_mesh.config import parse_settings
from dapb_mesh.kernel import layout as L
from dapb_mesh.store import SCHEMA_VERSION, HistoryStore, Outcome

V2_OUTCOMES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '2');
CREATE TABLE outcomes (id INTEGER PRIMARY KEY, ts REAL NOT NULL, class TEXT NOT NULL, interval_s REAL NOT NULL,
    sockets INTEGER NOT NULL, segments INTEGER NOT NULL, bytes INTEGER NOT NULL, retransmits INTEGER NOT NULL,
    messages INTEGER, rtt_ms REAL);
INSERT INTO outcomes (ts, class, interval_s, sockets, segments, bytes, retransmits) VALUES (1.0, 'default', 0.1,
    2, 3, 4, 0);
"""


def outcome_rows(path, cls: str | None = None) -> list[dict]:
    """Outcome rows, oldest first, read through the store as `dapb history` reads them."""
    store = HistoryStore(path)
    try:
        return store.recent("outcomes", limit=1000, cls=cls)[::-1]
    finally:
        store.close()


def test_an_older_history_gains_the_guard_columns_and_keeps_its_rows(tmp_path):
    path = tmp_path / "history.db"
    db = sqlite3.connect(str(path))
    db.executescript(V2_OUTCOMES)
    db.close()
    store = HistoryStore(path)
    store.record_outcome(Outcome("throughput", 0.1, 1, 5, 640, 0, held=1, interactive=0, unbounded=2, guard_releases=1))
    store.close()
    rows = outcome_rows(path)
    assert not list(tmp_path.glob("*.corrupt-*"))  # migrated, not moved aside
    assert rows[0]["sockets"] == 2 and rows[0]["held"] is None  # the old row, kept
    assert (rows[1]["held"], rows[1]["unbounded"], rows[1]["guard_releases"]) == (1, 2, 1)
    db = sqlite3.connect(str(path))
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    db.close()


def test_the_agent_records_what_the_guard_did_each_tick(tmp_path):
    settings = parse_settings({"agent": {"store": str(tmp_path / "h.db"), "instance": "guard-history-test"}})
    agent = Agent(settings, dry_run=True)
    agent.start()
    try:
        tp = L.CLASS_THROUGHPUT
        sample = [
            SocketSample(1, tp, 1.0, 10, 0, 640, 1, 1, applied_flags=L.F_NAGLE),
            SocketSample(2, tp, 1.0, 10, 0, 640, 1, 1, applied_flags=L.S_UNBOUNDED_PEER),
            SocketSample(3, tp, 1.0, 10, 0, 640, 1, 1, applied_flags=L.S_INTERACTIVE, guard_releases=2),
        ]
        agent.tick(columns_from_samples(sample))
    finally:
        agent.stop()
    rows = outcome_rows(tmp_path / "h.db", cls="throughput")
    assert rows and (rows[-1]["held"], rows[-1]["interactive"], rows[-1]["unbounded"]) == (1, 1, 1)
    assert rows[-1]["guard_releases"] == 2
