"""The Slack bot end to end: the real Bolt app, SocketModeHandler and slack_sdk clients against the fake
Slack in tests/fakeslack.py, answering with the real Agent (tiny random model) over the sample handbook.

    pytest -q tests/test_slack.py
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier
from typer.testing import CliRunner

from agent.graph import shown_pieces
from bot.answering import (
    EMPTY,
    MARKDOWN_CHARS,
    PLACEHOLDER,
    SORRY,
    AnswerMessage,
    Question,
    StreamSupport,
    render_answer,
    split_markdown,
)
from bot.app import BUSY, ConfigError, FlywheelBot, _verify_identity
from bot.commands import WORKING
from bot.feedback import FEEDBACK_ACTION, TEAM_ANSWERS_FILE, normalize_emoji, team_answers_path
from storage.db import Store
from tests.fakeslack import FakeSlack
from tests.slackbot import ADMIN, bot_replies

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_slack_env")]

QUESTION = "How much traffic does a canary get, and for how long?"


# --- helpers ----------------------------------------------------------------------------------------
def finished(message: dict[str, Any]) -> bool:
    """A streamed answer is finished once chat.stopStream ran; a posted one (fallback path) once its
    final edit added the blocks under the answer (sources, feedback buttons); a notice at once."""
    if message.get("stream"):
        return message["stream"]["state"] == "stopped"
    return (message["text"] in (BUSY, SORRY, EMPTY)
            or any(b["type"] != "markdown" for b in message["blocks"] or []))


def final_answer(fake: FakeSlack, channel: str, thread_ts: str, timeout: float = 60) -> dict[str, Any]:
    """The bot's finished reply in a thread."""
    return fake.wait_for(lambda: next(m for m in bot_replies(fake, channel, thread_ts) if finished(m)), timeout=timeout)


def ask(fake: FakeSlack, text: str = QUESTION, channel: str = "C0001", user: str = "U1",
        thread_ts: str | None = None) -> tuple[str, dict[str, Any]]:
    env = fake.mention(user, channel, f"<@UBOT> {text}", thread_ts=thread_ts)
    event = env["payload"]["event"]
    thread = thread_ts or event["ts"]
    return thread, final_answer(fake, channel, thread)


def block(message: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((b for b in message["blocks"] or [] if b["type"] == kind), None)


def feedback(store: Store, interaction_id: str, user: str) -> dict[str, Any] | None:
    return store.vote_of(interaction_id, user)


def feedback_buttons(message: dict[str, Any]) -> dict[str, Any] | None:
    """The native feedback_buttons element of a message (inside its context_actions block)."""
    actions = block(message, "context_actions")
    return next((e for e in actions["elements"] if e["type"] == "feedback_buttons"), None) if actions else None


def assert_only_grew(message: dict[str, Any]) -> list[str]:
    """Every streaming call's visible text extends the one before: nothing shown was taken back."""
    texts = message["stream"]["texts"]
    for before, after in zip(texts, texts[1:], strict=False):
        assert after.startswith(before) and len(after) >= len(before), (before, after)
    return texts


# --- questions ---------------------------------------------------------------------------------------
def test_mention_is_streamed_natively_and_the_visible_text_only_grows(fake: FakeSlack, bot: FlywheelBot) -> None:
    thread, answer = ask(fake)
    assert answer["thread_ts"] == thread and "<@UBOT>" not in answer["text"]
    methods = [c["method"] for c in fake.calls() if c["method"].startswith("chat.")]
    assert methods[0] == "chat.startStream" and methods[-1] == "chat.stopStream", methods
    assert "chat.update" not in methods and "chat.postMessage" not in methods  # no draft, no placeholder edits
    start = fake.calls("chat.startStream")[0]["params"]
    assert (start["recipient_user_id"], start["recipient_team_id"]) == ("U1", "T0001")  # needed in channels
    texts = assert_only_grew(answer)
    interaction = bot.store.interaction_by_message("C0001", answer["ts"])
    # Each checked piece was sent as it came (startStream, then one appendStream each), then stopStream.
    assert len(texts) == len(shown_pieces(interaction["answer"])) + 1, texts
    assert interaction and interaction["surface"] == "slack" and interaction["user_id"] == "U1"
    assert answer["text"] == interaction["answer"]  # what was streamed is exactly what is stored
    assert interaction["question"] == QUESTION  # the mention was stripped
    assert interaction["conversation_id"] == f"C0001:{thread}"
    status = fake.calls("assistant.threads.setStatus")[0]["params"]
    assert status["status"] and status["loading_messages"]


def test_final_message_carries_sources_and_native_feedback_buttons_stored_as_votes(
        fake: FakeSlack, bot: FlywheelBot) -> None:
    _, answer = ask(fake)
    iid = bot.store.interaction_by_message("C0001", answer["ts"])["id"]
    stop = fake.calls("chat.stopStream")[0]["params"]
    assert [b["type"] for b in stop["blocks"]][-1] == "context_actions"  # attached when the stream stops
    buttons = feedback_buttons(answer)
    assert buttons and buttons["action_id"] == FEEDBACK_ACTION
    assert block(answer, "actions") is None  # no old-style buttons on new answers
    citations = block(answer, "context")
    assert citations is None or citations["elements"][0]["text"].startswith("[1] ")

    fake.click_feedback("U2", "C0001", answer["ts"], positive=True)
    row = fake.wait_for(lambda: feedback(bot.store, iid, "U2"))
    assert (row["vote"], row["source"]) == (1, "button")
    fake.wait_for(lambda: any(e["user"] == "U2" for e in fake.ephemerals()))  # thanked
    db_row = bot.store.query("SELECT vote, source FROM feedback WHERE interaction_id = ? AND user_id = ?",
                             (iid, "U2"))
    assert [dict(r) for r in db_row] == [{"vote": 1, "source": "button"}]

    fake.click_feedback("U2", "C0001", answer["ts"], positive=False)  # changes the vote, opens the form
    fake.wait_for(lambda: feedback(bot.store, iid, "U2")["vote"] == -1)
    opened = fake.wait_for(lambda: fake.calls("views.open"))[0]["response"]["view"]
    assert opened["private_metadata"] == iid
    assert bot.store.scalar("SELECT COUNT(*) FROM feedback WHERE interaction_id = ?", (iid,)) == 1


def test_old_feedback_buttons_on_earlier_answers_still_vote(fake: FakeSlack, bot: FlywheelBot) -> None:
    """Answers posted before the native buttons carry feedback_up/feedback_down with the interaction id."""
    _, answer = ask(fake)
    iid = bot.store.interaction_by_message("C0001", answer["ts"])["id"]
    old = WebClient(token="xoxb-test", base_url=fake.api_url).chat_postMessage(
        channel="C0001", thread_ts=answer["thread_ts"], text="an answer from an older version", blocks=[{
            "type": "actions", "block_id": "feedback", "elements": [
                {"type": "button", "action_id": action, "value": iid, "text": {"type": "plain_text", "text": label}}
                for action, label in (("feedback_up", "👍 Helpful"), ("feedback_down", "👎 Not helpful"))]}])
    fake.click("U5", "C0001", old["ts"], "feedback_down", iid)
    fake.wait_for(lambda: (feedback(bot.store, iid, "U5") or {}).get("vote") == -1)
    fake.click("U5", "C0001", old["ts"], "feedback_up", iid)
    fake.wait_for(lambda: (feedback(bot.store, iid, "U5") or {}).get("vote") == 1)


def test_dm_is_answered_and_buttons_can_be_turned_off(fake: FakeSlack, make_bot: Callable[..., FlywheelBot]) -> None:
    bot = make_bot(feedback_buttons=False)
    env = fake.dm("U1", QUESTION)
    answer = final_answer(fake, "D0001", env["payload"]["event"]["ts"])
    assert answer["stream"]["state"] == "stopped" and feedback_buttons(answer) is None
    assert answer["text"] == bot.store.interaction_by_message("D0001", answer["ts"])["answer"]


def test_follow_up_in_thread_uses_the_thread_memory(fake: FakeSlack, bot: FlywheelBot) -> None:
    thread, _ = ask(fake)
    fake.mention("U1", "C0001", "<@UBOT> and how long does it take?", thread_ts=thread)
    fake.wait_for(lambda: len([m for m in bot_replies(fake, "C0001", thread) if finished(m)]) == 2, timeout=60)
    second = [m for m in bot_replies(fake, "C0001", thread) if finished(m)][1]
    row = bot.store.interaction_by_message("C0001", second["ts"])
    assert row["question"] == "and how long does it take?"
    assert QUESTION in row["condensed_question"]  # "it" is the thread's previous topic


def test_a_follow_up_on_a_new_topic_cites_that_topic(fake: FakeSlack, bot: FlywheelBot) -> None:
    thread, _ = ask(fake, "How do I roll back a deploy?")
    fake.mention("U1", "C0001", "<@UBOT> and the canary?", thread_ts=thread)
    fake.wait_for(lambda: len([m for m in bot_replies(fake, "C0001", thread) if finished(m)]) == 2, timeout=60)
    second = [m for m in bot_replies(fake, "C0001", thread) if finished(m)][1]
    row = bot.store.interaction_by_message("C0001", second["ts"])
    assert row["condensed_question"] == "and the canary?"
    headings = [c["heading"] for c in row["citations"]]
    assert headings and all(h.endswith("How a production deploy progresses") for h in headings), headings


def test_agent_failure_is_reported_in_the_thread(fake: FakeSlack, make_bot: Callable[..., FlywheelBot],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    make_bot(model="/nonexistent/model")  # the real generator fails to load
    _, answer = ask(fake)
    assert answer["text"] == SORRY
    assert any(r.exc_info for r in caplog.records if "failed" in r.getMessage())


def test_bots_own_messages_edits_and_deletions_are_ignored(fake: FakeSlack, bot: FlywheelBot) -> None:
    fake.message_event(channel="D0001", user="UBOT", bot_id="BBOT", text="my own answer")
    fake.message_event(channel="D0001", subtype="bot_message", bot_id="BOTHER", text="another bot asks")
    fake.message_event(channel="D0001", bot_id="BOTHER", user="UOTHERBOT", text="a bot with a user")
    original = fake.dm("U1", "hi")["payload"]["event"]["ts"]
    final_answer(fake, "D0001", original)
    fake.message_event(channel="D0001", subtype="message_changed", message={"ts": original, "text": "edited?"})
    fake.message_event(channel="D0001", subtype="message_deleted", deleted_ts=original)
    last = fake.dm("U1", QUESTION)["payload"]["event"]["ts"]
    final_answer(fake, "D0001", last)
    time.sleep(0.5)
    answered = [c["params"].get("thread_ts") for c in fake.calls()
                if c["method"] in ("chat.postMessage", "chat.startStream")]
    assert answered == [original, last]
    assert len(bot_replies(fake, "D0001", original)) == 1


def test_redelivered_event_is_answered_once(fake: FakeSlack, bot: FlywheelBot) -> None:
    env = fake.mention("U1", "C0001", f"<@UBOT> {QUESTION}")
    thread = env["payload"]["event"]["ts"]
    fake.deliver(env, retry_attempt=1, retry_reason="timeout")
    fake.deliver(env)  # socket mode may redeliver with retry_attempt 0, too
    final_answer(fake, "C0001", thread)
    fake.wait_for(lambda: len(fake.acks()) >= 3)
    time.sleep(1.0)
    assert len(bot_replies(fake, "C0001", thread)) == 1
    assert bot.store.scalar("SELECT COUNT(*) FROM slack_events WHERE event_id = ?",
                            (env["payload"]["event_id"],)) == 1


# --- feedback ----------------------------------------------------------------------------------------
def test_reactions_and_buttons_vote_change_and_modal(fake: FakeSlack, bot: FlywheelBot) -> None:
    _, answer = ask(fake)
    iid = bot.store.interaction_by_message("C0001", answer["ts"])["id"]
    store = bot.store

    fake.react("U2", "C0001", answer["ts"], "+1::skin-tone-3")
    fake.wait_for(lambda: (feedback(store, iid, "U2") or {}).get("vote") == 1)
    assert feedback(store, iid, "U2")["source"] == "reaction"
    redelivered = fake.react("U2", "C0001", answer["ts"], "thumbsup")
    fake.deliver(redelivered, retry_attempt=1, retry_reason="timeout")
    fake.wait_for(lambda: len(fake.acks()) >= 4)
    assert store.scalar("SELECT COUNT(*) FROM feedback WHERE interaction_id = ?", (iid,)) == 1

    # Changed vote: 👎 button after the 👍 reaction; the modal opens on the same click.
    fake.click_feedback("U2", "C0001", answer["ts"], positive=False)
    fake.wait_for(lambda: (feedback(store, iid, "U2") or {}).get("vote") == -1)
    assert feedback(store, iid, "U2")["source"] == "button"
    opened = fake.wait_for(lambda: fake.calls("views.open"))[0]["response"]["view"]
    assert opened["callback_id"] == "feedback_modal" and opened["private_metadata"] == iid
    fake.submit_view("U2", opened, {"wrong": {"value": "It cited the wrong doc"},
                                    "correction": {"value": "5% for 30 minutes"}})
    fake.wait_for(lambda: (feedback(store, iid, "U2") or {}).get("correction") == "5% for 30 minutes")
    row = feedback(store, iid, "U2")
    assert row["comment"] == "It cited the wrong doc" and row["vote"] == -1
    # U2 is no admin (FLYWHEEL_CORRECTIONS_FROM defaults to admins): stored, audited, used for nothing.
    assert fake.wait_for(lambda: correction_uses(store)) == ["ignored"]
    assert not team_answers_path(bot.settings).exists()

    # Removing the 👍 reaction does not undo the later 👎 button vote...
    fake.react("U2", "C0001", answer["ts"], "+1", removed=True)
    # ...but for another user, adding then removing 👍 leaves a 0.
    fake.react("U3", "C0001", answer["ts"], "white_check_mark")
    fake.wait_for(lambda: (feedback(store, iid, "U3") or {}).get("vote") == 1)
    fake.react("U3", "C0001", answer["ts"], "white_check_mark", removed=True)
    fake.wait_for(lambda: (feedback(store, iid, "U3") or {}).get("vote") == 0)
    assert feedback(store, iid, "U2")["vote"] == -1

    # 👍 button: vote stored, ephemeral thanks.
    fake.click_feedback("U4", "C0001", answer["ts"], positive=True)
    fake.wait_for(lambda: (feedback(store, iid, "U4") or {}).get("vote") == 1)
    fake.wait_for(lambda: any(e["user"] == "U4" for e in fake.ephemerals()))


def correction_uses(store: Store) -> list[str]:
    rows = store.query("SELECT detail FROM audit_log WHERE action = 'feedback.correction' ORDER BY id")
    return [json.loads(r["detail"])["use"] for r in rows]


def test_admin_correction_missing_from_the_docs_becomes_a_team_answer(fake: FakeSlack, bot: FlywheelBot) -> None:
    """An admin's 👎 correction that no document supports is written to the team-answers document and
    ingested at once: the same question now retrieves it first."""
    question = "What is the guest wifi password for the Lisbon office?"
    correction = "The Lisbon guest wifi password is rotated every Monday by Ines Duarte at the front desk."
    thread, answer = ask(fake, question, user=ADMIN)
    iid = bot.store.interaction_by_message("C0001", answer["ts"])["id"]
    assert bot.agent.retriever.search(question).hits[0].source != TEAM_ANSWERS_FILE

    fake.click_feedback(ADMIN, "C0001", answer["ts"], positive=False)
    opened = fake.wait_for(lambda: fake.calls("views.open"))[0]["response"]["view"]
    fake.submit_view(ADMIN, opened, {"correction": {"value": correction}})
    assert fake.wait_for(lambda: correction_uses(bot.store), timeout=60) == ["team_answer"]
    assert feedback(bot.store, iid, ADMIN)["correction"] == correction  # kept in the feedback table too

    text = team_answers_path(bot.settings).read_text()
    assert f"## {question}\n\n{correction}\n" in text
    assert f"by Slack user {ADMIN} in channel C0001 (thread {thread})" in text
    top = bot.agent.retriever.search(question).hits[0]
    assert top.source == TEAM_ANSWERS_FILE and correction in top.text


def test_reactions_elsewhere_are_ignored(fake: FakeSlack, bot: FlywheelBot) -> None:
    thread, answer = ask(fake)
    fake.react("U2", "C0001", thread, "+1")              # on the user's question
    fake.react("U2", "C0001", answer["ts"], "tada")      # not a feedback emoji
    other = fake.message_event(channel="C0001", user="U9", text="unrelated")["payload"]["event"]["ts"]
    fake.react("U2", "C0001", other, "-1")
    fake.wait_for(lambda: len(fake.acks()) >= 5)
    time.sleep(0.5)
    assert bot.store.scalar("SELECT COUNT(*) FROM feedback") == 0


# --- slash command and App Home -------------------------------------------------------------------
def _response_texts(fake: FakeSlack) -> list[str]:
    return [r.get("text", "") for r in fake.responses()]


def test_slash_command_as_admin(fake: FakeSlack, bot: FlywheelBot) -> None:
    fake.command(ADMIN, "/flywheel", "status")
    status = fake.wait_for(lambda: next(t for t in _response_texts(fake) if "Flywheel status" in t))
    assert "Documents: 6" in status and "Answers this week" in status and "adapter" in status
    fake.command(ADMIN, "/flywheel", "help")
    fake.wait_for(lambda: any("/flywheel ingest" in t for t in _response_texts(fake)))
    fake.command(ADMIN, "/flywheel", "frobnicate")
    unknown = fake.wait_for(lambda: next(t for t in _response_texts(fake) if "frobnicate" in t))
    assert "/flywheel retrain" in unknown
    # Another cycle holds the single-flight lock (as a second process would): retrain says so at once.
    from training.cycle import cycle_lock

    with cycle_lock(bot.settings):
        env = fake.command(ADMIN, "/flywheel", "retrain")
        fake.wait_for(lambda: any("already running" in t for t in _response_texts(fake)))
    dm = fake.wait_for(lambda: [m for m in fake.messages() if "cycle started" in (m["text"] or "")])
    assert dm[0]["channel"].startswith("D")  # progress goes to the admin's DM
    fake.command(ADMIN, "/flywheel", "promote v9999")
    fake.wait_for(lambda: any("Could not promote `v9999`" in t for t in _response_texts(fake)))
    fake.command(ADMIN, "/flywheel", "rollback")
    fake.wait_for(lambda: any("Could not roll back" in t for t in _response_texts(fake)))
    ack = next(a for a in fake.acks() if a["envelope_id"] == env["envelope_id"])
    assert ack["payload"]["text"] == WORKING
    audit = bot.store.query("SELECT * FROM audit_log WHERE action = 'slash:retrain'")
    assert audit and audit[0]["actor"] == ADMIN and json.loads(audit[0]["detail"])["allowed"] is True
    assert not bot.store.query("SELECT * FROM audit_log WHERE action IN ('slash:status', 'slash:help')")


def test_slash_command_as_non_admin_is_refused(fake: FakeSlack, make_bot: Callable[..., FlywheelBot],
                                                tmp_path: Path) -> None:
    bot = make_bot(ingest_roots=str(tmp_path))  # the folder below is one the admin may ingest from
    docs = tmp_path / "more"
    docs.mkdir()
    (docs / "extra.md").write_text("# Extra\n\nThe office plant is watered on Tuesdays.\n")
    before = bot.store.scalar("SELECT COUNT(*) FROM documents")
    fake.command("U1", "/flywheel", f"ingest {docs}")
    fake.command("U1", "/flywheel", "retrain")
    fake.wait_for(lambda: len([t for t in _response_texts(fake) if "only Flywheel admins" in t]) == 2)
    time.sleep(0.3)
    assert not any("cycle" in t for t in _response_texts(fake))
    assert bot.store.scalar("SELECT COUNT(*) FROM documents") == before
    rows = bot.store.query("SELECT * FROM audit_log WHERE actor = 'U1' ORDER BY id")
    # The two commands are handled concurrently (Bolt's listener pool), so either may be audited first.
    assert sorted(r["action"] for r in rows) == ["slash:ingest", "slash:retrain"]
    assert all(json.loads(r["detail"])["allowed"] is False for r in rows)
    fake.command("U1", "/flywheel", "status")  # status is for everyone
    fake.wait_for(lambda: any("Flywheel status" in t for t in _response_texts(fake)))

    fake.command(ADMIN, "/flywheel", f"ingest {docs}")  # the admin can
    fake.wait_for(lambda: any("Ingested" in t for t in _response_texts(fake)), timeout=60)
    assert bot.store.scalar("SELECT COUNT(*) FROM documents") == before + 1


def test_app_home_shows_stats_and_training_runs_for_admins(fake: FakeSlack, bot: FlywheelBot) -> None:
    fake.home_opened("U1")
    home = fake.wait_for(lambda: fake.home_view("U1"))
    text = json.dumps(home["blocks"], ensure_ascii=False)
    assert "6 documents" in text and "Training runs" not in text
    fake.home_opened(ADMIN)
    admin_home = fake.wait_for(lambda: fake.home_view(ADMIN))
    assert "No training runs yet" in json.dumps(admin_home["blocks"], ensure_ascii=False)


# --- robustness ---------------------------------------------------------------------------------------
def test_rate_limited_stream_start_is_retried(fake: FakeSlack, bot: FlywheelBot) -> None:
    fake.fail_next("chat.startStream", status=429, retry_after=1)
    _, answer = ask(fake)
    assert answer["stream"]["state"] == "stopped"
    statuses = [c["status"] for c in fake.calls("chat.startStream")]
    assert statuses == [429, 200]  # retried after Retry-After, not taken for a rejection of streaming


def test_reconnects_after_disconnect_and_answers_again(fake: FakeSlack, bot: FlywheelBot) -> None:
    for number, how in enumerate(("message", "close"), start=2):
        fake.disconnect(how)
        fake.wait_for(lambda: fake.connections >= number and fake.connected, timeout=20)
        _, answer = ask(fake)
        assert answer["stream"]["state"] == "stopped"


def test_back_pressure_replies_busy_instead_of_dropping(fake: FakeSlack,
                                                        make_bot: Callable[..., FlywheelBot]) -> None:
    make_bot(workers=1, queue_size=1)
    threads = [fake.mention(f"U{i}", "C0001", f"<@UBOT> {QUESTION}")["payload"]["event"]["ts"] for i in range(5)]
    finals = [final_answer(fake, "C0001", t, timeout=90) for t in threads]
    texts = [m["text"] for m in finals]
    assert texts.count(BUSY) >= 1, texts
    assert len(texts) - texts.count(BUSY) >= 2, texts  # one running + one queued got answered


def test_http_mode_verifies_signatures(fake: FakeSlack, make_bot: Callable[..., FlywheelBot]) -> None:
    secret = "test-signing-secret"
    bot = make_bot(connect=False, http=True, SLACK_SIGNING_SECRET=secret, SLACK_APP_TOKEN=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bot.run_http(port, block=False)
    url = f"http://127.0.0.1:{port}/slack/events"

    def post(payload: dict[str, Any], signature: str | None = None) -> tuple[int, str]:
        body = json.dumps(payload)
        timestamp = str(int(time.time()))
        sig = signature or SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
        request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
            "Content-Type": "application/json", "X-Slack-Signature": sig, "X-Slack-Request-Timestamp": timestamp})
        for _ in range(50):  # the server thread may still be binding
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
            except urllib.error.URLError:
                time.sleep(0.1)
        raise AssertionError("HTTP server did not start")

    status, body = post({"type": "url_verification", "challenge": "c-123", "token": "t"})
    assert status == 200 and "c-123" in body
    assert post({"type": "url_verification", "challenge": "c-123"}, signature="v0=bad")[0] == 401

    event = {"type": "app_mention", "user": "U1", "text": f"<@UBOT> {QUESTION}", "ts": "1700000000.000100",
             "channel": "C0001", "event_ts": "1700000000.000100"}
    status, _ = post({"type": "event_callback", "event_id": "EvHTTP1", "team_id": "T0001", "api_app_id": "A0001",
                      "event": event, "authorizations": [{"team_id": "T0001", "user_id": "UBOT", "is_bot": True}]})
    assert status == 200
    answer = final_answer(fake, "C0001", "1700000000.000100")
    assert answer["stream"]["state"] == "stopped" and answer["text"]


def test_missing_or_rejected_tokens_give_a_clear_error(fake: FakeSlack, tmp_path: Path) -> None:
    from bot.cli import app as cli
    from storage.config import get_settings

    runner = CliRunner()
    get_settings.cache_clear()
    try:
        result = runner.invoke(cli, ["bot"], env={"FLYWHEEL_HOME": str(tmp_path)})
        assert result.exit_code != 0 and "SLACK_BOT_TOKEN" in result.output
        get_settings.cache_clear()
        result = runner.invoke(cli, ["bot"], env={"FLYWHEEL_HOME": str(tmp_path), "SLACK_BOT_TOKEN": "xoxb-x"})
        assert result.exit_code != 0 and "SLACK_APP_TOKEN" in result.output
        get_settings.cache_clear()
        result = runner.invoke(cli, ["bot", "--http"], env={"FLYWHEEL_HOME": str(tmp_path),
                                                            "SLACK_BOT_TOKEN": "xoxb-x"})
        assert result.exit_code != 0 and "SLACK_SIGNING_SECRET" in result.output
        assert "xoxb-x" not in result.output
    finally:
        get_settings.cache_clear()
    with pytest.raises(ConfigError, match=r"Slack rejected SLACK_BOT_TOKEN \(invalid_auth\)"):
        _verify_identity(WebClient(token="xoxp-not-a-bot-token", base_url=fake.api_url))


# --- units ---------------------------------------------------------------------------------------------
CODE_ANSWER = (
    "Drain the node first, then roll back [1]. Run this:\n\n"
    "```bash\n"
    "# drain traffic first\n"
    "kubectl drain node-7 --ignore-daemonsets && echo '<done> & \"ok\"'\n"
    "```\n\n"
    "Config is merged like this:\n\n"
    "```python\n"
    "config = merge(**defaults, **overrides)  # __init__ stays *as is*\n"
    "```\n\n"
    "- step one\n- step two, see [the runbook](https://example.com/run_book?a=1&b=2)\n"
)


def make_answer(text: str, interaction_id: str | None = "abc", citations: list[dict[str, Any]] | None = None) -> Any:
    from agent.graph import Answer

    return Answer(question="q", answer=text, grounded=True, retrieved=[], timings_ms={}, model=None, adapter=None,
                  route="question", interaction_id=interaction_id,
                  citations=citations if citations is not None else [{"n": 1, "source": "runbook.md", "page": 2,
                                                                      "heading": "Rollback <prod>"}])


def test_code_answer_is_rendered_byte_for_byte() -> None:
    ((text, blocks),) = render_answer(make_answer(CODE_ANSWER))
    assert blocks[0] == {"type": "markdown", "text": CODE_ANSWER}  # no mrkdwn conversion, no escaping
    assert [b["type"] for b in blocks] == ["markdown", "context", "context_actions"]
    assert "Rollback &lt;prod&gt;" in blocks[1]["elements"][0]["text"]  # our own mrkdwn is escaped
    assert "&lt;done&gt; &amp;" in text  # and so is the notification text


def test_long_answers_split_only_at_safe_boundaries() -> None:
    code = "```python\n" + "".join(f"line_{i} = compute(**kw)  # {i}\n" for i in range(200)) + "```\n"
    text = ("A paragraph about rollbacks. It has two sentences.\n\n" * 150) + code + "\n" + "Tail text. " * 900
    parts = split_markdown(text, MARKDOWN_CHARS)
    assert "".join(parts) == text and len(parts) >= 3
    assert all(len(p) <= MARKDOWN_CHARS for p in parts)
    assert any(code in p for p in parts)  # the whole fenced block is in one piece
    assert all(p.count("```") % 2 == 0 for p in parts)
    assert parts[0].endswith("\n\n")  # a paragraph break, not mid-paragraph
    # No paragraph or line break fits: a sentence end, then a space.
    assert split_markdown("One. Two. Three.", 10) == ["One. Two. ", "Three."]
    # One code block longer than the limit: closed and reopened, the code lines unchanged.
    huge = "```sh\n" + "".join(f"echo {i}\n" for i in range(40)) + "```"
    pieces = split_markdown(huge, 100)
    assert all(len(p) <= 100 and p.startswith("```sh\n") and p.endswith("```") for p in pieces)
    inner = "".join(p[len("```sh\n"):-3].strip("\n") + "\n" for p in pieces)
    assert inner == "".join(f"echo {i}\n" for i in range(40))

    messages = render_answer(make_answer(text, citations=[{"n": i, "source": f"doc{i}.md", "page": i, "heading": "H"}
                                                           for i in range(1, 30)]))
    assert [p for _, blocks in messages for b in blocks if b["type"] == "markdown" for p in [b["text"]]] == parts
    first = messages[0][1]
    assert [b["type"] for b in first][-2:] == ["context", "context_actions"]  # on the message votes attach to
    assert "[2] doc2.md, p. 2 — H" in first[-2]["elements"][0]["text"]
    assert all(len(t) <= 40_000 and len(b) <= 50 for t, b in messages)
    assert normalize_emoji("+1::skin-tone-4") == "+1" and normalize_emoji(":thumbsup:") == "thumbsup"


def _scripted_answer(bot: FlywheelBot, text: str) -> Callable[..., Any]:
    """Stand-in for Agent.answer that shows `text` in the agent's own sentence pieces and records the
    interaction like the agent does, so the Slack side runs for real on a known answer."""
    from agent.graph import shown_pieces

    def answer(question: str, *, thread_id: str, surface: str, user_id: str, channel: str,
               on_shown: Callable[[str], None] | None = None, **_: Any) -> Any:
        result = make_answer(text)
        for piece in shown_pieces(text):
            if on_shown:
                on_shown(piece)
        result.interaction_id = bot.store.record_interaction(
            conversation_id=thread_id, channel=channel, user_id=user_id, surface=surface, question=question,
            answer=text, grounded=True, route="question", citations=result.citations)
        return result

    return answer


def test_code_answer_streams_byte_for_byte_end_to_end(fake: FakeSlack, bot: FlywheelBot,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bot.agent, "answer", _scripted_answer(bot, CODE_ANSWER))
    _, answer = ask(fake, "How do I drain a node?")
    assert answer["text"] == CODE_ANSWER
    assert len(assert_only_grew(answer)) >= 3
    sent = "".join(c["params"].get("markdown_text", "") + "".join(ch.get("text", "") for ch in c["params"].get(
        "chunks") or []) for c in fake.calls() if c["method"].startswith("chat.") and "Stream" in c["method"])
    assert sent == CODE_ANSWER  # every byte went over the wire as written, once
    assert feedback_buttons(answer)


RUNBOOK = (
    "# Node maintenance\n\n## Draining a node\n\n"
    "Drain the node first, then roll back the release. Run this:\n\n"
    "```bash\n# drain traffic first\nkubectl drain node-7 --ignore-daemonsets && echo '<done> & \"ok\"'\n```\n\n"
    "Config is merged like this:\n\n"
    "```python\nconfig = merge(**defaults, **overrides)  # __init__ stays *as is*\n```\n"
)
BASH_BLOCK = "```bash\n# drain traffic first\nkubectl drain node-7 --ignore-daemonsets && echo '<done> & \"ok\"'\n```"
PYTHON_BLOCK = "```python\nconfig = merge(**defaults, **overrides)  # __init__ stays *as is*\n```"


class ScriptedModel:
    """The language model's stand-in (the tiny random model writes no code): streams a fixed draft."""

    name, adapter = "scripted-lm", None

    def __init__(self, draft: str) -> None:
        self.draft = draft

    def stream(self, messages: list[dict[str, str]], max_new_tokens: int | None = None) -> Iterator[str]:
        yield from re.findall(r"\S+\s*|\s+", self.draft)


def test_a_code_answer_passes_the_real_check_and_streams_byte_for_byte(fake: FakeSlack, bot: FlywheelBot,
                                                                      tmp_path: Path) -> None:
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "nodes.md").write_text(RUNBOOK)
    bot.agent.kb.ingest([folder])
    draft = (f"Drain the node first, then roll back the release [1]. Run this:\n\n{BASH_BLOCK}\n\n"
             f"Config is merged like this [1]:\n\n{PYTHON_BLOCK}\n")
    bot.agent._generator = ScriptedModel(draft)
    _, answer = ask(fake, "How do I drain node-7 before a rollback?")
    row = bot.store.interaction_by_message("C0001", answer["ts"])
    assert row["produced_by"] == "model" and row["draft"] == draft.strip()  # the checked text is the model's
    for block_text in (BASH_BLOCK, PYTHON_BLOCK):  # kept whole: no marker inside, no line joined
        assert block_text in row["answer"], row["answer"]
    assert answer["text"] == row["answer"]  # streamed as checked, byte for byte
    assert_only_grew(answer)


def test_rejected_streaming_falls_back_to_post_and_update_and_is_remembered(
        fake: FakeSlack, make_bot: Callable[..., FlywheelBot], monkeypatch: pytest.MonkeyPatch) -> None:
    fake.streaming, fake.stream_error = False, "unknown_method"  # a workspace without agent features
    bot = make_bot(stream_interval=30.0)  # a long interval: the pieces' burst must not become many edits
    monkeypatch.setattr(bot.agent, "answer", _scripted_answer(bot, CODE_ANSWER))

    _, first = ask(fake, "How do I drain a node?")
    assert [c["response"]["error"] for c in fake.calls("chat.startStream")] == ["unknown_method"]
    shown = [u["blocks"][0]["text"] for u in first["updates"]] + [first["blocks"][0]["text"]]
    for before, after in zip(shown, shown[1:], strict=False):
        assert after.startswith(before)  # the fallback edits only ever add text, too
    assert shown[-1] == CODE_ANSWER and [b["type"] for b in first["blocks"]] == ["markdown", "context",
                                                                                 "context_actions"]
    assert len(fake.calls("chat.update")) == 1  # first piece posted, then only the final edit
    iid = bot.store.interaction_by_message("C0001", first["ts"])["id"]
    fake.click_feedback("U2", "C0001", first["ts"], positive=True)
    fake.wait_for(lambda: (feedback(bot.store, iid, "U2") or {}).get("vote") == 1)

    _, second = ask(fake, "And how do I undo it?")
    assert len(fake.calls("chat.startStream")) == 1  # the rejection was remembered: not tried again
    assert second["updates"][0]["text"] == PLACEHOLDER  # known fallback: a placeholder at once
    assert second["blocks"][0] == {"type": "markdown", "text": CODE_ANSWER}


def test_stream_broken_mid_answer_is_completed_by_an_edit(fake: FakeSlack, bot: FlywheelBot) -> None:
    """chat.appendStream failing after text is visible (e.g. the stream expired): the answer is completed
    with chat.update on the same message, keeping what was shown."""
    question = Question(channel="C0001", thread_ts="1700000000.000100", user="U1", text="q", team="T0001")
    message = AnswerMessage(bot.client, question, StreamSupport(), interval=0.0)
    message.show("First sentence. ")
    fake.fail_next("chat.appendStream", status=500, count=5)
    message.show("Second sentence.")
    message.finish(make_answer("First sentence. Second sentence.", interaction_id=None))
    (reply,) = bot_replies(fake, "C0001", "1700000000.000100")
    assert reply["text"].startswith("First sentence.")
    assert reply["blocks"][0] == {"type": "markdown", "text": "First sentence. Second sentence."}


def test_event_dedupe_is_persisted_and_pruned(store: Store) -> None:
    assert store.claim_event("Ev1") and not store.claim_event("Ev1")
    store.execute("UPDATE slack_events SET received_at = '2000-01-01T00:00:00.000+00:00'")
    assert store.prune_events(1.0) == 1
    assert store.claim_event("Ev1")


def test_status_and_home_name_the_serving_retriever_with_its_gate_numbers(fake: FakeSlack, bot: FlywheelBot) -> None:
    fake.command("U1", "/flywheel", "status")
    status = fake.wait_for(lambda: next(t for t in _response_texts(fake) if "Flywheel status" in t))
    assert "Retriever: base" in status
    metrics = {"n": 48, "hit@1": 0.875, "hit@5": 1.0, "compared": {"serving": {"label": "base", "hit@1": 0.792}},
               "decision": {"delta": 0.083, "ci_low": 0.02, "ci_high": 0.15, "p_value": 0.03, "promote": True}}
    bot.store.insert("retrievers", {
        "version": "r0001", "path": "/models/r0001", "base_model": "minilm", "collection": "chunks-r0001",
        "status": "promoted", "index_state": "ready", "metrics": json.dumps(metrics),
        "created_at": "2026-11-30T00:00:00", "promoted_at": "2026-11-30T01:00:00"})
    fake.command("U1", "/flywheel", "status")
    status = fake.wait_for(lambda: next(t for t in _response_texts(fake) if "r0001" in t))
    assert "Retriever: r0001 (hit@1 0.875 vs 0.792, p 0.03)" in status
    fake.home_opened("U1")
    home = json.dumps(fake.wait_for(lambda: fake.home_view("U1"))["blocks"], ensure_ascii=False)
    assert "retriever r0001 (hit@1 0.875" in home


def test_status_shows_the_running_cycle_with_its_plan_and_eta(fake: FakeSlack, bot: FlywheelBot) -> None:
    from agent.status import CYCLE_PROGRESS_KEY

    fake.command("U1", "/flywheel", "status")
    assert "Cycle running" not in fake.wait_for(lambda: next(t for t in _response_texts(fake) if "Flywheel status" in t))
    # What training/cycle.py keeps while it trains: a running training_runs row and kv cycle_progress.
    bot.store.start_training_run("run-1", "schedule")
    plan = ("training 120 of 565 new pairs, est. 14 min (7.1 s/step × 118 steps); 445 kept for the next cycle")
    progress = {"run_id": "run-1", "stage": "train", "plan": plan, "step": 30, "max_steps": 118,
                "seconds_per_step": 7.1, "eta_seconds": 625, "eta_at": "2026-12-01T14:32:05+00:00"}
    bot.store.set_kv(CYCLE_PROGRESS_KEY, json.dumps(progress))
    fake.command("U1", "/flywheel", "status")
    status = fake.wait_for(lambda: next(t for t in _response_texts(fake) if "Cycle running" in t))
    assert "• Cycle running: training 120 of 565 new pairs (step 30/118), ETA 14:32 UTC" in status
    bot.store.set_kv(CYCLE_PROGRESS_KEY, json.dumps({**progress, "stage": "evaluate"}))
    fake.command("U1", "/flywheel", "status")
    status = fake.wait_for(lambda: next(t for t in _response_texts(fake) if "gating the new adapter" in t))
    assert "• Cycle running: gating the new adapter" in status and "ETA" not in status
    bot.store.update_training_run("run-1", status="succeeded")  # a finished (or dead) run is not shown
    count = len(_response_texts(fake))
    fake.command("U1", "/flywheel", "status")
    fake.wait_for(lambda: len(_response_texts(fake)) > count)
    assert "Cycle running" not in _response_texts(fake)[-1]
