"""The eval gate: a candidate adapter serves only if it answers held-out questions better.

    flywheel gate v0004 --qa ~/.flywheel/datasets/latest/heldout_qa.jsonl   # evaluate, decide, promote/reject

    report = evaluate_adapter(settings, store, kb, "v0004", qa)     # one adapter (None = base model)
    decision = compare(candidate, current, base, margin=0.02, tolerance=0.02)
    decision, reports = run_gate(settings, store, kb, "v0004", qa)  # all of it, recorded and applied

Each question goes through the real Agent (retrieval, prompt, the model with the adapter, the
grounding check), so the gate measures what users would get. Two views are scored:
  * the raw model draft (graph state "draft") — what training changes, and what decides;
  * the final answer after the agent's check (which may swap an unsupported draft for a quote).
Metrics: accuracy (every must_include string present, else token-F1 >= 0.5 vs the reference),
token-F1, ROUGE-L, groundedness (share of draft sentences backed by the context passages),
citation validity (share of [n] markers that point at a passage that exists), correct refusals
(unanswerable questions answered with NOT_FOUND), and no_runaway (the draft stopped before
max_new_tokens — a chat-template mismatch after LoRA shows up as endless output).
With an Anthropic key (or a `judge=` given), Claude also judges each answerable item on 1–5
scales (training/judge.py): rows get judge_relevance/groundedness/coherence/similarity/rationale,
reports their means, `judge_items`, `judge_skipped` and `judge_usage` (tokens, cost). They are
reported next to the decision (`Decision.notes`) but do not take part in it.
Decision: primary = mean(accuracy, F1) of the drafts must beat the current adapter (the base
model when none is promoted) by `promote_margin`, and no guard metric may drop by more than
`guard_tolerance`. Results go into adapters.metrics, per-question rows into eval_<label>.jsonl and
a bar chart into gate.png, all in the candidate's folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from agent.metrics import contains_all, groundedness, rouge_l, strip_citations, token_f1
from agent.prompts import NOT_FOUND
from storage.config import Settings
from storage.db import Store
from training.judge import CRITERIA as JUDGE_CRITERIA
from training.judge import ClaudeJudge, load_judge
from training.registry import current, get_adapter, promote, reject, set_metrics

log = logging.getLogger(__name__)

GUARDS = ("groundedness", "citation_validity", "refusal", "no_runaway")
CHART_METRICS = ("primary", "accuracy", "f1", "rouge_l") + GUARDS
_MARKERS = re.compile(r"\[\s*(\d+(?:\s*[,\-\u2013]\s*\d+)*)\s*\]")


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    reference: str = "base"  # what the candidate was compared with
    delta: float = 0.0  # primary(candidate) - primary(reference)
    notes: list[str] = field(default_factory=list)  # reported only (the Claude judge), not decisive


def qa_hash(qa: list[dict[str, Any]]) -> str:
    return hashlib.sha1(json.dumps(qa, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


def expects_answer(item: dict[str, Any]) -> bool:
    return not item.get("unanswerable") and bool(item.get("answer") or item.get("must_include"))


def is_refusal(text: str) -> bool:
    return NOT_FOUND.lower().rstrip(".") in text.lower()


def citation_markers(text: str) -> list[int]:
    """Every passage number cited: [1], [2, 3], [1-3] (ranges expanded)."""
    numbers: list[int] = []
    for group in _MARKERS.findall(text):
        for part in re.split(r"\s*,\s*", group):
            bounds = [int(x) for x in re.split(r"\s*[\-\u2013]\s*", part) if x]
            numbers += list(range(bounds[0], bounds[-1] + 1)) if len(bounds) == 2 else bounds
    return numbers


def reference_of(item: dict[str, Any]) -> str:
    return item.get("answer") or " ".join(item.get("must_include", []))


def correct(text: str, item: dict[str, Any]) -> bool:
    if is_refusal(text) or not text.strip():
        return False
    if item.get("must_include"):
        return contains_all(text, item["must_include"])
    return token_f1(strip_citations(text), item["answer"]) >= 0.5


def score_item(item: dict[str, Any], draft: str, answer: str, grounded: bool, context: list[dict[str, Any]],
               citations: list[dict[str, Any]], draft_tokens: int, max_new_tokens: int) -> dict[str, Any]:
    """Per-question scores for the draft (`d_*`) and the final answer (`f_*`)."""
    row: dict[str, Any] = {"answerable": expects_answer(item)}
    asked = bool(draft)  # False when retrieval decided the docs don't answer (model never ran)
    row["runaway"] = asked and draft_tokens >= max_new_tokens - 1
    if not row["answerable"]:
        row["d_refusal"] = (not asked) or is_refusal(draft)
        row["f_refusal"] = not grounded or is_refusal(answer)
        return row
    reference = reference_of(item)
    row["d_accuracy"] = correct(draft, item)
    row["d_f1"] = token_f1(strip_citations(draft), reference)
    row["d_rouge_l"] = rouge_l(strip_citations(draft), reference)
    if asked and not is_refusal(draft):
        row["d_groundedness"] = groundedness(draft, [c["text"] for c in context])
        markers = citation_markers(draft)
        row["d_markers"] = len(markers)
        row["d_valid_markers"] = sum(1 <= n <= len(context) for n in markers)
    row["f_accuracy"] = grounded and correct(answer, item)
    row["f_f1"] = token_f1(strip_citations(answer), reference)
    row["f_rouge_l"] = rouge_l(strip_citations(answer), reference)
    row["f_groundedness"] = groundedness(answer, [c.get("text", "") for c in citations])
    return row


def _mean(rows: list[dict[str, Any]], key: str, default: float = 1.0) -> float:
    values = [float(r[key]) for r in rows if key in r]
    return round(mean(values), 4) if values else default


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    markers = sum(r.get("d_markers", 0) for r in answerable)
    valid = sum(r.get("d_valid_markers", 0) for r in answerable)
    judged = [r for r in answerable if "d_markers" in r]
    draft = {
        "accuracy": _mean(answerable, "d_accuracy", 0.0), "f1": _mean(answerable, "d_f1", 0.0),
        "rouge_l": _mean(answerable, "d_rouge_l", 0.0), "groundedness": _mean(answerable, "d_groundedness"),
        "citation_validity": round(valid / markers, 4) if markers else 1.0,
        "cite_rate": round(sum(r["d_markers"] > 0 for r in judged) / len(judged), 4) if judged else 0.0,
        "refusal": _mean(unanswerable, "d_refusal"),
        "no_runaway": round(1 - sum(r["runaway"] for r in rows) / len(rows), 4) if rows else 1.0,
    }
    draft["primary"] = round((draft["accuracy"] + draft["f1"]) / 2, 4)
    final = {
        "accuracy": _mean(answerable, "f_accuracy", 0.0), "f1": _mean(answerable, "f_f1", 0.0),
        "rouge_l": _mean(answerable, "f_rouge_l", 0.0), "groundedness": _mean(answerable, "f_groundedness"),
        "refusal": _mean(unanswerable, "f_refusal"),
    }
    final["primary"] = round((final["accuracy"] + final["f1"]) / 2, 4)
    report = {"n": len(rows), "answerable": len(answerable), "unanswerable": len(unanswerable),
              "primary": draft["primary"], "draft": draft, "final": final}
    judged = [r for r in answerable if "judge_relevance" in r]
    if judged:  # Claude's 1–5 scores (no judge, or every item skipped: no judge_* keys)
        report.update({f"judge_{c}": _mean(judged, f"judge_{c}") for c in JUDGE_CRITERIA}, judge_items=len(judged))
    return report


def judge_row(judge: ClaudeJudge, item: dict[str, Any], draft: str, answer: str,
              context: list[dict[str, Any]]) -> dict[str, Any]:
    """`judge_*` fields for one answerable item: the model's draft is judged, or the final answer when
    the model never ran (retrieval found nothing: the same for every adapter). {} when skipped."""
    scores = judge.score(item["question"], reference_of(item), draft or answer, context)
    if scores is None:
        return {}
    return {**{f"judge_{k}": v for k, v in scores.items()}, "judge_of": "draft" if draft else "final"}


def _resolve_judge(settings: Settings, judge: Any) -> ClaudeJudge | None:
    return load_judge(settings) if judge == "auto" else judge


def make_generator(settings: Settings) -> Any:
    """A generator with no store: it never follows the registry, so the gate controls its adapter."""
    from agent.generation import TransformersGenerator

    return TransformersGenerator(settings.model_copy(update={"adapter": ""}), store=None)


def evaluate_adapter(
    settings: Settings,
    store: Store,
    kb: Any,
    version: str | None,
    qa: list[dict[str, Any]],
    *,
    generator: Any = None,
    out_dir: Path | None = None,
    judge: ClaudeJudge | None | str = "auto",
) -> dict[str, Any]:
    """Answer every question with adapter `version` (None = base weights) and score the drafts and answers.
    `judge`: "auto" = a Claude judge when an Anthropic key is configured; None = no judge."""
    from agent.graph import Agent

    judge = _resolve_judge(settings, judge)
    usage_before = asdict(judge.usage) if judge is not None else {}

    generator = generator or make_generator(settings)
    path = get_adapter(store, version).path if version else None
    if path is None:
        generator.use_adapter(None, None)
    elif not generator.use_adapter(path, version) and generator.adapter != version:
        raise RuntimeError(f"adapter {version} at {path} could not be loaded for evaluation")
    agent = Agent(settings, store, kb, generator)
    label = version or "base"
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for item in qa:
        thread_id = f"gate:{label}:{uuid.uuid4().hex[:8]}"
        result = agent.answer(item["question"], thread_id, surface="eval", record=False)
        state = agent.graph.get_state({"configurable": {"thread_id": thread_id}}).values
        draft = state.get("draft", "") if result.route == "question" else ""
        tokens = len(generator.tokenizer(draft, add_special_tokens=False)["input_ids"]) if draft else 0
        scores = score_item(item, draft, result.answer, result.grounded, state.get("context", []),
                            result.citations, tokens, settings.max_new_tokens)
        if judge is not None and scores["answerable"]:
            scores.update(judge_row(judge, item, draft, result.answer, state.get("context", [])))
        rows.append({"id": item.get("id"), "question": item["question"], "draft": draft, "answer": result.answer,
                     "adapter": result.adapter, **scores})
        agent.forget(thread_id)  # evaluation threads don't belong in the conversation store
    report = summarize(rows)
    report.update(version=version, label=label, qa_hash=qa_hash(qa), seconds=round(time.perf_counter() - started, 1),
                  model=generator.name)
    if judge is not None:
        usage = {k: v - usage_before[k] for k, v in asdict(judge.usage).items()}  # this run's share
        usage["cost_usd"] = round(usage["cost_usd"], 6)
        report.setdefault("judge_items", 0)
        report.update(judge_model=judge.model, judge_skipped=report["answerable"] - report["judge_items"],
                      judge_usage=usage)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / f"eval_{label}.jsonl").open("w") as sink:
            for row in rows:
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
    return report


def compare(
    candidate: dict[str, Any],
    current: dict[str, Any] | None,
    base: dict[str, Any] | None,
    margin: float,
    tolerance: float,
) -> Decision:
    """Promote only if the candidate's primary metric beats the reference (current, else base) by
    `margin` and no guard metric of the drafts drops by more than `tolerance`. Claude's judge scores,
    when present, go into `notes` only."""
    reference = current or base
    if reference is None:
        return Decision(True, ["no current adapter or base results to compare with"], "none", 0.0)
    name = "current" if current is not None else "base"
    ref_label = reference.get("label") or name
    delta = round(candidate["primary"] - reference["primary"], 4)
    reasons: list[str] = []
    ok = delta >= margin
    reasons.append(f"primary {candidate['primary']:.3f} vs {ref_label} {reference['primary']:.3f} "
                   f"(Δ {delta:+.3f}, needs ≥ {margin:+.3f})" + ("" if ok else ": not better enough"))
    for guard in GUARDS:
        cand_value, ref_value = candidate["draft"].get(guard), reference["draft"].get(guard)
        if cand_value is None or ref_value is None:
            continue
        drop = ref_value - cand_value
        if drop > tolerance:
            ok = False
            reasons.append(f"guard {guard} dropped {ref_value:.3f} → {cand_value:.3f} (more than {tolerance:.3f})")
    return Decision(ok, reasons, ref_label, delta, judge_notes(candidate, reference, ref_label))


def judge_notes(candidate: dict[str, Any], reference: dict[str, Any], ref_label: str) -> list[str]:
    """`Claude judge (1–5, not used to decide): relevance 4.10 vs v0003 3.60, ...` when both were judged."""
    keys = [f"judge_{c}" for c in JUDGE_CRITERIA]
    if not all(k in candidate for k in keys):
        return []
    parts = [f"{c} {candidate[k]:.2f}" + (f" vs {ref_label} {reference[k]:.2f}" if k in reference else "")
             for c, k in zip(JUDGE_CRITERIA, keys)]
    return ["Claude judge (1–5, not used to decide): " + ", ".join(parts)]


def chart(reports: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars of the draft metrics: one group per metric, one bar per model (base/current/candidate)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    labels = list(reports)
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, label in enumerate(labels):
        draft = reports[label]["draft"]
        values = [draft.get(m, 0.0) for m in CHART_METRICS]
        ax.bar([x + i * width for x in range(len(CHART_METRICS))], values, width, label=label)
    ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(CHART_METRICS))], CHART_METRICS)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (model drafts)")
    ax.set_title("Eval gate: " + " vs ".join(labels))
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_gate(
    settings: Settings,
    store: Store,
    kb: Any,
    version: str,
    qa: list[dict[str, Any]],
    *,
    actor: str = "gate",
    apply: bool = True,
    include_base: bool = True,
    generator: Any = None,
    judge: ClaudeJudge | None | str = "auto",
) -> tuple[Decision, dict[str, dict[str, Any]]]:
    """Evaluate base (optional), current and candidate on `qa`; record, chart, and promote or reject."""
    if not qa:
        raise ValueError("the gate needs held-out questions")
    judge = _resolve_judge(settings, judge)  # one judge for all three: its failure budget is shared
    candidate_record = get_adapter(store, version)
    out_dir = Path(candidate_record.path)
    serving = current(store)
    generator = generator or make_generator(settings)  # one model load, adapters swapped in turn
    reports: dict[str, dict[str, Any]] = {}
    if include_base or serving is None:
        reports["base"] = evaluate_adapter(settings, store, kb, None, qa, generator=generator, out_dir=out_dir,
                                           judge=judge)
    if serving is not None and serving.version != version:
        reports["current"] = evaluate_adapter(settings, store, kb, serving.version, qa, generator=generator,
                                              out_dir=out_dir, judge=judge)
    reports["candidate"] = evaluate_adapter(settings, store, kb, version, qa, generator=generator, out_dir=out_dir,
                                            judge=judge)
    decision = compare(reports["candidate"], reports.get("current"), reports.get("base"),
                       settings.promote_margin, settings.guard_tolerance)
    chart_path = chart({(r["label"] if k == "candidate" else f"{k} ({r['label']})"): r for k, r in reports.items()},
                       out_dir / "gate.png")
    set_metrics(store, version, {**reports["candidate"],
                                 "compared": {k: v for k, v in reports.items() if k != "candidate"},
                                 "decision": asdict(decision), "chart": str(chart_path)})
    store.audit(actor, "gate.decision", {"version": version, **asdict(decision)})
    if apply:
        if decision.promote:
            promote(settings, store, version, actor)
        else:
            reject(settings, store, version, actor, reason="; ".join(decision.reasons))
    return decision, reports
