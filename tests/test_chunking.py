"""Unit tests for storage.chunking: section boundaries, token limits, overlap, splitting."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.chunking import chunk_document, split_sentences
from storage.documents import Block, ParsedDocument


def words(text: str) -> int:
    return len(text.split())


def doc_of(*blocks: Block, kind: str = "markdown") -> ParsedDocument:
    return ParsedDocument(Path("doc.md"), kind, list(blocks))


def sentence(i: int, n: int = 8) -> str:
    """A distinct sentence of exactly n words."""
    return " ".join([f"S{i}"] + ["word"] * (n - 2) + ["end."])


def test_sections_are_never_merged_and_heading_is_the_path():
    doc = doc_of(
        Block("Intro", "heading", level=1),
        Block("Short intro text.", heading_path=("Intro",)),
        Block("Setup", "heading", heading_path=("Intro",), level=2),
        Block("Install it.", heading_path=("Intro", "Setup")),
        Block("Then run it.", heading_path=("Intro", "Setup")),
        Block("Usage", "heading", level=1),
        Block("Use it.", heading_path=("Usage",)),
    )
    chunks = chunk_document(doc, words, max_tokens=100, overlap=10)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Intro", "Short intro text."),
        ("Intro > Setup", "Install it.\n\nThen run it."),  # same section: packed together
        ("Usage", "Use it."),
    ]
    assert [c.ord for c in chunks] == [0, 1, 2]


def test_heading_only_sections_make_no_chunks():
    doc = doc_of(
        Block("Empty", "heading", level=1),
        Block("Also empty", "heading", heading_path=("Empty",), level=2),
        Block("Full", "heading", level=1),
        Block("Body.", heading_path=("Full",)),
    )
    chunks = chunk_document(doc, words)
    assert [(c.heading, c.text, c.ord) for c in chunks] == [("Full", "Body.", 0)]


def test_text_before_any_heading_has_no_heading():
    chunks = chunk_document(doc_of(Block("Preamble.")), words)
    assert chunks[0].heading is None and chunks[0].tokens == 1


def test_blocks_with_different_paths_split_even_without_heading_blocks():
    doc = doc_of(Block("One.", heading_path=("A",)), Block("Two.", heading_path=("B",)))
    assert [c.heading for c in chunk_document(doc, words)] == ["A", "B"]


def test_max_tokens_respected_and_overlap_present():
    paragraph = " ".join(sentence(i) for i in range(40))  # 320 words in one paragraph
    doc = doc_of(Block(paragraph, heading_path=("Big",)))
    chunks = chunk_document(doc, words, max_tokens=50, overlap=10)
    assert len(chunks) > 6
    assert all(c.tokens == words(c.text) <= 50 for c in chunks)
    for previous, current in zip(chunks, chunks[1:]):
        last_sentence = split_sentences(previous.text)[-1]
        assert current.text.startswith(last_sentence)  # whole trailing sentence repeated
    # Nothing is lost: every sentence appears in some chunk.
    joined = " ".join(c.text for c in chunks)
    assert all(f"S{i} " in joined for i in range(40))


def test_no_overlap_across_sections_or_when_disabled():
    doc = doc_of(
        Block(" ".join(sentence(i) for i in range(10)), heading_path=("A",)),
        Block(sentence(99), heading_path=("B",)),
    )
    chunks = chunk_document(doc, words, max_tokens=40, overlap=0)
    texts = [c.text for c in chunks]
    assert sum(t.count("S") for t in texts) == 11  # each sentence exactly once
    with_overlap = chunk_document(doc, words, max_tokens=40, overlap=10)
    assert with_overlap[-1].text == sentence(99)  # section B does not start with A's tail


def test_long_sentence_is_split_on_words():
    giant = " ".join(f"w{i}" for i in range(500)) + "."
    chunks = chunk_document(doc_of(Block(giant)), words, max_tokens=64, overlap=8)
    assert all(c.tokens <= 64 for c in chunks)
    seen = " ".join(c.text for c in chunks).split()
    assert {f"w{i}" for i in range(499)} <= set(seen)


def test_giant_word_is_split_on_characters():
    chars = lambda s: len(s)  # noqa: E731 - a tokenizer where one long word is many tokens
    chunks = chunk_document(doc_of(Block("x" * 1000)), chars, max_tokens=100, overlap=0)
    assert all(c.tokens <= 100 for c in chunks)
    assert "".join(c.text for c in chunks) == "x" * 1000


def test_a_chunk_does_not_cross_a_page_break_between_sentences():
    """Short pages of one section are not packed together: a chunk holding the end of page 1 and page 2
    would be cited as page 1 for page 2's sentences too (the mixed-folder scan's case)."""
    doc = doc_of(
        Block(sentence(1, 20), page=1, heading_path=("Sec",)),
        Block(sentence(2, 20), page=2, heading_path=("Sec",)),
        Block(sentence(3, 20), page=3, heading_path=("Sec",)),
        kind="pdf",
    )
    chunks = chunk_document(doc, words, max_tokens=45, overlap=10)
    assert [(c.page, c.text) for c in chunks] == [(1, sentence(1, 20)), (2, sentence(2, 20)), (3, sentence(3, 20))]


def test_a_sentence_running_over_a_page_break_keeps_its_chunk_which_starts_on_the_first_page():
    doc = doc_of(
        Block(sentence(1, 10) + " The paragraph goes on", page=1, heading_path=("Sec",)),
        Block("past the page break. " + sentence(2, 10), page=2, heading_path=("Sec",)),
        Block(sentence(3, 10), page=3, heading_path=("Sec",)),
        kind="pdf",
    )
    chunks = chunk_document(doc, words, max_tokens=100, overlap=0)
    assert [(c.page, c.text.split()[0]) for c in chunks] == [(1, "S1"), (3, "S3")]
    assert "goes on\n\npast the page break." in chunks[0].text


def test_code_blocks_split_on_lines_and_keep_newlines():
    code = "\n".join(f"line{i} = compute({i}) + offset" for i in range(60))
    chunks = chunk_document(doc_of(Block(code, "code")), words, max_tokens=30, overlap=0)
    assert all(c.tokens <= 30 for c in chunks)
    assert all("\n" in c.text and c.text.startswith("line") for c in chunks)
    assert "\n".join(c.text for c in chunks) == code


def test_real_tokenizer_like_counter_never_exceeds_limit():
    # Punctuation counts as extra tokens, so sums of words under-estimate; the final check must catch it.
    def punct_tokens(text: str) -> int:
        return len(text.split()) + sum(text.count(p) for p in ".,;:()")

    blocks = [Block(f"Item {i}: alpha, beta; gamma (delta). Then more, and more.", heading_path=("P",))
              for i in range(50)]
    chunks = chunk_document(doc_of(*blocks), punct_tokens, max_tokens=40, overlap=8)
    assert all(c.tokens == punct_tokens(c.text) <= 40 for c in chunks)
    assert [c.ord for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Use a tool, e.g. Beacon. It works.", ["Use a tool, e.g. Beacon.", "It works."]),
        ("I.e. Nothing. Pi is 3.14 today. Yes!", ["I.e. Nothing.", "Pi is 3.14 today.", "Yes!"]),
        ('He said "stop." Then left. Dr. Smith ran.', ['He said "stop."', "Then left.", "Dr. Smith ran."]),
        ("Version 2.0. Next version 3.1.", ["Version 2.0.", "Next version 3.1."]),
        ("no terminal punctuation", ["no terminal punctuation"]),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected
