"""The knowledge base: ingest files into SQLite + Chroma + BM25, and read chunks back.

    flywheel ingest docs/ handbook.pdf [--prune] [--reindex]

Ingestion is incremental (unchanged files, by sha256, are skipped; a changed file replaces its
chunks), per-file fault tolerant (a bad file is reported with its reason, the rest go on, and
whatever was stored before stays), and crash safe (new vectors are written under new ids before
SQLite switches to them; stale vectors are deleted last and ignored if a crash leaves any).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.chunking import chunk_document
from storage.config import Settings
from storage.db import Store, now
from storage.documents import ParseError
from storage.index import (
    DenseIndex,
    DenseTarget,
    IndexedChunk,
    LexicalIndex,
    VectorIndex,
    base_target,
    chroma_client,
    embedding_text,
)
from storage.parsing import SUPPORTED_SUFFIXES, parse_file

log = logging.getLogger(__name__)


@dataclass
class FileResult:
    path: str
    status: str  # added | updated | unchanged | failed | skipped | pruned
    chunks: int = 0
    pages: int | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    @property
    def chunks(self) -> int:
        return sum(f.chunks for f in self.files if f.status in ("added", "updated"))

    @property
    def pages(self) -> int:
        return sum(f.pages or 0 for f in self.files if f.status in ("added", "updated"))


def document_id(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expand_paths(paths: Iterable[Path]) -> list[tuple[Path, bool]]:
    """(file, named explicitly) for every file under the given paths; hidden files are skipped."""
    out: list[tuple[Path, bool]] = []
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path).parts
                if child.is_file() and not any(part.startswith(".") for part in rel):
                    out.append((child, False))
        else:
            out.append((path, True))
    return out


def serving_target(settings: Settings, store: Store) -> DenseTarget:
    """The promoted retriever's model and collection (a promotion flips only once its collection is
    complete), else the configured embedder in `settings.collection`. One SQLite query."""
    rows = store.query("SELECT version, path, collection FROM retrievers WHERE status = 'promoted' "
                       "ORDER BY promoted_at DESC LIMIT 1")
    if rows:
        return DenseTarget(rows[0]["version"], rows[0]["path"], rows[0]["collection"])
    return base_target(settings)


class KnowledgeBase:
    """SQLite chunks + Chroma vectors + BM25, kept in step."""

    def __init__(self, settings: Settings, store: Store | None = None):
        settings.ensure_dirs()
        self.settings = settings
        self.store = store or Store(settings.db_path)
        self.lexical = LexicalIndex(settings)
        self._dense: DenseIndex | None = None
        self._dense_lock = threading.Lock()
        self._broken: DenseTarget | None = None  # a target that failed to open (not retried per search)

    @property
    def embedder(self):
        """The configured embedder: chunk sizes (token counts) and the grounding check's similarities, whose
        thresholds were tuned on it. Dense retrieval uses `dense.embedder`, which a promoted retriever changes."""
        from storage.embeddings import get_embedder

        return get_embedder(self.settings.embedding_model)

    @property
    def dense(self) -> DenseIndex:
        """The serving embedder with its collection, re-read from the registry on every access (one SQLite
        query) so a running bot follows a promotion or rollback at its next search, without a restart. A
        caller keeps the object it got for a whole query: a switch never changes a search half-way.

        If the new pair can't be opened (model folder gone, a collection written by another model:
        EmbeddingMismatchError), a warning is logged and the pair already serving goes on serving, as a
        broken adapter is handled; with nothing serving yet, the error is raised."""
        target = serving_target(self.settings, self.store)
        with self._dense_lock:
            if self._dense is not None and (self._dense.target == target or self._broken == target):
                return self._dense
            try:
                self._dense = DenseIndex(self.settings, target)
            except Exception:
                if self._dense is None:
                    raise
                log.warning("retriever %s (%s in %s) could not be opened; still serving %s", target.label,
                            target.model, target.collection, self._dense.target.label, exc_info=True)
                self._broken = target
            return self._dense

    @property
    def vectors(self) -> VectorIndex:
        """The serving collection."""
        return self.dense.index

    # --- ingestion ----------------------------------------------------------------------------
    def ingest(
        self,
        paths: Iterable[Path],
        prune: bool = False,
        on_file: Callable[[FileResult, int, int], None] | None = None,
    ) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport()
        files = expand_paths(paths)
        for number, (path, explicit) in enumerate(files, start=1):
            result = self._ingest_file(path, explicit)
            report.files.append(result)
            if on_file:
                on_file(result, number, len(files))
        if prune:
            report.files.extend(self.prune())
        if any(f.status in ("added", "updated", "pruned") for f in report.files):
            self.rebuild_lexical()
            self.store.set_kv("last_ingest_at", now())
        report.seconds = time.perf_counter() - started
        return report

    def _ingest_file(self, path: Path, explicit: bool) -> FileResult:
        result = FileResult(path=str(path), status="failed")
        if not path.exists():
            result.error = "no such file"
            return result
        if path.suffix.lower() not in SUPPORTED_SUFFIXES and path.suffix:
            result.error = f"unsupported file type '{path.suffix}'"
            if not explicit:  # found while walking a folder: report, don't fail the run
                result.status = "skipped"
            return result
        doc_id = document_id(path)
        existing = self.store.query("SELECT * FROM documents WHERE id = ?", (doc_id,))
        previous = existing[0] if existing else None
        try:
            sha = file_sha256(path)
            if previous and previous["sha256"] == sha and previous["status"] == "ok":
                return FileResult(str(path), "unchanged", previous["chunks"], previous["pages"])
            parsed = parse_file(path, max_bytes=int(self.settings.max_file_mb * 1024 * 1024))
            chunks = chunk_document(
                parsed,
                self.embedder.count_tokens,
                max_tokens=self.settings.chunk_tokens,
                overlap=self.settings.chunk_overlap,
            )
            if not chunks:
                raise ParseError("no text to index")
            self._replace_chunks(doc_id, path, sha, parsed, chunks)
        except (ParseError, OSError, sqlite3.Error) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, sqlite3.OperationalError) and "full" in reason:
                reason = f"disk full while storing: {reason}"
            log.warning("ingest failed for %s: %s", path, reason)
            self._record_failure(doc_id, path, previous, reason)
            result.error = reason
            return result
        result.status = "updated" if previous else "added"
        result.chunks, result.pages, result.warnings = len(chunks), parsed.pages, parsed.warnings
        return result

    def _replace_chunks(self, doc_id: str, path: Path, sha: str, parsed, chunks) -> None:
        version = sha[:8]
        rows = [
            {
                "id": f"{doc_id}-{version}-{chunk.ord:05d}",
                "document_id": doc_id,
                "ord": chunk.ord,
                "source": path.name,
                "page": chunk.page,
                "heading": chunk.heading,
                "text": chunk.text,
                "tokens": chunk.tokens,
            }
            for chunk in chunks
        ]
        indexed = [IndexedChunk(r["id"], doc_id, r["source"], r["page"], r["heading"], r["text"]) for r in rows]
        dense = self.dense  # one embedder + collection for the whole file, even if a switch lands meanwhile
        vectors = dense.embedder.encode([embedding_text(c.source, c.heading, c.text) for c in indexed])
        # New ids: the old version of the file stays live until SQLite switches.
        dense.index.upsert(indexed, vectors, model=dense.embedder.identity)
        stamp = now()
        document = {"id": doc_id, "path": str(path.resolve()), "name": path.name, "kind": parsed.kind, "sha256": sha,
                    "size": path.stat().st_size, "pages": parsed.pages, "warnings": _json_list(parsed.warnings),
                    "encoding": parsed.encoding, "ingested_at": stamp, "updated_at": stamp}
        try:
            old_ids = self.store.replace_document(document, rows)
        except BaseException:
            self._delete_vectors([c.id for c in indexed], dense.index)  # SQLite still points at the old ones
            raise
        new_ids = {r["id"] for r in rows}
        self._delete_vectors([i for i in old_ids if i not in new_ids], dense.index)

    def _record_failure(self, doc_id: str, path: Path, previous: dict | None, reason: str) -> None:
        """Remember the failure; a previously good version keeps serving (status 'stale')."""
        try:
            self.store.record_document_failure(doc_id, str(path.resolve()), path.name, reason,
                                               keep_chunks=bool(previous and previous["chunks"]))
        except sqlite3.Error:
            log.exception("could not record the failure of %s", path)

    def _delete_vectors(self, ids: list[str], index: VectorIndex | None = None) -> None:
        if not ids:
            return
        try:
            (index or self.vectors).collection.delete(ids=ids)
        except Exception:  # orphans are harmless: retrieval only returns ids that SQLite knows
            log.warning("could not delete %d stale vectors", len(ids), exc_info=True)

    def prune(self) -> list[FileResult]:
        """Drop documents whose files no longer exist."""
        results = []
        for doc in self.store.query("SELECT id, path, chunks FROM documents"):
            if Path(doc["path"]).exists():
                continue
            ids = [r["id"] for r in self.store.query("SELECT id FROM chunks WHERE document_id = ?", (doc["id"],))]
            self.store.delete_document(doc["id"])
            self._delete_vectors(ids)
            results.append(FileResult(doc["path"], "pruned", doc["chunks"] or 0))
        return results

    def rebuild_lexical(self) -> None:
        """Rebuild BM25 from SQLite. One rebuild at a time (threads of the bot, or processes ingesting at once
        against a Chroma server): each reads the chunks committed when it starts, and every ingest commits
        before it rebuilds, so the last rebuild to finish holds everyone's chunks and none overwrites a newer
        one with an older snapshot half-way."""
        from filelock import FileLock

        with FileLock(str(self.settings.home / "bm25.lock")):
            rows = self.store.query("SELECT id, source, heading, text FROM chunks ORDER BY document_id, ord")
            self.lexical.rebuild([(r["id"], r["source"], embedding_text(r["source"], r["heading"], r["text"]))
                                  for r in rows])

    def reindex(self) -> int:
        """Rebuild both indexes from SQLite (after changing the embedding model, or a lost Chroma folder).
        The serving collection is dropped and rewritten by the serving embedder (the promoted retriever's,
        else the configured one) without being opened first: its old vectors may be another model's."""
        target = serving_target(self.settings, self.store)
        try:
            chroma_client(self.settings).delete_collection(target.collection)
        except Exception:  # chromadb.errors.NotFoundError: nothing to drop
            log.info("no collection %s to drop", target.collection)
        with self._dense_lock:
            self._dense = None
        dense = self.dense
        rows = self.store.query("SELECT * FROM chunks ORDER BY document_id, ord")
        indexed = [IndexedChunk(r["id"], r["document_id"], r["source"], r["page"], r["heading"], r["text"]) for r in rows]
        if indexed:
            vectors = dense.embedder.encode([embedding_text(c.source, c.heading, c.text) for c in indexed])
            dense.index.upsert(indexed, vectors, model=dense.embedder.identity)
        self.rebuild_lexical()
        return len(indexed)

    # --- reading ------------------------------------------------------------------------------
    def chunks_by_id(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.store.query(f"SELECT * FROM chunks WHERE id IN ({marks})", tuple(ids))
        return {r["id"]: r for r in rows}

    def documents(self) -> list[dict[str, Any]]:
        return self.store.query("SELECT * FROM documents ORDER BY name")

    def stats(self) -> dict[str, int]:
        return {
            "documents": self.store.scalar("SELECT COUNT(*) FROM documents WHERE status IN ('ok', 'stale')") or 0,
            "chunks": self.store.scalar("SELECT COUNT(*) FROM chunks") or 0,
            "failed": self.store.scalar("SELECT COUNT(*) FROM documents WHERE status = 'failed'") or 0,
        }


def _json_list(values: list[str]) -> str | None:
    import json

    return json.dumps(values) if values else None
