"""Grounding: which passages an answer's sentences come from, and a quote when the model's own
answer isn't supported.

A 135M model often forgets to cite, cites a passage that isn't there, or drifts from its context.
So citations are checked and completed here rather than trusted: a sentence is supported when most
of its content words appear in one passage, and that passage is what it cites.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.prompts import Passage

STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from as is are was were be been being
    it its this that these those there here which who whom what when where why how do does did done can
    could should would will shall may might must not no yes so such than too very just also only into out
    up down over under again about i you he she we they me him her us them my your our their his hers
    any all each every some more most other own same both few nor one use used using""".split()
)
_TOKEN = re.compile(r"[A-Za-z0-9_]+(?:[.'-][A-Za-z0-9_]+)*")
_MARKER = re.compile(r"\s*\[(\d{1,2})\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[*•-])|\n+")


def content_tokens(text: str) -> set[str]:
    """Lower-cased content words, crudely stemmed to their first 6 letters (deploys ~ deployment)."""
    return {t.lower()[:6] for t in _TOKEN.findall(text) if t.lower() not in STOPWORDS and len(t) > 1}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def numbers(text: str) -> set[str]:
    """Numbers as written, without thousands separators: '$2,000' -> '2000', '15th' -> '15'."""
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def support(sentence: str, passage_text: str) -> float:
    """Share of the sentence's content words that appear in the passage; 0 when the sentence states a
    number the passage doesn't have (small models invent figures while echoing the passage's words)."""
    bare = _MARKER.sub("", sentence)
    if not numbers(bare) <= numbers(passage_text):
        return 0.0
    words = content_tokens(bare)
    if not words:
        return 1.0
    return len(words & content_tokens(passage_text)) / len(words)


@dataclass
class Attribution:
    answer: str  # the answer with valid, completed [n] markers
    cited: list[int] = field(default_factory=list)  # passage numbers, 1-based, in order of first use
    support: float = 0.0  # share of judged sentences supported by some passage
    supported: bool = False


def attribute_citations(draft: str, passages: Sequence[Passage], threshold: float = 0.5) -> Attribution:
    """Drop invalid markers, add the missing ones, and judge whether the draft is grounded."""
    if not draft.strip() or not passages:
        return Attribution(answer=draft)
    out, cited, judged, backed = [], [], 0, 0
    for sentence in sentences(draft):
        markers = [int(m) for m in _MARKER.findall(sentence) if 1 <= int(m) <= len(passages)]
        bare = _MARKER.sub("", sentence).strip()
        if not bare:
            continue
        scores = [support(bare, p.text + " " + (p.heading or "")) for p in passages]
        best = max(range(len(passages)), key=lambda i: scores[i])
        if len(content_tokens(bare)) >= 3:  # too short to judge ("Yes.", "Steps:")
            judged += 1
            if scores[best] >= threshold:
                backed += 1
                if not markers:
                    markers = [best + 1]
        # Keep only markers whose passage really supports the sentence, or the best one.
        markers = [m for m in dict.fromkeys(markers) if scores[m - 1] >= threshold] or (
            [best + 1] if scores[best] >= threshold else []
        )
        cited.extend(m for m in markers if m not in cited)
        out.append(_with_markers(bare, markers))
    share = backed / judged if judged else 0.0
    return Attribution(answer=" ".join(out), cited=cited, support=share, supported=judged > 0 and share >= 0.5)


def _with_markers(sentence: str, markers: list[int]) -> str:
    if not markers:
        return sentence
    tags = "".join(f"[{m}]" for m in markers)
    match = re.search(r"[.!?:]$", sentence)
    return f"{sentence[:-1]} {tags}{sentence[-1]}" if match else f"{sentence} {tags}"


def extractive_answer(
    query: str, passages: Sequence[Passage], min_coverage: float = 0.4, max_sentences: int = 2
) -> tuple[str, list[int]] | None:
    """The passage sentence that best matches the question (plus the next one), quoted with its citation;
    None when no sentence of the top passages holds `min_coverage` of the question's content words."""
    wanted = content_tokens(query)
    if not wanted:
        return None
    best: tuple[float, int, int] | None = None  # (score, passage index, sentence index)
    split = [sentences(p.text) for p in passages[:3]]
    for pi, parts in enumerate(split):
        for si, sentence in enumerate(parts):
            overlap = len(wanted & content_tokens(sentence)) / len(wanted)
            score = overlap - 0.05 * pi  # prefer the better-ranked passage on ties
            if overlap >= min_coverage and overlap > 0 and (best is None or score > best[0]):
                best = (score, pi, si)
    if best is None:
        return None
    _, pi, si = best
    chosen = split[pi][si : si + max_sentences]
    if len(chosen) > 1 and len(chosen[0]) > 200:
        chosen = chosen[:1]
    # A numbered list splits as "... success. 4." — drop the next item's dangling number.
    quote = re.sub(r"\s+\d{1,2}[.)]$", "", " ".join(chosen).strip())
    return f"The documents say: “{quote}” [{pi + 1}]", [pi + 1]
