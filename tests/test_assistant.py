"""Slack's assistant view (bot/assistant.py, Bolt's `Assistant` middleware) end to end: the real Bolt app,
SocketModeHandler and slack_sdk clients against the fake Slack, answering with the real Agent (tiny random
model) over the sample handbook.

    pytest -q tests/test_assistant.py
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.app import FlywheelBot
from bot.assistant import GREETING, HELP_PROMPT, MemoryThreadContextStore, thread_title
from bot.feedback import FEEDBACK_ACTION
from bot.files import REFUSED
from tests.fakeslack import FakeSlack
from tests.slackbot import ADMIN, bot_replies

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_slack_env")]

QUESTION = "How much traffic does a canary get, and for how long?"
RUNBOOK = b"# Failover runbook\n\nTo fail over the database, promote the standby with `pg_ctl promote`.\n"


def open_thread(fake: FakeSlack, user: str = "U1", context_channel: str | None = "C0001") -> tuple[str, str]:
    """Open an assistant thread; (DM channel, thread_ts)."""
    thread = fake.start_assistant_thread(user, context_channel=context_channel)["payload"]["event"]["assistant_thread"]
    return thread["channel_id"], thread["thread_ts"]


def answers(fake: FakeSlack, channel: str, thread: str) -> list[dict[str, Any]]:
    """The bot's finished, streamed answers in a thread (the greeting is not streamed)."""
    return [m for m in bot_replies(fake, channel, thread)
            if m.get("stream") and m["stream"]["state"] == "stopped"]


def feedback_buttons(message: dict[str, Any]) -> dict[str, Any] | None:
    return next((e for b in message["blocks"] or [] if b["type"] == "context_actions"
                 for e in b["elements"] if e["type"] == "feedback_buttons"), None)


# --- thread started -------------------------------------------------------------------------------
def test_thread_started_greets_and_suggests_prompts(fake: FakeSlack, bot: FlywheelBot) -> None:
    channel, thread = open_thread(fake)
    state = fake.wait_for(lambda: fake.assistant_thread(channel, thread)["prompts"])
    prompts = state["prompts"]
    assert 1 <= len(prompts) <= 4 and prompts[-1] == HELP_PROMPT
    assert all(p["title"] and p["message"] for p in prompts)
    assert state["title"] == "Try asking"
    call = fake.calls("assistant.threads.setSuggestedPrompts")[0]["params"]
    assert (call["channel_id"], call["thread_ts"]) == (channel, thread)
    greeting = fake.wait_for(lambda: bot_replies(fake, channel, thread))[0]
    assert greeting["text"] == GREETING and greeting["thread_ts"] == thread
    # The viewed channel is kept in memory: no conversations.replies or chat.update to store it.
    fake.change_assistant_context("U1", thread, "C0002", channel=channel)
    fake.wait_for(lambda: len(fake.acks()) >= 2)
    assert not fake.calls("conversations.replies") and not fake.calls("chat.update")


# --- a question in the thread ---------------------------------------------------------------------
def test_question_in_assistant_thread_is_titled_streamed_and_stored(fake: FakeSlack, bot: FlywheelBot) -> None:
    channel, thread = open_thread(fake)
    fake.assistant_message("U1", QUESTION, thread, channel=channel)
    answer = fake.wait_for(lambda: answers(fake, channel, thread), timeout=90)[0]

    state = fake.assistant_thread(channel, thread)
    assert state["titles"] == [thread_title(QUESTION)]
    status = state["statuses"][0]
    assert status["status"] and status["loading_messages"]  # shown at once, with loading messages
    assert state["status"] == ""  # cleared by the reply

    methods = [c["method"] for c in fake.calls() if c["method"].startswith("chat.")]
    assert "chat.startStream" in methods and "chat.stopStream" in methods and "chat.update" not in methods
    texts = answer["stream"]["texts"]
    assert all(after.startswith(before) for before, after in zip(texts, texts[1:], strict=False))
    row = bot.store.interaction_by_message(channel, answer["ts"])
    assert row and row["answer"] == answer["text"] and row["question"] == QUESTION
    assert row["conversation_id"] == f"{channel}:{thread}" and row["user_id"] == "U1"
    buttons = feedback_buttons(answer)
    assert buttons and buttons["action_id"] == FEEDBACK_ACTION

    # A 👍 is stored like any other vote ...
    fake.click_feedback("U1", channel, answer["ts"], positive=True)
    fake.wait_for(lambda: (bot.store.vote_of(row["id"], "U1") or {}).get("vote") == 1)

    # ... a follow-up is answered in the same thread without renaming it ...
    fake.assistant_message("U1", "and how long does it take?", thread, channel=channel)
    fake.wait_for(lambda: len(answers(fake, channel, thread)) == 2, timeout=90)
    assert fake.assistant_thread(channel, thread)["titles"] == [thread_title(QUESTION)]

    # ... and the 👍'd question becomes one of this user's suggested prompts in a new thread.
    channel2, thread2 = open_thread(fake)
    prompts = fake.wait_for(lambda: fake.assistant_thread(channel2, thread2)["prompts"])["prompts"]
    assert {"title": thread_title(QUESTION), "message": QUESTION} in prompts
    other_channel, other_thread = open_thread(fake, user="U2")
    others = fake.wait_for(lambda: fake.assistant_thread(other_channel, other_thread)["prompts"])["prompts"]
    assert all(p["message"] != QUESTION for p in others)  # never someone else's question


def test_files_shared_in_assistant_thread_are_ingested_for_admins(fake: FakeSlack, bot: FlywheelBot) -> None:
    channel, thread = open_thread(fake, user=ADMIN)
    fake.share_file(ADMIN, channel, "failover.md", RUNBOOK, text="the new runbook", thread_ts=thread)

    def done() -> str | None:
        texts = [m["text"] for m in bot_replies(fake, channel, thread)]
        return next((t for t in texts if t.startswith(("✓", "✗"))), None)

    assert fake.wait_for(done, timeout=90).startswith("✓ `failover.md` added: ")
    assert bot.store.scalar("SELECT status FROM documents WHERE name = 'failover.md'") == "ok"
    assert not fake.calls("chat.startStream")  # a file share is not a question

    user_channel, user_thread = open_thread(fake, user="U2")
    fake.share_file("U2", user_channel, "notes.md", b"# Notes\n", thread_ts=user_thread)
    fake.wait_for(lambda: any(m["text"] == REFUSED for m in bot_replies(fake, user_channel, user_thread)))
    assert bot.store.scalar("SELECT COUNT(*) FROM documents WHERE name = 'notes.md'") == 0


def test_too_long_question_in_assistant_thread_is_refused_by_the_guard(
        fake: FakeSlack, make_bot: Callable[..., FlywheelBot]) -> None:
    make_bot(max_question_chars=20)
    channel, thread = open_thread(fake)
    fake.assistant_message("U1", QUESTION, thread, channel=channel)
    reply = fake.wait_for(lambda: [m for m in bot_replies(fake, channel, thread) if m["text"] != GREETING])[0]
    assert "characters long" in reply["text"]
    assert not fake.calls("chat.startStream") and not fake.calls("assistant.threads.setTitle")


# --- units ----------------------------------------------------------------------------------------
def test_thread_titles_are_one_short_line() -> None:
    assert thread_title("  How do I\n roll back?  ") == "How do I"
    assert thread_title("word " * 40).endswith("…") and len(thread_title("word " * 40)) <= 60
    assert thread_title(QUESTION) == QUESTION


def test_thread_context_store_is_bounded() -> None:
    store = MemoryThreadContextStore(limit=2)
    for n in range(3):
        store.save(channel_id="D1", thread_ts=str(n), context={"channel_id": f"C{n}"})
    assert store.find(channel_id="D1", thread_ts="0") is None
    found = store.find(channel_id="D1", thread_ts="2")
    assert found is not None and found.channel_id == "C2"


def test_manifest_enables_the_assistant_view() -> None:
    manifest = yaml.safe_load((Path(__file__).parents[1] / "bot" / "manifest.yml").read_text())
    assert "assistant:write" in manifest["oauth_config"]["scopes"]["bot"]
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    assert {"assistant_thread_started", "assistant_thread_context_changed", "message.im"} <= set(events)
    assert manifest["features"]["assistant_view"]["assistant_description"]


def test_prompts_use_only_training_questions_from_the_documents(tmp_path: Path) -> None:
    from bot.assistant import suggested_prompts
    from storage.config import Settings
    from storage.db import Store

    store = Store(Settings(home=tmp_path / "home").db_path)
    try:
        assert suggested_prompts(store, "U1") == [HELP_PROMPT]
        for n, split in enumerate(("train", "heldout")):
            store.insert("qa_pairs", {"id": f"q{n}", "question": f"What is rule {split}?", "answer": "a",
                                      "split": split, "teacher": "t", "created_at": "2026-01-01"})
        prompts = suggested_prompts(store, "U1")
        assert [p["message"] for p in prompts] == ["What is rule train?", HELP_PROMPT["message"]]
    finally:
        store.close()
