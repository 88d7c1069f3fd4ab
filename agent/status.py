"""What `flywheel status` (and the Slack `/flywheel status`) report, from SQLite alone so it is instant."""

from __future__ import annotations

import json
from typing import Any

from storage.config import Settings
from storage.db import Store


def retriever_gate_numbers(metrics: dict[str, Any] | str | None) -> dict[str, Any]:
    """A retriever's gate result in a few numbers (training/retriever_gate.py stores the full report): its
    hit@1, hit@5 and MRR on the gate's questions, the same for what served when it was gated, the paired
    hit@1 delta with its 95% interval and sign-test p, and the verdict."""
    if isinstance(metrics, str):
        metrics = json.loads(metrics)
    if not metrics:
        return {}
    out = {k: metrics[k] for k in ("n", "hit@1", "hit@5", "mrr") if k in metrics}
    reference = (metrics.get("compared") or {}).get("serving") or {}
    if reference:
        out["vs"] = reference.get("label")
        out.update({f"vs {k}": reference[k] for k in ("hit@1", "hit@5", "mrr") if k in reference})
    decision = metrics.get("decision") or {}
    if decision:
        out.update({"delta hit@1": decision.get("delta"), "ci95": [decision.get("ci_low"), decision.get("ci_high")],
                    "p": decision.get("p_value"), "promote": decision.get("promote")})
    return out


def retriever_status(store: Store) -> dict[str, Any]:
    """The serving retriever ("base" = the configured embedder) with its gate numbers, the newest candidate's
    verdict when it is not the one serving, and a switch in progress (its collection being built)."""
    rows = store.query("SELECT version, status, index_state, metrics, promoted_at FROM retrievers ORDER BY version DESC")
    serving = max((r for r in rows if r["status"] == "promoted"), key=lambda r: r["promoted_at"] or "", default=None)
    out: dict[str, Any] = {
        "retriever": serving["version"] if serving else "base",
        "retriever_metrics": retriever_gate_numbers(serving["metrics"]) if serving else None,
    }
    if rows and rows[0] is not serving:
        out["retriever_latest"] = {"version": rows[0]["version"], "status": rows[0]["status"],
                                   **retriever_gate_numbers(rows[0]["metrics"])}
    building = [r["version"] for r in rows if r["index_state"] == "building"]
    if building:
        out["retriever_switch"] = f"{building[0]}: re-embedding the corpus into its collection"
    return out


CYCLE_PROGRESS_KEY = "cycle_progress"  # written by training/cycle.py while a cycle runs


def cycle_progress(store: Store) -> dict[str, Any] | None:
    """The running flywheel cycle, or None: its stage, the training plan ("training 120 of 565 new pairs,
    est. 14 min (7.1 s/step × 118 steps); 445 kept for the next cycle"), and while it trains the step,
    measured seconds per step and ETA (`eta_at`, UTC). A record whose run is no longer running (the
    process died) is not shown."""
    raw = store.get_kv(CYCLE_PROGRESS_KEY)
    if not raw:
        return None
    try:
        progress = json.loads(raw)
    except ValueError:
        return None
    run = store.query("SELECT status, started_at, trigger FROM training_runs WHERE id = ?", (progress.get("run_id"),))
    if not run or run[0]["status"] != "running":
        return None
    keys = ("stage", "plan", "step", "max_steps", "seconds_per_step", "eta_seconds", "eta_at", "updated_at")
    return {"run_id": progress["run_id"], "started_at": run[0]["started_at"], "trigger": run[0]["trigger"],
            **{k: progress[k] for k in keys if progress.get(k) is not None}}


def collect_status(settings: Settings, store: Store | None = None) -> dict[str, Any]:
    settings.ensure_dirs()
    store = store or Store(settings.db_path)
    promoted = store.promoted_adapter()
    week = "datetime('now', '-7 days')"
    usage = "surface != 'eval'"  # evaluation and gate runs are not usage
    answers_week = store.scalar(
        f"SELECT COUNT(*) FROM interactions WHERE route = 'question' AND {usage} AND created_at >= {week}")
    votes_week = store.query(
        f"SELECT vote, COUNT(*) AS n FROM feedback WHERE updated_at >= {week} AND vote != 0 GROUP BY vote"
    )
    up = sum(r["n"] for r in votes_week if r["vote"] > 0)
    total = sum(r["n"] for r in votes_week)
    return {
        "documents": store.scalar("SELECT COUNT(*) FROM documents WHERE status IN ('ok', 'stale')") or 0,
        "failed_documents": store.scalar("SELECT COUNT(*) FROM documents WHERE status IN ('failed', 'stale')") or 0,
        "chunks": store.scalar("SELECT COUNT(*) FROM chunks") or 0,
        "interactions": store.scalar(f"SELECT COUNT(*) FROM interactions WHERE {usage}") or 0,
        "feedback": store.feedback_counts(),
        "answers_this_week": answers_week or 0,
        "thumbs_up_rate_this_week": round(up / total, 3) if total else None,
        "adapter": promoted["version"] if promoted else None,
        "adapter_metrics": promoted.get("metrics") if promoted else None,
        **retriever_status(store),
        "backend": settings.backend,
        "model": settings.model or "SmolLM2-135M-Instruct (bundled)",
        "last_ingest_at": store.get_kv("last_ingest_at"),
        "cycle": cycle_progress(store),
        "home": str(settings.home),
    }
