"""Evaluation metrics for answers and retrieval, in pure Python.

Used by the eval harness and the benchmarks; no model, no network, no third-party
package, so the numbers are cheap to compute and identical on every machine.

Answer quality (prediction vs. a reference answer):
    normalize_tokens, token_f1, rouge_l, contains_all
Retrieval quality (ranked chunks vs. the known source file and pages):
    hit_at_k, reciprocal_rank
Faithfulness (is the answer backed by the chunks it cites?):
    split_sentences, groundedness
Latency reporting:
    percentile

Token normalisation follows the SQuAD evaluation script (lowercase, drop punctuation
and the articles a/an/the) so that F1 values are comparable with published numbers.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "normalize_tokens",
    "token_f1",
    "rouge_l",
    "contains_all",
    "hit_at_k",
    "reciprocal_rank",
    "strip_citations",
    "split_sentences",
    "groundedness",
    "percentile",
    "STOPWORDS",
]

_ARTICLES = {"a", "an", "the"}
# Unicode punctuation that shows up in model output and PDFs but not in string.punctuation.
_EXTRA_PUNCT = "\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u00b7\u2022"
_PUNCT_TABLE = str.maketrans({ch: " " for ch in string.punctuation + _EXTRA_PUNCT})

# Citation markers the bot emits: "[1]", "[2, 3]", "[1][4]", "[1-3]".
CITATION_RE = re.compile(r"\[\s*(\d+(?:\s*[,\-\u2013]\s*\d+)*)\s*\]")

# Small English stopword list: enough to stop "the", "is", "of" from making any sentence
# look supported. Deliberately short; domain words (e.g. "deploy", "page") must count.
STOPWORDS: frozenset[str] = frozenset(
    """
    a an the and or but if then else of to in on at by for with from into onto over under
    about as is are was were be been being am do does did doing have has had having
    i me my we our us you your he him his she her it its they them their this that these those
    there here what which who whom whose when where why how all any both each few more most
    other some such no nor not only own same so than too very can could will would shall should
    may might must just also up down out off again further once per via
    """.split()
)


# --------------------------------------------------------------------------------------------
# Answer quality
# --------------------------------------------------------------------------------------------


def normalize_tokens(text: str) -> list[str]:
    """Lowercase, replace punctuation with spaces, split, and drop the articles a/an/the.

    Punctuation becomes a space rather than being deleted (SQuAD deletes it) so that
    "on-call" -> ["on", "call"] and "SEV1/SEV2" -> ["sev1", "sev2"] instead of gluing words.
    """
    return [tok for tok in text.lower().translate(_PUNCT_TABLE).split() if tok not in _ARTICLES]


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-tokens F1 between a prediction and a reference answer.

    Two empty strings agree perfectly (1.0); one empty side scores 0.0.
    """
    pred, ref = normalize_tokens(prediction), normalize_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence; O(len(a) * len(b)) time, O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a  # keep the DP row as short as possible
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1): LCS of normalized tokens over both lengths.

    Unlike token F1 it rewards getting the words in the right order.
    """
    pred, ref = normalize_tokens(prediction), normalize_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_all(answer: str, must_include: Iterable[str]) -> bool:
    """True if every required string occurs in the answer (case-insensitive substring).

    Whitespace runs are collapsed on both sides so that a line break inside an answer
    does not fail a check like "5 business days". An empty requirement list is vacuously met.
    """
    haystack = " ".join(answer.split()).casefold()
    return all(" ".join(s.split()).casefold() in haystack for s in must_include)


# --------------------------------------------------------------------------------------------
# Retrieval quality
# --------------------------------------------------------------------------------------------


def _is_relevant(item: dict[str, Any], source: str | None, pages: Sequence[int] | None) -> bool:
    """Whether one retrieved item is the gold evidence: right file (when given) and right page (when given).

    Sources are compared by file name only, because retrieved items may carry a full path
    ("/home/x/handbook/oncall.md") while eval sets name just "oncall.md". An item with `pages` and no
    `source` (a single-document set) matches on the page alone.
    """
    if source:
        item_source = str(item.get("source") or "")
        if item_source.replace("\\", "/").rsplit("/", 1)[-1] != source.replace("\\", "/").rsplit("/", 1)[-1]:
            return False
    if pages:
        return item.get("page") in set(pages)
    return True


def hit_at_k(retrieved: Sequence[dict[str, Any]], source: str | None, pages: Sequence[int] | None, k: int) -> bool:
    """True if any of the top `k` retrieved items comes from `source` (and one of `pages`).

    `retrieved` is in rank order; each item has "source" (file name) and "page" (int or None).
    `pages` None or empty means any page of the source counts (e.g. Markdown files).
    """
    return any(_is_relevant(item, source, pages) for item in retrieved[: max(k, 0)])


def reciprocal_rank(retrieved: Sequence[dict[str, Any]], source: str | None, pages: Sequence[int] | None) -> float:
    """1 / rank of the first relevant item (rank 1 = first), or 0.0 if none is relevant.

    Averaging this over questions gives MRR.
    """
    for rank, item in enumerate(retrieved, start=1):
        if _is_relevant(item, source, pages):
            return 1.0 / rank
    return 0.0


# --------------------------------------------------------------------------------------------
# Faithfulness
# --------------------------------------------------------------------------------------------

# End of sentence: ., ! or ? (optionally followed by a closing quote/bracket) then whitespace.
# A lookbehind on a lowercase letter or digit avoids splitting "e.g. this" and "v2.3 is" in
# most cases; we accept some errors on abbreviations, which only shift sentence boundaries.
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[*\-\u2022])")


def strip_citations(text: str) -> str:
    """Remove citation markers like "[1]" or "[2, 3]" (they are not claims)."""
    return re.sub(r"[ \t]+([.,;:!?])", r"\1", CITATION_RE.sub("", text))


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with a simple regex, after removing citation markers.

    Line breaks also end a sentence, because bot answers use bullet lists whose items
    often lack a final period. Leading bullet/number markers are stripped.
    """
    sentences: list[str] = []
    for line in strip_citations(text).splitlines():
        line = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", "", line).strip()
        if not line:
            continue
        sentences.extend(s.strip() for s in _SENTENCE_END_RE.split(line) if s.strip())
    return sentences


def _content_tokens(text: str) -> list[str]:
    return [tok for tok in normalize_tokens(text) if tok not in STOPWORDS]


def groundedness(answer: str, cited_texts: Sequence[str], threshold: float = 0.5) -> float:
    """Share of the answer's sentences that are supported by the cited chunk texts.

    A sentence is judged only if it has at least 4 tokens (after normalisation): shorter
    ones ("Yes.", "See below:") carry no checkable claim. A judged sentence is *supported*
    when at least `threshold` of its content tokens (stopwords removed) occur somewhere in
    the union of the cited texts. This is a lexical proxy, not entailment: it catches
    invented numbers, names and commands, which is the failure that matters most here, but
    it cannot catch a negation or a swapped relation.

    Edge cases (chosen so the score never rewards unsupported answers):
      - no judged sentences (empty or only very short sentences): 1.0, nothing was claimed;
      - judged sentences but no cited texts (or only empty ones): 0.0, claims without evidence.
    """
    judged = [s for s in split_sentences(answer) if len(normalize_tokens(s)) >= 4]
    if not judged:
        return 1.0
    evidence = {tok for text in cited_texts for tok in normalize_tokens(text)}
    if not evidence:
        return 0.0
    supported = 0
    for sentence in judged:
        content = _content_tokens(sentence)
        if not content:  # all stopwords: nothing to verify, count it as supported
            supported += 1
            continue
        present = sum(tok in evidence for tok in content)
        if present / len(content) >= threshold:
            supported += 1
    return supported / len(judged)


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


def percentile(values: Iterable[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks.

    Same definition as numpy's default ("linear"), so p50 of [1, 2, 3, 4] is 2.5.
    Raises ValueError for an empty input or p outside [0, 100]; a silent 0.0 would make
    a broken benchmark look fast.
    """
    data = sorted(float(v) for v in values)
    if not data:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    rank = (len(data) - 1) * p / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return data[lo] + (data[hi] - data[lo]) * (rank - lo)
