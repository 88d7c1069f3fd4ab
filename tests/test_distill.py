"""Distillation on the sample handbook (ingested once per module, ~10-40 s; datasets: test_dataset.py),
and the Anthropic teacher through the real anthropic SDK against a loopback fake of /v1/messages
(tests/fakeanthropic.py).

    python -m pytest -q tests/test_distill.py
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from agent.prompts import NOT_FOUND
from storage.config import Settings
from storage.knowledge import KnowledgeBase
from storage.samples import sample_handbook
from tests.fakeanthropic import RATE_LIMITED, fake_messages, tool_use
from training.distill import distill, is_heldout, is_leaky, is_supported, pending_sections
from training.offline_teacher import OfflineTeacher
from training.teachers import AnthropicTeacher, load_teacher


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnowledgeBase]:
    root = tmp_path_factory.mktemp("distill")
    docs = root / "handbook"
    shutil.copytree(sample_handbook(), docs)  # a copy: one test edits a document
    knowledge = KnowledgeBase(Settings(home=root / "home"))
    report = knowledge.ingest([docs])
    assert not report.failed
    knowledge.docs = docs  # type: ignore[attr-defined]
    yield knowledge
    knowledge.store.close()


@pytest.fixture(scope="module")
def distilled(kb: KnowledgeBase):
    sections = pending_sections(kb.store)
    report = distill(kb.settings, kb.store, OfflineTeacher())
    return sections, report


def _pairs(kb: KnowledgeBase) -> list[dict[str, Any]]:
    return kb.store.query(
        "SELECT q.*, c.text, c.heading, d.name AS doc FROM qa_pairs q JOIN chunks c ON c.id = q.chunk_id "
        "JOIN documents d ON d.id = q.document_id ORDER BY q.created_at, q.id"
    )


# --- the offline teacher and distill ---------------------------------------------------------------
def test_offline_pairs_are_many_grounded_and_standalone(kb: KnowledgeBase, distilled) -> None:
    sections, report = distilled
    pairs = _pairs(kb)
    assert report.kept == len(pairs) >= 30
    assert report.sections == len(sections) and report.chunks == kb.stats()["chunks"]
    assert report.train + report.heldout == report.kept
    for pair in pairs:  # refusals (answer NOT_FOUND) are checked in tests/test_offline_teacher.py
        assert pair["answer"] == NOT_FOUND or is_supported(pair["answer"], pair["text"] + " " + pair["heading"]), pair
        assert not is_leaky(pair["question"]) and pair["question"].endswith("?")
        assert not re.search(r"\[\d+\]", pair["answer"])  # markers are added at dataset time
        assert pair["question"].lower().rstrip("?") not in pair["answer"].lower()  # reworded, not copied
    questions = [p["question"].lower() for p in pairs]
    assert len(set(questions)) == len(questions)
    assert any(q.startswith("how soon") for q in questions) and any("rollback procedure" in q for q in questions)

    # deterministic: the same sections give the same pairs
    teacher = OfflineTeacher()
    first = [teacher.pairs_for(chunks, 6) for _, chunks in sections]
    assert first == [OfflineTeacher().pairs_for(chunks, 6) for _, chunks in sections]
    assert all(p.chunk_ids and set(p.chunk_ids) <= {c["id"] for c in chunks}
               for pairs_, (_, chunks) in zip(first, sections) for p in pairs_)


def test_second_run_adds_nothing(kb: KnowledgeBase, distilled) -> None:
    before = kb.store.scalar("SELECT COUNT(*) FROM qa_pairs")
    again = distill(kb.settings, kb.store, OfflineTeacher())
    assert (again.sections, again.generated, again.kept) == (0, 0, 0)
    assert kb.store.scalar("SELECT COUNT(*) FROM qa_pairs") == before
    assert kb.store.scalar("SELECT COUNT(*) FROM chunks WHERE distilled_at IS NULL") == 0


def test_heldout_split_is_by_section_and_stable(kb: KnowledgeBase, distilled) -> None:
    pairs = _pairs(kb)
    splits: dict[tuple[str, str], set[str]] = {}
    for pair in pairs:
        splits.setdefault((pair["doc"], pair["section"]), set()).add(pair["split"])
        digest = hashlib.sha1(f"{pair['doc']}\x1f{pair['section']}".encode()).digest()
        expected = int.from_bytes(digest[:8], "big") / 2**64 < kb.settings.heldout_fraction
        assert (pair["split"] == "heldout") == expected == is_heldout(pair["doc"], pair["section"], 0.2)
    assert all(len(s) == 1 for s in splits.values())  # a section is never split across train/heldout
    assert {"train", "heldout"} <= {p["split"] for p in pairs}
    assert is_heldout("x.md", "A > B", 1.0) and not is_heldout("x.md", "A > B", 0.0)


# --- the Anthropic teacher through the real SDK ------------------------------------------------------
CHUNKS = [
    {"id": "doc-1-00001", "source": "oncall.md", "heading": "On-Call > Paging", "page": None,
     "text": "Acknowledge a page within 15 minutes. Unacknowledged pages escalate to the secondary."},
    {"id": "doc-1-00002", "source": "oncall.md", "heading": "On-Call > Paging", "page": None,
     "text": "Start working on a SEV1 within 5 minutes of acknowledging it."},
]


def _tool_message(pairs: Any) -> dict:
    return tool_use("record_qa_pairs", {"pairs": pairs})


def test_anthropic_teacher_uses_tool_cache_retries_and_accounts(tmp_path: Path) -> None:
    pairs = [
        {"question": "How soon must an on-call engineer acknowledge a page?", "answer": "Within 15 minutes [1].",
         "reasoning": "stated", "chunk_ids": ["doc-1-00001"]},
        {"question": "Unknown chunk?", "answer": "x", "chunk_ids": ["nope"]},  # unknown id: dropped
        {"question": 7, "answer": None, "chunk_ids": ["doc-1-00002"]},  # malformed: dropped
    ]
    with fake_messages([(429, {"retry-after": "0"}, RATE_LIMITED), (200, {}, _tool_message(pairs))]) as (url, seen):
        s = Settings(home=tmp_path / "home", anthropic_base_url=url, anthropic_api_key=SecretStr("sk-test"))
        teacher = load_teacher(s, "auto")
        assert isinstance(teacher, AnthropicTeacher) and teacher.name == "anthropic:claude-sonnet-4-6"
        out = teacher.pairs_for(CHUNKS, 4)
    assert len(seen) == 2  # the 429 was retried
    body = seen[-1]["body"]
    assert seen[-1]["path"] == "/v1/messages" and body["model"] == "claude-sonnet-4-6"
    assert body["tools"][0]["name"] == "record_qa_pairs" and "pairs" in body["tools"][0]["input_schema"]["properties"]
    assert body["tool_choice"] == {"type": "tool", "name": "record_qa_pairs"}
    blocks = body["messages"][0]["content"]
    cached = [b for b in blocks if b.get("cache_control") == {"type": "ephemeral"}]
    assert cached and all(c["id"] in cached[0]["text"] for c in CHUNKS)

    assert [(p.question, p.answer, p.chunk_ids) for p in out] == [
        ("How soon must an on-call engineer acknowledge a page?", "Within 15 minutes.", ["doc-1-00001"])]
    usage = teacher.usage
    assert (usage.requests, usage.input_tokens, usage.output_tokens, usage.cache_write_tokens) == (1, 100, 50, 200)
    assert usage.cost_usd == pytest.approx((100 * 3.0 + 50 * 15.0 + 200 * 3.75) / 1e6)


def test_anthropic_teacher_survives_bad_output_and_unknown_model(tmp_path: Path) -> None:
    bad = _tool_message("not a list")
    with fake_messages([(200, {}, bad)]) as (url, _):
        s = Settings(home=tmp_path / "home", anthropic_base_url=url, anthropic_api_key=SecretStr("sk-test"),
                     teacher_model="claude-unknown-9")
        teacher = AnthropicTeacher(s)
        assert teacher.pairs_for(CHUNKS, 3) == []
    assert teacher.usage.requests == 1 and teacher.usage.cost_usd == 0.0  # unknown price: cost 0
    assert isinstance(load_teacher(Settings(home=tmp_path / "h2")), OfflineTeacher)  # no key: offline


def test_changed_document_gets_its_new_chunks_distilled(kb: KnowledgeBase, distilled) -> None:
    """Runs last: it edits oncall.md in the module's copy of the handbook."""
    oncall = kb.docs / "oncall.md"  # type: ignore[attr-defined]
    oncall.write_text(oncall.read_text() + "\n## Pager batteries\n\nReplace the pager battery within 30 days "
                      "of the low-battery warning.\n")
    assert kb.ingest([kb.docs]).count("updated") == 1  # type: ignore[attr-defined]
    report = distill(kb.settings, kb.store, OfflineTeacher())
    assert report.sections > 0 and report.stale_removed > 0
    assert report.chunks == kb.store.scalar(
        "SELECT COUNT(*) FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.name = 'oncall.md'")
    new = kb.store.query("SELECT * FROM qa_pairs WHERE question LIKE '%pager battery%'")
    assert new and "30 days" in new[0]["answer"]
    live = {r["id"] for r in kb.store.query("SELECT id FROM chunks")}
    assert all(p["chunk_id"] in live for p in kb.store.query("SELECT chunk_id FROM qa_pairs"))


REFERENCE_PAGE = """<html><body><h1>PRAGMA Statements</h1><h2>List Of PRAGMAs</h2>
<a name="pragma_cache_size"></a><h _id=pragma_cache_size style="display:none"> PRAGMA cache_size</h><hr>
<p><b>PRAGMA </b><i>schema.</i><b>cache_size = </b><i>pages</i><b>;</b></p>
<p>Query or change the suggested maximum number of database disk pages that SQLite will hold in memory
at once per open database file. The default suggested cache size is -2000.</p>
<p>If the argument N is negative, then the number of cache pages is adjusted to use approximately N*1024
bytes of memory. When you change the cache size using the cache_size pragma, the change only endures for
the current session.</p>
<a name="pragma_freelist_count"></a><h _id=pragma_freelist_count style="display:none"> PRAGMA freelist_count</h><hr>
<p>Return the number of unused pages in the database file.</p>
</body></html>"""


def test_offline_teacher_on_reference_docs(tmp_path: Path) -> None:
    """Item headings of a reference page (SQLite's hidden `<h>`) become sections, and the offline rules
    ask what each item does, its default and what happens under a condition (naming the item)."""
    from storage.chunking import chunk_document
    from storage.parsing import parse_file

    page = tmp_path / "pragma.html"
    page.write_text(REFERENCE_PAGE)
    chunks = chunk_document(parse_file(page, 10**6), lambda text: len(text.split()), 192, 16)
    sections: dict[str, list[dict]] = {}
    for n, chunk in enumerate(chunks):
        sections.setdefault(chunk.heading or "", []).append(
            {"id": str(n), "text": chunk.text, "heading": chunk.heading, "source": page.name})
    assert "PRAGMA Statements > List Of PRAGMAs > PRAGMA cache_size" in sections
    pairs = {p.question: p.answer for cs in sections.values() for p in OfflineTeacher().pairs_for(cs, 9)}
    assert pairs["What does PRAGMA cache_size do?"].startswith("Query or change the suggested maximum")
    assert pairs["What is PRAGMA freelist_count for?"] == "Return the number of unused pages in the database file."
    assert any(re.fullmatch(r"What(?: is|'s) the default suggested cache size\?", q) and "is -2000" in a
               for q, a in pairs.items())
    assert "What happens if the argument N is negative with PRAGMA cache_size?" in pairs  # the subject named, no prefix
    assert all((a == NOT_FOUND or is_supported(a, REFERENCE_PAGE.replace("\n", " "))) and not is_leaky(q)
               for q, a in pairs.items())


def test_max_pairs_budget_loses_nothing(handbook_home: Path, distilled, tmp_path: Path) -> None:
    """`--max-pairs N` keeps N now; the section it cut short stays pending, so later runs add the rest
    and the total equals one uncapped run."""
    from storage.db import Store

    home = tmp_path / "home"
    shutil.copytree(handbook_home, home)
    settings, store = Settings(home=home), Store(home / "flywheel.db")
    runs = [distill(settings, store, OfflineTeacher(), max_pairs=7) for _ in range(3)]
    assert [r.kept for r in runs] == [7, 7, 7]
    rest = distill(settings, store, OfflineTeacher())
    _, uncapped = distilled
    assert 21 + rest.kept == store.scalar("SELECT COUNT(*) FROM qa_pairs") == uncapped.kept
    assert store.scalar("SELECT COUNT(*) FROM chunks WHERE distilled_at IS NULL") == 0
    store.close()
