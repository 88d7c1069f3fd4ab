"""The two chunk indexes: dense vectors in ChromaDB and lexical BM25 with bm25s.

SQLite's `chunks` table is the source of truth; both indexes can be rebuilt from it
(`flywheel ingest --reindex`). Chroma runs embedded (`PersistentClient`) or, for teams that
outgrow one machine, against a Chroma server (`FLYWHEEL_CHROMA_HOST`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.config import Settings
from storage.embeddings import FlywheelEmbeddingFunction

log = logging.getLogger(__name__)


@dataclass
class IndexedChunk:
    id: str
    document_id: str
    source: str
    page: int | None
    heading: str | None
    text: str


def embedding_text(source: str, heading: str | None, text: str) -> str:
    """What gets embedded and BM25-indexed: the chunk with its provenance, so that a chunk under
    '## Rollback' in deploys.md matches 'how do I roll back a deploy' even if its body never says 'deploy'."""
    title = Path(source).stem.replace("_", " ").replace("-", " ")
    return f"{title} — {heading}\n{text}" if heading else f"{title}\n{text}"


class VectorIndex:
    """Chunks in a Chroma collection (cosine), always written and queried with our own embeddings."""

    def __init__(self, settings: Settings):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        if settings.chroma_host:
            self.client = chromadb.HttpClient(
                host=settings.chroma_host, port=settings.chroma_port, settings=chroma_settings
            )
        else:
            settings.chroma_dir.mkdir(parents=True, exist_ok=True)
            self.client = chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)
        self.collection = self.client.get_or_create_collection(
            settings.collection,
            embedding_function=FlywheelEmbeddingFunction(settings.embedding_model),
            configuration={"hnsw": {"space": "cosine"}},
        )

    def count(self) -> int:
        return self.collection.count()

    def upsert(self, chunks: list[IndexedChunk], embeddings: np.ndarray, batch: int = 2000) -> None:
        for start in range(0, len(chunks), batch):
            part = chunks[start : start + batch]
            self.collection.upsert(
                ids=[c.id for c in part],
                embeddings=embeddings[start : start + batch],
                metadatas=[_metadata(c) for c in part],
                documents=[c.text for c in part],
            )

    def delete_document(self, document_id: str) -> None:
        self.collection.delete(where={"document_id": document_id})

    def query(self, embedding: np.ndarray, k: int, sources: list[str] | None = None) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity), best first."""
        n = self.count()
        if n == 0:
            return []
        where = {"source": {"$in": sources}} if sources else None
        result = self.collection.query(
            query_embeddings=[embedding], n_results=min(k, n), where=where, include=["distances"]
        )
        return [(cid, 1.0 - float(d)) for cid, d in zip(result["ids"][0], result["distances"][0])]


def _metadata(chunk: IndexedChunk) -> dict[str, object]:
    meta: dict[str, object] = {"document_id": chunk.document_id, "source": chunk.source}
    if chunk.page is not None:
        meta["page"] = chunk.page  # Chroma metadata cannot hold None
    if chunk.heading:
        meta["heading"] = chunk.heading
    return meta


class LexicalIndex:
    """BM25 over all chunks with bm25s, persisted under FLYWHEEL_HOME/bm25 and rebuilt after each ingest.

    bm25s indexes are immutable; rebuilding from SQLite takes ~1 s per 10k chunks, far less than
    embedding those chunks, so a rebuild per ingest keeps the code simple and the index exact.
    """

    def __init__(self, settings: Settings):
        self.dir = settings.bm25_dir
        self._lock = threading.Lock()
        self._retriever = None
        self._ids: list[str] = []
        self._sources: np.ndarray = np.array([], dtype=object)
        self._loaded_stamp: float | None = None

    # --- building -----------------------------------------------------------------------------
    def rebuild(self, rows: list[tuple[str, str, str]]) -> None:
        """rows: (chunk id, source file name, text to index). Written atomically."""
        bm25s = _bm25s()
        tmp = self.dir.with_name(self.dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ids = [r[0] for r in rows]
        if rows:
            retriever = bm25s.BM25()
            retriever.index(tokenize([r[2] for r in rows]), show_progress=False)
            retriever.save(str(tmp), show_progress=False)
        (tmp / "ids.json").write_text(json.dumps({"ids": ids, "sources": [r[1] for r in rows]}))
        old = self.dir.with_name(self.dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.dir.exists():
            os.replace(self.dir, old)
        os.replace(tmp, self.dir)
        shutil.rmtree(old, ignore_errors=True)
        with self._lock:
            self._loaded_stamp = None  # reload lazily

    # --- querying -----------------------------------------------------------------------------
    def _load(self) -> None:
        bm25s = _bm25s()
        stamp_file = self.dir / "ids.json"
        stamp = stamp_file.stat().st_mtime if stamp_file.exists() else None
        if stamp == self._loaded_stamp:
            return
        if stamp is None:
            self._retriever, self._ids, self._sources = None, [], np.array([], dtype=object)
        else:
            meta = json.loads(stamp_file.read_text())
            self._ids = meta["ids"]
            self._sources = np.array(meta["sources"], dtype=object)
            self._retriever = bm25s.BM25.load(str(self.dir), show_progress=False) if self._ids else None
        self._loaded_stamp = stamp

    def query(self, text: str, k: int, sources: list[str] | None = None) -> list[tuple[str, float]]:
        """(chunk id, BM25 score), best first; only chunks that share a term with the query."""
        with self._lock:
            self._load()
            if self._retriever is None:
                return []
            tokens = [t for t in tokenize([text])[0] if t]
            vocab = self._retriever.vocab_dict
            tokens = [t for t in tokens if t in vocab]
            if not tokens:
                return []
            mask = None
            if sources:
                mask = np.isin(self._sources, sources).astype(np.float32)
            docs, scores = self._retriever.retrieve(
                [tokens], k=min(k, len(self._ids)), show_progress=False, weight_mask=mask, n_threads=1
            )
        return [(self._ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]


def _bm25s():
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG on its logger at import
    return bm25s


def tokenize(texts: list[str], return_ids: bool = True) -> list[list[str]]:
    """The project's analyzer (storage.text.token_list: bm25s's pattern and English stopwords, Snowball
    stemming, CJK bigrams), so BM25 and the grounding check agree on what a word is."""
    from storage.text import token_list

    return [token_list(t) or [""] for t in texts]  # bm25s wants a token per document; "" matches nothing
