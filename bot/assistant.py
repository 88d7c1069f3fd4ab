"""Slack's assistant view (the AI-app split view and its DM threads), through Bolt's `Assistant` middleware.

    assistant_thread_started ── greeting + suggested prompts (set_suggested_prompts)
    assistant_thread_context_changed ── Bolt's default: the viewed channel is saved (in memory here)
    message in an assistant thread ─┬─ files → bot/files.py on_shared_files (admins ingest, others refused)
                                    └─ question → set_title (first question only) + set_status
                                       → bot/answering.py enqueue_question: the same worker pool, checked
                                         text streamed, sources and feedback buttons as for mentions and DMs

Bolt's middleware claims every DM message with a `thread_ts` (that is how an assistant thread looks),
so threaded DM replies in workspaces without the assistant view come here too and are answered the same
way; top-level DMs and @mentions stay with bot/answering.py's listeners. The question guard (length,
rate: bot/hardening.py) is a global middleware registered before this one, so it sees these questions
first. Needs the `assistant:write` scope and the `assistant_view` feature (bot/manifest.yml).

Suggested prompts never show other people's questions (they may be private): the user's own earlier
questions that got a 👍, then questions generated from the documents themselves (the training split of
the `qa_pairs` the cycle distils; the thread is a DM, which may read every document), then "What can you do?".
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from slack_bolt import Assistant
from slack_bolt.context.assistant.thread_context import AssistantThreadContext
from slack_bolt.context.assistant.thread_context_store.store import AssistantThreadContextStore

from bot.answering import LOADING_MESSAGES, STATUS, StreamSupport, enqueue_question, is_from_bot, strip_mention
from bot.files import on_shared_files, shared_by_person, shares_files

if TYPE_CHECKING:
    from bot.common import Bot
    from storage.db import Store

log = logging.getLogger(__name__)

GREETING = ("Hi! Ask me anything about the team's documents — I answer from them, cite my sources, "
            "and learn from your 👍/👎.")
PROMPTS_TITLE = "Try asking"
HELP_PROMPT = {"title": "What can you do?", "message": "What can you do?"}  # the agent's help reply
MAX_PROMPTS = 4          # assistant.threads.setSuggestedPrompts takes up to four
PROMPT_CHARS = 120       # longer questions make poor one-click prompts
TITLE_CHARS = 60         # a thread title is one short line in the history list
REMEMBERED_THREADS = 10_000  # bounded in-process memory (titled threads, thread contexts)


class MemoryThreadContextStore(AssistantThreadContextStore):
    """The channel each assistant thread's user is viewing, kept in memory (bounded, oldest dropped).

    Bolt's default store writes it into the metadata of the bot's first reply (conversations.replies +
    chat.update on every context change); answers here don't depend on it — an assistant thread is a
    DM, answered with the DM's scope — so a restart forgetting it costs nothing."""

    def __init__(self, limit: int = REMEMBERED_THREADS) -> None:
        self._contexts: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def save(self, *, channel_id: str, thread_ts: str, context: dict[str, str]) -> None:
        with self._lock:
            self._contexts[(channel_id, thread_ts)] = dict(context)
            self._contexts.move_to_end((channel_id, thread_ts))
            while len(self._contexts) > self._limit:
                self._contexts.popitem(last=False)

    def find(self, *, channel_id: str, thread_ts: str) -> AssistantThreadContext | None:
        with self._lock:
            context = self._contexts.get((channel_id, thread_ts))
        return AssistantThreadContext(context) if context else None


def thread_title(text: str) -> str:
    """A one-line title from a question: its first line, whitespace collapsed, cut at a word."""
    line = " ".join((text.strip().splitlines() or [""])[0].split())
    if len(line) <= TITLE_CHARS:
        return line
    cut = line[:TITLE_CHARS - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(",;:") + "…"


def suggested_prompts(store: Store, user: str, limit: int = MAX_PROMPTS) -> list[dict[str, str]]:
    """Up to `limit` prompts: `user`'s own 👍'd questions (newest first), questions generated from the
    documents (a random few, so new threads vary), and always "What can you do?" last."""
    rows: list[str] = []
    try:
        rows += [r["question"] for r in store.query(
            "SELECT i.question, MAX(i.created_at) AS asked FROM interactions i "
            "JOIN feedback f ON f.interaction_id = i.id AND f.user_id = i.user_id "
            "WHERE i.user_id = ? AND f.vote > 0 AND i.route = 'question' AND length(i.question) <= ? "
            "GROUP BY lower(i.question) ORDER BY asked DESC LIMIT ?", (user, PROMPT_CHARS, limit))]
        rows += [r["question"] for r in store.query(
            # Training split only: held-out questions asked (and voted on) in Slack would leak into
            # the data the gate measures on.
            "SELECT question FROM qa_pairs WHERE split = 'train' AND length(question) <= ? "
            "ORDER BY random() LIMIT ?",
            (PROMPT_CHARS, limit))]
    except Exception:  # prompts are a convenience: a store problem must not cost the greeting
        log.warning("could not read suggested prompts from the store", exc_info=True)
    prompts: list[dict[str, str]] = []
    seen = {HELP_PROMPT["message"].lower()}
    for question in rows:
        question = " ".join(question.split())
        if question and question.lower() not in seen and len(prompts) < limit - 1:
            seen.add(question.lower())
            prompts.append({"title": thread_title(question), "message": question})
    return [*prompts, HELP_PROMPT]


def register_assistant(bot: Bot, support: StreamSupport | None = None) -> Assistant:
    """Install Bolt's `Assistant` middleware on `bot.app`. Register it after the question guard (a
    global middleware must see questions first); `support` is the answering listeners' streaming
    choice, shared so a workspace that rejected streaming is not asked again."""
    support = support or StreamSupport()
    assistant = Assistant(thread_context_store=MemoryThreadContextStore())
    titled: OrderedDict[tuple[str, str], None] = OrderedDict()  # threads given a title by this process
    titled_lock = threading.Lock()

    @assistant.thread_started
    def start_thread(payload: dict[str, Any], say: Any, set_suggested_prompts: Any) -> None:
        # Two independent courtesies: a failure of one (e.g. a missing scope) must not cost the other.
        try:
            say(GREETING)
        except Exception:
            log.warning("could not greet in an assistant thread", exc_info=True)
        user = (payload.get("assistant_thread") or {}).get("user_id") or ""
        try:
            set_suggested_prompts(prompts=suggested_prompts(bot.store, user), title=PROMPTS_TITLE)
        except Exception:
            log.warning("could not set suggested prompts", exc_info=True)

    @assistant.user_message
    def on_user_message(payload: dict[str, Any], context: Any, set_title: Any, set_status: Any) -> None:
        bot_user = bot.bot_user_id or context.get("bot_user_id") or ""
        if shares_files(payload):  # a file dropped into the thread: ingest (admins) or refuse, never answer
            if shared_by_person(payload, bot_user):
                on_shared_files(bot, payload)
            return
        if is_from_bot(payload, bot_user) or payload.get("subtype"):
            return
        question = strip_mention(payload.get("text") or "", bot_user)
        if question and _first_question(bot.store, titled, titled_lock, payload):
            _best_effort(set_title, thread_title(question))
        if question:  # at once, while the question may still wait for a worker; answering sets it again
            _best_effort(set_status, STATUS, loading_messages=LOADING_MESSAGES)
        enqueue_question(bot, payload, bot_user, support, team=context.get("team_id") or "")

    bot.app.assistant(assistant)
    return assistant


def _first_question(store: Store, titled: OrderedDict[tuple[str, str], None], lock: threading.Lock,
                    event: dict[str, Any]) -> bool:
    """True once per thread: the thread's title comes from its first question, not from a follow-up
    like "and the canary?". Remembered in process (fast, and covers a follow-up sent before the first
    answer is stored) and in the store (an interaction in this conversation, across restarts)."""
    key = (event["channel"], event.get("thread_ts") or event["ts"])
    with lock:
        if key in titled:
            return False
        titled[key] = None
        while len(titled) > REMEMBERED_THREADS:
            titled.popitem(last=False)
    try:
        return not store.scalar("SELECT 1 FROM interactions WHERE conversation_id = ? LIMIT 1", (":".join(key),))
    except Exception:
        return True


def _best_effort(call: Any, *args: Any, **kwargs: Any) -> None:
    """An assistant.threads.* call whose failure must not stop the answer (a workspace without the
    assistant view, or without `assistant:write`, refuses them)."""
    try:
        call(*args, **kwargs)
    except Exception as exc:
        log.debug("%s failed: %s", type(call).__name__, exc)
