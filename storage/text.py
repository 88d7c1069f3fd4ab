"""One analyzer and one sentence splitter for the whole project.

BM25 (storage/index.py), the grounding check and quote choice (agent/grounding.py), and the
distillation filters (training/) all see text through these two functions, so "the answer uses the
passage's words" means the same thing everywhere:

    terms("Deploys are rolled back in 5 minutes")  -> {"deploy", "roll", "back", "5", "minut"}
    split_sentences("See e.g. the runbook. Then page on-call.") -> ["See e.g. the runbook.", "Then page on-call."]

`terms` is bm25s's analyzer: Unicode words of two or more characters (`(?u)\\b\\w\\w+\\b`, so Cyrillic,
Greek or accented Latin work as well as English), lower-cased, bm25s's English stopwords (NLTK's list) removed,
stemmed with the Snowball stemmer (PyStemmer). Scripts written without spaces (Chinese, Japanese)
have no word boundaries for that pattern, so each run of such characters also yields its character
bigrams ("报销流程" -> "报销", "销流", "流程"), which is what CJK search engines index.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # bm25s's default pattern, kept identical on purpose
_TOKEN = re.compile(TOKEN_PATTERN)
_NUMBER_TOKEN = re.compile(r"\d")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")

_ABBREVIATIONS = {
    "e.g.", "i.e.", "cf.", "vs.", "viz.", "mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "fig.", "figs.", "no.",
    "nos.", "vol.", "approx.", "al.", "inc.", "ltd.", "jr.", "sr.", "sec.", "ch.", "eq.", "p.", "pp.", "etc.",
}
# A sentence ends at . ! ? (plus closing quotes/brackets) before whitespace and a capital letter, digit or
# opening quote, in any script; CJK full stops end a sentence with or without a following space.
_BOUNDARY = re.compile(r"(?<=[.!?])([\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[*\u2022-]?\w)|(?<=[\u3002\uff01\uff1f])()\s*")


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """bm25s's fuller English stopword list (NLTK's, with "what", "how", "between"): question words
    otherwise count as content and make every question look half-answered."""
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS)


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def stem(word: str) -> str:
    return _stemmer().stemWord(word)


@lru_cache(maxsize=65536)
def _term(word: str) -> str:
    return word if _NUMBER_TOKEN.search(word) else stem(word)


def terms(text: str) -> set[str]:
    """Content terms of `text`: lower-cased, stopwords dropped, stemmed (numbers kept as written)."""
    text = unicodedata.normalize("NFKC", text).lower()
    stop = stopwords()
    out = {_term(w) for w in _TOKEN.findall(text) if w not in stop}
    for run in _CJK.findall(text):
        out.update(run[i : i + 2] for i in range(max(len(run) - 1, 1)))
    return out


def word_count(text: str) -> int:
    """Words in `text` in any script: space-separated words, plus CJK runs at two characters a word (Chinese
    and Japanese write no spaces, so "出差住宿每晚最高报销600元" is one \\w+ run but a whole sentence)."""
    text = unicodedata.normalize("NFKC", text)
    cjk = sum((len(run) + 1) // 2 for run in _CJK.findall(text))
    return cjk + len(re.findall(r"\w+", _CJK.sub(" ", text)))


def token_list(text: str) -> list[str]:
    """`terms` in order with repeats: what BM25 indexes."""
    text = unicodedata.normalize("NFKC", text).lower()
    stop = stopwords()
    out = [_term(w) for w in _TOKEN.findall(text) if w not in stop]
    for run in _CJK.findall(text):
        out.extend(run[i : i + 2] for i in range(max(len(run) - 1, 1)))
    return out


def split_sentences(text: str, lines: bool = False) -> list[str]:
    """Sentences of `text`, without breaking after "e.g.", "i.e.", initials or inside decimals.

    `lines=True` also ends a sentence at each line break and strips list bullets/numbers: model answers
    and passages with lists ("1. Stop the deploy") read as one claim per line.
    """
    if lines:
        out: list[str] = []
        for line in text.splitlines():
            line = re.sub(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+", "", line).strip()
            if line:
                out.extend(split_sentences(line))
        return out
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        end = match.start() if match.group(1) is None else match.end(1)  # keep closing quotes with the sentence
        words = text[start:end].split()
        last = words[-1].lower().rstrip("\"'\u201d\u2019)]") if words else ""
        if match.group(1) is not None:
            following = text[match.end() :].lstrip("\"'\u201c\u2018([*\u2022-")[:1]
            # a lower-case letter after the stop (in any script) is a continuation, as after an abbreviation
            if last in _ABBREVIATIONS or re.fullmatch(r"\w\.", last) or following.islower():
                continue
        if text[start:end].strip():
            sentences.append(text[start:end].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]
