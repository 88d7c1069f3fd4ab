"""What bounds an answer (when generation stops) and a cycle (which pairs it trains on)."""

from __future__ import annotations

from agent.graph import answer_complete
from training.dataset import spread


def test_generation_stops_after_enough_finished_sentences():
    assert not answer_complete("Rollbacks take about 4 minutes [1]. Run shipit", 2)
    assert answer_complete("Rollbacks take about 4 minutes [1]. Run shipit rollback first. Then", 2)
    assert not answer_complete("anything at all. more. more. more.", 0)  # 0 = only max_new_tokens


def test_generation_stops_at_a_finished_paragraph_but_not_before_a_list():
    assert answer_complete("Acknowledge a page within 15 minutes [1].\n\nAlso, here is", 4)
    assert not answer_complete("To roll back a service, follow these steps:\n\n1. Announce", 4)


def test_generation_never_stops_inside_a_code_block():
    code = "Run this:\n```bash\nshipit drain api\nshipit rollback api\nshipit status api\nshipit lock api\n"
    assert not answer_complete(code, 2)  # four finished "lines", but the block is still open
    assert not answer_complete(code + "```\n", 2)  # the block is one sentence: two are needed
    assert answer_complete(code + "```\nThen announce it. And", 2)


def _pair(i: int, doc: str, section: str) -> dict:
    return {"id": f"p{i:03d}", "document_id": doc, "section": section, "created_at": f"2026-01-01T00:00:{i:02d}"}


def test_a_capped_cycle_learns_from_every_document_and_section():
    pairs = [_pair(i, "big.html", f"s{i % 3}") for i in range(30)] + [_pair(30 + i, "small.md", "only") for i in range(3)]
    chosen = spread(pairs, 6)
    assert len(chosen) == 6
    assert {p["document_id"] for p in chosen} == {"big.html", "small.md"}
    assert {p["section"] for p in chosen if p["document_id"] == "big.html"} == {"s0", "s1", "s2"}
    assert spread(pairs, 0) == pairs and spread(pairs, 100) == pairs
