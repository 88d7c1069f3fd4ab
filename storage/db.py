"""SQLite through sqlite-utils: the explicit schema, versioned migrations and small typed helpers.

Everything that is not a vector lives here: documents, chunks, interactions, feedback,
distilled Q&A pairs, preference pairs, training runs, the adapter registry and the audit log.
Migrations are append-only: never edit one that has shipped, add the next version.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

MIGRATIONS: list[str] = [
    # 1: the knowledge base, interactions and feedback, the flywheel's tables
    """
    CREATE TABLE documents (
        id TEXT PRIMARY KEY,            -- sha1 of the absolute path
        path TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        kind TEXT,                      -- pdf | markdown | html | text
        sha256 TEXT,
        size INTEGER,
        pages INTEGER,
        chunks INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,           -- ok | failed
        error TEXT,
        warnings TEXT,                  -- JSON list (e.g. scanned pages)
        ingested_at TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE chunks (
        id TEXT PRIMARY KEY,            -- document id + ordinal
        document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        ord INTEGER NOT NULL,
        source TEXT NOT NULL,           -- file name
        page INTEGER,                   -- 1-based physical page, PDFs only
        heading TEXT,                   -- heading path, ' > '-joined
        text TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        distilled_at TEXT
    );
    CREATE INDEX idx_chunks_document ON chunks(document_id);
    CREATE TABLE interactions (
        id TEXT PRIMARY KEY,
        conversation_id TEXT,
        channel TEXT,
        user_id TEXT,
        surface TEXT NOT NULL,          -- cli | slack | eval
        question TEXT NOT NULL,
        condensed_question TEXT,
        answer TEXT NOT NULL,
        grounded INTEGER NOT NULL,
        route TEXT,
        citations TEXT NOT NULL,        -- JSON list
        retrieved TEXT NOT NULL,        -- JSON list
        prompt TEXT,                    -- the exact prompt the model saw (for preference data)
        model TEXT,
        adapter TEXT,
        timings TEXT,                   -- JSON {stage: ms}
        error TEXT,
        message_ts TEXT,                -- Slack ts of the answer message
        created_at TEXT NOT NULL
    );
    CREATE INDEX idx_interactions_message ON interactions(channel, message_ts);
    CREATE INDEX idx_interactions_conversation ON interactions(conversation_id);
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY,
        interaction_id TEXT NOT NULL REFERENCES interactions(id),
        user_id TEXT NOT NULL,
        vote INTEGER NOT NULL,          -- +1 | -1 | 0 (removed)
        source TEXT NOT NULL,           -- reaction | button | cli
        comment TEXT,
        correction TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (interaction_id, user_id)
    );
    CREATE TABLE qa_pairs (
        id TEXT PRIMARY KEY,
        chunk_id TEXT,
        document_id TEXT,
        section TEXT,
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        reasoning TEXT,
        split TEXT NOT NULL,            -- train | heldout
        teacher TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE preference_pairs (
        id TEXT PRIMARY KEY,
        interaction_id TEXT,
        prompt TEXT NOT NULL,
        chosen TEXT NOT NULL,
        rejected TEXT NOT NULL,
        source TEXT NOT NULL,           -- correction | teacher_rewrite
        created_at TEXT NOT NULL
    );
    CREATE TABLE training_runs (
        id TEXT PRIMARY KEY,
        trigger TEXT,                   -- schedule | command | slack
        status TEXT NOT NULL,           -- running | succeeded | failed | skipped
        stage TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        durations TEXT,                 -- JSON {stage: seconds}
        counts TEXT,                    -- JSON
        metrics TEXT,                   -- JSON
        adapter_version TEXT,
        error TEXT
    );
    CREATE TABLE adapters (
        version TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        base_model TEXT NOT NULL,
        status TEXT NOT NULL,           -- candidate | promoted | retired | rejected
        run_id TEXT,
        config TEXT,
        data_counts TEXT,
        losses TEXT,
        metrics TEXT,
        created_at TEXT NOT NULL,
        promoted_at TEXT
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT
    );
    """,
    # 2: Slack event dedupe (Slack redelivers on slow acks and across reconnects)
    """
    CREATE TABLE slack_events (
        event_id TEXT PRIMARY KEY,
        received_at TEXT NOT NULL
    );
    CREATE INDEX idx_slack_events_received ON slack_events(received_at);
    """,
    # 3: the whole turn record: what the model wrote before the check, who produced the answer, and the
    # passages it was shown (the dataset builder and the gate learn from these, not from the final text)
    """
    ALTER TABLE interactions ADD COLUMN draft TEXT;             -- the model's own text, before the check
    ALTER TABLE interactions ADD COLUMN produced_by TEXT;       -- model | quote | refusal | smalltalk
    ALTER TABLE interactions ADD COLUMN passages TEXT;          -- JSON list: the passages shown to the model
    """,
    # 4: the encoding a text file was decoded with, so a wrong guess can be seen in `flywheel sources`
    """
    ALTER TABLE documents ADD COLUMN encoding TEXT;             -- Python codec, e.g. utf-8, utf-16, cp1252
    """,
    # 5: fine-tuned embedders (training/retriever.py), each with its own Chroma collection, and which one
    # served each answer. Only a promoted row serves, and only once its collection is complete.
    """
    CREATE TABLE retrievers (
        version TEXT PRIMARY KEY,       -- r0001, r0002, ...
        path TEXT NOT NULL,             -- the sentence-transformers model folder
        base_model TEXT NOT NULL,       -- what it was fine-tuned from
        collection TEXT NOT NULL,       -- its Chroma collection (the name carries the version)
        status TEXT NOT NULL,           -- candidate | promoted | retired | rejected
        index_state TEXT NOT NULL,      -- none | building | ready | failed | dropped
        run_id TEXT,
        config TEXT,
        data_counts TEXT,
        losses TEXT,
        metrics TEXT,                   -- the retrieval gate's report and decision
        created_at TEXT NOT NULL,
        promoted_at TEXT
    );
    ALTER TABLE interactions ADD COLUMN retriever TEXT;         -- r0001, or "base" (the configured embedder)
    """,
    # 6: which distilled pairs a cycle has trained on, so a time-bounded cycle can leave some for the next one
    # (training/budget.py). Pairs gathered before the last completed training count as trained, as they did.
    """
    ALTER TABLE qa_pairs ADD COLUMN trained_at TEXT;            -- when a cycle first trained on it (NULL: not yet)
    UPDATE qa_pairs SET trained_at = created_at
        WHERE created_at <= COALESCE((SELECT value FROM kv WHERE key = 'trained_data_until'), '');
    """,
]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def connect(path: Path | str) -> sqlite_utils.Database:
    """Open the database in WAL mode and bring its schema up to date."""
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=30000")
    migrate(db)
    return db


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database) -> int:
    """Apply every migration newer than the database's `user_version`, each in one transaction."""
    current = schema_version(db)
    for version, script in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(db) >= version:  # another process opening the database applied it meanwhile
                conn.execute("COMMIT")
                continue
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return schema_version(db)


def _statements(script: str) -> list[str]:
    parts, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            parts.append(buffer.strip())
            buffer = ""
    return [p for p in parts if p]


class Store:
    """The SQLite store: one connection shared by threads (Slack workers, ingest, the cycle), and the only
    code that writes to it.

    Every write runs in `transaction()`: the store's lock held and BEGIN IMMEDIATE … COMMIT (ROLLBACK on
    error). The lock is needed as well as SQLite's own locking because the threads share one connection:
    a statement from another thread would otherwise land inside (or COMMIT) someone else's transaction.
    Writers are the named methods below; `execute` and `insert` are for tests and one-off maintenance.
    Reads (`query`, `scalar`) take the lock too, so they never interleave with a transaction in flight."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = connect(self.path)
        self._lock = threading.RLock()
        self._depth = 0  # transactions open on the lock-holding thread (nested ones join the outermost)

    def close(self) -> None:
        with self._lock:
            self._db.conn.close()

    # --- the one way to write -----------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the store lock: BEGIN IMMEDIATE … COMMIT, ROLLBACK on error.

        Nested calls (a store method called inside another's transaction, or a caller grouping several
        methods) join the outermost transaction, which commits or rolls back as a whole. Inside, use only
        plain `conn.execute`/`executemany`: sqlite-utils' table helpers may commit on their own."""
        with self._lock:
            conn = self._db.conn
            if self._depth:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLITE_FULL and friends roll back by themselves
                    conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def execute(self, sql: str, params: tuple | list | dict = ()) -> int:
        """One write statement in its own transaction; returns the rows it changed. For tests and one-off
        maintenance: the application writes through the named methods."""
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def insert(self, table: str, rows: dict[str, Any] | list[dict[str, Any]]) -> int:
        """Insert one row or several (same keys) into `table` in one transaction; returns how many."""
        rows = [rows] if isinstance(rows, dict) else list(rows)
        if not rows:
            return 0
        with self.transaction() as conn:
            _insert(conn, table, rows)
        return len(rows)

    # --- generic ------------------------------------------------------------------------------
    def query(self, sql: str, params: tuple | list | dict = ()) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._db.query(sql, params))

    def scalar(self, sql: str, params: tuple | list | dict = ()) -> Any:
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return row[0] if row else None

    def audit(self, actor: str, action: str, detail: Any = None) -> None:
        self.insert("audit_log", {"actor": actor, "action": action, "detail": _json(detail), "created_at": now()})

    def get_kv(self, key: str, default: str | None = None) -> str | None:
        value = self.scalar("SELECT value FROM kv WHERE key = ?", (key,))
        return default if value is None else value

    def set_kv(self, key: str, value: str | None) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                         "excluded.value", (key, value))

    # --- interactions and feedback ------------------------------------------------------------
    def record_interaction(self, **fields: Any) -> str:
        row = {"id": fields.pop("id", None) or new_id(), "created_at": now(), **fields}
        for key in ("citations", "retrieved", "timings", "passages"):
            row[key] = _json(row.get(key) or ([] if key != "timings" else {}))
        row["grounded"] = int(bool(row.get("grounded")))
        self.insert("interactions", row)
        return row["id"]

    def interaction(self, interaction_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM interactions WHERE id = ?", (interaction_id,))
        return _decode(rows[0]) if rows else None

    def set_vote(
        self,
        interaction_id: str,
        user_id: str,
        vote: int,
        source: str,
        comment: str | None = None,
        correction: str | None = None,
    ) -> None:
        """One vote per user per answer: a new vote replaces the old one, 0 records a removal."""
        stamp = now()
        with self.transaction() as conn:
            conn.execute(
                """
                INSERT INTO feedback (interaction_id, user_id, vote, source, comment, correction,
                                      created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (interaction_id, user_id) DO UPDATE SET
                    vote = excluded.vote, source = excluded.source,
                    comment = COALESCE(excluded.comment, feedback.comment),
                    correction = COALESCE(excluded.correction, feedback.correction),
                    updated_at = excluded.updated_at
                """,
                (interaction_id, user_id, vote, source, comment, correction, stamp, stamp),
            )

    def vote_of(self, interaction_id: str, user_id: str) -> dict[str, Any] | None:
        """The user's feedback row on one answer, if any."""
        rows = self.query("SELECT * FROM feedback WHERE interaction_id = ? AND user_id = ?", (interaction_id, user_id))
        return rows[0] if rows else None

    # --- Slack --------------------------------------------------------------------------------
    def attach_message(self, interaction_id: str, channel: str, ts: str) -> None:
        """Remember which Slack message shows an answer, so reactions on it find the interaction."""
        self.execute("UPDATE interactions SET channel = ?, message_ts = ? WHERE id = ?", (channel, ts, interaction_id))

    def interaction_by_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT * FROM interactions WHERE channel = ? AND message_ts = ? ORDER BY created_at DESC LIMIT 1",
            (channel, ts),
        )
        return _decode(rows[0]) if rows else None

    def claim_event(self, event_id: str, retention_hours: float = 2.0) -> bool:
        """True the first time an event id is seen, False for a redelivery. Entries older than
        `retention_hours` are pruned (Slack retries within ~5 minutes; an hour or more is safe)."""
        stamp = now()
        with self.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO slack_events (event_id, received_at) VALUES (?, ?)", (event_id, stamp)
            )
            claimed = cursor.rowcount == 1
            if claimed and hash(event_id) % 50 == 0:  # prune now and then, not on every event
                self.prune_events(retention_hours)
        return claimed

    def prune_events(self, retention_hours: float = 2.0) -> int:
        cutoff = (datetime.now(UTC) - timedelta(hours=retention_hours)).isoformat(timespec="milliseconds")
        return self.execute("DELETE FROM slack_events WHERE received_at < ?", (cutoff,))

    def feedback_counts(self) -> dict[str, int]:
        rows = self.query("SELECT vote, COUNT(*) AS n FROM feedback GROUP BY vote")
        counts = {row["vote"]: row["n"] for row in rows}
        return {"up": counts.get(1, 0), "down": counts.get(-1, 0)}

    # --- documents and chunks (storage/knowledge.py) ------------------------------------------
    def replace_document(self, document: dict[str, Any], chunks: list[dict[str, Any]]) -> list[str]:
        """A document's row (status 'ok') and its chunks, replacing the chunks it had, in one transaction:
        readers see the old version or the new one, never a mix. Returns the ids of the replaced chunks
        (their vectors are the caller's to delete)."""
        doc = {**document, "chunks": len(chunks), "status": "ok", "error": None}
        columns = list(doc)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in ("id", "path", "name"))
        with self.transaction() as conn:
            old_ids = [r[0] for r in conn.execute("SELECT id FROM chunks WHERE document_id = ?", (doc["id"],))]
            conn.execute("DELETE FROM chunks WHERE document_id = ?", (doc["id"],))
            conn.execute(f"INSERT INTO documents ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                         f"ON CONFLICT (id) DO UPDATE SET {updates}", [doc[c] for c in columns])
            _insert(conn, "chunks", chunks)
        return old_ids

    def record_document_failure(self, doc_id: str, path: str, name: str, reason: str, *, keep_chunks: bool) -> None:
        """A file that failed to ingest: with `keep_chunks`, its previous good version keeps serving (status
        'stale'); otherwise it is recorded as 'failed' with no chunks."""
        stamp = now()
        with self.transaction() as conn:
            if keep_chunks:
                conn.execute("UPDATE documents SET status = 'stale', error = ?, updated_at = ? WHERE id = ?",
                             (reason, stamp, doc_id))
            else:
                conn.execute(
                    "INSERT INTO documents (id, path, name, status, error, chunks, updated_at) "
                    "VALUES (?, ?, ?, 'failed', ?, 0, ?) ON CONFLICT (id) DO UPDATE SET status = 'failed', "
                    "error = excluded.error, chunks = 0, updated_at = excluded.updated_at",
                    (doc_id, path, name, reason, stamp))

    def delete_document(self, doc_id: str) -> None:
        """A document and its chunks (its file is gone)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM chunks WHERE document_id = ?", (doc_id,))
            conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,))

    # --- distilled and preference pairs (training/distill.py, dataset.py, budget.py) ----------
    def add_qa_pairs(self, rows: list[dict[str, Any]], chunk_ids: list[str]) -> None:
        """Distilled pairs and their chunks' distilled_at in one transaction: a crash never half-distills."""
        stamp = now()
        with self.transaction() as conn:
            _insert(conn, "qa_pairs", rows)
            conn.executemany("UPDATE chunks SET distilled_at = ? WHERE id = ?", [(stamp, i) for i in chunk_ids])

    def drop_orphan_qa_pairs(self) -> int:
        """Delete pairs whose chunk no longer exists; returns how many."""
        return self.execute("DELETE FROM qa_pairs WHERE chunk_id IS NOT NULL AND chunk_id NOT IN (SELECT id FROM chunks)")

    def mark_qa_pairs_trained(self, pair_ids: list[str], when: str) -> int:
        """Stamp `trained_at` on those of the pairs not stamped before; returns how many changed."""
        changed = 0
        with self.transaction() as conn:
            for start in range(0, len(pair_ids), 500):  # SQLite's bound-parameter limit
                batch = pair_ids[start:start + 500]
                changed += conn.execute(f"UPDATE qa_pairs SET trained_at = ? WHERE trained_at IS NULL AND id IN "
                                        f"({','.join('?' * len(batch))})", [when, *batch]).rowcount
        return changed

    def replace_preference_pair(self, old_id: str | None, row: dict[str, Any]) -> None:
        """Add a preference pair, deleting the one it supersedes (if any) in the same transaction."""
        with self.transaction() as conn:
            if old_id:
                conn.execute("DELETE FROM preference_pairs WHERE id = ?", (old_id,))
            _insert(conn, "preference_pairs", [row])

    # --- training runs (training/cycle.py) ----------------------------------------------------
    def start_training_run(self, run_id: str, trigger: str | None) -> None:
        self.insert("training_runs", {"id": run_id, "trigger": trigger, "status": "running", "stage": "start",
                                      "started_at": now()})

    def update_training_run(self, run_id: str, **fields: Any) -> None:
        """Set columns of a run (dicts and lists are stored as JSON)."""
        self._update("training_runs", "id", run_id, fields)

    # --- adapter registry (training/registry.py) ----------------------------------------------
    def add_adapter(self, row: dict[str, Any]) -> None:
        self.insert("adapters", row)

    def update_adapter(self, version: str, **fields: Any) -> None:
        """Set columns of an adapter row (dicts and lists are stored as JSON)."""
        self._update("adapters", "version", version, fields)

    def promote_adapter(self, version: str, *, reject: str | None = None) -> None:
        """Serve `version`: the promoted adapter becomes retired (or, if it is `reject`, rejected, so a later
        rollback won't bring it back), all in one transaction."""
        with self.transaction() as conn:
            conn.execute("UPDATE adapters SET status = 'retired' WHERE status = 'promoted'")
            conn.execute("UPDATE adapters SET status = 'promoted', promoted_at = ? WHERE version = ?", (now(), version))
            if reject is not None:
                conn.execute("UPDATE adapters SET status = 'rejected' WHERE version = ?", (reject,))

    def adapter(self, version: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM adapters WHERE version = ?", (version,))
        return _decode(rows[0]) if rows else None

    def adapters(self, status: str | None = None) -> list[dict[str, Any]]:
        """Adapter rows, newest first (optionally only one status)."""
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        return [_decode(r) for r in self.query(f"SELECT * FROM adapters {where} ORDER BY version DESC", params)]

    def promoted_adapter(self) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT * FROM adapters WHERE status = 'promoted' ORDER BY promoted_at DESC LIMIT 1"
        )
        return _decode(rows[0]) if rows else None

    # --- retriever registry (training/retriever_registry.py) ----------------------------------
    def add_retriever(self, row: dict[str, Any]) -> None:
        self.insert("retrievers", row)

    def update_retriever(self, version: str, **fields: Any) -> None:
        """Set columns of a retriever row (dicts and lists are stored as JSON)."""
        self._update("retrievers", "version", version, fields)

    def mark_collections_dropped(self, collections: list[str]) -> None:
        """Retrievers whose Chroma collection was deleted."""
        if collections:
            self.execute(f"UPDATE retrievers SET index_state = 'dropped' WHERE collection IN "
                         f"({','.join('?' * len(collections))})", tuple(collections))

    def switch_retriever(self, version: str | None, *, reject_previous: bool) -> None:
        """Serve retriever `version` (None = the configured embedder) in one transaction: the promoted one is
        retired, or rejected with `reject_previous` (a rollback)."""
        with self.transaction() as conn:
            previous = "rejected" if reject_previous else "retired"
            conn.execute(f"UPDATE retrievers SET status = '{previous}' WHERE status = 'promoted'")
            if version is not None:
                conn.execute("UPDATE retrievers SET status = 'promoted', promoted_at = ?, index_state = 'ready' "
                             "WHERE version = ?", (now(), version))

    # --- helpers ------------------------------------------------------------------------------
    def _update(self, table: str, key: str, value: str, fields: dict[str, Any]) -> None:
        if not fields:
            return
        for name in (table, key, *fields):
            if not name.isidentifier():  # names are ours, never user input; refuse anything else
                raise ValueError(f"not a column name: {name!r}")
        sets = ", ".join(f"{name} = ?" for name in fields)
        self.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?",
                     (*[_json(v) if isinstance(v, (dict, list)) else v for v in fields.values()], value))


def _insert(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    """INSERT `rows` into `table` on `conn`, inside the caller's transaction."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:  # rows with the same columns go in one executemany; dicts and lists as JSON (as sqlite-utils)
        groups.setdefault(tuple(row), []).append({k: _json(v) if isinstance(v, (dict, list)) else v
                                                  for k, v in row.items()})
    for columns, group in groups.items():
        for name in (table, *columns):
            if not name.isidentifier():  # names are ours, never user input; refuse anything else
                raise ValueError(f"not a column name: {name!r}")
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})",
                         group)


def _json(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


_JSON_COLUMNS = {"citations", "retrieved", "timings", "passages", "warnings", "durations", "counts", "metrics", "config",
                 "data_counts", "losses", "detail"}


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS & out.keys():
        if isinstance(out[key], str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError:
                pass
    return out
