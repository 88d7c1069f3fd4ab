"""Distillation: turn new document sections into filtered, held-out-split Q&A pairs in `qa_pairs`.

    flywheel distill [--teacher offline|anthropic|auto] [--max-pairs N] [--json]

Only chunks with `distilled_at IS NULL` are read: ingest gives a changed document new chunk ids, so
new and changed documents are distilled and unchanged ones never again. Chunks are grouped by
(document, heading) section and each section goes to the teacher once. Every pair must pass:

* support — each answer sentence has >= 0.6 of its content words (and all its numbers) in the
  supporting chunks (agent.grounding.support), so the model is never taught an unsupported claim;
* answerability — the user never sees the chunk at answer time, so the question must stand alone: no
  deictic wording ("this section", "the above", "here", "it"/"they" with no noun before them), at
  least 4 content words, and one of them names the subject (a word of the heading path or a name the
  passage uses, matched on a crude stem: "paged" ~ "Paging");
* refusals — a pair answered exactly NOT_FOUND teaches the model to refuse a near-topic question; it
  is kept only when every word it asks about (beyond the subject and question scaffolding like "how
  much") appears nowhere in the whole document, so an answerable question is never taught a refusal;
* novelty — not a normalized duplicate, nor token-Jaccard >= 0.8 with an existing question.

The held-out split is fixed per section: sha1(document name + heading) below `heldout_fraction` means
every pair of that section, in every run, is held out, so evaluation never scores memorised sections.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from agent.grounding import STOPWORDS, content_tokens, sentences, support
from agent.prompts import NOT_FOUND
from storage.db import new_id, now
from training.teachers import QAPair, Teacher, TeacherUsage

if TYPE_CHECKING:
    from storage.config import Settings
    from storage.db import Store

log = logging.getLogger(__name__)

MIN_SUPPORT = 0.6
MIN_CONTENT_WORDS = 4
NEAR_DUPLICATE = 0.8
# Phrases that only make sense to someone looking at the chunk. Any "this/these <noun>" points at
# something on the page ("this option", "this handbook"), except time ("this week").
DEICTIC = re.compile(
    r"\b(the above|that|the following|the preceding) (section|passage|text|paragraph|page|document|table|"
    r"list|excerpt|chunk)\b|\bthe (above|passage|text|excerpt|chunk)\b|\baccording to the (document|text|passage|"
    r"section|context)\b|\b(mentioned|described|listed|shown) (above|below)\b|\bin the context\b|\bhere\b|"
    r"\b(this|these)\b(?!\s+(?:year|month|week|quarter|morning|afternoon|evening|weekend|time)\b)",
    re.IGNORECASE,
)
# "it"/"they"/"them" with (almost) nothing before it to refer to: "What happens if they do not know?".
_PRONOUN = re.compile(r"^(?P<before>.*?)\b(?:it|they|them|It|They)\b")  # not "IT", the department
# Words that frame a question rather than name what it asks for ("how much", "the latest", "do I need").
FILLER = frozenset("""much many long soon often exactly latest current currently usually still really first last
    official ever need needs get gets have has work works run runs install find know tell happen happens
    available allowed able people anyone someone rule rules""".split())
_WH = frozenset("what how when why which who whom where".split())
_WORD = re.compile(r"[A-Za-z0-9_]+(?:['.-][A-Za-z0-9_]+)*")


@dataclass
class DistillReport:
    sections: int = 0
    chunks: int = 0
    generated: int = 0
    kept: int = 0
    dropped_unsupported: int = 0
    dropped_leaky: int = 0
    dropped_duplicate: int = 0
    heldout: int = 0
    train: int = 0
    stale_removed: int = 0  # pairs of chunks that a re-ingest replaced (their document changed)
    teacher: str = ""
    usage: TeacherUsage = field(default_factory=TeacherUsage)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def section_key(document_name: str, heading: str | None) -> str:
    return f"{document_name}\x1f{heading or ''}"


def is_heldout(document_name: str, heading: str | None, fraction: float) -> bool:
    """Stable across runs and machines (sha1, not Python's salted hash)."""
    digest = hashlib.sha1(section_key(document_name, heading).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def normalize_question(question: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", re.sub(r"\s+", " ", question.lower())).strip()


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def content_words(question: str) -> list[str]:
    """The question's words minus grammar (agent.grounding.STOPWORDS) — but the question word counts:
    "how soon" asks something else than "what", so "How soon should I upload receipts?" has 4 — and an
    identifier's parts count as words (`cache_size`: cache, size)."""
    out = []
    for word in _WORD.findall(question.lower().replace("_", " ")):
        base = word.split("'")[0]  # what's -> what, don't -> don
        if (base in _WH or base not in STOPWORDS | {"don", "doesn", "isn", "aren", "can", "won", "let"}) \
                and len(base) > 1:
            out.append(word)
    return out


def _bare_pronoun(question: str) -> bool:
    """"What happens if they do not know?", "Why should I report it?": a pronoun with at most one content
    word before it has no noun to refer to ("How soon must a page be acknowledged before it escalates?"
    has one)."""
    found = _PRONOUN.search(question)
    return bool(found) and len(set(content_words(found.group("before"))) - _WH) <= 1


def is_leaky(question: str) -> bool:
    """Ambiguous without the passage: deictic wording, a bare pronoun subject, or too few content words."""
    return (bool(DEICTIC.search(question)) or _bare_pronoun(question)
            or len(content_words(question)) < MIN_CONTENT_WORDS)


def stem(word: str) -> str:
    """Crude and lenient: `paged`, `paging`, `page` -> `pag`; `buddies` ~ `buddy`; first 5 letters."""
    word = word.lower().split("'")[0]
    if len(word) > 3:
        for suffix, repl in (("ies", "y"), ("ing", ""), ("ied", "y"), ("ed", ""), ("es", ""), ("s", "")):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)] + repl
                break
    return (word[:-1] if word.endswith("e") and len(word) > 3 else word)[:5]


def stems(text: str, split_compounds: bool = False) -> set[str]:
    """Stems of the content words; `split_compounds` also splits `high-cost`, `cache_size`, `a.b`."""
    words = _WORD.findall(text)
    if split_compounds:
        words += [part for w in words for part in re.split(r"[-_.']", w) if part]
    return {stem(w) for w in words if w.lower() not in STOPWORDS and len(w) > 1}


# A name the passage uses: `code`, words with a digit, an underscore or an inner capital (SEV1,
# cache_size, GitHub), and Capitalised words inside a sentence (Ledgerly, Beacon).
_NAME = re.compile(r"`([^`]{2,40})`|\b(\w*\d\w*|\w+_\w+|[A-Za-z]+[A-Z]\w*)\b|(?<=[a-z,] )([A-Z][a-z]{2,})\b")


def subject_stems(heading: str | None, passage: str = "") -> set[str]:
    """What a question may name to say what it is about: the heading path's words and the passage's names."""
    names = [" ".join(g for g in m.groups() if g) for m in _NAME.finditer(passage)]
    return stems(heading or "") | stems(" ".join(names), split_compounds=True)


def names_subject(question: str, heading: str | None, passage: str = "") -> bool:
    return bool(stems(question) & subject_stems(heading, passage))


def refusal_holds(question: str, document: str, heading: str | None = "") -> bool:
    """An unanswerable (NOT_FOUND) pair is kept only when it asks about something the document never
    mentions: every word beyond the subject and the filler is absent from the whole document.
    Strict on purpose — a refusal taught for an answerable question is worse than one refusal less."""
    asked = stems(question) - subject_stems(heading, document) - {stem(w) for w in FILLER}
    return bool(asked) and not asked & stems(document + " " + (heading or ""), split_compounds=True)


def is_supported(answer: str, evidence: str) -> bool:
    parts = [s for s in sentences(answer) if content_tokens(s) or re.search(r"\d", s)]
    return bool(parts) and all(support(s, evidence) >= MIN_SUPPORT for s in parts)


class _Seen:
    """Questions already stored or kept in this run: exact (normalized) and near-duplicate lookup."""

    def __init__(self, questions: list[str]):
        self.exact = {normalize_question(q) for q in questions}
        self.tokens = [content_tokens(q) for q in questions]

    def duplicate(self, question: str) -> bool:
        if normalize_question(question) in self.exact:
            return True
        words = content_tokens(question)
        return any(jaccard(words, other) >= NEAR_DUPLICATE for other in self.tokens)

    def add(self, question: str) -> None:
        self.exact.add(normalize_question(question))
        self.tokens.append(content_tokens(question))


def pending_sections(store: Store) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(document, chunks) per undistilled section, in document and reading order."""
    rows = store.query(
        """SELECT c.*, d.name AS document_name FROM chunks c JOIN documents d ON d.id = c.document_id
           WHERE c.distilled_at IS NULL ORDER BY d.name, c.ord"""
    )
    sections: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        sections.setdefault((row["document_id"], row["heading"] or ""), []).append(row)
    return [({"id": doc, "name": chunks[0]["document_name"], "heading": heading}, chunks)
            for (doc, heading), chunks in sections.items()]


def distill(settings: Settings, store: Store, teacher: Teacher, max_pairs: int | None = None) -> DistillReport:
    """Ask the teacher about every undistilled section, filter, split and store the pairs."""
    report = DistillReport(teacher=teacher.name)
    report.stale_removed = drop_stale_pairs(store)
    seen = _Seen([r["question"] for r in store.query("SELECT question FROM qa_pairs")])
    budget = max_pairs if max_pairs is not None else None
    for doc, chunks in pending_sections(store):
        if budget is not None and budget <= 0:
            break  # the rest stays undistilled for the next run
        report.sections += 1
        report.chunks += len(chunks)
        by_id = {c["id"]: c for c in chunks}
        try:
            pairs: list[QAPair] = teacher.pairs_for(chunks, settings.max_pairs_per_chunk * len(chunks))
        except Exception as exc:  # one failing section must not lose the others; it is retried next run
            log.warning("teacher failed on %s / %s: %s", doc["name"], doc["heading"], exc)
            continue
        report.generated += len(pairs)
        heldout = is_heldout(doc["name"], doc["heading"], settings.heldout_fraction)
        rows, cut, document = [], False, None
        for pair in pairs:
            evidence = "\n".join(by_id[i]["text"] + " " + (by_id[i]["heading"] or "") for i in pair.chunk_ids
                                 if i in by_id)
            if pair.answer.strip() == NOT_FOUND:
                # A refusal is "supported" when the whole document, not just this section, lacks the answer.
                document = document if document is not None else _document_text(store, doc["id"])
                supported = bool(evidence) and refusal_holds(pair.question, document, doc["heading"])
            else:
                supported = bool(evidence) and is_supported(pair.answer, evidence)
            if not supported:
                report.dropped_unsupported += 1
                continue
            if is_leaky(pair.question) or not names_subject(pair.question, doc["heading"], evidence):
                report.dropped_leaky += 1
                continue
            if seen.duplicate(pair.question):
                report.dropped_duplicate += 1
                continue
            if budget is not None and len(rows) >= budget:
                cut = True
                break
            seen.add(pair.question)
            chunk_id = next(i for i in pair.chunk_ids if i in by_id)
            rows.append({
                "id": new_id(), "chunk_id": chunk_id, "document_id": doc["id"], "section": doc["heading"],
                "question": pair.question, "answer": pair.answer, "reasoning": pair.reasoning,
                "split": "heldout" if heldout else "train", "teacher": teacher.name, "created_at": now(),
            })
        # A section cut short by the budget stays pending: next run its kept pairs are duplicates and
        # the rest are added, instead of being lost with the section marked done.
        _store(store, rows, [] if cut else list(by_id))
        report.kept += len(rows)
        report.heldout += len(rows) if heldout else 0
        report.train += 0 if heldout else len(rows)
        if budget is not None:
            budget -= len(rows)
    report.usage = teacher.usage
    store.audit("distill", "distill", {k: v for k, v in report.as_dict().items() if k != "usage"})
    return report


def _document_text(store: Store, document_id: str) -> str:
    rows = store.query("SELECT text, heading FROM chunks WHERE document_id = ? ORDER BY ord", (document_id,))
    return "\n".join(f"{r['heading'] or ''}\n{r['text']}" for r in rows)


def drop_stale_pairs(store: Store) -> int:
    """Delete pairs whose chunk no longer exists: a changed document got new chunks, and its old pairs
    may state what the document no longer says (and would block the new ones as duplicates)."""
    return store.drop_orphan_qa_pairs()


def _store(store: Store, rows: list[dict[str, Any]], chunk_ids: list[str]) -> None:
    """Pairs and the chunks' distilled_at in one transaction: a crash never half-distills a section."""
    store.add_qa_pairs(rows, chunk_ids)
