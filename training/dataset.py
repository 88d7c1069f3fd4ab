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
* `dpo.jsonl` — `{"prompt", "chosen", "rejected"}`: for a 👎 answer, `rejected` is the model's own draft
  (`interactions.draft`, before the grounding check; an interaction without one makes no pair) and
  `chosen` the user's correction, or else the teacher's rewrite; also stored in `preference_pairs`
  (one per interaction).
* `kto.jsonl` — `{"prompt", "completion", "label"}`: votes on the model's drafts (completion = the
  stored draft, label = net vote > 0), only where the user saw the model's own text.

A correction counts only from a user `settings.corrections_from` allows, and only when the passages the
model was shown support it (the distilled pairs' check); it gets the [n] of its passage. Interactions
with surface 'eval' (evaluation, the gate) are never read.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.grounding import EmbeddingCache, excerpts, sentences, strip_markers, support
from agent.prompts import NOT_FOUND, Passage, build_messages
from agent.retrieval import Hit, Retriever
from storage.db import new_id, now
from training.distill import is_supported

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
    corrections: dict[str, int] = field(default_factory=dict)  # used | not_allowed | unsupported

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
        self._embed: EmbeddingCache | None = None

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

    def excerpts(self, question: str, passages: list[Hit], answer: str | None = None) -> tuple[list[Hit], int | None]:
        """The agent's `evidence_runs` excerpts of `passages` (agent/graph.py select), so training prompts
        look like serving prompts; with `answer`, also the 1-based excerpt that supports it."""
        if self.settings.evidence_runs <= 0:
            return passages, None
        if self._embed is None:
            self._embed = EmbeddingCache(lambda texts: self.kb.embedder.encode(texts))
        return excerpts(question, passages, self._embed, self.settings.evidence_runs, answer, self.rng)

    def sft_example(self, pair: dict[str, Any], chunk: dict[str, Any]) -> dict[str, Any]:
        passages, n = self.passages_for(pair["question"], chunk)
        # A teacher's refusal pair (a near-topic question the section doesn't answer) teaches the plain
        # reply with its own section in view: the hardest case, where the words match but the fact is absent.
        refusal = pair["answer"].strip() == NOT_FOUND
        if self.settings.evidence_runs > 0:
            shown, at = self.excerpts(pair["question"], passages, None if refusal else strip_markers(pair["answer"]))
            if refusal or at is not None:  # else no run holds the answer: the whole passages are kept
                passages, n = shown, at or n
        return {
            "prompt": build_messages(pair["question"], passages),
            "completion": [{"role": "assistant", "content": NOT_FOUND if refusal else with_marker(pair["answer"], n)}],
            "id": pair["id"], "source": "refusal" if refusal else "distilled",
        }

    def not_found_example(self, pair: dict[str, Any], donor: dict[str, Any]) -> dict[str, Any] | None:
        """The question with another section's top passages, none of which supports its answer."""
        passages = [h for h in self.search(donor["question"])
                    if h.chunk_id != pair["chunk_id"] and support(pair["answer"], h.text) < 0.6]
        passages = passages[: self.settings.context_chunks]
        if not passages:
            return None
        passages, _ = self.excerpts(pair["question"], passages)
        return {
            "prompt": build_messages(pair["question"], passages),
            "completion": [{"role": "assistant", "content": NOT_FOUND}],
            "id": f"{pair['id']}-nf", "source": "not_found",
        }


def correction_allowed(settings: Settings, user_id: str | None) -> bool:
    """Whether `settings.corrections_from` lets this user's 👎 corrections teach the bot: "everyone",
    "admins" (`settings.admin_users`), or Slack user IDs, which may include "admins"."""
    wanted = {w.strip() for w in settings.corrections_from.split(",") if w.strip()}
    if "everyone" in {w.lower() for w in wanted}:
        return True
    if "admins" in {w.lower() for w in wanted}:
        wanted |= {a.strip() for a in settings.admin_users.split(",") if a.strip()}
    return bool(user_id) and user_id in wanted


def correction_supported(correction: str, passages: Sequence[Passage]) -> bool:
    """The distilled pairs' support check (training.distill.is_supported): every sentence of the
    correction backed by the passages the model was shown, numbers included."""
    evidence = "\n".join(f"{p.text} {p.heading or ''}" for p in passages)
    return bool(passages) and is_supported(correction, evidence)


def cite(answer: str, passages: Sequence[Passage]) -> str:
    """A correction as the model should have written it: with the [n] of the passage that supports it
    best (users rarely type markers; an adapter trained without them stops citing)."""
    markers = [int(m) for m in re.findall(r"\[(\d{1,2})\]", answer)]
    if markers and all(1 <= m <= len(passages) for m in markers):
        return answer.strip()
    bare = strip_markers(answer)
    parts = sentences(bare) or [bare]
    scores = [sum(support(s, f"{p.heading or ''}\n{p.text}") for s in parts) for p in passages]
    return with_marker(bare, scores.index(max(scores)) + 1) if scores else bare


def shown_whole(draft: str, answer: str) -> bool:
    """The check kept every sentence of the draft: the user's 👍 covers all of it."""
    def bare(text: str) -> list[str]:
        return [" ".join(strip_markers(s).split()) for s in sentences(text) if strip_markers(s)]
    return bool(draft.strip()) and bare(draft) == bare(answer)


def passages_of(row: dict[str, Any], kb: KnowledgeBase) -> list[Hit]:
    """The passages the model was shown ([n] = passages[n-1]; none when it never ran); for rows recorded
    before the turn record (migration 3, passages NULL), the cited and retrieved chunks that still exist."""
    stored = _json_list(row.get("passages"))
    if stored is None:
        return _passages_from_prompt(row, kb)
    return [Hit(chunk_id=p.get("chunk_id") or "", source=p.get("source") or "", page=p.get("page"),
                heading=p.get("heading"), text=p.get("text") or "", score=0.0)
            for p in stored if isinstance(p, dict)]


def _json_list(value: Any) -> list[Any] | None:
    """A JSON list column, raw (store.query) or decoded (Store.interaction); None when NULL or broken."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, list) else None


def _voted_interactions(store: Store) -> list[dict[str, Any]]:
    # surface != 'eval': evaluation and gate runs aren't usage (agent/evaluate.py doesn't record them;
    # this keeps a stray recorded one out of training, too).
    return store.query(
        """SELECT i.*, SUM(f.vote) AS net FROM interactions i JOIN feedback f ON f.interaction_id = i.id
           WHERE f.vote != 0 AND i.prompt IS NOT NULL AND i.surface != 'eval'
           GROUP BY i.id ORDER BY i.created_at, i.id"""
    )


def _usable_corrections(settings: Settings, store: Store, kb: KnowledgeBase, voted: list[dict[str, Any]],
                        counts: Counter[str]) -> dict[str, str]:
    """interaction id -> the newest correction from an allowed user that the shown passages support, cited.

    Unsupported corrections are not training data: the model would learn to say what its context
    doesn't (bot/feedback.py turns an allowed user's unsupported correction into a team-answers document)."""
    by_id = {row["id"]: row for row in voted if row["net"] < 0}
    usable: dict[str, str] = {}
    rows = store.query("SELECT interaction_id, user_id, correction FROM feedback WHERE vote < 0"
                       " AND TRIM(COALESCE(correction, '')) != '' ORDER BY updated_at DESC, id DESC")
    for feedback in rows:
        row = by_id.get(feedback["interaction_id"])
        if row is None or row["id"] in usable:
            continue
        if not correction_allowed(settings, feedback["user_id"]):
            counts["not_allowed"] += 1
            continue
        passages = passages_of(row, kb)
        if not correction_supported(feedback["correction"], passages):
            counts["unsupported"] += 1
            continue
        usable[row["id"]] = cite(feedback["correction"], passages)
        counts["used"] += 1
    return usable


def _prompt(row: dict[str, Any]) -> Messages | None:
    try:
        messages = json.loads(row["prompt"])
    except (TypeError, json.JSONDecodeError):
        return None
    return messages if isinstance(messages, list) and messages else None


def _passages_from_prompt(row: dict[str, Any], kb: KnowledgeBase) -> list[Hit]:
    ids = [c.get("chunk_id") for c in _json_list(row.get("citations")) or [] if isinstance(c, dict)]
    ids += [c.get("chunk_id") for c in _json_list(row.get("retrieved")) or [] if isinstance(c, dict)]
    rows = kb.chunks_by_id([i for i in dict.fromkeys(ids) if i])
    return [_hit(rows[i]) for i in dict.fromkeys(ids) if i in rows][:3]


def _preference_pairs(store: Store, kb: KnowledgeBase, teacher: Teacher | None, voted: list[dict[str, Any]],
                      corrections: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
    """One preference pair per 👎 interaction with a draft: (pairs for dpo.jsonl, pairs added or replaced).

    `rejected` is the model's own draft (interactions.draft), never the text the user saw: a quote or a
    refusal from the grounding check is not what the model wrote, and DPO must push down what it wrote.
    `chosen` is the usable correction, else the teacher's rewrite (kept in `preference_pairs`, so the
    teacher is asked once per draft), dropped unless it is NOT_FOUND or supported by the passages."""
    pairs, added = [], 0
    existing = {r["interaction_id"]: r for r in store.query("SELECT * FROM preference_pairs")}
    for row in voted:
        draft = (row.get("draft") or "").strip()
        if row["net"] >= 0 or not draft or _prompt(row) is None:  # no draft: nothing of the model's own to reject
            continue
        old = existing.get(row["id"])
        chosen, source = corrections.get(row["id"]), "correction"
        if chosen is None and old and old["source"] == "teacher_rewrite" and old["rejected"] == draft:
            chosen, source = old["chosen"], old["source"]  # the cached rewrite
        elif chosen is None and teacher is not None and hasattr(teacher, "rewrite"):
            passages, source = passages_of(row, kb), "teacher_rewrite"
            chosen = (teacher.rewrite(row["condensed_question"] or row["question"], passages) or "").strip()
            if chosen != NOT_FOUND and not correction_supported(chosen, passages):
                chosen = None
        if not chosen or chosen.strip() == draft:
            continue
        if not old or (old["chosen"], old["rejected"], old["source"]) != (chosen, draft, source):
            replaced = old["id"] if old else None
            old = {"id": new_id(), "interaction_id": row["id"], "prompt": row["prompt"], "chosen": chosen,
                   "rejected": draft, "source": source, "created_at": now()}
            store.replace_preference_pair(replaced, old)
            added += 1
        pairs.append(old)
    return pairs, added


def _kto_row(row: dict[str, Any], prompt: Messages) -> dict[str, Any] | None:
    """A vote on the model's own draft: completion = the stored draft, label = net vote > 0.

    Only when the user saw the model's text (produced_by "model"): a vote on a quote or a refusal
    judges the check's fallback, not the draft. A 👍 labels the draft desirable only when the check
    kept all of it; a tie (net 0) says nothing."""
    draft = (row.get("draft") or "").strip()
    if not draft or row["produced_by"] != "model" or row["net"] == 0:
        return None
    label = row["net"] > 0
    if label and not shown_whole(draft, row["answer"]):
        return None
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": draft}], "label": label,
            "id": row["id"], "source": "draft_up" if label else "draft_down"}


def spread(pairs: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most `limit` pairs (0 = all), newest first, taken in turn from each document and, within a
    document, from each section, so a capped cycle still learns from the whole corpus rather than from
    the first documents in the table. The pairs left out stay stored for a later cycle."""
    if not limit or len(pairs) <= limit:
        return pairs
    return spread_order(pairs)[:limit]


def spread_order(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All of `pairs` in the order `spread` takes them: newest first, round-robin over documents and,
    within a document, over its sections (any prefix is as diverse as the pairs allow)."""
    if not pairs:
        return []
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for pair in sorted(pairs, key=lambda p: (p["created_at"], p["id"]), reverse=True):
        by_doc.setdefault(pair["document_id"] or "", []).append(pair)
    queues = []
    for doc_pairs in by_doc.values():
        by_section: dict[str, list[dict[str, Any]]] = {}
        for pair in doc_pairs:
            by_section.setdefault(pair["section"] or "", []).append(pair)
        sections = list(by_section.values())
        queues.append([s[i] for i in range(max(map(len, sections))) for s in sections if i < len(s)])
    chosen: list[dict[str, Any]] = []
    for i in range(max(map(len, queues))):
        chosen += [q[i] for q in queues if i < len(q)]
    return chosen


def build_datasets(settings: Settings, store: Store, kb: KnowledgeBase, out_dir: Path | None = None,
                   teacher: Teacher | None = None, seed: int = 0,
                   train_ids: Sequence[str] | None = None) -> DatasetReport:
    """Write the SFT/DPO/KTO files; deterministic for a given database and seed.

    `train_ids`: the train pairs to use, in this order (the cycle's budget plan, training/budget.py);
    None = `spread` of every train pair, capped at `max_train_pairs`."""
    builder = _Builder(settings, store, kb, seed)
    if out_dir is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        out_dir = settings.datasets_dir / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in FILES}

    pairs = store.query("SELECT * FROM qa_pairs ORDER BY created_at, id")
    chunks = kb.chunks_by_id(list({p["chunk_id"] for p in pairs if p["chunk_id"]}))
    live = [p for p in pairs if p["chunk_id"] in chunks]  # pairs of replaced document versions drop out
    if train_ids is None:
        train = spread([p for p in live if p["split"] == "train"], settings.max_train_pairs)
    else:
        by_id = {p["id"]: p for p in live if p["split"] == "train"}
        train = [by_id[i] for i in train_ids if i in by_id]
    for pair in [p for p in live if p["split"] == "heldout"] + train:
        target = "sft_heldout.jsonl" if pair["split"] == "heldout" else "sft_train.jsonl"
        rows[target].append(builder.sft_example(pair, chunks[pair["chunk_id"]]))

    wanted = round(settings.notfound_fraction * len(train))
    for pair in builder.rng.sample(train, min(wanted, len(train))):
        donors = [p for p in train if (p["document_id"], p["section"]) != (pair["document_id"], pair["section"])]
        if donors and (example := builder.not_found_example(pair, builder.rng.choice(donors))):
            rows["sft_train.jsonl"].append(example)

    voted = _voted_interactions(store)
    report = DatasetReport(out_dir=str(out_dir))
    counts: Counter[str] = Counter()
    corrections = _usable_corrections(settings, store, kb, voted, counts)
    for row in voted:
        prompt = _prompt(row)
        if prompt is None:
            continue
        if row["net"] > 0:
            # What the user saw and liked — but not a refusal: its 👍 may thank the list of closest passages
            # rather than confirm the documents are silent (the gate leaves those out for the same reason).
            if row["produced_by"] != "refusal":
                rows["sft_train.jsonl"].append({"prompt": prompt, "id": row["id"], "source": "feedback_up",
                                                "completion": [{"role": "assistant", "content": row["answer"]}]})
        elif row["id"] in corrections:
            fix = [{"role": "assistant", "content": corrections[row["id"]]}]
            rows["sft_train.jsonl"].append({"prompt": prompt, "completion": fix, "id": f"{row['id']}-fix",
                                            "source": "correction"})
        kto = _kto_row(row, prompt)
        if kto is not None:
            rows["kto.jsonl"].append(kto)

    pairs, report.preference_pairs_added = _preference_pairs(store, kb, teacher, voted, corrections)
    for pref in pairs:
        rows["dpo.jsonl"].append({
            "prompt": json.loads(pref["prompt"]), "chosen": [{"role": "assistant", "content": pref["chosen"]}],
            "rejected": [{"role": "assistant", "content": pref["rejected"]}], "id": pref["id"], "source": pref["source"],
        })
    report.corrections = dict(counts)

    builder.rng.shuffle(rows["sft_train.jsonl"])  # not-found and feedback examples spread through the epoch
    builder.rng.shuffle(rows["kto.jsonl"])  # KTO samples sequentially: 👍 and 👎 mixed within its batches
    for name, items in rows.items():
        with (out_dir / name).open("w", encoding="utf-8") as handle:
            for item in items:
                handle.write(json.dumps(item, ensure_ascii=False) + "\n")
        report.files[name] = len(items)
        report.sources[name] = dict(Counter(str(i.get("source", "label" if "label" in i else "")) for i in items))
    (settings.datasets_dir / "latest").parent.mkdir(parents=True, exist_ok=True)
    (settings.datasets_dir / "latest").write_text(str(out_dir) + "\n")
    store.audit("dataset", "build_datasets", {**report.files, "corrections": report.corrections})
    return report
