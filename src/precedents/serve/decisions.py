"""Review decisions in SQLite: one transaction per decision (WAL, synchronous=FULL), tied to one bundle.

Tables: ``meta`` (the bundle's fingerprint, written once; a database from another bundle is refused),
``decisions`` (the current decision per training index) and ``history`` (every decision ever posted, in order).
A decision is acknowledged only after its transaction has committed, so every acknowledged decision survives a
crash of the server (tested with SIGKILL during writes).
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .._validation import PrecedentsError

ACTIONS = ("correct", "relabel", "remove")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    train_index INTEGER PRIMARY KEY,
    action TEXT NOT NULL CHECK (action IN ('correct', 'relabel', 'remove')),
    label INTEGER,
    method TEXT,
    decided_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    train_index INTEGER NOT NULL,
    action TEXT NOT NULL,
    label INTEGER,
    method TEXT,
    decided_at REAL NOT NULL
);
"""


class DecisionStore:
    """Decisions of one bundle (identified by ``fingerprint``) in the SQLite file ``path``."""

    def __init__(self, path: str | os.PathLike, fingerprint: str, n_train: int, n_classes: int) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.n_train, self.n_classes = n_train, n_classes
        self._local = threading.local()
        conn = self._conn()
        with conn:
            conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key = 'bundle_fingerprint'").fetchone()
        if row is None:
            with conn:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('bundle_fingerprint', ?)", (fingerprint,))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
            row = conn.execute("SELECT value FROM meta WHERE key = 'bundle_fingerprint'").fetchone()
        if row[0] != fingerprint:
            raise PrecedentsError(
                f"The decisions database {self.path} belongs to another bundle (fingerprint {row[0][:12]}, this "
                f"bundle's is {fingerprint[:12]}): its training indices would mean other examples. Move it away, "
                "or pass --db with a new file.")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def check(self, train_index: int, action: str, label: int | None) -> tuple[int, str, int | None]:
        if not 0 <= int(train_index) < self.n_train:
            raise PrecedentsError(f"training index {train_index} is out of range 0..{self.n_train - 1}.")
        if action not in ACTIONS:
            raise PrecedentsError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}.")
        if action == "relabel":
            if label is None or not 0 <= int(label) < self.n_classes:
                raise PrecedentsError(f"relabel needs a label in 0..{self.n_classes - 1}, got {label!r}.")
            label = int(label)
        else:
            label = None
        return int(train_index), action, label

    def decide(self, train_index: int, action: str, label: int | None = None, method: str | None = None
               ) -> dict[str, Any]:
        """Record one decision in one transaction; returns it once committed."""
        i, action, label = self.check(train_index, action, label)
        now = time.time()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?) ON CONFLICT(train_index) DO UPDATE SET "
                         "action = excluded.action, label = excluded.label, method = excluded.method, "
                         "decided_at = excluded.decided_at", (i, action, label, method, now))
            cur = conn.execute("INSERT INTO history (train_index, action, label, method, decided_at) "
                               "VALUES (?, ?, ?, ?, ?)", (i, action, label, method, now))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return {"train_index": i, "action": action, "label": label, "method": method, "decided_at": now,
                "seq": cur.lastrowid}

    def undo(self, train_index: int) -> None:
        """Forget the decision on ``train_index`` (recorded in the history as action 'undo')."""
        i = int(train_index)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM decisions WHERE train_index = ?", (i,))
            conn.execute("INSERT INTO history (train_index, action, label, method, decided_at) "
                         "VALUES (?, 'undo', NULL, NULL, ?)", (i, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def all(self) -> dict[int, dict[str, Any]]:
        rows = self._conn().execute("SELECT train_index, action, label, method, decided_at FROM decisions "
                                    "ORDER BY train_index").fetchall()
        return {r[0]: {"train_index": r[0], "action": r[1], "label": r[2], "method": r[3], "decided_at": r[4]}
                for r in rows}

    def get(self, indices: list[int]) -> dict[int, dict[str, Any]]:
        if not indices:
            return {}
        marks = ",".join("?" * len(indices))
        rows = self._conn().execute(f"SELECT train_index, action, label FROM decisions WHERE train_index IN ({marks})",
                                    [int(i) for i in indices]).fetchall()
        return {r[0]: {"train_index": r[0], "action": r[1], "label": r[2]} for r in rows}

    def counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT action, COUNT(*) FROM decisions GROUP BY action").fetchall()
        out = dict.fromkeys(ACTIONS, 0)
        out.update({a: n for a, n in rows})
        return out

    def corrections(self) -> dict[int, int]:
        """Relabels as ``{training index: corrected label}``."""
        rows = self._conn().execute("SELECT train_index, label FROM decisions WHERE action = 'relabel' "
                                    "ORDER BY train_index").fetchall()
        return {int(i): int(c) for i, c in rows}

    def removals(self) -> list[int]:
        rows = self._conn().execute("SELECT train_index FROM decisions WHERE action = 'remove' "
                                    "ORDER BY train_index").fetchall()
        return [int(r[0]) for r in rows]

    def corrections_csv(self) -> str:
        """The ``index,label`` CSV that ``precedents debug --corrections`` reads (relabels only)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["index", "label"])
        writer.writerows(sorted(self.corrections().items()))
        return buf.getvalue()

    def decisions_csv(self) -> str:
        """Every current decision: ``index,action,label,method``."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["index", "action", "label", "method"])
        for d in self.all().values():
            writer.writerow([d["train_index"], d["action"], "" if d["label"] is None else d["label"],
                             d["method"] or ""])
        return buf.getvalue()
