"""Questions in Slack: app_mention in channels and direct messages, answered in the thread.

Flow of one question (the listener returns at once; Bolt has already acked the event):

    listener ── filter (bots, own messages, edits, deletions) ── WorkerPool.submit ──┬─ full → "busy" reply
                                                                                      └─ answer_question():
        assistant.threads.setStatus "is searching the docs…" + loading messages (best effort)
        → agent.answer(thread_id="<channel>:<thread_ts>", on_shown=…)
              each checked piece → chat.startStream / chat.appendStream (Slack's native streaming)
        → store.attach_message → chat.stopStream(blocks=[sources, 👍/👎 feedback_buttons])

Only text that has passed the grounding check is ever shown (`Agent.answer(on_shown=…)`): the pieces
concatenate to exactly `Answer.answer`, so what a user watches appear is what stays — nothing is
retracted or replaced. The model's unchecked draft (`on_token`) never reaches Slack.

When the workspace rejects the streaming methods (`unknown_method`, `not_allowed_token_type`, …: the
app has no agent features), the bot falls back to chat.postMessage + chat.update (at most one update
per `settings.stream_interval` s) with the same final blocks, and remembers that for the rest of the
process, so later answers don't try again.

The answer is sent as standard Markdown (a `markdown` block, or the stream's markdown text) exactly as
the agent wrote it: code fences, lists and links stay byte for byte; Slack renders it. Only mrkdwn
fields we build ourselves (the notification text, the sources line) are escaped (&, <, >). An answer
longer than Slack's 12,000-character markdown budget per message continues in further messages, cut
at a paragraph, else a line, else a sentence boundary — never inside a code fence.

The thread id gives follow-ups in a thread the agent's conversation memory.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.common import BUSY
from bot.feedback import feedback_block

if TYPE_CHECKING:
    from agent.graph import Answer
    from bot.common import Bot
    from storage.db import Store

log = logging.getLogger(__name__)

STATUS = "is searching the docs…"
LOADING_MESSAGES = ["Searching the team's documents…", "Reading the best passages…",
                    "Checking every sentence against its source…"]
PLACEHOLDER = "Searching the docs…"  # fallback path only: the first visible message before any text
SORRY = "Sorry — something went wrong while answering. The team has been notified in the logs."
EMPTY = "Ask me a question about the team's documents, e.g. “How do I roll back a deploy?”"
# Slack's limits: all markdown blocks of one message share 12,000 chars; one chat.appendStream call
# carries ≤ 12,000 chars; context text 3,000; 50 blocks; notification text 40,000.
MARKDOWN_CHARS = 12_000
STREAM_CHARS = 12_000
CONTEXT_CHARS = 3_000
NOTIFICATION_CHARS = 3_000
# Errors meaning "this workspace/app cannot use chat.*Stream at all" (agent features off, method
# unknown to an older or on-prem API): remembered for the process. Any other error falls back for
# the one answer only.
STREAM_REJECTED = frozenset({"unknown_method", "not_allowed", "not_allowed_token_type", "feature_not_enabled",
                             "method_not_supported", "not_enabled", "access_denied"})


@dataclass
class Question:
    channel: str
    thread_ts: str
    user: str
    text: str
    team: str = ""


class StreamSupport:
    """Whether this process streams natively. None until the first answer tries; False once the
    workspace has rejected the streaming methods (then every later answer uses the update path)."""

    def __init__(self) -> None:
        self.enabled: bool | None = None
        self._lock = threading.Lock()

    def rejected(self, error: str) -> None:
        with self._lock:
            if self.enabled is not False:
                log.warning("Slack rejected chat.startStream (%s): answering with chat.postMessage + "
                            "chat.update from now on (enable the app's agent features to stream natively)", error)
            self.enabled = False

    def worked(self) -> None:
        with self._lock:
            if self.enabled is None:
                self.enabled = True


def strip_mention(text: str, bot_user_id: str) -> str:
    """Remove the bot's own mention (`<@UBOT>` or `<@UBOT|name>`); other mentions stay."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(\|[^>]*)?>", " ", text)
    else:  # identity unknown (verification off): a leading mention is the bot's
        text = re.sub(r"^\s*<@[UW][A-Z0-9]+(\|[^>]*)?>", " ", text)
    return " ".join(text.split())


def is_from_bot(event: dict[str, Any], bot_user_id: str) -> bool:
    """Written by a bot (any, including this one): never a question."""
    return bool(event.get("bot_id") or event.get("subtype") == "bot_message" or event.get("bot_profile")
                or (bot_user_id and event.get("user") == bot_user_id))


def register_answering(bot: Bot) -> StreamSupport:
    """The question listeners; the streaming choice they share lives as long as the bot (the process)
    and is returned for the assistant view's listener (bot/assistant.py) to share."""
    app = bot.app
    support = StreamSupport()

    @app.event("app_mention")
    def on_mention(event: dict[str, Any], context: Any) -> None:
        bot_user = bot.bot_user_id or context.get("bot_user_id") or ""
        if is_from_bot(event, bot_user) or event.get("subtype"):
            return
        enqueue_question(bot, event, bot_user, support, team=context.get("team_id") or "")

    @app.event("message")
    def on_message(event: dict[str, Any], context: Any) -> None:
        # Only direct messages: channel questions come as app_mention. Any subtype (message_changed,
        # message_deleted, bot_message, channel_join, …) is not a new question from a person.
        if event.get("channel_type") != "im" or event.get("subtype"):
            return
        bot_user = bot.bot_user_id or context.get("bot_user_id") or ""
        if is_from_bot(event, bot_user):
            return
        enqueue_question(bot, event, bot_user, support, team=context.get("team_id") or "")

    return support


def enqueue_question(bot: Bot, event: dict[str, Any], bot_user_id: str,
                     support: StreamSupport | None = None, team: str = "") -> None:
    """Hand one question to the worker pool, or tell the user at once why not (empty, busy)."""
    question = Question(
        channel=event["channel"],
        thread_ts=event.get("thread_ts") or event["ts"],  # say() would not thread; reply in the thread
        user=event.get("user") or "",
        text=strip_mention(event.get("text") or "", bot_user_id),
        team=team or event.get("team") or "",
    )
    if not question.text:
        _post(bot.client, question, EMPTY)
        return
    if not bot.pool.submit(answer_question, bot, question, support or StreamSupport()):
        log.warning("worker pool full: telling %s in %s to retry", question.user, question.channel)
        _post(bot.client, question, BUSY)


def _post(client: WebClient, question: Question, text: str,
          blocks: list[dict[str, Any]] | None = None) -> str | None:
    try:
        return client.chat_postMessage(channel=question.channel, thread_ts=question.thread_ts, text=text,
                                       blocks=blocks)["ts"]
    except Exception:
        log.exception("could not post to %s", question.channel)
        return None


def _error_of(exc: SlackApiError) -> str:
    return str(exc.response.get("error") if exc.response is not None else "") or "unknown"


# --- delivery --------------------------------------------------------------------------------------
class AnswerMessage:
    """One answer's message in the thread. `show(piece)` makes checked text visible as it comes;
    `finish(result)` completes it with sources and feedback buttons; `fail()` says sorry in it.

    Natively streamed when `support` allows: chat.startStream on the first piece (so the assistant
    status keeps showing until there is text), chat.appendStream per piece, chat.stopStream with the
    blocks. Otherwise — or when that first chat.startStream is refused — a posted message edited with
    chat.update at most once per `interval` seconds, and a final edit with the same blocks."""

    def __init__(self, client: WebClient, question: Question, support: StreamSupport, interval: float) -> None:
        self.client, self.question, self.support, self.interval = client, question, support, interval
        self.shown = ""           # everything made visible so far, in order
        self.ts: str | None = None
        self._stream: Any = None  # slack_sdk ChatStream while natively streaming
        self._tried = False       # chat_stream opened for this answer (at most once)
        self._overflow = ""       # checked text beyond one stream message's budget, posted after it
        self._last_write: float | None = None  # when text was last made visible on the fallback path
        if support.enabled is False:
            # Known fallback: a visible placeholder at once (there is no stream to show progress).
            self.ts = _post(client, question, PLACEHOLDER)

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def show(self, piece: str) -> None:
        """Make one more checked piece visible (the agent's on_shown callback)."""
        if not piece:
            return
        if not self._tried and self.ts is None and self.support.enabled is not False:
            self._tried = True
            kwargs: dict[str, Any] = {"channel": self.question.channel, "thread_ts": self.question.thread_ts}
            if self.question.user and self.question.team:  # required outside DMs
                kwargs.update(recipient_user_id=self.question.user, recipient_team_id=self.question.team)
            # buffer_size=1: each checked piece goes out at once (pieces are whole sentences and
            # chat.appendStream is Tier 4), so a sentence shows the moment it has passed the check.
            self._stream = self.client.chat_stream(buffer_size=1, **kwargs)
        if self.streaming:
            if self._overflow or len(self.shown) + len(piece) > STREAM_CHARS:
                self._overflow += piece  # posted as continuation messages once the answer is complete
                return
            self.shown += piece
            self._append(piece)
        else:
            self.shown += piece
            self._update_fallback()

    def _append(self, piece: str) -> None:
        try:
            for part in _slices(piece, STREAM_CHARS):
                self._stream.append(markdown_text=part)
            if self.ts is None:
                self.ts = self._stream.ts
                self.support.worked()
        except Exception as exc:  # never let Slack trouble abort the agent's turn (this runs inside it)
            error = _error_of(exc) if isinstance(exc, SlackApiError) else type(exc).__name__
            if self._stream.ts is None:  # chat.startStream itself was refused: nothing is visible yet
                self._stream = None
                if error in STREAM_REJECTED:
                    self.support.rejected(error)
                else:
                    log.warning("chat.startStream failed in %s (%s): this answer uses chat.update",
                                self.question.channel, error)
                self._update_fallback()
            else:  # the stream broke mid-answer (e.g. expired): the final chat.update completes it
                log.warning("chat.appendStream failed in %s (%s); the final edit completes the answer",
                            self.question.channel, error)
                self.ts = self._stream.ts
                self._stream = None

    def _update_fallback(self) -> None:
        """Post or edit the fallback message with the text so far: the first piece at once (time to
        first text is what users feel), then at most one edit per interval; finish() sends the rest."""
        text = self.shown[:MARKDOWN_CHARS]
        if not text.strip():
            return
        now = time.monotonic()
        if self._last_write is not None and now - self._last_write < self.interval:
            return
        self._last_write = now
        if self.ts is None:
            self.ts = _post(self.client, self.question, notification_text(text), [markdown_block(text)])
            return
        try:
            self.client.chat_update(channel=self.question.channel, ts=self.ts, text=notification_text(text),
                                    blocks=[markdown_block(text)])
        except Exception:  # a lost intermediate update is cosmetic; the final update still lands
            log.warning("streaming update failed in %s", self.question.channel, exc_info=True)

    def finish(self, result: Answer, store: Store | None = None, buttons: bool = True) -> str | None:
        """Complete the message: the rest of the answer, then sources and feedback buttons. The
        interaction is attached to the message before the buttons appear, so an early vote counts."""
        answer = result.answer or ""
        if answer.startswith(self.shown + self._overflow):
            self.show(answer[len(self.shown) + len(self._overflow):])  # e.g. smalltalk: nothing was shown yet
        else:  # never retract: what is visible stays, even if the agent's final text differs
            log.error("checked pieces in %s are not a prefix of the final answer; keeping what was shown",
                      self.question.channel)
        tail = answer_tail(result, buttons=buttons)
        if self.ts is None:  # nothing could be shown (empty answer, or posting failed): post it whole
            messages = render_answer(result, buttons=buttons)
            self.ts = _post(self.client, self.question, *messages[0])
            self._attach(result, store)
            for text, blocks in messages[1:]:
                _post(self.client, self.question, text, blocks)
            return self.ts
        self._attach(result, store)
        if self.streaming:
            try:
                self._stream.stop(blocks=tail or None)
            except SlackApiError as exc:
                log.warning("chat.stopStream failed in %s (%s); editing the message instead",
                            self.question.channel, _error_of(exc))
                self._edit(self.shown, tail)
            rest = split_markdown(self._overflow, MARKDOWN_CHARS)
        else:
            first, *rest = split_markdown(self.shown, MARKDOWN_CHARS) or [" "]
            self._edit(first, tail)
        for text in rest:
            _post(self.client, self.question, notification_text(text), [markdown_block(text)])
        return self.ts

    def _attach(self, result: Answer, store: Store | None) -> None:
        if result.interaction_id and store is not None and self.ts:
            store.attach_message(result.interaction_id, self.question.channel, self.ts)

    def _edit(self, text: str, tail: list[dict[str, Any]]) -> None:
        assert self.ts is not None
        self.client.chat_update(channel=self.question.channel, ts=self.ts, text=notification_text(text),
                                blocks=[markdown_block(text), *tail])

    def fail(self) -> None:
        """Tell the user the answer failed, in the message they are watching; text already shown stays."""
        try:
            if self.streaming and self.ts is not None:
                self._stream.stop(markdown_text=("\n\n" if self.shown else "") + SORRY)
            elif self.ts is not None and self.shown:
                self._edit(self.shown[:MARKDOWN_CHARS - len(SORRY) - 2] + "\n\n" + SORRY, [])
            elif self.ts is not None:
                self.client.chat_update(channel=self.question.channel, ts=self.ts, text=SORRY, blocks=[])
            else:
                _post(self.client, self.question, SORRY)
        except Exception:
            log.exception("could not report the failure in %s", self.question.channel)


def answer_question(bot: Bot, question: Question, support: StreamSupport | None = None) -> None:
    """Runs on a worker: status, checked pieces streamed, final blocks. Never fails silently."""
    client = bot.client
    message = AnswerMessage(client, question, support or StreamSupport(), bot.settings.stream_interval)
    _set_status(client, question, STATUS, LOADING_MESSAGES)
    try:
        result = bot.agent.answer(
            question.text,
            thread_id=f"{question.channel}:{question.thread_ts}",
            surface="slack",
            user_id=question.user,
            channel=question.channel,
            sources=bot.sources_for(question.channel),  # channel scope; private documents only in DMs
            on_shown=message.show,  # checked text only; the unchecked draft (on_token) is not shown
        )
        message.finish(result, bot.store, buttons=bot.settings.feedback_buttons)
    except Exception:
        log.exception("answering a question in %s failed", question.channel)  # no message text in logs
        message.fail()
    finally:
        _set_status(client, question, "")


def _set_status(client: WebClient, question: Question, status: str, loading: list[str] | None = None) -> None:
    """assistant.threads.setStatus (with rotating loading messages): works in assistant threads and,
    with chat:write, in channel threads; it clears itself when the answer is posted. Best effort:
    a workspace without it just shows no status."""
    try:
        client.assistant_threads_setStatus(channel_id=question.channel, thread_ts=question.thread_ts,
                                           status=status, loading_messages=loading or None)
    except SlackApiError as exc:
        if loading and _error_of(exc) == "invalid_arguments":  # an API without loading_messages
            _set_status(client, question, status)
        else:
            log.debug("setStatus not available in %s: %s", question.channel, _error_of(exc))
    except Exception as exc:
        log.debug("setStatus failed in %s: %s", question.channel, exc)


# --- rendering ------------------------------------------------------------------------------------
def escape_mrkdwn(text: str) -> str:
    """Slack's three reserved characters in mrkdwn/plain fallback text (not in markdown blocks)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def notification_text(text: str) -> str:
    """The `text` that goes with blocks: what notifications and screen readers show."""
    text = text.strip() or " "
    if len(text) > NOTIFICATION_CHARS:
        text = text[: NOTIFICATION_CHARS - 1].rstrip() + "…"
    return escape_mrkdwn(text)


def markdown_block(text: str) -> dict[str, Any]:
    """Standard Markdown, sent verbatim: Slack renders code fences, lists and links itself."""
    return {"type": "markdown", "text": text or " "}


def _slices(text: str, limit: int) -> Iterator[str]:
    for start in range(0, len(text), limit):
        yield text[start:start + limit]


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n"),         # paragraph
    re.compile(r"\n"),                 # line
    re.compile(r"(?<=[.!?])[ \t]+"),   # sentence
    re.compile(r"[ \t]+"),             # word
)


def _fences(text: str) -> list[tuple[int, int, str]]:
    """(start, end, opening line) of each fenced code block; an unclosed fence runs to the end."""
    spans: list[tuple[int, int, str]] = []
    opened: tuple[int, str, str] | None = None  # (start, marker, opening line)
    pos = 0
    for line in text.splitlines(keepends=True):
        match = _FENCE.match(line)
        if match:
            marker = match.group(1)
            if opened is None:
                opened = (pos, marker, line.rstrip("\n"))
            elif (marker[0] == opened[1][0] and len(marker) >= len(opened[1])
                  and not line[match.end():].strip()):  # a closing fence: same char, as long, nothing after
                spans.append((opened[0], pos + len(line), opened[2]))
                opened = None
        pos += len(line)
    if opened is not None:
        spans.append((opened[0], len(text), opened[2]))
    return spans


def split_markdown(text: str, limit: int = MARKDOWN_CHARS) -> list[str]:
    """Cut Markdown into pieces of ≤ `limit` chars that each render on their own: at the last
    paragraph break that fits, else line break, else sentence end, else space — never inside a fenced
    code block. Pieces are exact slices (their concatenation is `text`), except when one code block
    alone exceeds the limit: it is closed and reopened (same info string) at a line break, so the
    code's own bytes are still unchanged."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        spans = _fences(rest)
        inside = lambda pos: any(start < pos < end for start, end, _ in spans)  # noqa: E731
        cut = 0
        for boundary in _BOUNDARIES:
            cuts = [m.end() for m in boundary.finditer(rest, 0, limit)
                    if 0 < m.end() <= limit and not inside(m.end())]
            if cuts:
                cut = max(cuts)
                break
        if cut:
            pieces.append(rest[:cut])
            rest = rest[cut:]
            continue
        # Nothing safe in the window: it lies inside one code block longer than the limit (close it
        # and reopen it after, so each piece renders as code), or it is one unbroken run of text.
        span = next((sp for sp in spans if sp[0] == 0 and sp[1] > limit), None)
        marker = _FENCE.match(span[2]).group(1) if span else ""  # type: ignore[union-attr]
        if span is None or len(span[2]) + 2 * len(marker) + 2 >= limit:
            pieces.append(rest[:limit])
            rest = rest[limit:]
            continue
        opener = span[2]
        room = limit - len(marker) - 1
        cut = rest.rfind("\n", len(opener) + 1, room) + 1 or room  # after a whole code line if one fits
        head = rest[:cut]
        pieces.append(head + ("" if head.endswith("\n") else "\n") + marker)
        rest = opener + "\n" + rest[cut:]
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


def answer_tail(result: Answer, buttons: bool = True) -> list[dict[str, Any]]:
    """The blocks under the answer: its numbered sources, and 👍/👎 for a real question."""
    tail: list[dict[str, Any]] = []
    if result.citations:
        lines = escape_mrkdwn("\n".join(citation_line(c) for c in result.citations))
        tail.append({"type": "context", "elements": [{"type": "mrkdwn", "text": lines[:CONTEXT_CHARS]}]})
    if buttons and result.interaction_id and result.route == "question":
        tail.append(feedback_block(result.interaction_id))
    return tail


def render_answer(result: Answer, buttons: bool = True) -> list[tuple[str, list[dict[str, Any]]]]:
    """The finished answer as Slack messages, each (notification text, blocks): the answer in
    `markdown` blocks split by `split_markdown`, sources and feedback buttons on the first message
    (the one reactions and votes are attached to), the rest of a long answer in the messages after."""
    parts = split_markdown(result.answer or "", MARKDOWN_CHARS) or [" "]
    first = [markdown_block(parts[0]), *answer_tail(result, buttons)]
    rest = [(notification_text(p), [markdown_block(p)]) for p in parts[1:]]
    return [(notification_text(parts[0]), first), *rest]
