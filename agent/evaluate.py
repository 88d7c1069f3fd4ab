"""Evaluate retrieval and answers on a QA file.

    flywheel eval --qa ../shared/eval/sqlite/qa.jsonl --docs ../shared/eval/sqlite/docs --out results.jsonl

    flywheel eval --qa ../shared/eval/sqlite/qa.jsonl --qa bench/eval/sqlite_unanswerable.jsonl --out r.jsonl

Each QA line has `question`, `answer` (reference), `must_include` (strings), and `source` (file name)
and/or `pages` (1-based physical page indices); `"unanswerable": true` marks a question the documents
don't answer (the right reply is the refusal). Scores: hit@1, hit@5 and MRR (a retrieved chunk from
the item's source, on one of its pages when given), accuracy (every must_include string in the answer,
case-insensitive, and not a refusal), token-F1 and ROUGE-L against the reference, groundedness (share
of answer sentences supported by the cited chunks), latency p50/p95, and refusals both ways:
`false_refusal` (answerable questions refused) and `correct_refusal` (unanswerable questions refused),
and citation validity per answer (at least one [n] marker, every one pointing at a passage shown).
`produced_by_<kind>` is the share of answers written by the model, quoted, refused or smalltalk.
An item with only a reference answer (no must_include) counts as accurate at token-F1 >= 0.5.

This module is the one place answers are scored: the eval gate (training/gate.py) calls `score_item`
and `summarize` for the final answers and the model's drafts alike, so `flywheel eval` and the gate
share one definition of accuracy, refusal and citation validity.

Eval answers are not recorded as usage (no interaction rows): they would otherwise turn into
training data and inflate the bot's usage numbers.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import nullcontext
from pathlib import Path
from statistics import mean
from typing import Any

from rich.table import Table

from agent.metrics import (
    CITATION_RE,
    contains_all,
    groundedness,
    hit_at_k,
    percentile,
    reciprocal_rank,
    rouge_l,
    strip_citations,
    token_f1,
)


def load_qa(path: Path | list[Path], limit: int = 0) -> list[dict[str, Any]]:
    """QA items from one JSONL file or several, in order; ids default to `q001`… per file."""
    if isinstance(path, list | tuple):
        items = [item for p in path for item in load_qa(p)]
        return items[:limit] if limit else items
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        item = json.loads(line)
        if "question" not in item:
            raise ValueError(f"{path}:{number}: every line needs a 'question'")
        item.setdefault("id", f"q{number:03d}")
        items.append(item)
    return items[:limit] if limit else items


F1_CORRECT = 0.5  # token-F1 against the reference at which an item without must_include counts as accurate


def is_refused(result: dict[str, Any]) -> bool:
    """The answer is the not-found reply (or text the agent's check didn't ground)."""
    return result.get("produced_by") == "refusal" or not result.get("grounded")


def is_accurate(answer: str, item: dict[str, Any], refused: bool) -> bool:
    """THE accuracy of one answer, for `flywheel eval` and the gate alike: never a refusal (even when its
    list of closest sources happens to name the key string); every must_include string present; for an
    item with only a reference answer, token-F1 (citation markers stripped) >= F1_CORRECT against it."""
    if refused or not answer.strip():
        return False
    if item.get("must_include"):
        return contains_all(answer, item["must_include"])
    return token_f1(strip_citations(answer), item.get("answer") or "") >= F1_CORRECT


def citation_markers(text: str) -> list[int]:
    """Every passage number cited: [1], [2, 3], [1-3] (ranges expanded), in order."""
    numbers: list[int] = []
    for group in CITATION_RE.findall(text):
        for part in re.split(r"\s*,\s*", group):
            bounds = [int(x) for x in re.split(r"\s*[\-\u2013]\s*", part) if x]
            numbers += list(range(bounds[0], bounds[-1] + 1)) if len(bounds) == 2 else bounds
    return numbers


def citations_valid(text: str, passages: int) -> bool:
    """Citation validity of ONE answer: at least one [n] marker, and every marker points at a passage that
    was shown (1..passages). Defined per answer so that a model that never cites scores 0, not a perfect
    "no invalid markers"."""
    markers = citation_markers(text)
    return bool(markers) and all(1 <= n <= passages for n in markers)


def score_item(item: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Per-item scores; retrieval scores only when the item names a source or pages, citation validity only
    when the result carries the `passages` shown to the model."""
    scores: dict[str, Any] = {}
    retrieved = result["retrieved"]
    if item.get("source") or item.get("pages"):
        source, pages = item.get("source"), item.get("pages")
        scores["hit@1"] = hit_at_k(retrieved, source, pages, 1)
        scores["hit@5"] = hit_at_k(retrieved, source, pages, 5)
        scores["mrr"] = reciprocal_rank(retrieved, source, pages)
    answer = result.get("answer")
    if answer is not None:
        refused = is_refused(result)
        if item.get("unanswerable"):
            scores["correct_refusal"] = refused
            return scores
        scores["false_refusal"] = refused
        if item.get("must_include") or item.get("answer"):
            scores["accuracy"] = is_accurate(answer, item, refused)
        if "passages" in result:
            scores["citation_validity"] = citations_valid(answer, len(result["passages"] or []))
        if item.get("answer"):
            scores["f1"] = token_f1(answer, item["answer"])
            scores["rouge_l"] = rouge_l(answer, item["answer"])
        scores["groundedness"] = groundedness(answer, [c.get("text", "") for c in result.get("citations", [])])
        scores["grounded"] = bool(result.get("grounded"))
    return scores


def run_eval(agent, qa_path: Path, out: Path | None = None, limit: int = 0, retrieval_only: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Ask every question (fresh thread each), write RESULTS lines to `out`, return the summary."""
    from rich.progress import Progress

    items = load_qa(qa_path, limit)
    rows: list[dict[str, Any]] = []
    k = max(agent.settings.top_k, 5)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
    # Each result is written as soon as it exists: a long run that dies keeps what it measured.
    with Progress(transient=True, disable=not progress) as bar, (out.open("w") if out else nullcontext()) as sink:
        task = bar.add_task("Evaluating", total=len(items))
        for item in items:
            started = time.perf_counter()
            if retrieval_only:
                search = agent.retriever.search(item["question"], k=k)
                retrieved = [{"source": h.source, "page": h.page, "score": h.score} for h in search.hits]
                result = {"answer": None, "citations": [], "retrieved": retrieved, "grounded": None}
            else:
                answer = agent.answer(item["question"], surface="eval", record=False)
                result = {"answer": answer.answer, "produced_by": answer.produced_by, "draft": answer.draft,
                          "citations": answer.citations, "retrieved": answer.retrieved, "grounded": answer.grounded,
                          "passages": answer.passages, "timings_ms": answer.timings_ms}
                agent.forget(answer.thread_id)  # eval threads don't belong in the conversation store
            result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
            row = {"id": item["id"], "question": item["question"], **result}
            row["scores"] = score_item(item, result)
            rows.append(row)
            if sink:
                public = {**row, "citations": [{k: v for k, v in c.items() if k != "text"} for c in row["citations"]]}
                public.pop("passages", None)  # kept in memory for the summary; the texts would bloat the file
                sink.write(json.dumps(public, ensure_ascii=False) + "\n")
                sink.flush()
            bar.advance(task)
    return summarize(rows)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"n": len(rows)}
    for key in ("hit@1", "hit@5", "mrr", "accuracy", "f1", "rouge_l", "groundedness", "grounded",
                "citation_validity", "false_refusal", "correct_refusal"):
        values = [float(r["scores"][key]) for r in rows if key in r["scores"]]
        if values:
            summary[key] = round(mean(values), 4)
    answered = [r for r in rows if r.get("produced_by")]
    for kind in ("model", "quote", "refusal", "smalltalk"):
        if answered:
            summary[f"produced_by_{kind}"] = round(sum(r["produced_by"] == kind for r in answered) / len(answered), 4)
    latencies = [r["latency_ms"] for r in rows]
    if latencies:
        summary["latency_p50_ms"] = round(percentile(latencies, 50), 1)
        summary["latency_p95_ms"] = round(percentile(latencies, 95), 1)
    return summary


def render_summary(summary: dict[str, Any]) -> Table:
    table = Table("metric", "value", title=f"Evaluation on {summary['n']} questions")
    for key, value in summary.items():
        if key != "n":
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) and value <= 1.0 else str(value))
    return table
