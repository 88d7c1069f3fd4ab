"""The retriever registry and the serving switch: which fine-tuned embedders exist, which one serves, and how
that changes (the retriever's counterpart of training/registry.py; trained by training/retriever.py, gated by
training/retriever_gate.py).

    python -m training.retriever promote r0002 [--force]   # re-embed into its own collection, then switch
    python -m training.retriever rollback                    # back to the retriever (or base) served before
    python -m training.retriever list

    record = register(settings, store, version="r0002", path=folder / "model", base_model=...)   # a candidate
    start_switch(settings, store, "r0002", "cycle", vectors=vectors).wait()   # serving from here on
    start_rollback(settings, store, "cli").wait()

A version `rNNNN` is a folder under `settings.retrievers_dir` plus a row in the `retrievers` table with status
candidate → promoted → retired, or rejected, and the state of its collection (none | building | ready |
failed | dropped).

Switch. Promotion builds the candidate's own Chroma collection (`<collection>-rNNNN`, stamped with the
model path) in a background thread from the SQLite chunks, then flips the registry in one transaction;
until then every answer is served by the old embedder and collection (storage.knowledge.KnowledgeBase.dense
re-reads the registry at each search, so a running bot follows without a restart). A build that dies is
resumed by id difference. After a promotion the collections of the new and the previous serving retriever
are kept (rollback is an instant flip after a catch-up of chunks ingested meanwhile) and older ones dropped.
BM25 is untouched throughout.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storage.config import Settings
from storage.db import Store, _json, now
from storage.embeddings import model_identity
from storage.index import (
    DenseTarget,
    IndexedChunk,
    VectorIndex,
    base_target,
    chroma_client,
    collection_name,
    embedding_text,
)
from storage.knowledge import serving_target
from training.registry import RegistryError, next_free_version, record_from_row

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (what, done, total)
_VERSION = re.compile(r"^r(\d{4,})$")
EMBED_BATCH = 256  # chunks embedded and written per step of a collection build


def _quiet(what: str, done: int, total: int) -> None:
    return None


# --- the registry ------------------------------------------------------------------------------
@dataclass
class RetrieverRecord:
    version: str
    path: str  # the sentence-transformers model folder
    base_model: str
    collection: str
    status: str  # candidate | promoted | retired | rejected
    index_state: str  # none | building | ready | failed | dropped
    run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    data_counts: dict[str, Any] = field(default_factory=dict)
    losses: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    promoted_at: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RetrieverRecord:
        return record_from_row(cls, row)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1].get("loss") if self.losses else None

    def target(self) -> DenseTarget:
        return DenseTarget(self.version, self.path, self.collection)


def list_retrievers(store: Store, status: str | None = None) -> list[RetrieverRecord]:
    """Every registered retriever, newest version first."""
    where, params = ("WHERE status = ?", (status,)) if status else ("", ())
    return [RetrieverRecord.from_row(r)
            for r in store.query(f"SELECT * FROM retrievers {where} ORDER BY version DESC", params)]


def get_retriever(store: Store, version: str) -> RetrieverRecord:
    rows = store.query("SELECT * FROM retrievers WHERE version = ?", (version,))
    if not rows:
        raise RegistryError(f"no retriever {version!r}; known: {[r.version for r in list_retrievers(store)] or 'none'}")
    return RetrieverRecord.from_row(rows[0])


def serving_retriever(store: Store) -> RetrieverRecord | None:
    """The promoted retriever (its collection is complete); None when the configured embedder serves."""
    rows = store.query("SELECT * FROM retrievers WHERE status = 'promoted' ORDER BY promoted_at DESC LIMIT 1")
    return RetrieverRecord.from_row(rows[0]) if rows else None


def next_version(settings: Settings, store: Store) -> str:
    """The next free `rNNNN`, above every registered version and every folder on disk."""
    return next_free_version("r", [r.version for r in list_retrievers(store)], settings.retrievers_dir)


def _update(store: Store, version: str, **fields: Any) -> None:
    store.update_retriever(version, **fields)


def register(settings: Settings, store: Store, *, version: str, path: str | Path, base_model: str,
             run_id: str | None = None, config: dict[str, Any] | None = None,
             data_counts: dict[str, Any] | None = None, losses: list[dict[str, Any]] | None = None,
             actor: str = "training") -> RetrieverRecord:
    """Add a sentence-transformers model folder as a "candidate" retriever (it serves nothing until the
    gate, or an admin, promotes it). Its collection is named after the version; nothing is built yet."""
    if not _VERSION.match(version):
        raise RegistryError(f"retriever versions look like r0001, not {version!r}")
    if store.query("SELECT 1 FROM retrievers WHERE version = ?", (version,)):
        raise RegistryError(f"retriever {version} is already registered")
    if not (Path(path) / "modules.json").is_file():
        raise RegistryError(f"{path} holds no sentence-transformers model (modules.json missing)")
    row = {"version": version, "path": model_identity(str(path)), "base_model": base_model,
           "collection": collection_name(settings, version), "status": "candidate", "index_state": "none",
           "run_id": run_id, "config": _json(config or {}), "data_counts": _json(data_counts or {}),
           "losses": _json(losses or []), "metrics": _json({}), "created_at": now(), "promoted_at": None}
    store.add_retriever(row)
    store.audit(actor, "retriever.register", {"version": version, "path": row["path"], "run_id": run_id})
    return get_retriever(store, version)


def reject(store: Store, version: str, actor: str, reason: str = "") -> RetrieverRecord:
    """Mark a candidate as not fit to serve (the gate's verdict, or an admin's)."""
    record = get_retriever(store, version)
    if record.status == "promoted":
        raise RegistryError(f"{version} is serving; roll back or promote another retriever first")
    _update(store, version, status="rejected")
    store.audit(actor, "retriever.reject", {"version": version, "reason": reason})
    return get_retriever(store, version)


# --- the serving switch --------------------------------------------------------------------------
def sync_collection(settings: Settings, store: Store, target: DenseTarget,
                    vectors: dict[str, np.ndarray] | None = None, on_progress: Progress = _quiet) -> dict[str, int]:
    """Make `target`'s collection hold exactly the SQLite chunks, embedded by `target`'s model: embed what
    it lacks (from `vectors` where given), delete what SQLite no longer has. Creates the collection if
    needed; resumes a half-built one. Repeats while ingestion adds chunks meanwhile (at most 3 passes)."""
    from storage.embeddings import get_embedder

    embedder = get_embedder(target.model)
    index = VectorIndex(settings, target.collection, target.model, target.version)
    index.check_model(embedder.identity)
    vectors = vectors or {}
    counts = {"embedded": 0, "reused": 0, "deleted": 0}
    for _ in range(3):
        rows = store.query("SELECT id, document_id, source, page, heading, text FROM chunks ORDER BY document_id, ord")
        have = index.ids()
        stale = list(have - {r["id"] for r in rows})
        if stale:
            index.collection.delete(ids=stale)
            counts["deleted"] += len(stale)
        missing = [r for r in rows if r["id"] not in have]
        if not missing:
            break
        for start in range(0, len(missing), EMBED_BATCH):
            part = missing[start : start + EMBED_BATCH]
            chunks = [IndexedChunk(r["id"], r["document_id"], r["source"], r["page"], r["heading"], r["text"])
                      for r in part]
            todo = [c for c in chunks if c.id not in vectors]
            fresh = dict(zip([c.id for c in todo], embedder.encode(
                [embedding_text(c.source, c.heading, c.text) for c in todo]))) if todo else {}
            counts["embedded"] += len(todo)
            counts["reused"] += len(chunks) - len(todo)
            index.upsert(chunks, np.stack([fresh.get(c.id, vectors.get(c.id)) for c in chunks]),
                         model=embedder.identity)
            on_progress(f"re-embedding into {target.collection}", min(start + EMBED_BATCH, len(missing)), len(missing))
    return counts


def drop_old_collections(settings: Settings, store: Store, keep: set[str]) -> list[str]:
    """Delete our collections (the base one and `<collection>-rNNNN`) other than `keep`."""
    client = chroma_client(settings)
    ours = re.compile(rf"^{re.escape(settings.collection)}(-r\d{{4,}})?$")
    dropped = []
    for collection in client.list_collections():
        name = collection if isinstance(collection, str) else collection.name
        if ours.match(name) and name not in keep:
            client.delete_collection(name)
            dropped.append(name)
    if dropped:
        store.mark_collections_dropped(dropped)
    return dropped


def _switch_lock(settings: Settings):
    from filelock import FileLock

    settings.ensure_dirs()
    return FileLock(str(settings.home / "retriever-switch.lock"))


def switch(settings: Settings, store: Store, version: str | None, actor: str, *, mode: str = "promote",
           vectors: dict[str, np.ndarray] | None = None, force: bool = False,
           on_progress: Progress = _quiet) -> RetrieverRecord | None:
    """Serve `version` (None = the configured embedder): complete its collection off the serving path, then
    flip the registry in one transaction. mode "promote": the old serving retriever is retired, and after
    the flip collections other than the new and the previous one are dropped. mode "rollback": the old one
    is marked rejected (a later rollback won't bring it back) and nothing is dropped. Returns the record
    now serving (None = base). Raises RegistryError when another switch runs or the version can't serve."""
    from filelock import Timeout

    lock = _switch_lock(settings)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RegistryError("another retriever switch is running; try again when it has finished") from None
    try:
        record = get_retriever(store, version) if version else None
        if record is not None and record.status == "rejected" and not force and mode == "promote":
            raise RegistryError(f"{version} was rejected by the retriever gate; promote it with force=True to override")
        if record is not None and not (Path(record.path) / "modules.json").is_file():
            raise RegistryError(f"{version}: model folder {record.path} is missing or incomplete")
        previous = serving_target(settings, store)
        target = record.target() if record else base_target(settings)
        if target == previous:
            return record
        if record is not None:
            _update(store, record.version, index_state="building")
        store.audit(actor, f"retriever.{mode}.start", {"version": target.label, "previous": previous.label})
        try:
            counts = sync_collection(settings, store, target, vectors, on_progress)
        except BaseException:
            if record is not None:
                _update(store, record.version, index_state="failed")
            raise
        store.switch_retriever(record.version if record is not None else None,
                               reject_previous=mode == "rollback" and bool(previous.version))
        # Chunks ingested by a process still on the old pair between the last pass and the flip.
        counts_after = sync_collection(settings, store, target, None, on_progress)
        dropped = drop_old_collections(settings, store, {target.collection, previous.collection}) \
            if mode == "promote" else []
        store.audit(actor, f"retriever.{mode}", {"version": target.label, "previous": previous.label, **counts,
                                                 "caught_up": counts_after["embedded"], "dropped": dropped})
        return get_retriever(store, record.version) if record else None
    finally:
        lock.release()


class SwitchJob:
    """A switch running in a background thread: answers keep using the old embedder and collection until
    it flips the registry. `wait()` returns what serves afterwards, or raises what the switch raised."""

    def __init__(self, run: Callable[[], RetrieverRecord | None]):
        self.result: RetrieverRecord | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(run,), name="retriever-switch", daemon=True)
        self.thread.start()

    def _run(self, run: Callable[[], RetrieverRecord | None]) -> None:
        try:
            self.result = run()
        except BaseException as exc:  # handed to whoever waits
            log.exception("retriever switch failed")
            self.error = exc

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def wait(self, timeout: float | None = None) -> RetrieverRecord | None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the retriever switch is still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def start_switch(settings: Settings, store: Store, version: str, actor: str, *,
                 vectors: dict[str, np.ndarray] | None = None, force: bool = False,
                 on_progress: Progress = _quiet) -> SwitchJob:
    """Promote `version` in the background (see `switch`)."""
    return SwitchJob(lambda: switch(settings, store, version, actor, vectors=vectors, force=force,
                                    on_progress=on_progress))


def start_rollback(settings: Settings, store: Store, actor: str, on_progress: Progress = _quiet) -> SwitchJob:
    """Serve again what served before the current retriever: the latest earlier retriever that was promoted
    and not rolled back, else the configured embedder. Its collection was kept, so this is a catch-up of
    chunks ingested since plus the flip (a full rebuild only if it was dropped)."""
    now_serving = serving_retriever(store)
    if now_serving is None:
        raise RegistryError("nothing to roll back: the configured embedder is serving")
    earlier = [r for r in list_retrievers(store, "retired") if r.promoted_at and r.version != now_serving.version]
    target = max(earlier, key=lambda r: r.promoted_at or "").version if earlier else None
    return SwitchJob(lambda: switch(settings, store, target, actor, mode="rollback", on_progress=on_progress))
