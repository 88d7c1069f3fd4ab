"""The eval gate: a candidate adapter serves only if users would get significantly better answers.

    flywheel gate v0004 [--qa extra.jsonl] [--force]   # evaluate, decide, promote/reject
    flywheel eval --adapter v0004                       # the same comparison, nothing applied

    report = evaluate_adapter(settings, store, kb, "v0004", qa)     # one adapter (None = base model)
    decision = compare(candidate, current, base, margin=0.02, tolerance=0.02, min_items=40)
    decision, reports = run_gate(settings, store, kb, "v0004", qa)  # all of it, recorded and applied

Each question goes through the real Agent (retrieval, prompt, the model with the adapter, the
grounding check) and is scored from the turn record it returns (`agent.graph.Answer`) with the one
scoring module of the project, agent/evaluate.py (`score_item`, `summarize`), so the gate and
`flywheel eval` share every definition. Two views:
  * final — what the user sees (`Answer.answer`, with `produced_by`: model | quote | refusal): decides;
  * draft — the model's own text before the check (`Answer.draft`): reported, what training changes.
Per answer: accuracy (not refused and every must_include string present; an item with only a reference
answer: token-F1 >= 0.5), false refusal (answerable item refused), correct refusal (unanswerable item
refused), groundedness (share of sentences backed by the cited passages) and citation validity (at
least one [n], each pointing at a passage shown: a model that never cites scores 0).

Decision, against the serving adapter (the base model when none serves):
  * at least `gate_min_items` questions (answerable + unanswerable), unless forced;
  * the per-item accuracy gain on the answerable items is significant at 95%: the paired bootstrap
    95% CI of the mean difference (10,000 resamples, fixed seed) lies above 0 AND the exact two-sided
    sign test on the items that differ gives p < 0.05; and the gain is at least `promote_margin`;
  * no guard gets worse by more than `guard_tolerance`: false refusals, correct refusals, groundedness
    and citation validity of the final answers.
The drafts' no_runaway (share that stopped before max_new_tokens; a chat-template mismatch after LoRA
shows up as endless output) is reported with the drafts, measured where the generator has a tokenizer.
Delta, CI and p-value are in the Decision and its reasons. With an Anthropic key (or a `judge=`
given), Claude also scores each answerable item on 1–5 scales (training/judge.py): reported in
`Decision.notes`, never decisive. Results go into adapters.metrics, per-question rows into
eval_<label>.jsonl and a bar chart into gate.png, all in the candidate's folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np

from agent.evaluate import citation_markers, score_item
from agent.evaluate import summarize as summarize_rows
from agent.prompts import says_not_found
from storage.config import Settings
from storage.db import Store
from training.judge import CRITERIA as JUDGE_CRITERIA
from training.judge import ClaudeJudge, load_judge
from training.registry import current, get_adapter, promote, reject, set_metrics

log = logging.getLogger(__name__)

HIGHER, LOWER = 1, -1  # which direction of a guard metric is better
# (view, metric, better): none may get worse than the reference by more than `guard_tolerance`.
GUARDS: tuple[tuple[str, str, int], ...] = (
    ("final", "false_refusal", LOWER),
    ("final", "correct_refusal", HIGHER),
    ("final", "groundedness", HIGHER),
    ("final", "citation_validity", HIGHER),
)
VIEW_METRICS = ("accuracy", "f1", "rouge_l", "groundedness", "citation_validity", "false_refusal",
                "correct_refusal")
PRODUCERS = ("model", "quote", "refusal")
CHART_METRICS = ("accuracy", "f1", "groundedness", "citation_validity", "false_refusal", "correct_refusal",
                 "produced_by_model")
CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0  # the bootstrap is repeatable: the same reports always give the same decision


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    reference: str = "base"  # what the candidate was compared with (its label)
    delta: float = 0.0  # mean per-item accuracy gain, candidate − reference, on the answerable items
    notes: list[str] = field(default_factory=list)  # reported only (the Claude judge), not decisive
    ci_low: float = 0.0  # paired bootstrap 95% CI of `delta`
    ci_high: float = 0.0
    p_value: float = 1.0  # exact two-sided sign test on the items where the two differ
    better: int = 0  # answerable items the candidate gets right and the reference wrong
    worse: int = 0  # ... and the other way round
    paired: int = 0  # answerable items compared
    n_items: int = 0  # all items asked (answerable + unanswerable)
    forced: bool = False  # decided although fewer than `min_items` were asked


def qa_hash(qa: list[dict[str, Any]]) -> str:
    return hashlib.sha1(json.dumps(qa, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


def gate_item(item: dict[str, Any]) -> dict[str, Any]:
    """The item as scored: one whose reference is the refusal (distill's near-topic NOT_FOUND pairs) or
    that has no reference at all can only be judged as a question the documents don't answer, so it is
    marked `unanswerable` for agent/evaluate.py."""
    if item.get("unanswerable") or item.get("must_include"):
        return item
    if not item.get("answer") or says_not_found(item["answer"]):
        return {**item, "unanswerable": True}
    return item


def draft_result(answer: Any) -> dict[str, Any]:
    """The model's draft as if it had been shown, for score_item: refused when the model never ran or
    wrote the not-found reply; its citations are the passages its own valid [n] markers point at."""
    draft, passages = answer.draft, answer.passages
    refused = not draft or says_not_found(draft)
    cited = dict.fromkeys(n for n in citation_markers(draft) if 1 <= n <= len(passages))
    return {"answer": draft, "produced_by": "refusal" if refused else "model", "grounded": not refused,
            "citations": [{"n": n, "text": passages[n - 1].get("text", "")} for n in cited],
            "retrieved": answer.retrieved, "passages": passages}


def _view(rows: list[dict[str, Any]], view: str) -> dict[str, Any]:
    """One view's summary ("final" or "draft") through agent/evaluate.py's `summarize`; latency and
    retrieval dropped (the same for both views)."""
    summary = summarize_rows([{"scores": r[f"{view}_scores"], "produced_by": r[f"{view}_by"],
                               "latency_ms": r["latency_ms"]} for r in rows])
    keep = [k for k in summary if k in VIEW_METRICS or (view == "final" and k.startswith("produced_by_"))]
    return {k: summary[k] for k in keep}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of one adapter: both views, the produced_by shares of the final answers, and the
    per-item accuracy the decision pairs (in question order; None for unanswerable items)."""
    answerable = [r for r in rows if r["answerable"]]
    final, draft = _view(rows, "final"), _view(rows, "draft")
    for name in PRODUCERS:
        final.setdefault(f"produced_by_{name}", 0.0)
    drafted = [r for r in answerable if r["draft"]]
    draft["cite_rate"] = (round(sum(bool(citation_markers(r["draft"])) for r in drafted) / len(drafted), 4)
                          if drafted else 0.0)
    counted = [r["runaway"] for r in rows if r["runaway"] is not None]
    if counted:
        draft["no_runaway"] = round(1 - sum(counted) / len(counted), 4)
    report: dict[str, Any] = {
        "n": len(rows), "answerable": len(answerable), "unanswerable": len(rows) - len(answerable),
        "primary": final.get("accuracy", 0.0), "final": final, "draft": draft,
        "items": [{"id": r["id"], "origin": r["origin"], "answerable": r["answerable"],
                   "accuracy": _flag(r["final_scores"], "accuracy"),
                   "draft_accuracy": _flag(r["draft_scores"], "accuracy"), "produced_by": r["final_by"]}
                  for r in rows],
    }
    origins = sorted({r["origin"] for r in answerable})
    if len(origins) > 1:  # where a gain comes from: distilled held-out pairs, the admin's file, 👍 answers
        report["by_origin"] = {o: round(mean(int(r["final_scores"].get("accuracy", False)) for r in answerable
                                             if r["origin"] == o), 4) for o in origins}
    judged = [r for r in answerable if "judge_relevance" in r]
    if judged:  # Claude's 1–5 scores (no judge, or every item skipped: no judge_* keys)
        report.update({f"judge_{c}": round(mean(r[f"judge_{c}"] for r in judged), 4) for c in JUDGE_CRITERIA},
                      judge_items=len(judged))
    return report


def _flag(scores: dict[str, Any], key: str) -> int | None:
    return int(scores[key]) if key in scores else None


def judge_row(judge: ClaudeJudge, item: dict[str, Any], draft: str, answer: str,
              context: list[dict[str, Any]]) -> dict[str, Any]:
    """`judge_*` fields for one answerable item: the model's draft is judged, or the final answer when
    the model never ran (retrieval found nothing: the same for every adapter). {} when skipped."""
    reference = item.get("answer") or " ".join(item.get("must_include", []))
    scores = judge.score(item["question"], reference, draft or answer, context)
    if scores is None:
        return {}
    return {**{f"judge_{k}": v for k, v in scores.items()}, "judge_of": "draft" if draft else "final"}


def _resolve_judge(settings: Settings, judge: Any) -> ClaudeJudge | None:
    return load_judge(settings) if judge == "auto" else judge


def make_generator(settings: Settings) -> Any:
    """A generator with no store: it never follows the registry, so the gate controls its adapter."""
    from agent.generation import TransformersGenerator

    return TransformersGenerator(settings.model_copy(update={"adapter": ""}), store=None)


def _runaway(generator: Any, draft: str, max_new_tokens: int) -> bool | None:
    """Did the draft use up max_new_tokens? None when the generator has no local tokenizer to count with."""
    tokenizer = getattr(generator, "tokenizer", None)
    if tokenizer is None:
        return None
    return bool(draft) and len(tokenizer(draft, add_special_tokens=False)["input_ids"]) >= max_new_tokens - 1


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
    """Answer every question with adapter `version` (None = base weights) and score the final answers
    and the drafts. `judge`: "auto" = a Claude judge when an Anthropic key is configured; None = no judge."""
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
    for raw in qa:
        item = gate_item(raw)
        answer = agent.answer(item["question"], f"gate:{label}:{uuid.uuid4().hex[:8]}", surface="eval",
                              record=False)
        agent.forget(answer.thread_id)  # evaluation threads don't belong in the conversation store
        final = {"answer": answer.answer, "produced_by": answer.produced_by, "grounded": answer.grounded,
                 "citations": answer.citations, "retrieved": answer.retrieved, "passages": answer.passages}
        draft = draft_result(answer)
        row: dict[str, Any] = {
            "id": item.get("id"), "origin": item.get("origin", "qa"), "question": item["question"],
            "answerable": not item.get("unanswerable"), "adapter": answer.adapter,
            "answer": answer.answer, "final_by": answer.produced_by, "citations": [c.get("n") for c in answer.citations],
            "draft": answer.draft, "draft_by": draft["produced_by"],
            "final_scores": score_item(item, final), "draft_scores": score_item(item, draft),
            "runaway": _runaway(generator, answer.draft, settings.max_new_tokens),
            "latency_ms": answer.timings_ms.get("total_ms", 0.0),
        }
        if judge is not None and row["answerable"]:
            row.update(judge_row(judge, item, answer.draft, answer.answer, answer.passages))
        rows.append(row)
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


# --- the decision -------------------------------------------------------------------------------
def paired_bootstrap(diffs: list[float], resamples: int = RESAMPLES, seed: int = SEED,
                     confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired per-item differences: resample the items (with
    replacement) `resamples` times, keep the middle `confidence` of the resampled means. (0, 0) for none."""
    values = np.asarray(diffs, dtype=float)
    if values.size == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = np.concatenate([  # in blocks: resamples x items indices would be large for big QA sets
        values[rng.integers(0, values.size, size=(size, values.size))].mean(axis=1)
        for size in [min(1000, resamples - start) for start in range(0, resamples, 1000)]
    ])
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return round(float(low), 4), round(float(high), 4)


def sign_test(better: int, worse: int) -> float:
    """Exact two-sided sign test: the probability, if the candidate and the reference were equally good
    (each differing item a fair coin), of a split at least this uneven. Ties carry no information."""
    n = better + worse
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(better, worse) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_decision(pairs: list[tuple[float, float]], reference: str, notes: list[str],
                    n_items: int) -> Decision:
    """An undecided Decision on per-item (candidate, reference) scores: the mean gain, its paired bootstrap
    95% CI and the exact sign test (this gate's and the retriever gate's, training/retriever_gate.py)."""
    diffs = [c - r for c, r in pairs]
    better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    delta = round(float(np.mean(diffs)), 4) if diffs else 0.0
    ci_low, ci_high = paired_bootstrap(diffs)
    p_value = sign_test(better, worse)
    return Decision(False, [], reference, delta, notes, ci_low, ci_high, p_value, better, worse, len(pairs),
                    n_items)


def weigh_gain(decision: Decision, n: int, measured: str, margin: float, *, min_items: int, force: bool,
               unit: str, hint: str) -> bool:
    """Whether the sample size and the paired gain allow a promotion, each with its reason added to
    `decision`: at least `min_items` held-out `unit` were scored (or `force`: decision.forced), and the gain
    is at least `margin` and significant at 95% (bootstrap CI above 0 and sign test p < 0.05). `measured`
    opens the gain's reason, e.g. "accuracy 0.700 vs v0003 0.600 on 40 answerable items"."""
    ok = True
    if n < min_items:
        if force:
            decision.forced = True
            decision.reasons.append(f"only {n} held-out {unit}; need {min_items} (forced: deciding anyway)")
        else:
            ok = False
            decision.reasons.append(f"only {n} held-out {unit}; need {min_items} "
                                    f"({hint}, or force the decision)")
    significant = decision.ci_low > 0 and decision.p_value < 1 - CONFIDENCE
    verdict = ("" if significant and decision.delta >= margin else ": not a significant gain at 95%"
               if not significant else f": gain below the minimum {margin:.3f}")
    decision.reasons.append(
        f"{measured}: Δ {decision.delta:+.3f}, 95% CI [{decision.ci_low:+.3f}, {decision.ci_high:+.3f}], "
        f"sign test p = {decision.p_value:.3g} ({decision.better} better, {decision.worse} worse){verdict}")
    return ok and not verdict


def unique_questions(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`items` without a question asked again (same words, any case or spacing): the first one stays."""
    seen: set[str] = set()
    unique = []
    for item in items:
        key = " ".join(item["question"].casefold().split())
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def _paired_accuracy(candidate: dict[str, Any], reference: dict[str, Any]) -> list[tuple[int, int]]:
    """(candidate, reference) accuracy of each answerable item; the two reports must be on the same items."""
    if candidate.get("qa_hash") != reference.get("qa_hash") or len(candidate["items"]) != len(reference["items"]):
        raise ValueError("the candidate and the reference were evaluated on different questions; can't pair them")
    return [(c["accuracy"], r["accuracy"]) for c, r in zip(candidate["items"], reference["items"])
            if c["accuracy"] is not None and r["accuracy"] is not None]


def compare(
    candidate: dict[str, Any],
    current: dict[str, Any] | None,
    base: dict[str, Any] | None,
    margin: float,
    tolerance: float,
    *,
    min_items: int = 0,
    force: bool = False,
) -> Decision:
    """Promote only if (1) at least `min_items` questions were asked (or `force`), (2) the candidate's
    per-item accuracy gain over the reference (current, else base) is at least `margin` and significant
    at 95% (bootstrap CI above 0 and sign test p < 0.05), and (3) no guard is worse by more than
    `tolerance`. Claude's judge scores, when present, go into `notes` only."""
    reference = current or base
    if reference is None:
        return Decision(False, ["nothing to compare the candidate with (no current adapter or base results)"], "none")
    ref_label = reference.get("label") or ("current" if current is not None else "base")
    pairs = _paired_accuracy(candidate, reference)
    decision = paired_decision(pairs, ref_label, judge_notes(candidate, reference, ref_label), candidate["n"])
    measured = (f"accuracy {candidate['primary']:.3f} vs {ref_label} {reference['primary']:.3f} "
                f"on {len(pairs)} answerable items")
    ok = weigh_gain(decision, candidate["n"], measured, margin, min_items=min_items, force=force,
                    unit="items", hint="add a --qa file")
    for view, metric, better_when in GUARDS:
        cand_value, ref_value = candidate[view].get(metric), reference[view].get(metric)
        if cand_value is None or ref_value is None:
            continue  # e.g. no unanswerable items: no correct-refusal rate to compare
        loss = (ref_value - cand_value) * better_when
        if loss > tolerance:
            ok = False
            decision.reasons.append(f"guard {metric} ({view}) got worse: {ref_value:.3f} → {cand_value:.3f} "
                                    f"(more than {tolerance:.3f})")
    decision.promote = ok
    return decision


def judge_notes(candidate: dict[str, Any], reference: dict[str, Any], ref_label: str) -> list[str]:
    """`Claude judge (1–5, not used to decide): relevance 4.10 vs v0003 3.60, ...` when both were judged."""
    keys = [f"judge_{c}" for c in JUDGE_CRITERIA]
    if not all(k in candidate for k in keys):
        return []
    parts = [f"{c} {candidate[k]:.2f}" + (f" vs {ref_label} {reference[k]:.2f}" if k in reference else "")
             for c, k in zip(JUDGE_CRITERIA, keys)]
    return ["Claude judge (1–5, not used to decide): " + ", ".join(parts)]


def chart(reports: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars of the final-answer metrics: one group per metric, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    labels = list(reports)
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, label in enumerate(labels):
        final = reports[label]["final"]
        values = [final.get(m, 0.0) for m in CHART_METRICS]
        ax.bar([x + i * width for x in range(len(CHART_METRICS))], values, width, label=label)
    ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(CHART_METRICS))], CHART_METRICS)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of answers (final)")
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
    force: bool = False,
) -> tuple[Decision, dict[str, dict[str, Any]]]:
    """Evaluate base (optional; always when nothing serves), current and candidate on `qa`; decide,
    record, chart, and promote or reject. `force` decides even with fewer than `gate_min_items` items."""
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
    decision = compare(reports["candidate"], reports.get("current"), reports.get("base"), settings.promote_margin,
                       settings.guard_tolerance, min_items=settings.gate_min_items, force=force)
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
