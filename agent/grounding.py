"""Grounding: which passage each answer sentence comes from, which sentences may be shown, and a quote
when none of the model's own text holds up.

A 135M model forgets citations, cites a passage that isn't there, echoes the question back, or adds a
sentence it invented next to one it copied. So its draft is judged sentence by sentence, never as a
whole; a sentence is shown only when one passage supports what it *adds* to the question:

* novel terms: the sentence's analyzed terms (storage.text.terms: stemmed, Unicode-aware, the BM25
  analyzer) minus the question's. None left means it restates the question ("echo") — not an answer.
* numbers: every number it states must be in that passage ("180 * 3 = 560" is dropped when 560 isn't).
* support: lexical (share of novel terms found in the passage) combined with semantic similarity
  (the bundled embedder's cosine between the sentence and the passage's best-matching sentence), so a
  paraphrase in the user's words passes and a fluent invention that borrows two words does not.

Unsupported sentences are dropped, supported ones get their passage's [n]. A quote (the fallback) is
chosen the same way — semantic + lexical match with the question — from real sentences only, never
table-of-contents, index or dot-leader lines.

    check = check_draft(draft, question, passages, embed)   # -> Attribution (kept sentences, citations)
    quote = choose_quote(question, passages, embed)         # -> Quote | None
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from agent.prompts import Passage
from storage.text import split_sentences, stopwords, terms, word_count

P = TypeVar("P", bound=Passage)

Embed = Callable[[list[str]], np.ndarray]  # texts -> (n, d) L2-normalized rows

# The offline teacher lower-cases these when it rewrites a heading into a question (its own word list,
# kept here for it); the analyzer's stopwords are storage.text.stopwords().
STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from as is are was were be been being
    it its this that these those there here which who whom what when where why how do does did done can
    could should would will shall may might must not no yes so such than too very just also only into out
    up down over under again about i you he she we they me him her us them my your our their his hers
    any all each every some more most other own same both few nor one use used using""".split()
)
_MARKER = re.compile(r"\s*\[(\d{1,2})\]")
# A figure starts a token: the 3 of "Q3" or "FTS5" is part of a name, not a quantity the passage states.
_NUMBER = re.compile(r"(?<![^\W\d_])\d+(?:[.,]\d+)*")
_QUANTITY = re.compile(r"(\d+(?:[.,]\d+)*)\s*(?:-\s*)?([^\W\d_]{2,})")
_LIST_NUMBER = re.compile(r"^\s*\d{1,2}[.)]\s", re.M)
# Lines that are navigation, not prose: dot leaders ("Shell Builtins ....... 41"), runs of page numbers
# ("grep, 12, 45, 78"), or bare headings/labels of a few words.
# A document describing itself ("This page covers when you may deploy, how to roll back, …") lists topics
# and answers none of them, however many of the question's words it shares.
_SELF_DESCRIPTION = re.compile(
    r"^\W*(?:this|the following|these|the present)\s+(?:page|document|doc|section|chapter|guide|handbook|"
    r"article|manual|policy|file|part)s?\s+(?:covers?|describes?|explains?|lists?|contains?|outlines?|"
    r"summari[sz]es?|is about|gives|provides)\b", re.I)
_DOT_LEADER = re.compile(r"(?:\.\s*){4,}|(?:…\s*){2,}|\s\d+(?:\s*,\s*\d+){2,}\s*$")

# Set with MiniLM-L6 on the cases in tests/test_grounding.py: a faithful paraphrase scores cosine >= 0.8
# with its source sentence; a sentence that mixes the passage's words with invented ones ("receipts are
# reimbursed within 30 days by the finance team") shares half its new words at cosine ~0.6.
LEXICAL_ALONE = 0.75  # this share of novel terms in one passage supports a sentence by itself
LEXICAL_WITH_MEANING = 0.5  # ... or this share plus cosine >= SEMANTIC_WITH_WORDS
SEMANTIC_WITH_WORDS = 0.65
LEXICAL_PARAPHRASE = 0.34  # a close paraphrase (cosine >= SEMANTIC_PARAPHRASE) shares fewer words
SEMANTIC_PARAPHRASE = 0.8
MIN_NOVEL_TERMS = 2  # a sentence must add at least this many terms to the question to be judged
MIN_SUPPORTED_SHARE = 0.5  # of the judged sentences, for the draft to be shown at all


class EmbeddingCache:
    """An `Embed` that remembers the vectors of the last `max_items` texts (LRU; ~1.5 KB each for MiniLM).

    One answer embeds the same passage sentences twice (the draft's check and the quote's choice) and
    popular chunks come back answer after answer; documents don't change between answers, so their
    sentences need embedding once. Thread-safe: Slack workers share one agent."""

    def __init__(self, embed: Embed, max_items: int = 20_000):
        import threading
        from collections import OrderedDict

        self.embed, self.max_items = embed, max_items
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        fresh = self.embed(missing) if missing else None  # outside the lock: the model has its own
        with self._lock:
            for text, vector in zip(missing, fresh if fresh is not None else []):
                self._vectors[text] = vector
            rows = []
            for text in texts:
                vector = self._vectors.get(text)
                if vector is None:  # evicted by another thread between the two locks: embed it again
                    vector = self.embed([text])[0]
                self._vectors[text] = vector
                self._vectors.move_to_end(text)
                rows.append(vector)
            while len(self._vectors) > self.max_items:
                self._vectors.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def content_tokens(text: str) -> set[str]:
    """Analyzed content terms (storage.text.terms), the unit every overlap in the project counts."""
    return terms(text)


def sentences(text: str) -> list[str]:
    """Sentences of an answer or passage: the project's splitter, a line break also ending one. A table
    row ("SEV1 | Customer-facing outage. Robots … | Every 30 minutes") stays one unit: its cells only
    mean something together."""
    out: list[str] = []
    for line in text.splitlines():
        if _is_table_row(line):
            out.append(line.strip())
        else:
            out.extend(split_sentences(line, lines=True))
    return out


def _is_table_row(line: str) -> bool:
    return line.count(" | ") >= 1 and len(line.split(" | ")) >= 2 and not line.lstrip().startswith(("-", "*"))


# Figures written as words state a fact like digits do ("the third Monday" where the passage says "first").
# "one" and "second" are left out: mostly a pronoun ("the one that") and a unit ("a second").
_NUMBER_WORDS = {w: str(n) for n, w in enumerate(
    "zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()) if w != "_"}
_NUMBER_WORDS.update({w: str(n) for n, w in enumerate(
    "_ first _ third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split()) if w != "_"})
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.I)


def numbers(text: str) -> set[str]:
    """Numbers as written, without thousands separators: '$2,000' -> '2000', '15th' -> '15', 'third' ->
    '3'. List item numbers ("2. Find the release") are structure, not figures, and are left out."""
    text = _LIST_NUMBER.sub(" ", text)
    return ({n.replace(",", "") for n in _NUMBER.findall(text)}
            | {_NUMBER_WORDS[w.lower()] for w in _NUMBER_WORD.findall(text)})


def quantities(text: str) -> set[tuple[str, str]]:
    """(number, stemmed word after it): '15 minutes' -> ('15', 'minut'). A model that writes '1 minute'
    where the passage says '15 minutes' and has a '1.' list item states a figure the passage lacks."""
    text = _LIST_NUMBER.sub(" ", text)
    return {(n.replace(",", ""), next(iter(terms(w)), w.lower())) for n, w in _QUANTITY.findall(text)}


_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_DATE = re.compile(rf"\b{_MONTH}\s+(\d{{1,2}})(?:st|nd|rd|th)?\b|\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}", re.I)


def dates(text: str) -> set[tuple[str, str]]:
    """(month, day) of every day-of-month date: 'October 1st', '1 Oct', '15th of December' -> ('oct', '1')…"""
    out = set()
    for month, day, day2, month2 in _DATE.findall(text):
        out.add(((month or month2).lower(), day or day2))
    return out


def numbers_hold(sentence: str, passage_text: str) -> bool:
    """Every number of the sentence is in the passage, a number the sentence pairs with a unit the
    passage also measures in ("minutes") is paired with that unit in the passage too, and every date it
    gives is a date of the passage ("October 1st" is not "the first Monday of October")."""
    if not numbers(sentence) <= numbers(passage_text):
        return False
    if not dates(sentence) <= dates(passage_text):
        return False
    pairs = quantities(passage_text)
    units = {u for _, u in pairs}
    return all((number, unit) in pairs for number, unit in quantities(sentence) if unit in units)


def strip_markers(text: str) -> str:
    return _MARKER.sub("", text).strip()


def support(sentence: str, passage_text: str, question: str = "") -> float:
    """Lexical support: share of the sentence's novel terms (not in `question`) found in the passage;
    0 when it states a number the passage doesn't have or adds nothing to the question."""
    bare = strip_markers(sentence)
    if not numbers_hold(bare, passage_text):
        return 0.0
    novel = terms(bare) - terms(question)
    if not novel:
        return 0.0 if question else 1.0
    return len(novel & terms(passage_text)) / len(novel)


def is_navigation(line: str) -> bool:
    """Table-of-contents, index and dot-leader lines, a page describing itself ("This page covers …"),
    and fragments too short to be a statement."""
    words = re.findall(r"\w+", line)
    if _DOT_LEADER.search(line) or _SELF_DESCRIPTION.search(line):
        return True
    if _is_table_row(line):  # a row of figures is data, not an index line
        return False
    if word_count(line) < 4:
        return True
    digits = sum(w.isdigit() for w in words)
    return digits / len(words) > 0.5


@dataclass
class SentenceCheck:
    text: str  # without markers
    passage: int | None  # 1-based passage that supports it best
    lexical: float
    semantic: float
    supported: bool
    reason: str  # supported | echo | number | unsupported | empty | short | navigation | misquote


@dataclass
class Attribution:
    answer: str  # the supported sentences, each with its valid [n] marker(s)
    cited: list[int] = field(default_factory=list)  # passage numbers, 1-based, in order of first use
    support: float = 0.0  # share of the draft's sentences that were kept
    supported: bool = False  # at least one sentence kept, so the model's own text can be shown
    checks: list[SentenceCheck] = field(default_factory=list)


def _passage_text(p: Passage) -> str:
    return f"{p.heading or ''}\n{p.text}"


class _Similarity:
    """Cosine between texts and each passage's sentences, embedding every sentence once per check."""

    def __init__(self, embed: Embed | None, passages: Sequence[Passage]):
        self.embed = embed
        self.spans: list[tuple[int, int]] = []
        self.units: list[str] = []
        for p in passages:
            parts = [s for s in sentences(p.text) if not is_navigation(s)] or [p.text]
            self.spans.append((len(self.units), len(self.units) + len(parts)))
            self.units.extend(parts)
        self.vectors = embed(self.units) if embed and self.units else None

    def against(self, texts: list[str]) -> np.ndarray:
        """(len(texts), n_passages) best cosine of each text with any sentence of each passage."""
        if self.vectors is None or not texts:
            return np.zeros((len(texts), len(self.spans)), dtype=np.float32)
        sims = self.embed(texts) @ self.vectors.T
        return np.stack([sims[:, a:b].max(axis=1) for a, b in self.spans], axis=1)


def _judge(lexical: float, semantic: float) -> bool:
    return (lexical >= LEXICAL_ALONE or (lexical >= LEXICAL_WITH_MEANING and semantic >= SEMANTIC_WITH_WORDS)
            or (lexical >= LEXICAL_PARAPHRASE and semantic >= SEMANTIC_PARAPHRASE))


def check_draft(draft: str, question: str, passages: Sequence[Passage], embed: Embed | None = None) -> Attribution:
    """Keep the draft's supported sentences with valid, completed [n] markers; drop the rest.

    A sentence's own marker is kept when that passage supports it, else the best supporting passage is
    cited. Without `embed` only lexical support counts (stricter: paraphrases are dropped)."""
    if not draft.strip() or not passages:
        return Attribution(answer="")
    units = draft_units(draft)
    parts = [(s, [int(m) for m in _MARKER.findall(s) if 1 <= int(m) <= len(passages)], strip_markers(s))
             for s, _, code in units if not code]
    lines = [line for s, line, code in units if not code and strip_markers(s)]
    parts = [p for p in parts if p[2]]
    similarity = _Similarity(embed, passages)
    semantic = similarity.against([bare for _, _, bare in parts])
    asked = terms(question)
    texts = [_passage_text(p) for p in passages]
    headings = [terms(p.heading or "") | terms(p.source.rsplit(".", 1)[0]) for p in passages]
    kept: list[tuple[int, str]] = []  # (draft line, text): where it sat decides how the kept parts join
    cited, checks = [], []
    seen: list[set[str]] = []
    for block, line, code in units:
        if code:  # a fenced block is one unit, judged whole and shown byte for byte, never marked inside
            j = _code_source(block, texts)
            checks.append(SentenceCheck(block, j, 1.0 if j else 0.0, 0.0, j is not None,
                                        "supported" if j else "unsupported"))
            if j is not None:
                kept.append((line, block))
                if j not in cited:
                    cited.append(j)
    for i, (_, markers, bare) in enumerate(parts):
        novel = terms(bare) - asked
        if not terms(bare) or terms(bare) in seen:  # nothing to check, or a loop repeating a sentence
            checks.append(SentenceCheck(bare, None, 0.0, 0.0, False, "empty"))
            continue
        seen.append(terms(bare))
        if not novel:
            checks.append(SentenceCheck(bare, None, 0.0, 0.0, False, "echo"))
            continue
        if misquotes(bare, texts):
            # Quotation marks promise the document's own words: a "quote" with one word changed is an
            # invention presented as evidence.
            checks.append(SentenceCheck(bare, None, 0.0, 0.0, False, "misquote"))
            continue
        if is_navigation(bare) or " > " in bare or any(terms(bare) <= h for h in headings):
            # A heading or breadcrumb ("Deploying to Production > Rollback procedure") names where an
            # answer is; it isn't one, though every word of it is in the passage.
            checks.append(SentenceCheck(bare, None, 0.0, 0.0, False, "navigation"))
            continue
        first = re.match(r"[^\W\d_]+", bare)
        if first and first.group().islower() and first.group() in stopwords():
            # "in order to open the database connection [1]." continues a sentence that isn't there: its
            # words are the passage's, but it answers nothing (a small model cut off mid-thought).
            checks.append(SentenceCheck(bare, None, 0.0, 0.0, False, "fragment"))
            continue
        if len(novel) < MIN_NOVEL_TERMS or word_count(bare) < 4:
            # "Yes.", "cache = {}", "For example:": too little to check, and nothing a reader needs alone
            checks.append(SentenceCheck(bare, None, 0.0, 0.0, False, "short"))
            continue
        best: tuple[bool, float, int] | None = None
        for j, text in enumerate(texts):
            if not numbers_hold(bare, text):
                continue
            lexical = len(novel & terms(text)) / len(novel)
            ok = _judge(lexical, float(semantic[i, j]))
            score = (ok, lexical + float(semantic[i, j]) + (0.5 if j + 1 in markers else 0.0), j)
            best = score if best is None or score > best else best
        if best is None:
            checks.append(SentenceCheck(bare, None, 0.0, float(semantic[i].max(initial=0.0)), False, "number"))
            continue
        ok, _, j = best
        lexical = len(novel & terms(texts[j])) / len(novel)
        checks.append(SentenceCheck(bare, j + 1, round(lexical, 3), round(float(semantic[i, j]), 3), ok,
                                    "supported" if ok else "unsupported"))
        if ok:
            kept.append((lines[i], _with_markers(bare, [j + 1])))
            if j + 1 not in cited:
                cited.append(j + 1)
    judged = [c for c in checks if c.reason not in ("empty", "short", "navigation")]
    share = sum(c.supported for c in judged) / len(judged) if judged else 0.0
    # A draft mostly made of unsupported claims isn't trusted even where it happens to match a passage:
    # its supported sentence is usually an incidental copy, not the answer.
    trusted = bool(kept) and share >= MIN_SUPPORTED_SHARE
    return Attribution(answer=_assemble(kept, draft) if trusted else "", cited=cited if trusted else [],
                       support=round(share, 3), supported=trusted, checks=checks)


def can_still_pass(checked: Attribution, finished: int, max_sentences: int) -> bool:
    """Whether a draft cut after `finished` sentences, judged as `checked`, is still worth writing on.

    False when its first judged sentence is unsupported — a draft that opens with an invention is not
    trusted: of the 22 model answers shown on the SQLite questions (base and a cycle's adapter, whole
    passages), none had an unsupported first sentence — or when, even if each of the remaining
    `max_sentences - finished` sentences held up, the supported share could not reach
    MIN_SUPPORTED_SHARE. Either way the user gets the quote, so generating more only costs time."""
    judged = [c for c in checked.checks if c.reason not in ("empty", "short", "navigation")]
    if judged and not judged[0].supported:
        return False
    if max_sentences <= 0:
        return True
    supported = sum(c.supported for c in judged)
    remaining = max(max_sentences - finished, 0)
    return supported + remaining > 0 and (supported + remaining) / (len(judged) + remaining) >= MIN_SUPPORTED_SHARE


_QUOTED = re.compile(r"[\"“„«]([^\"“”„«»]{12,})[\"”“»]")


def misquotes(sentence: str, texts: Sequence[str]) -> bool:
    """True when the sentence puts in quotation marks a span of four or more words that no passage
    contains as written (case and whitespace aside)."""
    spans = _QUOTED.findall(sentence)
    flat = [" ".join(t.split()).lower() for t in texts] if spans else []  # most sentences quote nothing
    for span in spans:
        words = " ".join(span.split()).lower().strip(" .,;:")
        if len(words.split()) >= 4 and not any(words in t for t in flat):
            return True
    return False


FENCED_BLOCK = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?^[ \t]*\1[ \t]*$", re.M | re.S)  # a whole code block
FENCE_LINE = re.compile(r"^[ \t]*(?:`{3,}|~{3,})", re.M)  # an opening or closing fence: an odd count = open


def draft_units(draft: str) -> list[tuple[str, int, bool]]:
    """(text, line it starts on, is code) in draft order: each fenced code block whole (its fences
    included, byte for byte), every other line's sentences (`sentences`)."""
    units: list[tuple[str, int, bool]] = []
    at = 0
    for fence in [*FENCED_BLOCK.finditer(draft), None]:
        prose = draft[at : fence.start() if fence else len(draft)]
        first = draft.count("\n", 0, at)
        for offset, line in enumerate(prose.split("\n")):
            units.extend((sentence, first + offset, False) for sentence in sentences(line))
        if fence:
            units.append((fence.group(0).strip("\n"), draft.count("\n", 0, fence.start()), True))
            at = fence.end()
    return units


def _code_source(block: str, texts: list[str]) -> int | None:
    """1-based passage holding the code block's lines (whitespace aside), or None: code is copied, not
    paraphrased, so every non-empty line of it must be found in one passage."""
    body = [" ".join(line.split()) for line in block.split("\n")[1:-1] if line.strip()]
    if not body:
        return None
    for j, text in enumerate(texts):
        flat = " ".join(text.split())
        if all(line in flat for line in body):
            return j + 1
    return None


def _assemble(kept: list[tuple[int, str]], draft: str) -> str:
    """The kept parts in draft order: sentences of one line joined by a space, lines by a line break,
    a code block or a paragraph break (a blank line between) by a blank line."""
    rows = draft.split("\n")
    ordered = sorted(kept, key=lambda k: k[0])  # stable: sentences of one line keep their order
    out = ordered[0][1] if ordered else ""
    for (before_line, before), (line, text) in zip(ordered, ordered[1:]):
        between = rows[before_line + before.count("\n") + 1 : line]
        code = FENCED_BLOCK.match(text) or FENCED_BLOCK.match(before)
        out += " " if line == before_line else "\n\n" if code or any(not r.strip() for r in between) else "\n"
        out += text
    return out


def attribute_citations(draft: str, passages: Sequence[Passage], question: str = "",
                        embed: Embed | None = None) -> Attribution:
    """Back-compatible name for `check_draft`."""
    return check_draft(draft, question, passages, embed)


def _with_markers(sentence: str, markers: list[int]) -> str:
    if not markers:
        return sentence
    tags = "".join(f"[{m}]" for m in markers)
    match = re.search(r"[.!?:]$", sentence)
    return f"{sentence[:-1]} {tags}{sentence[-1]}" if match else f"{sentence} {tags}"


@dataclass
class Quote:
    answer: str  # 'The documents say: “…” [n]'
    cited: list[int]
    score: float  # combined match with the question, 0..1
    semantic: float
    lexical: float


# How a question asks is not what it asks about: "how long", "how much" or "get" are never in the answer
# sentence ("… for 30 minutes"), so they are left out of the quote's term share.
_SCAFFOLDING = re.compile(r"\bhow (?:much|many|long|often|soon|far|big|fast|large)\b|\b(?:get|gets|got)\b", re.I)
QUOTE_SEMANTIC_WEIGHT = 0.7  # questions are paraphrased: meaning matters more than shared words
QUOTE_MAX_CHARS = 400


def _join(parts: list[str]) -> str:
    """Sentences back into text: a space after Western stops, none after CJK full stops (。！？)."""
    out = parts[0]
    for part in parts[1:]:
        out += part if out.endswith(("\u3002", "\uff01", "\uff1f")) else " " + part
    return out


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


_NAME = re.compile(r"[^\W\d_][\w]*(?:[-.][\w]+)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|[\"“(]\s*)$")


def names(question: str) -> list[str]:
    """Words the question uses as names: acronyms ("GPU", "S3"), mixed case ("WebAssembly"), letters with
    digits ("FTS5"), and — in an English question, where only names are capitalized mid-sentence — a
    Capitalized word that doesn't start a sentence ("Python"). German capitalizes every noun, so there
    only the first three kinds count. Adjacent name words are one name ("Amazon S3", "BEGIN IMMEDIATE")."""
    words = list(_NAME.finditer(question))
    stop = stopwords()
    english = sum(w.group().lower() in stop for w in words) >= max(2, len(words) // 5)
    out: list[str] = []
    end = -1  # where the last name ended: a name right after it (one space between) continues it
    for match in words:
        word = match.group()
        letters = [c for c in word if c.isalpha()]
        upper = sum(c.isupper() for c in letters)
        acronym = upper >= 2 and upper == len(letters)
        mixed = upper >= 2 or (upper == 1 and not word[0].isupper())
        digits = any(c.isdigit() for c in word)
        capitalized = (english and upper == 1 and word[0].isupper() and word != "I"
                       and not _SENTENCE_START.search(question[: match.start()]))
        if acronym or mixed or digits or capitalized:
            if out and question[end : match.start()] == " ":  # "Amazon S3", "Christmas Day": one name
                out[-1] += " " + word
            else:
                out.append(word)
            end = match.end()
    return out


def unknown_names(question: str, known: Callable[[set[str]], set[str]]) -> list[str]:
    """The question's names (`names`) none of whose terms occur anywhere in the documents.

    A question about "GPU" aggregates or "WebAssembly" builds asks about something the documents never
    mention: any passage found for it answers a different question. A name of several words counts as
    known when any of its words is ("Christmas Day" where the documents say "holiday … day off"): a
    partial match may be the documents' own wording of it. `known(terms)` returns the subset of analyzed
    terms present in the corpus (the BM25 vocabulary)."""
    out = []
    for name in names(question):
        wanted = terms(name)
        if wanted and not known(wanted):
            out.append(name)
    return out


def named_rows(question: str, text: str, max_rows: int = 3) -> str | None:
    """`header / row / row` for the table rows whose first cell the question names ("SEV1 vs SEV2",
    "cores on ci-mac-1"); None when it names none. A row keyed by what the user asks about is that
    thing's definition, whatever sentence elsewhere repeats the same words. Names are matched word for
    word, digits included (the analyzer would make ci-mac-1 and ci-mac-2 the same name)."""
    lines = [ln.strip() for ln in text.splitlines() if _is_table_row(ln)]
    if len(lines) < 2:
        return None
    asked, named = _words(question), []
    for row in lines[1:]:
        key = _words(row.split(" | ")[0])
        if key - STOPWORDS and not all(w.isdigit() for w in key) and key <= asked:
            named.append(row)
    if not named or len(named) == len(lines) - 1 and len(named) > 1:  # naming every row names none
        return None
    return " / ".join([lines[0]] + named[:max_rows])


def choose_quote(question: str, passages: Sequence[Passage], embed: Embed | None = None,
                 max_passages: int = 5, max_sentences: int = 3) -> Quote | None:
    """The run of up to `max_sentences` consecutive passage sentences that best answers the question,
    quoted with its citation; None when no real sentence shares anything with the question.

    An answer often sits one sentence after the one that repeats the question's words ("The default is
    FULL. In WAL mode, NORMAL is enough."), so each sentence is scored with the ones that follow it:
    score = 0.7 · cosine(question, run or its first sentence) + 0.3 · share of the question's terms in the
    run or its heading, minus 0.02 per passage rank. Navigation lines never start or join a run. Table rows
    the question names (`named_rows`) are a candidate too, and the answer when it names two or more."""
    wanted = terms(_SCAFFOLDING.sub(" ", question)) or terms(question)
    if not wanted or not passages:
        return None
    weight = QUOTE_SEMANTIC_WEIGHT if embed is not None else 0.0
    named: Quote | None = None
    for pi, p in enumerate(passages[:max_passages]):
        rows = named_rows(question, p.text)
        if rows:
            # Like a run's first sentence, the best single row speaks for the quote: long rows dilute it.
            parts = rows.split(" / ")
            vectors = embed([question] + parts[1:] + [rows]) if embed is not None else None
            cos = float((vectors[1:] @ vectors[0]).max()) if vectors is not None else 0.0
            lexical = len(wanted & (terms(rows) | terms(p.heading or ""))) / len(wanted)
            score = weight * cos + (1 - weight) * lexical - 0.02 * pi
            named = Quote(f"The documents say: “{rows}” [{pi + 1}]", [pi + 1], round(score, 3), round(cos, 3),
                          round(lexical, 3))
            if len(parts) > 2:  # "SEV1 vs SEV2": a question naming two rows asks about exactly those rows
                return named
            break
    ranked = rank_runs(question, passages, embed, max_passages, max_sentences)
    if not ranked or (named is not None and named.score >= ranked[0].score):
        return named  # one named row competes with the sentences like any other candidate
    best = ranked[0]
    return Quote(f"The documents say: “{best.text}” [{best.passage + 1}]", [best.passage + 1], round(best.score, 3),
                 best.semantic, best.lexical)


@dataclass
class Run:
    """Up to `max_sentences` consecutive sentences of one passage, scored as an answer to a question."""
    passage: int  # 0-based index into the passages
    text: str
    score: float  # 0.7 · cosine + 0.3 · term share − 0.02 · passage rank
    semantic: float
    lexical: float
    first: int  # index of its first sentence in the passage


def rank_runs(question: str, passages: Sequence[Passage], embed: Embed | None = None, max_passages: int = 5,
              max_sentences: int = 3) -> list[Run]:
    """Every run of consecutive passage sentences, best answer to the question first (the scoring of
    `choose_quote`); runs sharing nothing with the question and under 0.5 cosine are left out."""
    wanted = terms(_SCAFFOLDING.sub(" ", question)) or terms(question)
    if not wanted or not passages:
        return []
    weight = QUOTE_SEMANTIC_WEIGHT if embed is not None else 0.0
    runs: list[tuple[int, int, str, str]] = []  # (passage index, first sentence index, first sentence, run)
    for pi, p in enumerate(passages[:max_passages]):
        parts = sentences(p.text)
        header = next((i for i, part in enumerate(parts) if _is_table_row(part)), None)
        for si, first in enumerate(parts):
            if is_navigation(first) or si == header:  # column names answer nothing by themselves
                continue
            if _is_table_row(first):  # a row is a unit, read with its column names (shown with it too)
                row = f"{parts[header]} / {first}" if header is not None and header < si else first
                runs.append((pi, si, row, row))
                continue
            run = [first]
            for nxt in parts[si + 1 : si + max_sentences]:
                if is_navigation(nxt) or _is_table_row(nxt) or len(" ".join(run + [nxt])) > QUOTE_MAX_CHARS:
                    break
                run.append(nxt)
            runs.append((pi, si, first, _join(run)))
    if not runs:
        return []
    if embed is not None:
        vectors = embed([question] + [r[2] for r in runs] + [r[3] for r in runs])
        first_cos, run_cos = vectors[1 : len(runs) + 1] @ vectors[0], vectors[len(runs) + 1 :] @ vectors[0]
        cosine = np.maximum(first_cos, run_cos)
    else:
        cosine = np.zeros(len(runs), dtype=np.float32)
    out: list[Run] = []
    for n, (pi, si, _, run) in enumerate(runs):
        lexical = len(wanted & (terms(run) | terms(passages[pi].heading or ""))) / len(wanted)
        if lexical == 0 and cosine[n] < 0.5:
            continue
        score = weight * float(cosine[n]) + (1 - weight) * lexical - 0.02 * pi
        # A numbered list splits as "... success. 4." — drop the next item's dangling number.
        text = re.sub(r"\s+\d{1,2}[.)]$", "", run.strip())
        out.append(Run(pi, text, score, round(float(cosine[n]), 3), round(lexical, 3), si))
    out.sort(key=lambda r: -r.score)  # stable: on a tie the earlier passage and sentence win, as before
    return out


def evidence(question: str, passages: Sequence[Passage], embed: Embed | None = None, k: int = 3,
             max_sentences: int = 3) -> list[Run]:
    """The `k` best runs (`rank_runs`) that don't overlap: what the model is shown to write its answer
    from — a few short excerpts instead of whole chunks, so a small model reads only what matters."""
    chosen: list[Run] = []
    for run in rank_runs(question, passages, embed, max_sentences=max_sentences):
        if any(c.passage == run.passage and abs(c.first - run.first) < max_sentences for c in chosen):
            continue
        chosen.append(run)
        if len(chosen) == k:
            break
    return chosen


def excerpts(question: str, passages: Sequence[P], embed: Embed | None = None, k: int = 3,
             answer: str | None = None, rng: random.Random | None = None) -> tuple[list[P], int | None]:
    """The prompt's passages cut down to the `k` runs of `evidence`, each a copy of its passage with the
    run as its text (same source, heading, page and id), best first; the passages unchanged when no run
    matches. Returns (excerpts, None) — or, for a training example whose `answer` is known, (excerpts,
    1-based position of the run that supports it): when no chosen run does, the answer's best run in
    any passage replaces the last one at a random position (`rng`), as retrieval misses are trained."""
    runs = evidence(question, passages, embed, k)
    if not runs:
        return list(passages), None
    at: int | None = None
    if answer is not None:
        held = [support(answer, r.text, question) for r in runs]
        at = max(range(len(runs)), key=held.__getitem__) if max(held) >= 0.6 else None
        if at is None:
            own = max((Run(pi, text, 0.0, 0.0, 0.0, 0) for pi, p in enumerate(passages)
                       for text in _runs_of(p.text)), key=lambda r: support(answer, r.text, question), default=None)
            if own is not None and support(answer, own.text, question) >= 0.6:
                runs = runs[: k - 1]
                at = (rng or random.Random(0)).randint(0, len(runs))
                runs.insert(at, own)
        at = None if at is None else at + 1
    return [dataclasses.replace(passages[r.passage], text=r.text) for r in runs], at


def _runs_of(text: str, max_sentences: int = 3) -> list[str]:
    """Every run of up to `max_sentences` consecutive sentences of a passage; like `rank_runs`, a run never
    starts at or crosses a navigation line."""
    parts = sentences(text)
    out = []
    for i in range(len(parts)):
        for n in range(1, max_sentences + 1):
            if i + n > len(parts) or is_navigation(parts[i + n - 1]):
                break
            out.append(_join(parts[i : i + n]))
    return out


def extractive_answer(query: str, passages: Sequence[Passage], min_coverage: float = 0.0,
                      max_sentences: int = 3, embed: Embed | None = None) -> tuple[str, list[int]] | None:
    """Back-compatible wrapper of `choose_quote`: (answer, cited) when the quote's lexical match holds
    at least `min_coverage` of the question's terms."""
    quote = choose_quote(query, passages, embed, max_sentences=max_sentences)
    if quote is None or quote.lexical < min_coverage:
        return None
    return quote.answer, quote.cited
