"""Unit tests for agent.metrics: known values for every metric and its edge cases."""

from __future__ import annotations

import pytest

from agent.metrics import (
    contains_all,
    groundedness,
    hit_at_k,
    normalize_tokens,
    percentile,
    reciprocal_rank,
    rouge_l,
    split_sentences,
    strip_citations,
    token_f1,
)

# --- normalize_tokens / token_f1 ----------------------------------------------------------------


def test_normalize_tokens_lowercases_strips_punctuation_and_articles() -> None:
    assert normalize_tokens("The Cat, a dog & AN owl!") == ["cat", "dog", "owl"]
    # Punctuation splits words instead of gluing them together.
    assert normalize_tokens("on-call SEV1/SEV2 “quoted”") == ["on", "call", "sev1", "sev2", "quoted"]
    assert normalize_tokens("") == []


def test_token_f1_known_value() -> None:
    # pred {cat, sat} vs ref {cat, sat, down}: P = 1, R = 2/3 -> F1 = 0.8
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)


def test_token_f1_exact_disjoint_and_empty() -> None:
    assert token_f1("Acknowledge within 15 minutes.", "acknowledge within 15 minutes") == 1.0
    assert token_f1("blue", "red") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "something") == 0.0
    assert token_f1("the", "a") == 1.0  # both normalize to nothing


def test_token_f1_counts_repeated_tokens_once_per_match() -> None:
    # pred [five, five, five] vs ref [five, days]: overlap 1, P = 1/3, R = 1/2 -> F1 = 0.4
    assert token_f1("five five five", "five days") == pytest.approx(0.4)


# --- rouge_l ----------------------------------------------------------------------------------


def test_rouge_l_known_value() -> None:
    # [cat, sat, on, mat] vs [cat, lay, on, mat]: LCS = 3, P = R = 3/4
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(0.75)


def test_rouge_l_rewards_order_unlike_f1() -> None:
    assert token_f1("sat cat", "cat sat") == 1.0
    assert rouge_l("sat cat", "cat sat") == pytest.approx(0.5)  # LCS = 1 of 2


def test_rouge_l_exact_disjoint_and_empty() -> None:
    assert rouge_l("Roll back first, investigate second.", "roll back first investigate second") == 1.0
    assert rouge_l("alpha beta", "gamma delta") == 0.0
    assert rouge_l("", "") == 1.0
    assert rouge_l("x", "") == 0.0


def test_rouge_l_unequal_lengths() -> None:
    # "5%" normalizes to "5": pred [canary, 5], ref [canary, gets, 5, percent], LCS 2: P = 1, R = 1/2
    assert rouge_l("canary 5%", "canary gets 5 percent") == pytest.approx(2 / 3)


# --- contains_all -------------------------------------------------------------------------------


def test_contains_all() -> None:
    answer = "Acknowledge the page within 15 Minutes; the secondary is paged at\n30 minutes."
    assert contains_all(answer, ["15 minutes", "SECONDARY"])
    assert contains_all(answer, ["paged at 30 minutes"])  # line break collapsed
    assert not contains_all(answer, ["15 minutes", "45 minutes"])
    assert contains_all(answer, [])  # nothing required


# --- hit_at_k / reciprocal_rank -----------------------------------------------------------------

RETRIEVED = [
    {"source": "deploys.md", "page": None},
    {"source": "travel-policy.pdf", "page": 2},
    {"source": "/home/me/handbook/travel-policy.pdf", "page": 4},
    {"source": "oncall.md", "page": None},
]


def test_hit_at_k_without_pages() -> None:
    assert hit_at_k(RETRIEVED, "deploys.md", None, 1)
    assert not hit_at_k(RETRIEVED, "oncall.md", None, 3)
    assert hit_at_k(RETRIEVED, "oncall.md", None, 4)
    assert not hit_at_k(RETRIEVED, "security.md", None, 10)
    assert not hit_at_k(RETRIEVED, "deploys.md", None, 0)


def test_hit_at_k_with_pages() -> None:
    # The right file on the wrong page is not a hit; full paths match by file name.
    assert not hit_at_k(RETRIEVED, "travel-policy.pdf", [4], 2)
    assert hit_at_k(RETRIEVED, "travel-policy.pdf", [4], 3)
    assert hit_at_k(RETRIEVED, "travel-policy.pdf", [3, 2], 2)
    assert not hit_at_k(RETRIEVED, "travel-policy.pdf", [6], 4)
    # An empty page list means "any page".
    assert hit_at_k(RETRIEVED, "travel-policy.pdf", [], 2)


def test_reciprocal_rank() -> None:
    assert reciprocal_rank(RETRIEVED, "deploys.md", None) == 1.0
    assert reciprocal_rank(RETRIEVED, "travel-policy.pdf", None) == 0.5
    assert reciprocal_rank(RETRIEVED, "travel-policy.pdf", [4]) == pytest.approx(1 / 3)
    assert reciprocal_rank(RETRIEVED, "oncall.md", None) == 0.25
    assert reciprocal_rank(RETRIEVED, "security.md", None) == 0.0
    assert reciprocal_rank([], "oncall.md", None) == 0.0


# --- split_sentences ----------------------------------------------------------------------------


def test_strip_citations() -> None:
    assert strip_citations("Deploys stop at 14:00 on Fridays [1]. See [2, 3][4].") == "Deploys stop at 14:00 on Fridays. See."


def test_split_sentences_strips_citations_and_bullets() -> None:
    text = (
        "Acknowledge a page within 15 minutes [1]. The secondary is paged at 15 minutes! Why? Because.\n"
        "- Primary gets $400 per week [2]\n"
        "2. Secondary gets $200 per week"
    )
    assert split_sentences(text) == [
        "Acknowledge a page within 15 minutes.",
        "The secondary is paged at 15 minutes!",
        "Why?",
        "Because.",
        "Primary gets $400 per week",
        "Secondary gets $200 per week",
    ]


def test_split_sentences_keeps_decimals_and_lowercase_continuations() -> None:
    assert split_sentences("Mileage is $0.67 per mile, e.g. for site visits.") == [
        "Mileage is $0.67 per mile, e.g. for site visits."
    ]
    assert split_sentences("") == []


# --- groundedness -------------------------------------------------------------------------------

CHUNKS = [
    "Acknowledge a page within 15 minutes. If a page is not acknowledged, the secondary on-call is paged.",
    "Every SEV1 and SEV2 needs a blameless postmortem, published within 5 business days of resolution.",
]


def test_groundedness_supported_answer() -> None:
    answer = (
        "You must acknowledge a page within 15 minutes [1]. "
        "Postmortems for SEV1 and SEV2 are published within 5 business days [2]."
    )
    assert groundedness(answer, CHUNKS) == 1.0


def test_groundedness_invented_sentence_lowers_score() -> None:
    answer = (
        "You must acknowledge a page within 15 minutes [1]. "
        "Quarterly chaos drills rotate through Kubernetes clusters in Frankfurt."
    )
    assert groundedness(answer, CHUNKS) == 0.5
    assert groundedness("Quarterly chaos drills rotate through Kubernetes clusters in Frankfurt.", CHUNKS) == 0.0


def test_groundedness_ignores_short_sentences_and_threshold() -> None:
    # "Yes." has < 4 tokens and is not judged; the remaining sentence is supported.
    assert groundedness("Yes. Acknowledge a page within 15 minutes.", CHUNKS) == 1.0
    # Content tokens [secondary, paged, immediately, weekends]: 2 of 4 present.
    half = "The secondary is paged immediately on weekends."
    assert groundedness(half, CHUNKS, threshold=0.5) == 1.0
    assert groundedness(half, CHUNKS, threshold=0.75) == 0.0


def test_groundedness_edge_cases() -> None:
    assert groundedness("", CHUNKS) == 1.0  # nothing claimed
    assert groundedness("Ok.", []) == 1.0
    # Claims without any cited evidence are ungrounded, by definition.
    assert groundedness("Acknowledge a page within 15 minutes.", []) == 0.0
    assert groundedness("Acknowledge a page within 15 minutes.", ["", "  "]) == 0.0


# --- percentile ---------------------------------------------------------------------------------


def test_percentile_linear_interpolation() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 0) == 1.0  # input order does not matter
    assert percentile([1, 2, 3, 4], 100) == 4.0
    assert percentile(range(1, 11), 90) == pytest.approx(9.1)
    assert percentile([0.25], 95) == 0.25


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1, 2], 101)
