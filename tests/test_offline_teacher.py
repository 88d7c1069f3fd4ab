"""The offline teacher writes questions like users (varied, standalone, naming their subject), complete
grounded answers, and a share of unanswerable near-topic questions; distill's filters drop ambiguous
questions and refusals the document could answer. On the sample handbook (the session's ingested copy)
and on a small SQLite reference page written here.

    python -m pytest -q tests/test_offline_teacher.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from agent.prompts import NOT_FOUND
from storage.config import Settings
from storage.db import Store
from training.distill import (distill, is_leaky, is_supported, names_subject, pending_sections, refusal_holds, stem,
                              subject_stems)
from training.offline_teacher import OfflineTeacher, candidates
from training.teachers import QAPair

SENTENCE_END = re.compile(r"[.!?]$")


def _home(handbook_home: Path, tmp_path: Path, name: str) -> tuple[Settings, Store]:
    home = tmp_path / name
    shutil.copytree(handbook_home, home)
    return Settings(home=home), Store(home / "flywheel.db")


@pytest.fixture(scope="module")
def handbook(handbook_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The handbook distilled once by the offline teacher: sections, pairs (with their chunk) and documents."""
    settings, store = _home(handbook_home, tmp_path_factory.mktemp("offline"), "home")
    sections = pending_sections(store)
    report = distill(settings, store, OfflineTeacher())
    pairs = store.query(
        "SELECT q.*, c.text, c.heading FROM qa_pairs q JOIN chunks c ON c.id = q.chunk_id ORDER BY q.created_at, q.id")
    documents = {r["document_id"]: "" for r in store.query("SELECT DISTINCT document_id FROM chunks")}
    for row in store.query("SELECT document_id, heading, text FROM chunks ORDER BY ord"):
        documents[row["document_id"]] += f"{row['heading'] or ''}\n{row['text']}\n"
    headings = {p.strip() for (_, chunks) in sections for c in chunks for p in (c["heading"] or "").split(" > ")}
    yield {"sections": sections, "report": report, "pairs": pairs, "documents": documents, "headings": headings}
    store.close()


def test_questions_read_like_users(handbook: dict[str, Any]) -> None:
    pairs = handbook["pairs"]
    assert len(pairs) >= 40
    questions = [p["question"] for p in pairs]
    for heading in handbook["headings"]:
        leaf = re.sub(r"^\d+(?:\.\d+)*\.?\s+", "", heading)
        assert not any(q.lower().startswith(f"for {leaf.lower()}") for q in questions), leaf
    assert not any(re.match(r"For [^,?]+, ", q) for q in questions)  # no heading-prefix pattern at all
    openings = Counter(" ".join(q.lower().replace("what's", "what is").split()[:2]) for q in questions)
    assert len(openings) >= 8, openings
    assert len({q.split()[0].lower() for q in questions}) >= 5
    for wanted in ("how do i ", "what happens if ", "can i ", "which ", "why ", "when ", "what's the ", "how soon ", "who "):
        assert any(q.lower().startswith(wanted) for q in questions), wanted
    assert any(re.match(r"(What should I do|What do I do) if ", q) for q in questions)
    # the same rule is worded differently from sentence to sentence (the hash-ordered variants)
    variants = ("How quickly ", "What's the deadline to ", "How long do I have to ", "How early ", "On which day ",
                "How frequently ", "How big is ")
    assert len({v for v in variants for q in questions if q.startswith(v)}) >= 2
    for pair in pairs:  # every question stands alone, as distill's filters demand
        assert pair["question"].endswith("?") and not is_leaky(pair["question"])
        assert names_subject(pair["question"], pair["section"], pair["text"]), pair["question"]
    # paraphrased, not the passage's words: the synonym table and the first person did something
    assert any(" I " in q or " my " in q for q in questions)
    assert any(re.search(r"\b(respond to|send in|file|buy|staff|ask for|pick|right away)\b", q) for q in questions)


def test_answers_are_whole_supported_sentences(handbook: dict[str, Any]) -> None:
    answered = [p for p in handbook["pairs"] if p["answer"] != NOT_FOUND]
    assert len(answered) >= 30
    for pair in answered:
        assert SENTENCE_END.search(pair["answer"]), pair["answer"]
        assert pair["answer"][0].isupper() or pair["answer"][0] in "`$0123456789", pair["answer"]
        assert is_supported(pair["answer"], pair["text"] + " " + pair["heading"]), pair
    steps = [p for p in answered if p["reasoning"].endswith("procedure")]
    assert steps and all(re.search(r"^1\. .+ 2\. ", p["answer"]) for p in steps)
    assert any(p["question"].startswith("How do I ") for p in steps)


def test_unanswerable_pairs_ask_what_the_document_never_says(handbook: dict[str, Any]) -> None:
    pairs, documents = handbook["pairs"], handbook["documents"]
    refusals = [p for p in pairs if p["answer"] == NOT_FOUND]
    assert 0.08 <= len(refusals) / len(pairs) <= 0.2, (len(refusals), len(pairs))
    assert len({p["document_id"] for p in refusals}) >= 3  # spread over the handbook, not one document
    for pair in refusals:
        key = re.search(r"asks for: ([\w ]+)\)", pair["reasoning"]).group(1)  # type: ignore[union-attr]
        for word in key.split():
            assert not re.search(rf"\b{word}", documents[pair["document_id"]], re.I), (word, pair["question"])
        assert refusal_holds(pair["question"], documents[pair["document_id"]], pair["section"])
        assert not is_leaky(pair["question"]) and names_subject(pair["question"], pair["section"], pair["text"])
    # the check is not vacuous: the same question asking also for a word the document does use is no refusal
    some = refusals[0]
    document, section = documents[some["document_id"]], some["section"]
    used = next(w for w in re.findall(r"\b[a-z]{6,}\b", document) if stem(w) not in subject_stems(section, document))
    assert not refusal_holds(f"{some['question'].rstrip('?')} and {used}?", document, section)


def test_runs_are_deterministic(handbook: dict[str, Any], handbook_home: Path, tmp_path: Path) -> None:
    sections = handbook["sections"]
    first = [OfflineTeacher().pairs_for(chunks, 9) for _, chunks in sections]
    assert first == [OfflineTeacher().pairs_for(chunks, 9) for _, chunks in sections]
    # another process (another PYTHONHASHSEED) chooses the same wordings: no salted hash() anywhere
    (tmp_path / "chunks.json").write_text(json.dumps([chunks for _, chunks in sections]))
    script = ("import json, sys; from dataclasses import asdict; from training.offline_teacher import OfflineTeacher; "
              "print(json.dumps([[asdict(p) for p in OfflineTeacher().pairs_for(c, 9)] "
              "for c in json.load(open(sys.argv[1]))]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "chunks.json")], capture_output=True,
                         text=True, env=env, cwd=Path(__file__).resolve().parents[1], check=True).stdout
    assert json.loads(out) == [[asdict(p) for p in pairs] for pairs in first]
    settings, store = _home(handbook_home, tmp_path, "again")
    distill(settings, store, OfflineTeacher())
    columns = ("question", "answer", "reasoning", "split", "chunk_id")
    again = sorted(tuple(r.values()) for r in store.query(f"SELECT {', '.join(columns)} FROM qa_pairs"))
    store.close()
    assert again == sorted(tuple(p[k] for k in columns) for p in handbook["pairs"])


class _Scripted:
    """A teacher that answers one section with given pairs (the first chunk supports them)."""

    name = "scripted"

    def __init__(self, section: str, pairs: list[tuple[str, str]]):
        from training.teachers import TeacherUsage

        self.section, self.pairs, self.usage = section, pairs, TeacherUsage()

    def pairs_for(self, chunks: list[dict], max_pairs: int) -> list[QAPair]:
        if chunks[0]["heading"] != self.section:
            return []
        return [QAPair(q, a, "scripted", [chunks[0]["id"]]) for q, a in self.pairs]

    def rewrite(self, question: str, passages: Any) -> str | None:
        return None


def test_distill_drops_ambiguous_questions_and_answerable_refusals(handbook_home: Path, tmp_path: Path) -> None:
    settings, store = _home(handbook_home, tmp_path, "scripted")
    section = "Expenses and Reimbursement > Approval thresholds"
    text = store.query("SELECT text FROM chunks WHERE heading = ? ORDER BY ord", (section,))[0]["text"]
    answer = "Manager approval is needed for anything above $500, and it must be obtained before you spend the money."
    kept = [
        ("Who has to approve an expense claim above $500?", answer),
        ("Which auditing firm audits the approval thresholds?", NOT_FOUND),  # no audit anywhere in expenses.md
    ]
    dropped_leaky = [
        ("What does this section say about approval thresholds?", answer),  # deictic
        ("What approval thresholds are listed here?", answer),  # deictic "here"
        ("What happens if they approve it late?", answer),  # a pronoun with nothing to refer to
        ("Approval thresholds?", answer),  # fewer than 4 content words
        ("What time does the weekly standup meeting start?", answer),  # names no subject of the section
    ]
    dropped_unsupported = [
        ("Who approves an expense claim above the threshold for travel?", NOT_FOUND),  # the document says
        ("Which version of Ledgerly do the approval thresholds require?", NOT_FOUND),  # "version" is in it
        ("When is manager approval needed for an expense claim?", answer.replace("$500", "$800")),  # not its number
    ]
    teacher = _Scripted(section, kept + dropped_leaky + dropped_unsupported)
    report = distill(settings, store, teacher)
    stored = [r["question"] for r in store.query("SELECT question FROM qa_pairs ORDER BY created_at, id")]
    store.close()
    assert is_supported(answer, text + " " + section)
    assert stored == [q for q, _ in kept]
    assert not is_leaky("Who has to approve IT software subscriptions?")  # IT, the department, is no pronoun
    assert not is_leaky("How soon must a page be acknowledged before it escalates?")  # "it" has its noun
    assert (report.dropped_leaky, report.dropped_unsupported) == (len(dropped_leaky), len(dropped_unsupported))


SQLITE_PAGE = """<html><body><h1>SQLite Shell and Pragmas</h1>
<h2>PRAGMA foreign_keys</h2>
<p><b>PRAGMA foreign_keys = </b><i>boolean</i><b>;</b></p>
<p>Query, set, or clear the enforcement of foreign key constraints. Foreign key constraints are disabled by default.
This pragma is a no-op within a transaction.</p>
<p>If the argument is ON, then the database connection enforces the foreign key constraints on every change.</p>
<h2>Command-line options</h2>
<p>The --readonly option opens the database in read-only mode.</p>
<p>The -bail option stops the shell after hitting an error.</p>
<h2>How to back up a database</h2>
<ol><li>Open the database with the sqlite3 command-line shell.</li>
<li>Run .backup main copy.db to write a consistent copy while other connections keep working.</li>
<li>Check the copy with PRAGMA integrity_check before you rely on it.</li></ol>
<h2>Temporary files</h2>
<p>SQLite writes temporary files into the directory named by the SQLITE_TMPDIR environment variable.
Temporary files are deleted automatically when the connection closes.</p>
</body></html>"""


def test_reference_page_questions(tmp_path: Path) -> None:
    """Reference docs: what an item does, its default, which option does what, how to do a task, and a
    near-topic question the page does not answer."""
    from storage.chunking import chunk_document
    from storage.parsing import parse_file

    page = tmp_path / "sqlite.html"
    page.write_text(SQLITE_PAGE)
    chunks = chunk_document(parse_file(page, 10**6), lambda text: len(text.split()), 192, 16)
    sections: dict[str, list[dict]] = {}
    for n, chunk in enumerate(chunks):
        sections.setdefault(chunk.heading or "", []).append(
            {"id": str(n), "text": chunk.text, "heading": chunk.heading, "source": page.name})
    pairs = [(heading, p) for heading, cs in sections.items() for p in OfflineTeacher().pairs_for(cs, 9)]
    by_question = {p.question: p.answer for _, p in pairs}
    assert by_question["Which option opens the database in read-only mode?"] == \
        "The --readonly option opens the database in read-only mode."
    assert by_question["Where does SQLite write temporary files?"].startswith("SQLite writes temporary files")
    assert any(re.match(r"What('s| is) the default for foreign key constraints\?", q) for q in by_question)
    steps = next(a for q, a in by_question.items() if "back up a database" in q)
    assert steps.startswith("Open the database with") and "consistent copy" in steps and "Check the copy" in steps
    whole = re.sub(r"<[^>]+>", " ", SQLITE_PAGE)
    refusals = [(heading, p) for heading, p in pairs if p.answer == NOT_FOUND]
    assert refusals and all(refusal_holds(p.question, whole, heading) for heading, p in refusals)
    for _, p in pairs:
        assert not p.question.startswith("For ") and not is_leaky(p.question)
        if p.answer != NOT_FOUND:
            assert SENTENCE_END.search(p.answer) and is_supported(p.answer, whole), p
    # deictic candidates are never written: "this pragma" becomes the item's name
    assert not any("this pragma" in q.lower() for q, _, _ in candidates(
        "This pragma is a no-op within a transaction. If this pragma is used twice, the second call wins.",
        "SQLite > PRAGMA foreign_keys"))
