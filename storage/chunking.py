"""Split a `ParsedDocument` into retrieval chunks that respect its structure.

    chunk_document(doc, count_tokens, max_tokens=192, overlap=32) -> list[Chunk]

Rules:
  * a chunk never spans two sections (blocks with different heading paths, or separated by a heading);
  * consecutive blocks of a section are packed together up to `max_tokens`, but a chunk does not cross
    a page break (PDF pages, slides) unless a sentence runs over it: a citation's page is the page its
    text is on, and `Chunk.page` is the page where the chunk's text starts;
  * a block longer than `max_tokens` is split on sentence boundaries (lines for code, lists and
    tables), a sentence longer than `max_tokens` on words, and a word on characters;
  * consecutive chunks of a section share about `overlap` tokens: whole trailing sentences of the
    previous chunk are repeated at the start of the next;
  * every chunk satisfies `count_tokens(chunk.text) <= max_tokens`.

`count_tokens` is the embedder's tokenizer, which is slow-ish, so it is called once per piece of
text (block, sentence) and once to verify each finished chunk; sums of pieces are the estimates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from storage.documents import Block, Chunk, ParsedDocument
from storage.text import split_sentences

# Separator cost in tokens when pieces are joined (BPE tokenizers may spend one on "\n\n").
_JOIN_COST = 1
_PARAGRAPH_SEP = "\n\n"



@dataclass
class _Piece:
    """A unit of packing: a whole block, or a sentence/word-run of a block too long to fit."""

    text: str
    tokens: int
    page: int | None
    block: int  # index of the source block: pieces of one block are joined with `sep`, not "\n\n"
    sep: str


def chunk_document(
    doc: ParsedDocument,
    count_tokens: Callable[[str], int],
    max_tokens: int = 192,
    overlap: int = 32,
) -> list[Chunk]:
    """Chunks of `doc` in reading order, numbered 0..n-1, each at most `max_tokens` tokens."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    overlap = max(0, min(overlap, max_tokens // 2))  # an overlap near max_tokens would never progress
    chunks: list[Chunk] = []
    for path, blocks in _sections(doc.blocks):
        heading = " > ".join(path) or None
        pieces = [p for index, block in blocks for p in _pieces(block, index, count_tokens, max_tokens)]
        for run in _page_runs(pieces):
            for text, tokens, page in _pack(run, count_tokens, max_tokens, overlap):
                chunks.append(Chunk(text=text, ord=len(chunks), tokens=tokens, page=page, heading=heading))
    return chunks


# Prose that stops here ends a sentence: terminal punctuation, then any closing quotes or brackets.
_SENTENCE_END = re.compile(r"[.!?…:;。！？][\"'”’»)\]]*\s*$")


def _page_runs(pieces: list[_Piece]) -> list[list[_Piece]]:
    """A section's pieces cut at each page break, unless the last piece before the break is prose that
    stops mid-sentence (the paragraph continues on the next page). Without this a chunk holding the end
    of page 1 and all of page 2 is cited as page 1, and its page-2 sentences with it. No overlap is
    carried across a cut, so a chunk never repeats text from another page."""
    runs: list[list[_Piece]] = [[]]
    for piece in pieces:
        last = runs[-1][-1] if runs[-1] else None
        if last is not None and piece.page != last.page and (last.sep == "\n" or _SENTENCE_END.search(last.text)):
            runs.append([])
        runs[-1].append(piece)
    return [run for run in runs if run]


def _sections(blocks: list[Block]) -> Iterator[tuple[tuple[str, ...], list[tuple[int, Block]]]]:
    """Runs of body blocks sharing one heading path; a heading block always ends a run."""
    current: list[tuple[int, Block]] = []
    path: tuple[str, ...] = ()
    for index, block in enumerate(blocks):
        if block.kind == "heading" or (current and block.heading_path != path):
            if current:
                yield path, current
            current = []
        if block.kind != "heading" and block.text.strip():
            path = block.heading_path
            current.append((index, block))
    if current:
        yield path, current


def _pieces(block: Block, index: int, count_tokens: Callable[[str], int], max_tokens: int) -> list[_Piece]:
    """The block as one piece if it fits, else sentences (or lines) packed later, each <= max_tokens."""
    line_structured = block.kind in ("code", "list", "table")  # split on lines, keep the newlines
    sep = "\n" if line_structured else " "
    tokens = count_tokens(block.text)
    if tokens <= max_tokens:
        return [_Piece(block.text, tokens, block.page, index, sep)]
    if line_structured:
        parts = [line for line in block.text.split("\n") if line.strip()]
    else:
        parts = split_sentences(block.text)
    pieces = []
    for part in parts:
        part_tokens = count_tokens(part)
        if part_tokens <= max_tokens:
            pieces.append(_Piece(part, part_tokens, block.page, index, sep))
        else:
            for words, words_tokens in _split_words(part, part_tokens, count_tokens, max_tokens):
                pieces.append(_Piece(words, words_tokens, block.page, index, " "))
    return pieces


def _split_words(
    text: str, tokens: int, count_tokens: Callable[[str], int], max_tokens: int
) -> list[tuple[str, int]]:
    """Cut an over-long sentence into runs of words (a huge word into characters), each <= max_tokens."""
    words = text.split()
    if len(words) <= 1:
        return _split_chars(text, count_tokens, max_tokens)
    out: list[tuple[str, int]] = []
    per_word = tokens / len(words)
    start = 0
    while start < len(words):
        size = max(1, int(max_tokens / per_word * 0.9))  # estimate, then shrink until it fits
        while True:
            run = " ".join(words[start : start + size])
            run_tokens = count_tokens(run)
            if run_tokens <= max_tokens:
                break
            if size == 1:
                out.extend(_split_chars(run, count_tokens, max_tokens))
                run = ""
                break
            size = max(1, int(size * max_tokens / run_tokens * 0.95))
        if run:
            out.append((run, run_tokens))
        start += size
    return out


def _split_chars(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    size = max(1, len(text) // max(1, count_tokens(text)) * max_tokens)
    while text:
        part = text[:size]
        part_tokens = count_tokens(part)
        if part_tokens > max_tokens and size > 1:
            size = max(1, size // 2)
            continue
        out.append((part, part_tokens))
        text = text[size:]
    return out


def _join(pieces: list[_Piece]) -> str:
    text = pieces[0].text
    for previous, piece in zip(pieces, pieces[1:]):
        text += (piece.sep if piece.block == previous.block else _PARAGRAPH_SEP) + piece.text
    return text


def _estimate(pieces: list[_Piece]) -> int:
    return sum(p.tokens for p in pieces) + _JOIN_COST * (len(pieces) - 1)


def _pack(
    pieces: list[_Piece], count_tokens: Callable[[str], int], max_tokens: int, overlap: int
) -> Iterator[tuple[str, int, int | None]]:
    """Greedy packing of one section's pieces into (text, tokens, page) chunks with overlap."""
    carried: list[_Piece] = []  # overlap from the previous chunk
    position = 0
    while position < len(pieces):
        current = list(carried)
        fresh = 0  # pieces of `pieces` in `current`; at least one, so every chunk makes progress
        while position + fresh < len(pieces):
            candidate = pieces[position + fresh]
            if fresh and _estimate(current + [candidate]) > max_tokens:
                break
            if not fresh and _estimate(current + [candidate]) > max_tokens:
                current = _trim_overlap(current, candidate, max_tokens)
            current.append(candidate)
            fresh += 1
        text, tokens = _join(current), 0
        while True:  # verify with the real tokenizer; the estimate is only a sum of parts
            tokens = count_tokens(text)
            if tokens <= max_tokens or len(current) == 1:
                break
            if fresh > 1:
                current.pop()
                fresh -= 1
            else:
                current.pop(0)  # drop overlap before dropping the only fresh piece
            text = _join(current)
        yield text, tokens, current[0].page
        position += fresh
        carried = _overlap(current, count_tokens, overlap) if position < len(pieces) else []


def _trim_overlap(carried: list[_Piece], candidate: _Piece, max_tokens: int) -> list[_Piece]:
    """Drop leading overlap pieces until the next fresh piece fits after what remains."""
    while carried and _estimate(carried + [candidate]) > max_tokens:
        carried = carried[1:]
    return carried


def _overlap(chunk: list[_Piece], count_tokens: Callable[[str], int], overlap: int) -> list[_Piece]:
    """Whole trailing sentences of a chunk, about `overlap` tokens (one sentence may reach 1.5x)."""
    if overlap <= 0:
        return []
    tail: list[_Piece] = []
    total = 0
    for piece in reversed(chunk):
        sentences = split_sentences(piece.text) if piece.sep == " " else [piece.text]
        for sentence in reversed(sentences):
            tokens = piece.tokens if len(sentences) == 1 else count_tokens(sentence)
            limit = overlap if tail else overlap * 3 // 2
            if total + tokens + _JOIN_COST * len(tail) > limit:
                return tail
            tail.insert(0, _Piece(sentence, tokens, piece.page, piece.block, piece.sep))
            total += tokens
        if len(tail) >= 1 and len(sentences) > 1:
            return tail  # stay within the last block: overlap is context, not another paragraph
    return tail
