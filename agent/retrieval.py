"""Hybrid retrieval: dense (Chroma, cosine) + lexical (BM25) fused by reciprocal rank, then an
optional cross-encoder reranker. Every hit keeps its scores and provenance.

    flywheel ask "How do I roll back a deploy?" --json   # shows the retrieved citations

The dense side follows the retriever registry: `kb.dense` is the promoted fine-tuned embedder with its own
collection (training/retriever.py), else the configured embedder; each search uses one such pair throughout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from typing import TYPE_CHECKING

from storage.index import embedding_text

if TYPE_CHECKING:
    from storage.knowledge import KnowledgeBase


@dataclass
class Hit:
    chunk_id: str
    source: str
    page: int | None
    heading: str | None
    text: str
    score: float  # the final ranking score (RRF, or the reranker's when one is configured)
    dense: float | None = None  # cosine similarity, when the dense retriever found it
    lexical: float | None = None  # BM25 score, when the lexical retriever found it
    rerank: float | None = None
    tokens: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    hits: list[Hit]
    best_dense: float  # the best cosine similarity among all dense candidates: how on-topic the docs are
    timings_ms: dict[str, float] = field(default_factory=dict)
    retriever: str = "base"  # the embedder that ranked the dense side: a retriever version, or "base"


def reciprocal_rank_fusion(rankings: list[list[str]], k: int = 60) -> list[tuple[str, float]]:
    """Fuse ranked id lists: score(d) = sum over lists of 1 / (k + rank), rank starting at 1."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


@lru_cache(maxsize=2)
def _cross_encoder(name_or_path: str):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(name_or_path, device="cpu", local_files_only=Path(name_or_path).exists())


class Retriever:
    def __init__(self, kb: "KnowledgeBase"):
        self.kb = kb
        self.settings = kb.settings

    def search(self, query: str, k: int | None = None, sources: list[str] | None = None,
               also: Sequence[str] = ()) -> SearchResult:
        """The `k` best chunks for `query`: dense and BM25 rankings fused by RRF (then reranked when a
        reranker is configured). `also` are more phrasings of the same need (a follow-up's own words):
        their rankings join the fusion, and the reranker still scores against `query`."""
        k = k or self.settings.top_k
        n = self.settings.candidates
        timings: dict[str, float] = {}
        texts = [query, *also]

        started = time.perf_counter()
        dense_index = self.kb.dense  # the promoted retriever's embedder + collection, as one pair
        dense_runs = [dense_index.search(text, n, sources) for text in texts]
        timings["dense_ms"] = _ms(started)

        started = time.perf_counter()
        lexical_runs = [self.kb.lexical.query(text, n, sources) for text in texts]
        timings["lexical_ms"] = _ms(started)

        started = time.perf_counter()
        rankings = [[i for i, _ in run] for run in dense_runs + lexical_runs]
        fused = reciprocal_rank_fusion(rankings, k=self.settings.rrf_k)
        pool = fused[: max(k, 20)] if self.settings.reranker_model else fused[: k * 3]
        rows = self.kb.chunks_by_id([i for i, _ in pool])  # ids unknown to SQLite (stale vectors) drop out
        dense_by_id, lexical_by_id = _best_scores(dense_runs), _best_scores(lexical_runs)
        hits = [
            Hit(
                chunk_id=cid,
                source=rows[cid]["source"],
                page=rows[cid]["page"],
                heading=rows[cid]["heading"],
                text=rows[cid]["text"],
                score=score,
                dense=dense_by_id.get(cid),
                lexical=lexical_by_id.get(cid),
                tokens=rows[cid]["tokens"],
            )
            for cid, score in pool
            if cid in rows
        ]
        timings["fuse_ms"] = _ms(started)

        if self.settings.reranker_model and hits:
            started = time.perf_counter()
            model = _cross_encoder(self.settings.reranker_model)
            scores = model.predict([(query, embedding_text(h.source, h.heading, h.text)) for h in hits])
            for hit, value in zip(hits, scores):
                hit.rerank = hit.score = float(value)
            hits.sort(key=lambda h: -h.score)
            timings["rerank_ms"] = _ms(started)

        best = max(dense_by_id.values(), default=0.0)
        return SearchResult(hits=hits[:k], best_dense=best, timings_ms=timings, retriever=dense_index.target.label)


def _best_scores(runs: list[list[tuple[str, float]]]) -> dict[str, float]:
    """chunk id -> its best score over the runs: a chunk found by several phrasings keeps its best."""
    best: dict[str, float] = {}
    for run in runs:
        for cid, score in run:
            best[cid] = max(score, best.get(cid, score))
    return best


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
