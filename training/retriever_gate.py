"""The retriever gate: does a fine-tuned embedder (training/retriever.py) rank the gate's questions better
than the one serving? If so, training/retriever_registry.py switches to it.

    python -m training.retriever gate r0002 [--qa qa.jsonl] [--no-apply] [--force]
    python -m training.retriever compare r0002 --against base --qa qa.jsonl --no-heldout   # JSON, nothing applied

    decision, reports, vectors = gate_retriever(settings, store, kb, "r0002", qa)
    decision, reports = compare_retrievers(settings, store, kb, "r0002", "base", qa, heldout=False)

Gate. Candidate vs the serving embedder (the promoted retriever, else the configured model) on held-out
questions: the distilled held-out split (relevant = the pair's chunk and any chunk of its document that
supports the answer) plus admin QA items with `source`/`pages` (relevant = a chunk of that file/page,
agent.metrics' rule). Nothing is indexed to gate: each embedder ranks the corpus in memory (the serving
one's vectors are read back from its collection; only the candidate embeds the corpus, and those vectors
are reused by the switch), fused with the same BM25 ranking by reciprocal rank exactly as serving does
(the optional cross-encoder is left out). Promotion needs at least `gate_min_items` items, a hit@1 gain
of at least `promote_margin` that is significant by the adapter gate's rule (training.gate: paired
bootstrap 95% CI above 0 and exact sign test p < 0.05), hit@5 not lower, the embedder's own (dense-only)
hit@5 not down by more than `guard_tolerance` (BM25 can mask a worse embedder on one question set), and
the share of answerable questions whose best cosine falls below `min_relevance` (the agent would then
refuse) not up by more than `guard_tolerance`. MRR and the other dense-only numbers are reported.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from statistics import mean
from typing import Any

import numpy as np

from agent.metrics import hit_at_k, strip_citations
from agent.prompts import says_not_found
from storage.config import Settings
from storage.db import Store
from storage.index import DenseTarget, VectorIndex, base_target, chroma_client, embedding_text
from storage.knowledge import serving_target
from training.gate import Decision, paired_decision, unique_questions, weigh_gain
from training.retriever_registry import EMBED_BATCH, Progress, _quiet, _update, get_retriever, reject


# --- the gate ------------------------------------------------------------------------------------
def gate_items(store: Store, qa: list[dict[str, Any]] | None = None, *, heldout: bool = True) -> list[dict[str, Any]]:
    """The questions the retriever gate ranks, each with the set of chunk ids that answer it:
    distilled held-out pairs (their chunk + chunks of the same document that support the answer), then
    admin QA items that name a `source` and/or `pages` (any chunk there). Held-out refusal pairs come as
    `unanswerable` items: no relevance, only the min_relevance report. Questions asked twice count once."""
    from storage.text import terms
    from training.distill import is_supported

    chunks = store.query("SELECT id, document_id, source, page, heading, text FROM chunks")
    by_id = {c["id"]: c for c in chunks}
    by_document: dict[str, list[tuple[dict[str, Any], set[str]]]] = {}
    for chunk in chunks:
        by_document.setdefault(chunk["document_id"], []).append((chunk, terms(chunk["text"])))

    def supporting(answer: str, document_id: str) -> set[str]:
        # is_supported re-analyses the passage per call; a cheap term-overlap screen first keeps a
        # one-document manual (every chunk "the same document") to a few calls per question.
        wanted = terms(answer)
        return {c["id"] for c, have in by_document[document_id]
                if len(wanted & have) >= 0.5 * len(wanted) and is_supported(answer, c["text"])}
    items: list[dict[str, Any]] = []
    pairs = store.query("SELECT id, chunk_id, question, answer FROM qa_pairs WHERE split = 'heldout' ORDER BY id")
    for pair in pairs if heldout else []:
        chunk = by_id.get(pair["chunk_id"])
        if chunk is None:
            continue
        if says_not_found(pair["answer"]):
            items.append({"id": pair["id"], "origin": "heldout", "question": pair["question"], "unanswerable": True,
                          "relevant": set()})
            continue
        answer = strip_citations(pair["answer"])
        relevant = {chunk["id"]} | supporting(answer, chunk["document_id"])
        items.append({"id": pair["id"], "origin": "heldout", "question": pair["question"], "relevant": relevant})
    for number, item in enumerate(qa or [], start=1):
        if item.get("unanswerable") or not (item.get("source") or item.get("pages")):
            continue
        relevant = {c["id"] for c in chunks
                    if hit_at_k([{"source": c["source"], "page": c["page"]}], item.get("source"), item.get("pages"), 1)}
        if relevant:  # a file that isn't ingested can't be found by either embedder
            items.append({"id": str(item.get("id") or f"qa{number:03d}"), "origin": item.get("origin", "qa"),
                          "question": item["question"], "relevant": relevant})
    return unique_questions(items)


def corpus(store: Store) -> tuple[list[str], list[str]]:
    """(chunk ids, texts as embedded) of every chunk, in a fixed order."""
    rows = store.query("SELECT id, source, heading, text FROM chunks ORDER BY document_id, ord")
    return [r["id"] for r in rows], [embedding_text(r["source"], r["heading"], r["text"]) for r in rows]


def embed(embedder: Any, texts: list[str], what: str, on_progress: Progress = _quiet,
          batch: int = EMBED_BATCH) -> np.ndarray:
    """(len(texts), dim) normalized float32 vectors, in batches so progress can be shown."""
    parts = []
    for start in range(0, len(texts), batch):
        parts.append(embedder.encode(texts[start : start + batch]))
        on_progress(what, min(start + batch, len(texts)), len(texts))
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), dtype=np.float32)


def corpus_vectors(settings: Settings, store: Store, target: DenseTarget, ids: list[str], texts: list[str],
                   on_progress: Progress = _quiet) -> np.ndarray:
    """(len(ids), dim) vectors of the corpus as `target` would search it: read back from its collection
    when it has one (the serving side of a gate costs no corpus pass), embedding only what it lacks;
    embedded in memory otherwise — nothing is indexed to gate. `texts` are the chunks as embedded."""
    from storage.embeddings import get_embedder

    embedder = get_embedder(target.model)
    found: dict[str, np.ndarray] = {}
    names = {c if isinstance(c, str) else c.name for c in chroma_client(settings).list_collections()}
    if target.collection in names:
        index = VectorIndex(settings, target.collection, target.model, target.version)
        index.check_model(embedder.identity)
        found = index.vectors(ids)
    missing = [n for n, i in enumerate(ids) if i not in found]
    if missing:
        vectors = embed(embedder, [texts[n] for n in missing], f"embedding the corpus with {target.label}", on_progress)
        found.update(zip([ids[n] for n in missing], vectors))
    return np.stack([found[i] for i in ids]) if ids else np.zeros((0, embedder.dimension), dtype=np.float32)


def rank_pair(settings: Settings, store: Store, kb: Any, candidate: DenseTarget, reference: DenseTarget,
              items: list[dict[str, Any]], on_progress: Progress = _quiet
              ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Both embedders' reports on `items` ({"candidate", "serving"}: see rank_items), each fused with the
    same BM25 ranking, and the candidate's corpus vectors by chunk id (a switch to it reuses them)."""
    from storage.embeddings import get_embedder

    chunk_ids, texts = corpus(store)
    questions = [i["question"] for i in items]
    lexical = [[cid for cid, _ in kb.lexical.query(q, settings.candidates)] for q in questions]
    reports: dict[str, dict[str, Any]] = {}
    vectors: dict[str, np.ndarray] = {}
    for name, target in (("candidate", candidate), ("serving", reference)):
        chunk_vectors = corpus_vectors(settings, store, target, chunk_ids, texts, on_progress)
        question_vectors = get_embedder(target.model).encode(questions)
        reports[name] = rank_items(settings, items, question_vectors, chunk_ids, chunk_vectors, lexical, target.label)
        if name == "candidate":
            vectors = dict(zip(chunk_ids, chunk_vectors))
    return reports, vectors


def rank_items(settings: Settings, items: list[dict[str, Any]], question_vectors: np.ndarray,
               chunk_ids: list[str], chunk_vectors: np.ndarray, lexical: list[list[str]],
               label: str) -> dict[str, Any]:
    """One embedder's report: per item the served ranking (dense top `candidates` fused with BM25 by
    reciprocal rank, as agent.retrieval does) and the dense-only ranking, scored by hit@1, hit@5 and
    reciprocal rank against the item's relevant chunks; plus the best cosine (min_relevance guard)."""
    from agent.retrieval import reciprocal_rank_fusion

    scores = question_vectors @ chunk_vectors.T  # (questions, chunks) cosine: both sides are normalized
    rows = []
    for number, item in enumerate(items):
        row_scores = scores[number]
        best = float(row_scores.max()) if row_scores.size else 0.0
        order = np.argsort(-row_scores, kind="stable")
        dense = [chunk_ids[j] for j in order[: settings.candidates]]
        fused = [cid for cid, _ in reciprocal_rank_fusion([dense, lexical[number]], k=settings.rrf_k)]
        row = {"id": item["id"], "origin": item["origin"], "answerable": not item.get("unanswerable"),
               "best_dense": round(best, 4)}
        if row["answerable"]:
            relevant = item["relevant"]
            served = next((rank for rank, cid in enumerate(fused, start=1) if cid in relevant), None)
            dense_rank = next((rank for rank, j in enumerate(order, start=1) if chunk_ids[j] in relevant), None)
            row.update({"rank": served, "hit@1": int(served == 1), "hit@5": int(served is not None and served <= 5),
                        "rr": round(1 / served, 4) if served else 0.0, "dense_rank": dense_rank,
                        "dense_hit@1": int(dense_rank == 1), "dense_hit@5": int(dense_rank is not None and dense_rank <= 5),
                        "dense_rr": round(1 / dense_rank, 4) if dense_rank else 0.0,
                        "below_min_relevance": int(best < settings.min_relevance)})
        rows.append(row)
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]

    def share(key: str, among: list[dict[str, Any]]) -> float:
        return round(mean(r[key] for r in among), 4) if among else 0.0

    report: dict[str, Any] = {
        "label": label, "n": len(answerable), "unanswerable": len(unanswerable),
        "hit@1": share("hit@1", answerable), "hit@5": share("hit@5", answerable), "mrr": share("rr", answerable),
        "dense_hit@1": share("dense_hit@1", answerable), "dense_hit@5": share("dense_hit@5", answerable),
        "dense_mrr": share("dense_rr", answerable), "below_min_relevance": share("below_min_relevance", answerable),
        "items": rows,
    }
    if unanswerable:  # near-topic questions the docs don't answer: the model would still run on these
        report["unanswerable_above_min_relevance"] = round(
            mean(int(r["best_dense"] >= settings.min_relevance) for r in unanswerable), 4)
    origins = sorted({r["origin"] for r in answerable})
    if len(origins) > 1:
        report["hit@1_by_origin"] = {o: share("hit@1", [r for r in answerable if r["origin"] == o]) for o in origins}
    return report


def compare(candidate: dict[str, Any], reference: dict[str, Any], margin: float, tolerance: float, *,
            min_items: int = 0, force: bool = False) -> Decision:
    """Promote only if (1) at least `min_items` answerable items were ranked (or `force`), (2) the per-item
    hit@1 gain over the reference is at least `margin` and significant by training.gate's rule (paired
    bootstrap 95% CI above 0 and exact sign test p < 0.05), (3) hit@5 is not lower (and the embedder's own,
    dense-only hit@5 drops by at most `tolerance`), and (4) the share of questions below min_relevance
    rises by at most `tolerance`. MRR and the other dense-only numbers go into notes."""
    ref_label = reference["label"]
    pairs = [(c["hit@1"], r["hit@1"]) for c, r in zip(candidate["items"], reference["items"]) if c["answerable"]]
    if [c["id"] for c in candidate["items"]] != [r["id"] for r in reference["items"]]:
        raise ValueError("the candidate and the reference were ranked on different questions; can't pair them")
    notes = [f"MRR {candidate['mrr']:.3f} vs {reference['mrr']:.3f}; dense only: hit@1 {candidate['dense_hit@1']:.3f} "
             f"vs {reference['dense_hit@1']:.3f}, hit@5 {candidate['dense_hit@5']:.3f} vs {reference['dense_hit@5']:.3f}, "
             f"MRR {candidate['dense_mrr']:.3f} vs {reference['dense_mrr']:.3f}"]
    decision = paired_decision(pairs, ref_label, notes, candidate["n"] + candidate["unanswerable"])
    measured = (f"hit@1 {candidate['hit@1']:.3f} vs {ref_label} {reference['hit@1']:.3f} "
                f"on {len(pairs)} questions")
    ok = weigh_gain(decision, candidate["n"], measured, margin, min_items=min_items, force=force,
                    unit="questions", hint="add a --qa file with sources/pages")
    if candidate["hit@5"] < reference["hit@5"]:
        ok = False
        decision.reasons.append(f"hit@5 got lower: {reference['hit@5']:.3f} → {candidate['hit@5']:.3f}")
    if reference["dense_hit@5"] - candidate["dense_hit@5"] > tolerance:
        # BM25 can hide a worse embedder on this question set; not on questions whose words the passage lacks.
        ok = False
        decision.reasons.append(f"dense-only hit@5 got worse: {reference['dense_hit@5']:.3f} → "
                                f"{candidate['dense_hit@5']:.3f} (more than {tolerance:.3f})")
    rise = candidate["below_min_relevance"] - reference["below_min_relevance"]
    if rise > tolerance:
        ok = False
        decision.reasons.append(f"guard below_min_relevance got worse: {reference['below_min_relevance']:.3f} → "
                                f"{candidate['below_min_relevance']:.3f} (answerable questions the agent would refuse)")
    decision.promote = ok
    return decision


def gate_retriever(
    settings: Settings,
    store: Store,
    kb: Any,
    version: str,
    qa: list[dict[str, Any]] | None = None,
    *,
    apply: bool = True,
    force: bool = False,
    actor: str = "gate",
    on_progress: Progress = _quiet,
) -> tuple[Decision, dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Rank the gate's questions with the candidate and with the serving embedder; decide and record the
    reports in the candidate's metrics. `apply` rejects a failing candidate; a passing one stays a
    candidate with decision.promote in its metrics until `start_switch` has built its collection.
    Returns (decision, {"candidate", "serving"} reports, the candidate's corpus vectors by chunk id, for
    the switch to reuse)."""
    record = get_retriever(store, version)
    items = gate_items(store, qa)
    if not [i for i in items if not i.get("unanswerable")]:
        raise ValueError("the retriever gate needs held-out questions (distill some documents) or QA items "
                         "with sources/pages")
    started = time.perf_counter()
    reports, vectors = rank_pair(settings, store, kb, record.target(), serving_target(settings, store), items,
                                 on_progress)
    decision = compare(reports["candidate"], reports["serving"], settings.promote_margin, settings.guard_tolerance,
                       min_items=settings.gate_min_items, force=force)
    seconds = round(time.perf_counter() - started, 1)
    summary = {k: v for k, v in reports["candidate"].items()}
    summary.update(seconds=seconds, compared={"serving": reports["serving"]}, decision=asdict(decision))
    _update(store, version, metrics=summary)
    store.audit(actor, "retriever.gate", {"version": version, **asdict(decision)})
    if apply and not decision.promote:
        reject(store, version, actor, reason="; ".join(decision.reasons))
    return decision, reports, vectors


def compare_retrievers(settings: Settings, store: Store, kb: Any, candidate: str, reference: str = "base",
                       qa: list[dict[str, Any]] | None = None, *, heldout: bool = True,
                       on_progress: Progress = _quiet) -> tuple[Decision, dict[str, dict[str, Any]]]:
    """Any two retrievers ("base" = the configured embedder) ranked on the gate's questions, or only on
    `qa` with heldout=False (e.g. human-written questions): the gate's report and verdict, nothing
    recorded or applied. How the README's before/after retrieval numbers are measured."""
    def target(name: str) -> DenseTarget:
        return base_target(settings) if name == "base" else get_retriever(store, name).target()

    items = gate_items(store, qa, heldout=heldout)
    if not [i for i in items if not i.get("unanswerable")]:
        raise ValueError("no questions with a known passage to rank")
    reports, _ = rank_pair(settings, store, kb, target(candidate), target(reference), items, on_progress)
    decision = compare(reports["candidate"], reports["serving"], settings.promote_margin, settings.guard_tolerance,
                       min_items=settings.gate_min_items)
    return decision, reports
