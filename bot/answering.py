"""Questions in Slack: app_mention in channels and direct messages, answered in the thread.

Flow of one question (the listener returns at once; Bolt has already acked the event):

    listener ── filter (bots, own messages, edits, deletions) ── WorkerPool.submit ──┬─ full → "busy" reply
                                                                                      └─ answer_question():
        chat.postMessage "Searching the docs…" → assistant.threads.setStatus (best effort)
        → agent.answer(thread_id="<channel>:<thread_ts>", on_token=…) with chat.update ≤ 1/s
        → chat.update with the final answer, citations and 👍/👎 buttons → store.attach_message

The thread id gives follow-ups in a thread the agent's conversation memory.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slack_sdk import WebClient

from bot.app import BUSY

if TYPE_CHECKING:
    from agent.graph import Answer
    from bot.app import FlywheelBot

log = logging.getLogger(__name__)

PLACEHOLDER = "Searching the docs…"
SORRY = "Sorry — something went wrong while answering. The team has been notified in the logs."
EMPTY = "Ask me a question about the team's documents, e.g. “How do I roll back a deploy?”"
# Slack's limits: section text 3,000 chars, 50 blocks, message text 40,000 chars.
SECTION_CHARS = 3000
MAX_BLOCKS = 50
MAX_TEXT = 39_000
CURSOR = " ▍"
# The model's words stream before the grounding check may replace them with a quote or a refusal,
# so the stream is labelled as a draft: nobody should act on an unchecked sentence.
DRAFT_NOTE = "_Draft — checking it against the documents…_\n"


@dataclass
class Question:
    channel: str
    thread_ts: str
    user: str
    text: str


def strip_mention(text: str, bot_user_id: str) -> str:
    """Remove the bot's own mention (`<@UBOT>` or `<@UBOT|name>`); other mentions stay."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(\|[^>]*)?>", " ", text)
    else:  # identity unknown (verification off): a leading mention is the bot's
        text = re.sub(r"^\s*<@[UW][A-Z0-9]+(\|[^>]*)?>", " ", text)
    return " ".join(text.split())


def _is_from_bot(event: dict[str, Any], bot_user_id: str) -> bool:
    return bool(event.get("bot_id") or event.get("subtype") == "bot_message" or event.get("bot_profile")
                or (bot_user_id and event.get("user") == bot_user_id))


def register_answering(bot: FlywheelBot) -> None:
    app = bot.app

    @app.event("app_mention")
    def on_mention(event: dict[str, Any], context: Any) -> None:
        bot_user = bot.bot_user_id or context.get("bot_user_id") or ""
        if _is_from_bot(event, bot_user) or event.get("subtype"):
            return
        enqueue_question(bot, event, bot_user)

    @app.event("message")
    def on_message(event: dict[str, Any], context: Any) -> None:
        # Only direct messages: channel questions come as app_mention. Any subtype (message_changed,
        # message_deleted, bot_message, channel_join, …) is not a new question from a person.
        if event.get("channel_type") != "im" or event.get("subtype"):
            return
        bot_user = bot.bot_user_id or context.get("bot_user_id") or ""
        if _is_from_bot(event, bot_user):
            return
        enqueue_question(bot, event, bot_user)


def enqueue_question(bot: FlywheelBot, event: dict[str, Any], bot_user_id: str) -> None:
    question = Question(
        channel=event["channel"],
        thread_ts=event.get("thread_ts") or event["ts"],  # say() would not thread; reply in the thread
        user=event.get("user") or "",
        text=strip_mention(event.get("text") or "", bot_user_id),
    )
    if not question.text:
        _post(bot.client, question, EMPTY)
        return
    if not bot.pool.submit(answer_question, bot, question):
        log.warning("worker pool full: telling %s in %s to retry", question.user, question.channel)
        _post(bot.client, question, BUSY)


def _post(client: WebClient, question: Question, text: str) -> str | None:
    try:
        return client.chat_postMessage(channel=question.channel, thread_ts=question.thread_ts, text=text)["ts"]
    except Exception:
        log.exception("could not post to %s", question.channel)
        return None


class _Streamer:
    """Turns streamed tokens into chat.update calls, at most one per `interval` seconds
    (Slack allows about one message write per second per channel)."""

    def __init__(self, client: WebClient, channel: str, ts: str, interval: float) -> None:
        self.client, self.channel, self.ts, self.interval = client, channel, ts, interval
        self.text = ""
        self.updates = 0
        self._last = time.monotonic()

    def push(self, token: str) -> None:
        self.text += token
        now = time.monotonic()
        # The first words show at once (time to first token is what users feel); then ≤ 1 per interval.
        if not self.text.strip() or (self.updates and now - self._last < self.interval):
            return
        self._last = now
        try:
            shown = DRAFT_NOTE + to_mrkdwn(self.text[: MAX_TEXT - len(DRAFT_NOTE) - len(CURSOR)]) + CURSOR
            self.client.chat_update(channel=self.channel, ts=self.ts, text=shown)
            self.updates += 1
        except Exception:  # a lost intermediate update is cosmetic; the final update still lands
            log.warning("streaming update failed in %s", self.channel, exc_info=True)


def answer_question(bot: FlywheelBot, question: Question) -> None:
    """Runs on a worker: placeholder, streamed updates, final answer. Never fails silently."""
    client = bot.client
    ts = _post(client, question, PLACEHOLDER)
    if ts is None:
        return
    _set_status(client, question, PLACEHOLDER)
    try:
        streamer = _Streamer(client, question.channel, ts, bot.settings.stream_interval)
        result = bot.agent.answer(
            question.text,
            thread_id=f"{question.channel}:{question.thread_ts}",
            surface="slack",
            user_id=question.user,
            channel=question.channel,
            sources=bot.sources_for(question.channel),  # channel scope; private documents only in DMs
            on_token=streamer.push,
        )
        if result.interaction_id:  # before the final update, so an early reaction already counts
            bot.store.attach_message(result.interaction_id, question.channel, ts)
        text, blocks = render_answer(result, buttons=bot.settings.feedback_buttons)
        client.chat_update(channel=question.channel, ts=ts, text=text, blocks=blocks)
    except Exception:
        log.exception("answering %r in %s failed", question.text[:200], question.channel)
        try:
            client.chat_update(channel=question.channel, ts=ts, text=SORRY, blocks=[])
        except Exception:
            log.exception("could not report the failure in %s", question.channel)
    finally:
        _set_status(client, question, "")


def _set_status(client: WebClient, question: Question, status: str) -> None:
    """assistant.threads.setStatus only works in assistant threads; elsewhere it fails — harmless."""
    try:
        client.assistant_threads_setStatus(channel_id=question.channel, thread_ts=question.thread_ts, status=status)
    except Exception as exc:
        log.debug("setStatus not available in %s: %s", question.channel, exc)


# --- rendering ------------------------------------------------------------------------------------
def to_mrkdwn(text: str) -> str:
    """Markdown from the model → Slack mrkdwn: escape &<>, **bold** → *bold*, [t](u) → <u|t>, # h → *h*."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"\*\*(.+?)\*\*", r"*\1*", text)
    text = re.sub(r"__(.+?)__", r"*\1*", text)
    text = re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r"<\2|\1>", text)
    text = re.sub(r"(?m)^#{1,6}\s+(.+)$", r"*\1*", text)
    return text


def split_text(text: str, limit: int = SECTION_CHARS) -> list[str]:
    """Split on paragraph, then line, then word boundaries so each piece fits a section block."""
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = max(rest.rfind("\n\n", 0, limit), rest.rfind("\n", 0, limit), rest.rfind(" ", 0, limit))
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def citation_line(citation: dict[str, Any]) -> str:
    where = str(citation.get("source") or "?")
    if citation.get("page"):
        where += f", p. {citation['page']}"
    if citation.get("heading"):
        where += f" — {citation['heading']}"
    return f"[{citation.get('n')}] {where}"


def feedback_actions(interaction_id: str) -> dict[str, Any]:
    return {
        "type": "actions",
        "block_id": "feedback",
        "elements": [
            {"type": "button", "action_id": "feedback_up", "value": interaction_id,
             "text": {"type": "plain_text", "text": "👍 Helpful", "emoji": True}},
            {"type": "button", "action_id": "feedback_down", "value": interaction_id,
             "text": {"type": "plain_text", "text": "👎 Not helpful", "emoji": True}},
        ],
    }


def render_answer(result: Answer, buttons: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, blocks) for the final message, within Slack's size limits."""
    body = to_mrkdwn(result.answer or "")
    if len(body) > MAX_TEXT:
        body = body[: MAX_TEXT - 20].rstrip() + "\n… (truncated)"
    sections = split_text(body) or [" "]
    tail: list[dict[str, Any]] = []
    if result.citations:
        lines = "\n".join(to_mrkdwn(citation_line(c)) for c in result.citations)
        tail.append({"type": "context", "block_id": "citations",
                     "elements": [{"type": "mrkdwn", "text": lines[:SECTION_CHARS]}]})
    if buttons and result.interaction_id and result.route == "question":
        tail.append(feedback_actions(result.interaction_id))
    room = MAX_BLOCKS - len(tail)
    if len(sections) > room:
        sections = sections[: room - 1] + ["… (truncated)"]
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": s}} for s in sections] + tail
    return body, blocks
