"""Teachers: who writes the question/answer pairs the small model is fine-tuned on.

    flywheel distill --teacher offline|anthropic|auto [--max-pairs N] [--json]

* `OfflineTeacher` (`training/offline_teacher.py`) needs no key and no network: it turns a section's
  own sentences into questions by rule, so every answer is extracted and grounded by construction.
* `AnthropicTeacher` asks Claude for pairs through a forced tool call (structured JSON), sends the
  section as a prompt-cached block, retries 429/5xx with backoff and accounts tokens and cost.

`load_teacher(settings, "auto")` picks Anthropic when `ANTHROPIC_API_KEY` is set, else offline.
Both also offer `rewrite(question, passages)`: a better answer to a 👎-voted question (DPO "chosen").
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agent.prompts import NOT_FOUND, Passage, format_context

if TYPE_CHECKING:
    from storage.config import Settings

log = logging.getLogger(__name__)


@dataclass
class QAPair:
    question: str
    answer: str  # clean: no [n] markers (the dataset step adds the marker of the passage's position)
    reasoning: str = ""
    chunk_ids: list[str] = field(default_factory=list)  # the supporting chunks


@dataclass
class TeacherUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 0
    cost_usd: float = 0.0


class Teacher(Protocol):
    name: str
    usage: TeacherUsage

    def pairs_for(self, chunks: list[dict], max_pairs: int) -> list[QAPair]: ...

    def rewrite(self, question: str, passages: Sequence[Passage]) -> str | None: ...


# ---------------------------------------------------------------------------------------------
# Anthropic: Claude through a forced tool call
# ---------------------------------------------------------------------------------------------
# USD per million tokens (input, output, cache write 5 min, cache read), Anthropic's list prices as
# of 2025: cache writes cost 1.25x input, cache reads 0.1x input.
PRICES: dict[str, tuple[float, float, float, float]] = {
    # Sonnet 4.6 is assumed to keep the Sonnet tier's list price; costs are estimates, not invoices.
    "claude-sonnet-4-6": (3.00, 15.00, 3.75, 0.30),
    "claude-sonnet-4-5": (3.00, 15.00, 3.75, 0.30),
    "claude-sonnet-4": (3.00, 15.00, 3.75, 0.30),
    "claude-opus-4-1": (15.00, 75.00, 18.75, 1.50),
    "claude-opus-4": (15.00, 75.00, 18.75, 1.50),
    "claude-haiku-4-5": (1.00, 5.00, 1.25, 0.10),
    "claude-3-5-haiku": (0.80, 4.00, 1.00, 0.08),
}

TOOL = {
    "name": "record_qa_pairs",
    "description": "Record question/answer pairs about the given document section: answerable ones grounded in "
                   f"it, and a few near-topic ones it does not answer, whose answer is exactly \"{NOT_FOUND}\".",
    "input_schema": {
        "type": "object",
        "properties": {
            "pairs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "question": {"type": "string", "description": (
                            "What a colleague would type in chat, in their own words; understandable without "
                            "the section and naming its subject.")},
                        "answer": {"type": "string", "description": (
                            "One or more complete sentences stating only facts from the section (steps of a "
                            f"procedure in order), ending with punctuation, no citation markers; or exactly "
                            f"\"{NOT_FOUND}\" for a question the section does not answer.")},
                        "reasoning": {"type": "string", "description": (
                            "Which sentence answers it; for an unanswerable question, the word it asks about "
                            "that the section never uses.")},
                        "chunk_ids": {"type": "array", "items": {"type": "string"}, "description": (
                            "Ids of the chunks that support the answer (for an unanswerable question, the "
                            "chunks about its subject).")},
                    },
                    "required": ["question", "answer", "chunk_ids"],
                },
            }
        },
        "required": ["pairs"],
    },
}

INSTRUCTIONS = (
    "You write training data for a small assistant that answers a team's questions from its documents. "
    "From the document section above, write up to {n} question/answer pairs that colleagues would really "
    "type in chat. Questions: vary how they are asked, as people do (\"How do I ...?\", \"Why does ...?\", "
    "\"What happens if ...?\", \"Which option ...?\", \"What's the default ...?\", \"Can I ...?\", \"When "
    "should I ...?\"), in the asker's own words rather than the section's (paraphrase; first person), and "
    "each must make sense on its own, without seeing the section: name the subject it is about (a tool, "
    "policy, command or topic) and never point at the page ('this section', 'the text', 'the above', "
    "'here', or 'it'/'they' with no noun). Answers: one or more complete sentences, ending with "
    "punctuation, that use only facts stated in the section, keep its exact numbers and names, and "
    "contain no citation markers; a procedure's question is \"How do I ...?\" and its answer gives the "
    "steps in order. About 10-15% of the pairs (at least one when you write 7 or more) are unanswerable: "
    "a near-topic question about the same subject asking for something the section never mentions (a "
    "limit, a version, a price, an owner, a date), worded with a key word the section does not use, "
    "and answered exactly \"{nf}\" (nothing else); questions the section answers even partly are never "
    "unanswerable. chunk_ids lists the ids of the chunks that support the answer (for an unanswerable "
    "question, the chunks about its subject). Prefer specific facts, limits, deadlines, procedures and "
    "definitions. Record the pairs with the record_qa_pairs tool."
)

REWRITE_PROMPT = (
    "Answer the question using only the numbered passages, in one or two short sentences, citing the "
    "passage you used like [1]. If they do not contain the answer, reply exactly: \"{nf}\"\n\n"
    "{context}\n\nQuestion: {question}"
)


def price_of(model: str) -> tuple[float, float, float, float] | None:
    """Longest matching price-table prefix (`claude-sonnet-4-5-20250929` -> `claude-sonnet-4-5`)."""
    matches = [name for name in PRICES if model.startswith(name)]
    return PRICES[max(matches, key=len)] if matches else None


def _retryable(exc: BaseException) -> bool:
    import anthropic

    if isinstance(exc, anthropic.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, anthropic.APIConnectionError)  # includes timeouts


def _wait(retry_state: Any) -> float:
    """Honour `retry-after` when the server sends one (capped), else exponential backoff."""
    from tenacity import wait_exponential

    exc = retry_state.outcome.exception() if retry_state.outcome else None
    response = getattr(exc, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    if header:
        try:
            return min(float(header), 30.0)
        except ValueError:
            pass
    return wait_exponential(multiplier=1, min=1, max=20)(retry_state)


class AnthropicTeacher:
    """Claude writes the pairs; the section is a cached prompt block so follow-up calls are cheap."""

    def __init__(self, settings: Settings, attempts: int = 4):
        import anthropic

        key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
        # max_retries=0: tenacity owns retries, so the attempt count and the backoff are ours.
        self.client = anthropic.Anthropic(api_key=key, base_url=settings.anthropic_base_url or None, max_retries=0)
        self.model = settings.teacher_model
        self.name = f"anthropic:{self.model}"
        self.usage = TeacherUsage()
        self.attempts = attempts
        self._price = price_of(self.model)
        if self._price is None:
            log.warning("no price known for teacher model %s: cost will be reported as 0", self.model)

    def _create(self, **request: Any) -> Any:
        from tenacity import retry, retry_if_exception, stop_after_attempt

        call = retry(retry=retry_if_exception(_retryable), stop=stop_after_attempt(self.attempts),
                     wait=_wait, reraise=True)(self.client.messages.create)
        response = call(**request)
        self._account(getattr(response, "usage", None))
        return response

    def _account(self, usage: Any) -> None:
        if usage is None:
            return
        fresh = int(getattr(usage, "input_tokens", 0) or 0)
        out = int(getattr(usage, "output_tokens", 0) or 0)
        write = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
        u = self.usage
        u.requests += 1
        u.input_tokens += fresh
        u.output_tokens += out
        u.cache_write_tokens += write
        u.cache_read_tokens += read
        if self._price:
            p_in, p_out, p_write, p_read = self._price
            u.cost_usd += (fresh * p_in + out * p_out + write * p_write + read * p_read) / 1_000_000

    def pairs_for(self, chunks: list[dict], max_pairs: int) -> list[QAPair]:
        if not chunks or max_pairs <= 0:
            return []
        first = chunks[0]
        document = "\n\n".join(f'<chunk id="{c["id"]}">\n{c["text"].strip()}\n</chunk>' for c in chunks)
        header = f"Document: {first.get('source')}\nSection: {first.get('heading') or '(top)'}\n\n"
        response = self._create(
            model=self.model,
            max_tokens=2048,
            tools=[TOOL],
            tool_choice={"type": "tool", "name": TOOL["name"]},
            messages=[{
                "role": "user",
                "content": [
                    # The section is the big, repeated part: cache it (re-asks and rewrites reuse it).
                    {"type": "text", "text": header + document, "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": INSTRUCTIONS.format(n=max_pairs, nf=NOT_FOUND)},
                ],
            }],
        )
        known = {c["id"] for c in chunks}
        return _parse_pairs(response, known)[:max_pairs]

    def rewrite(self, question: str, passages: Sequence[Passage]) -> str | None:
        if not passages:
            return NOT_FOUND
        prompt = REWRITE_PROMPT.format(nf=NOT_FOUND, context=format_context(passages), question=question)
        try:
            response = self._create(model=self.model, max_tokens=300,
                                    messages=[{"role": "user", "content": prompt}])
        except Exception as exc:  # a rewrite is optional: no preference pair rather than a failed build
            log.warning("teacher rewrite failed: %s", exc)
            return None
        text = "".join(getattr(b, "text", "") for b in response.content if getattr(b, "type", "") == "text")
        return text.strip() or None


def tool_inputs(response: Any, name: str | None = None) -> Iterator[Any]:
    """The input of each `tool_use` block (of tool `name` if given), JSON-decoded; None when undecodable."""
    for block in getattr(response, "content", []) or []:
        if getattr(block, "type", "") != "tool_use" or (name and getattr(block, "name", "") != name):
            continue
        payload: Any = block.input
        if isinstance(payload, str):  # some proxies hand back the JSON as a string
            try:
                payload = json.loads(payload)
            except json.JSONDecodeError:
                payload = None
        yield payload


def _parse_pairs(response: Any, known: set[str]) -> list[QAPair]:
    """Pairs from the tool call; malformed items and unknown chunk ids are dropped, never fatal."""
    out: list[QAPair] = []
    for payload in tool_inputs(response):
        items = payload.get("pairs") if isinstance(payload, dict) else None
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            question, answer = item.get("question"), item.get("answer")
            ids = [i for i in item.get("chunk_ids") or [] if isinstance(i, str) and i in known]
            if not (isinstance(question, str) and isinstance(answer, str) and question.strip() and answer.strip()):
                continue
            if not ids:
                continue
            clean = re.sub(r"\s*\[\d{1,2}\]", "", answer).strip()  # the dataset step adds its own markers
            out.append(QAPair(question.strip(), clean, str(item.get("reasoning") or ""), ids))
    return out


def load_teacher(settings: Settings, kind: str | None = None) -> Teacher:
    """`auto`: Anthropic when an API key is configured, else the offline teacher."""
    kind = kind or settings.teacher
    if kind == "auto":
        kind = "anthropic" if settings.anthropic_api_key and settings.anthropic_api_key.get_secret_value() else "offline"
    if kind == "anthropic":
        return AnthropicTeacher(settings)
    if kind == "offline":
        from training.offline_teacher import OfflineTeacher  # here: offline_teacher imports this module

        return OfflineTeacher()
    raise ValueError(f"unknown teacher {kind!r} (offline | anthropic | auto)")


__all__ = ["QAPair", "TeacherUsage", "Teacher", "AnthropicTeacher", "load_teacher",
           "PRICES", "price_of"]
