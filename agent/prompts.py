"""The prompt the model sees at answer time — and, by importing this module, at training time too.

Training examples must be built with exactly these functions, or the fine-tuned adapter learns a
format the agent never shows it (see training/dataset.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

NOT_FOUND = "I couldn't find this in the documents."


def says_not_found(text: str) -> bool:
    """The text is (or contains) the not-found reply: a model's refusal, a teacher's refusal pair."""
    return NOT_FOUND.lower().rstrip(".") in text.lower()

SYSTEM_PROMPT = (
    "You are Flywheel, the team's assistant. Answer the question using only the numbered context "
    "passages. Be brief and specific, and cite the passages you used like [1]. If the passages do not "
    f'contain the answer, reply exactly: "{NOT_FOUND}"'
)


class Passage(Protocol):
    source: str
    page: int | None
    heading: str | None
    text: str


def passage_label(passage: Passage) -> str:
    """`deploys.md — Rollback, p. 3`: what a reader needs to find the passage again."""
    label = passage.source
    if passage.heading:
        label += f" — {passage.heading}"
    if passage.page is not None:
        label += f", p. {passage.page}"
    return label


def format_context(passages: Sequence[Passage]) -> str:
    return "\n\n".join(f"[{n}] {passage_label(p)}\n{p.text.strip()}" for n, p in enumerate(passages, start=1))


def build_messages(question: str, passages: Sequence[Passage]) -> list[dict[str, str]]:
    user = f"Context:\n{format_context(passages)}\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


CONDENSE_PROMPT = (
    "Rewrite the last question of this conversation as one standalone question that can be understood "
    "without the conversation. Reply with the question only.\n\n{history}\n\nLast question: {question}"
)
