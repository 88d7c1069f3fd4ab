"""Training files from distilled pairs and user feedback, in trl's conversational formats.

    flywheel dataset [--json]

Writes `settings.datasets_dir/<timestamp>/` and points `settings.datasets_dir/latest` at it:

* `sft_train.jsonl`, `sft_heldout.jsonl` — `{"prompt": [system, user], "completion": [assistant], "id",
  "source"}`. The prompt is exactly `agent.prompts.build_messages(question, passages)` with passages
  from the real retriever, so the adapter trains on the prompts it will see. The pair's own chunk is
  always among them (inserted at a seeded random position if retrieval missed it) next to up to
  `settings.distractors` other hits, and the completion cites its position: "... 15 minutes [2]."
  A `notfound_fraction` share of train examples pairs a question with passages that lack its answer
  and completes with exactly NOT_FOUND, so the model keeps refusing when the context is off-topic.
  👍-voted answers (`feedback_up`) and 👎 corrections (`correction`) join the train file.
* `dpo.jsonl` — `{"prompt", "chosen", "rejected"}`: a 👎 answer is rejected against the user's correction,
  or else the teacher's rewrite; also stored in `preference_pairs` (one per interaction).
* `kto.jsonl` — `{"prompt", "completion", "label"}` for every voted answer (label = net vote > 0).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.grounding import support
from agent.prompts import NOT_FOUND, build_messages
from agent.retrieval import Hit, Retriever
from storage.db import new_id, now

if TYPE_CHECKING:
    from storage.config import Settings
    from storage.db import Store
    from storage.knowledge import KnowledgeBase
    from training.teachers import Teacher

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
FILES = ("sft_train.jsonl", "sft_heldout.jsonl", "dpo.jsonl", "kto.jsonl")


@dataclass
class DatasetReport:
    out_dir: str = ""
    files: dict[str, int] = field(default_factory=dict)  # file name -> rows
    sources: dict[str, dict[str, int]] = field(default_factory=dict)  # file name -> {source: rows}
    preference_pairs_added: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hit(row: dict[str, Any]) -> Hit:
    return Hit(chunk_id=row["id"], source=row["source"], page=row["page"], heading=row["heading"],
               text=row["text"], score=0.0, tokens=row["tokens"])


def with_marker(answer: str, n: int) -> str:
    """`Pages must be acknowledged within 15 minutes.` -> `... 15 minutes [2].`"""
    text = answer.strip()
    if text and text[-1] in ".!?":
        return f"{text[:-1]} [{n}]{text[-1]}"
    return f"{text} [{n}]"


class _Builder:
    def __init__(self, settings: Settings, store: Store, kb: KnowledgeBase, seed: int):
        self.settings, self.store, self.kb = settings, store, kb
        self.retriever = Retriever(kb)
        self.rng = random.Random(seed)
        self._search_cache: dict[str, list[Hit]] = {}

    def search(self, question: str) -> list[Hit]:
        if question not in self._search_cache:
            k = self.settings.context_chunks + self.settings.distractors + 1
            self._search_cache[question] = self.retriever.search(question, k=k).hits
        return self._search_cache[question]

    def passages_for(self, question: str, own: dict[str, Any]) -> tuple[list[Hit], int]:
        """The pair's chunk among retrieved distractors, within the agent's context budget; returns
        (passages, 1-based position of the own chunk)."""
        hits = self.search(question)
        others = [h for h in hits if h.chunk_id != own["id"]][: self.settings.distractors]
        own_hit = next((h for h in hits if h.chunk_id == own["id"]), None) or _hit(own)
        ranked = [h for h in hits if h.chunk_id == own["id"] or h in others]
        if own_hit not in ranked:  # retrieval missed it: put it anywhere, so position carries no signal
            ranked = list(others)
            ranked.insert(self.rng.randint(0, len(ranked)), own_hit)
        # Respect the agent's token budget (agent/graph.py select): distractors give way, the chunk stays.
        budget, used, kept = self.settings.context_tokens, own_hit.tokens, []
        for hit in ranked:
            if hit is own_hit or used + hit.tokens <= budget:
                kept.append(hit)
                used += 0 if hit is own_hit else hit.tokens
        return kept[: max(self.settings.context_chunks, 1 + self.settings.distractors)], kept.index(own_hit) + 1

    def sft_example(self, pair: dict[str, Any], chunk: dict[str, Any]) -> dict[str, Any]:
        passages, n = self.passages_for(pair["question"], chunk)
        return {
            "prompt": build_messages(pair["question"], passages),
            "completion": [{"role": "assistant", "content": with_marker(pair["answer"], n)}],
            "id": pair["id"], "source": "distilled",
        }

    def not_found_example(self, pair: dict[str, Any], donor: dict[str, Any]) -> dict[str, Any] | None:
        """The question with another section's top passages, none of which supports its answer."""
        passages = [h for h in self.search(donor["question"])
                    if h.chunk_id != pair["chunk_id"] and support(pair["answer"], h.text) < 0.6]
        passages = passages[: self.settings.context_chunks]
        if not passages:
            return None
        return {
            "prompt": build_messages(pair["question"], passages),
            "completion": [{"role": "assistant", "content": NOT_FOUND}],
            "id": f"{pair['id']}-nf", "source": "not_found",
        }


def _voted_interactions(store: Store) -> list[dict[str, Any]]:
    return store.query(
        """SELECT i.*, SUM(f.vote) AS net, MAX(CASE WHEN f.vote < 0 THEN f.correction END) AS correction
           FROM interactions i JOIN feedback f ON f.interaction_id = i.id
           WHERE f.vote != 0 AND i.prompt IS NOT NULL GROUP BY i.id ORDER BY i.created_at"""
    )


def _prompt(row: dict[str, Any]) -> Messages | None:
    try:
        messages = json.loads(row["prompt"])
    except (TypeError, json.JSONDecodeError):
        return None
    return messages if isinstance(messages, list) and messages else None


def _passages_from_prompt(row: dict[str, Any], kb: KnowledgeBase) -> list[Hit]:
    ids = [c.get("chunk_id") for c in json.loads(row.get("citations") or "[]") if isinstance(c, dict)]
    ids += [c.get("chunk_id") for c in json.loads(row.get("retrieved") or "[]") if isinstance(c, dict)]
    rows = kb.chunks_by_id([i for i in dict.fromkeys(ids) if i])
    return [_hit(rows[i]) for i in dict.fromkeys(ids) if i in rows][:3]


def _preference_pairs(store: Store, kb: KnowledgeBase, teacher: Teacher | None, voted: list[dict[str, Any]]) -> int:
    """Store one preference pair per 👎 interaction; a correction replaces an earlier teacher rewrite."""
    added = 0
    existing = {r["interaction_id"]: r for r in store.query("SELECT * FROM preference_pairs")}
    for row in voted:
        if row["net"] >= 0 or _prompt(row) is None:
            continue
        old = existing.get(row["id"])
        if old and (old["source"] == "correction" or not row["correction"]):
            continue
        chosen, source = (row["correction"] or "").strip(), "correction"
        if not chosen:
            if teacher is None or not hasattr(teacher, "rewrite"):
                continue
            chosen, source = (teacher.rewrite(row["condensed_question"] or row["question"],
                                              _passages_from_prompt(row, kb)) or "").strip(), "teacher_rewrite"
        if not chosen or chosen == row["answer"].strip():
            continue
        with store.lock:
            if old:
                store.db.execute("DELETE FROM preference_pairs WHERE id = ?", (old["id"],))
            store.db["preference_pairs"].insert({
                "id": new_id(), "interaction_id": row["id"], "prompt": row["prompt"], "chosen": chosen,
                "rejected": row["answer"], "source": source, "created_at": now(),
            })
        added += 1
    return added


def build_datasets(settings: Settings, store: Store, kb: KnowledgeBase, out_dir: Path | None = None,
                   teacher: Teacher | None = None, seed: int = 0) -> DatasetReport:
    """Write the SFT/DPO/KTO files; deterministic for a given database and seed."""
    builder = _Builder(settings, store, kb, seed)
    if out_dir is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        out_dir = settings.datasets_dir / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in FILES}

    pairs = store.query("SELECT * FROM qa_pairs ORDER BY created_at, id")
    chunks = kb.chunks_by_id(list({p["chunk_id"] for p in pairs if p["chunk_id"]}))
    live = [p for p in pairs if p["chunk_id"] in chunks]  # pairs of replaced document versions drop out
    for pair in live:
        target = "sft_heldout.jsonl" if pair["split"] == "heldout" else "sft_train.jsonl"
        rows[target].append(builder.sft_example(pair, chunks[pair["chunk_id"]]))

    train = [p for p in live if p["split"] == "train"]
    wanted = round(settings.notfound_fraction * len(train))
    for pair in builder.rng.sample(train, min(wanted, len(train))):
        donors = [p for p in train if (p["document_id"], p["section"]) != (pair["document_id"], pair["section"])]
        if donors and (example := builder.not_found_example(pair, builder.rng.choice(donors))):
            rows["sft_train.jsonl"].append(example)

    voted = _voted_interactions(store)
    for row in voted:
        prompt = _prompt(row)
        if prompt is None:
            continue
        label = row["net"] > 0
        completion = [{"role": "assistant", "content": row["answer"]}]
        rows["kto.jsonl"].append({"prompt": prompt, "completion": completion, "label": label, "id": row["id"],
                                   "source": "feedback_up" if label else "feedback_down"})
        if label:
            rows["sft_train.jsonl"].append({"prompt": prompt, "completion": completion, "id": row["id"],
                                            "source": "feedback_up"})
        elif row["correction"]:
            rows["sft_train.jsonl"].append({"prompt": prompt, "id": f"{row['id']}-fix", "source": "correction",
                                            "completion": [{"role": "assistant", "content": row["correction"]}]})

    report = DatasetReport(out_dir=str(out_dir))
    report.preference_pairs_added = _preference_pairs(store, kb, teacher, voted)
    for pref in store.query("SELECT * FROM preference_pairs ORDER BY created_at, id"):
        try:
            prompt = json.loads(pref["prompt"])
        except json.JSONDecodeError:
            continue
        rows["dpo.jsonl"].append({
            "prompt": prompt, "chosen": [{"role": "assistant", "content": pref["chosen"]}],
            "rejected": [{"role": "assistant", "content": pref["rejected"]}], "id": pref["id"], "source": pref["source"],
        })

    builder.rng.shuffle(rows["sft_train.jsonl"])  # not-found and feedback examples spread through the epoch
    for name, items in rows.items():
        with (out_dir / name).open("w", encoding="utf-8") as handle:
            for item in items:
                handle.write(json.dumps(item, ensure_ascii=False) + "\n")
        report.files[name] = len(items)
        report.sources[name] = dict(Counter(str(i.get("source", "label" if "label" in i else "")) for i in items))
    (settings.datasets_dir / "latest").parent.mkdir(parents=True, exist_ok=True)
    (settings.datasets_dir / "latest").write_text(str(out_dir) + "\n")
    store.audit("dataset", "build_datasets", report.files)
    return report
