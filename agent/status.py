"""What `flywheel status` (and the Slack `/flywheel status`) report, from SQLite alone so it is instant."""

from __future__ import annotations

from typing import Any

from storage.config import Settings
from storage.db import Store


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
        "backend": settings.backend,
        "model": settings.model or "SmolLM2-135M-Instruct (bundled)",
        "last_ingest_at": store.get_kv("last_ingest_at"),
        "home": str(settings.home),
    }
