"""The two chunk indexes: dense vectors in ChromaDB and lexical BM25 with bm25s.

SQLite's `chunks` table is the source of truth; both indexes can be rebuilt from it
(`flywheel ingest --reindex`). Chroma runs embedded (`PersistentClient`) or, for teams that
outgrow one machine, against a Chroma server (`FLYWHEEL_CHROMA_HOST`).

Each Chroma collection records the model that wrote its vectors; a promoted retriever (a fine-tuned
embedder, training/retriever.py) serves from its own collection, `<collection>-rNNNN`, and `DenseIndex`
pairs a collection with its embedder so the two always change together. BM25 is the same for all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.config import Settings
from storage.embeddings import FlywheelEmbeddingFunction, model_identity

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


class EmbeddingMismatchError(RuntimeError):
    """A collection opened or queried with a model other than the one that wrote its vectors: cosine
    similarities between two models' vectors are meaningless, so this is refused, never attempted."""


MODEL_KEY = "embedding_model"  # collection metadata: model_identity() of the model that wrote the vectors
RETRIEVER_KEY = "retriever"  # collection metadata: the retriever version ("base" = the configured embedder)


class ChromaBusyError(RuntimeError):
    """The embedded Chroma store is owned by another process (see `claim_chroma`)."""


OWNER_FILE = "flywheel-owner.lock"  # in the Chroma folder: advisory lock + who holds it (JSON)
_owned: dict[str, tuple[int, int]] = {}  # resolved Chroma folder -> (pid, fd) of the lock this process holds
_owned_lock = threading.Lock()


def claim_chroma(settings: Settings) -> None:
    """Make this process the owner of the embedded Chroma store under `settings.chroma_dir`, for its lifetime.

    Chroma's embedded `PersistentClient` is not safe across processes: two processes writing one folder (the
    bot and `flywheel ingest`, say) can corrupt its HNSW segments or lose vectors. So the first process to
    open it takes an exclusive advisory lock (`flock`) on `chroma/flywheel-owner.lock` and keeps it until it
    exits (the kernel releases it even after a crash). Another process gets ChromaBusyError saying who owns
    the store and what to do instead. Exceptions: a Chroma server (`FLYWHEEL_CHROMA_HOST`) needs no lock, and
    a child of the owner (the cycle's training and gate processes, which the owner waits for) shares it.
    Calling it again in the owning process is free."""
    if settings.chroma_host:
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; one process per store is then up to the operator
        return
    folder = settings.chroma_dir
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    with _owned_lock:
        held = _owned.get(key)
        if held is not None and held[0] == os.getpid():
            return
        # Not inheritable (os.open's default): a training child must not keep the lock after the owner exits.
        fd = os.open(folder / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: another process holds it
            owner = _read_owner(fd)
            os.close(fd)
            if owner.get("pid") == os.getppid():
                return  # the owner started us and waits for us (training/gate child processes)
            raise ChromaBusyError(_busy_message(folder, owner)) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "command": " ".join(_command_line()),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        _owned[key] = (os.getpid(), fd)


def _read_owner(fd: int) -> dict:
    """What the owning process wrote into the lock file ({} if unreadable: it may be writing it right now)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _command_line() -> list[str]:
    import sys

    return [Path(sys.argv[0]).name, *sys.argv[1:3]] if sys.argv and sys.argv[0] else ["python"]


def _busy_message(folder: Path, owner: dict) -> str:
    who = f"pid {owner['pid']}" if owner.get("pid") else "another process"
    if owner.get("command"):
        who += f", `{owner['command']}`"
    if owner.get("since"):
        who += f", since {owner['since']}"
    return (f"the embedded Chroma store {folder} is in use by another Flywheel process ({who}). Chroma's embedded "
            "store is not safe to share between processes. Either stop that process (e.g. the bot; in Slack, "
            "`/flywheel ingest` ingests through the running bot), or serve the store with a Chroma server — "
            f"`chroma run --path {folder} --port 8000` — and point every Flywheel process (the bot included) "
            "at it with FLYWHEEL_CHROMA_HOST=localhost and FLYWHEEL_CHROMA_PORT=8000.")


def chroma_client(settings: Settings):
    """The embedded Chroma store under `settings.chroma_dir` (owned by this process, see `claim_chroma`), or a
    Chroma server (`FLYWHEEL_CHROMA_HOST`, `FLYWHEEL_CHROMA_PORT`), which any number of processes can share."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if settings.chroma_host:
        return chromadb.HttpClient(host=settings.chroma_host, port=settings.chroma_port, settings=chroma_settings)
    claim_chroma(settings)
    return chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)


def collection_name(settings: Settings, version: str | None) -> str:
    """The base embedder's vectors live in `settings.collection`, retriever rNNNN's in `<collection>-rNNNN`."""
    return settings.collection if version is None else f"{settings.collection}-{version}"


class VectorIndex:
    """Chunks in a Chroma collection (cosine), always written and queried with our own embeddings.

    A collection belongs to one embedding model: its identity is recorded in the collection's metadata
    when the collection is created, and opening it with another model raises EmbeddingMismatchError.
    Defaults: `settings.collection` and `settings.embedding_model` (the base embedder)."""

    def __init__(self, settings: Settings, collection: str | None = None, model: str | None = None,
                 retriever: str | None = None):
        self.client = chroma_client(settings)
        self.name = collection or settings.collection
        model_name = settings.embedding_model if model is None else model
        self.model = model_identity(model_name)
        self.collection = self.client.get_or_create_collection(
            self.name,
            embedding_function=FlywheelEmbeddingFunction(model_name),
            configuration={"hnsw": {"space": "cosine"}},
            metadata={MODEL_KEY: self.model, RETRIEVER_KEY: retriever or "base"},  # used only when created
        )
        meta = dict(self.collection.metadata or {})
        recorded = meta.get(MODEL_KEY)
        if recorded is None:
            # Written before collections recorded their model: by the configured embedder, the only one then.
            # (hnsw:* keys can't be re-set; the space lives in the configuration anyway.)
            kept = {k: v for k, v in meta.items() if not k.startswith("hnsw:")}
            self.collection.modify(metadata={**kept, MODEL_KEY: self.model, RETRIEVER_KEY: retriever or "base"})
        elif recorded != self.model:
            raise EmbeddingMismatchError(
                f"Chroma collection {self.name!r} holds vectors of {recorded!r}, not of {self.model!r}; refusing "
                "to mix two models' vectors. Serve the retriever that wrote it, or rebuild the index with "
                "`flywheel ingest --reindex`."
            )

    def check_model(self, model: str) -> None:
        """Raise EmbeddingMismatchError unless `model` (an identity) wrote this collection."""
        if model != self.model:
            raise EmbeddingMismatchError(
                f"query embedded by {model!r}, but collection {self.name!r} holds vectors of {self.model!r}")

    def count(self) -> int:
        return self.collection.count()

    def upsert(self, chunks: list[IndexedChunk], embeddings: np.ndarray, batch: int = 2000,
               model: str | None = None) -> None:
        """Write `chunks` with their (n, dim) `embeddings`; `model`, when given, must be this collection's."""
        if model is not None:
            self.check_model(model)
        for start in range(0, len(chunks), batch):
            part = chunks[start : start + batch]
            self.collection.upsert(
                ids=[c.id for c in part],
                embeddings=embeddings[start : start + batch],
                metadatas=[_metadata(c) for c in part],
                documents=[c.text for c in part],
            )

    def ids(self, page: int = 5000) -> set[str]:
        """Every chunk id the collection holds (paged: Chroma caps one read)."""
        found: set[str] = set()
        offset = 0
        while True:
            got = self.collection.get(include=[], limit=page, offset=offset)["ids"]
            found.update(got)
            if len(got) < page:
                return found
            offset += page

    def vectors(self, ids: list[str], page: int = 2000) -> dict[str, np.ndarray]:
        """{chunk id: stored vector} for those of `ids` the collection holds (what it would be searched with)."""
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(ids), page):
            got = self.collection.get(ids=ids[start : start + page], include=["embeddings"])
            out.update({i: np.asarray(v, dtype=np.float32) for i, v in zip(got["ids"], got["embeddings"])})
        return out

    def delete_document(self, document_id: str) -> None:
        self.collection.delete(where={"document_id": document_id})

    def query(self, embedding: np.ndarray, k: int, sources: list[str] | None = None,
              model: str | None = None) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity), best first. `model`, the identity of the model that embedded the
        query, is checked against the collection's when given (DenseIndex always gives it)."""
        if model is not None:
            self.check_model(model)
        where = {"source": {"$in": sources}} if sources else None
        # No count() first to cap n_results: Chroma 1.x returns fewer hits when the collection (or the filter)
        # holds fewer, and an empty one returns none. At 100k chunks count() took ~10 ms, four times the HNSW
        # search itself, and it grows with the collection (bench/retrieval.py).
        result = self.collection.query(
            query_embeddings=[embedding], n_results=k, where=where, include=["distances"]
        )
        return [(cid, 1.0 - float(d)) for cid, d in zip(result["ids"][0], result["distances"][0])]


@dataclass(frozen=True)
class DenseTarget:
    """Which embedder serves dense retrieval and where its vectors are: the base embedder (version None,
    `settings.embedding_model` in `settings.collection`) or a promoted retriever (its model folder and
    collection)."""

    version: str | None
    model: str  # what get_embedder() loads: an id or a path ("" = bundled MiniLM)
    collection: str

    @property
    def label(self) -> str:
        return self.version or "base"


def base_target(settings: Settings) -> DenseTarget:
    """The configured embedder and its collection: what serves while no retriever is promoted."""
    return DenseTarget(None, settings.embedding_model, collection_name(settings, None))


class DenseIndex:
    """An embedder and the collection of its vectors, opened and swapped as one object, so a query is never
    embedded by one model and searched among another model's vectors."""

    def __init__(self, settings: Settings, target: DenseTarget):
        from storage.embeddings import get_embedder

        self.target = target
        self.embedder = get_embedder(target.model)
        self.index = VectorIndex(settings, target.collection, target.model, target.version)
        self.index.check_model(self.embedder.identity)

    def search(self, text: str, k: int, sources: list[str] | None = None) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity) of the `k` nearest chunks to `text`, best first."""
        embedding = self.embedder.encode([text])[0]
        return self.index.query(embedding, k, sources, model=self.embedder.identity)


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

    def known(self, wanted: set[str]) -> set[str]:
        """The analyzed terms (storage.text.terms) of `wanted` that occur in at least one indexed chunk."""
        with self._lock:
            self._load()
            if self._retriever is None:
                return set()
            vocab = self._retriever.vocab_dict
            return {t for t in wanted if t in vocab}

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
