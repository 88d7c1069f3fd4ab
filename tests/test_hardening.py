"""The hardened core (bot/hardening.py, bot/http.py, training's scrubbed environment): ingest roots,
question length and rate caps, logs without message text or tokens, a scrubbed training process, and
HTTP mode under uvicorn rejecting bad signatures and replays — through the real Bolt and slack_sdk
clients against the fake Slack.

    pytest -q tests/test_hardening.py
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.signature import SignatureVerifier

from bot.app import FlywheelBot
from bot.hardening import SLOW_DOWN, TOO_LONG, RateLimiter, ingest_path, question_length, redact
from storage.config import Settings, scrubbed_environment
from storage.db import Store
from tests.fakeslack import FakeSlack
from tests.slackbot import ADMIN, bot_replies, response_texts

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_slack_env")]

QUESTION = "How much traffic does a canary get, and for how long?"


def interactions(bot: FlywheelBot) -> list[dict[str, Any]]:
    return bot.store.query("SELECT question, channel FROM interactions ORDER BY created_at")


# --- /flywheel ingest: configured roots ---------------------------------------------------------------
def test_ingest_paths_must_resolve_under_a_root(tmp_path: Path, store: Store) -> None:
    root, outside = tmp_path / "docs", tmp_path / "private"
    (root / "team").mkdir(parents=True)
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    settings = Settings(home=tmp_path / "home", ingest_roots=f"{root}, /nonexistent-root")
    assert ingest_path(settings, store, str(root / "team")) == (root / "team").resolve()
    assert ingest_path(settings, store, str(root)) == root.resolve()
    for sneaky in (str(outside), f"{root}/../private", str(root / "escape"), "/etc/passwd", "relative/path"):
        reason = ingest_path(settings, store, sneaky)
        assert isinstance(reason, str) and "outside the folders" in reason, sneaky
    # Unset: only folders the knowledge base already holds documents from.
    unset = Settings(home=tmp_path / "home")
    assert "none are set" in str(ingest_path(unset, store, str(root)))
    store.insert("documents", {"id": "d1", "path": str((root / "team" / "a.md").resolve()), "name": "a.md",
                                  "status": "ok", "chunks": 1, "updated_at": "2026-01-01"})
    assert ingest_path(unset, store, str(root / "team")) == (root / "team").resolve()
    assert isinstance(ingest_path(unset, store, str(root)), str)


def test_slash_ingest_outside_the_roots_is_refused(fake: FakeSlack, make_bot: Callable[..., FlywheelBot],
                                                   tmp_path: Path) -> None:
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    for folder in (allowed, other):
        folder.mkdir()
        (folder / f"{folder.name}.md").write_text(f"# {folder.name}\n\nThe {folder.name} folder has one page.\n")
    bot = make_bot(ingest_roots=str(allowed))
    before = bot.store.scalar("SELECT COUNT(*) FROM documents")
    fake.command(ADMIN, "/flywheel", f"ingest {other}")
    refused = fake.wait_for(lambda: next(t for t in response_texts(fake) if "outside the folders" in t))
    assert str(allowed) in refused
    fake.command(ADMIN, "/flywheel", f"ingest {allowed}")
    fake.wait_for(lambda: any(t.startswith("Ingested") for t in response_texts(fake)), timeout=60)
    assert bot.store.scalar("SELECT COUNT(*) FROM documents") == before + 1


# --- questions: length and rate ------------------------------------------------------------------------
def test_rate_limiter_slides_and_counts_only_admitted_events() -> None:
    now = [1000.0]
    limiter = RateLimiter(2, window=60, clock=lambda: now[0])
    assert limiter.check("U1") == 0 and limiter.check("U1") == 0
    assert limiter.check("U1") == pytest.approx(60)
    assert limiter.check("U2") == 0  # per user
    now[0] += 30
    assert limiter.check("U1") == pytest.approx(30)  # refusals don't extend the wait
    now[0] += 30
    assert limiter.check("U1") == 0
    assert RateLimiter(0).check("U1") == 0  # 0 = unlimited
    assert question_length("<@UBOT>   what  is <@U123|ann> up to?") == len("what is up to?")


def test_long_question_gets_a_friendly_reply_and_is_not_answered(fake: FakeSlack,
                                                                  make_bot: Callable[..., FlywheelBot]) -> None:
    bot = make_bot(max_question_chars=100)
    long_question = "Why " + "really " * 30 + "?"
    thread = fake.mention("U1", "C0001", long_question)["payload"]["event"]["ts"]
    texts = fake.wait_for(lambda: [m["text"] for m in bot_replies(fake, "C0001", thread)])
    assert texts == [TOO_LONG.format(length=question_length(long_question), limit=100)]
    fake.dm("U1", QUESTION)  # a question within the cap is answered as usual
    fake.wait_for(lambda: interactions(bot), timeout=90)
    time.sleep(0.3)
    assert [r["question"] for r in interactions(bot)] == [QUESTION]


def test_per_user_rate_limit_replies_politely(fake: FakeSlack, make_bot: Callable[..., FlywheelBot]) -> None:
    bot = make_bot(answers_per_minute=2)
    threads = [fake.dm("U1", f"hello {n}")["payload"]["event"]["ts"] for n in range(3)]
    polite = SLOW_DOWN.split("{limit}")[0]

    def refusals() -> list[str]:
        # Events are dispatched concurrently, so any one of the three may be the one over the limit.
        return [m["text"] for t in threads for m in bot_replies(fake, "D0001", t) if m["text"].startswith(polite)]

    refused = fake.wait_for(refusals)
    assert "2 questions in the last minute" in refused[0]
    fake.mention("U2", "C0001", "hello from someone else")  # another user is not affected
    fake.wait_for(lambda: len(interactions(bot)) == 3, timeout=90)
    time.sleep(0.5)
    assert len(refusals()) == 1
    questions = sorted(r["question"] for r in interactions(bot))
    assert len([q for q in questions if q.startswith("hello ") and q[-1].isdigit()]) == 2
    assert "hello from someone else" in questions


# --- logs ----------------------------------------------------------------------------------------------
def test_logs_carry_no_message_text_or_tokens(fake: FakeSlack, make_bot: Callable[..., FlywheelBot],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the operator turned everything up
    bot = make_bot(max_question_chars=200)
    secret_question = "What does the canary compare during the zebracorn rollout?"
    fake.mention("U1", "C0001", secret_question)
    fake.mention("U1", "C0001", "zebracorn " * 30)  # refused as too long
    fake.message_event(channel="C0001", user="U1", text="zebracorn chatter the bot never handles")
    fake.command(ADMIN, "/flywheel", "status")
    fake.wait_for(lambda: interactions(bot), timeout=90)
    fake.wait_for(lambda: any("Flywheel status" in t for t in response_texts(fake)))
    time.sleep(0.5)
    logging.getLogger("anything").warning("token xoxb-123-456-abc and key sk-ant-api03-secret leaked?")
    records = [r.getMessage() for r in caplog.records]
    assert records, "nothing was logged at all"
    assert not [m for m in records if "zebracorn" in m]
    assert not [m for m in records if "xoxb-" in m or "xapp-" in m or "sk-ant-" in m]
    assert "[redacted]" in records[-1]
    assert redact("Bearer xoxb-1-2-abc, xapp-1-A1-2-def") == "Bearer [redacted], [redacted]"


# --- the training subprocess ----------------------------------------------------------------------------
def test_training_process_gets_no_tokens_or_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.train import run_process

    for name, value in {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1", "SLACK_SIGNING_SECRET": "s",
                        "ANTHROPIC_API_KEY": "sk-ant-1", "OPENAI_API_KEY": "sk-1", "FLYWHEEL_LORA_R": "8"}.items():
        monkeypatch.setenv(name, value)
    command = [sys.executable, "-c", "import json, os; print(json.dumps(sorted(os.environ)))"]
    returncode, _, tail = run_process(command, tmp_path / "train.log", env={"EXTRA": "1"})
    assert returncode == 0
    names = set(json.loads(tail[-1]))
    assert {"FLYWHEEL_LORA_R", "EXTRA", "PYTHONUNBUFFERED", "PATH"} <= names
    assert not names & {"SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "ANTHROPIC_API_KEY",
                        "OPENAI_API_KEY"}
    assert scrubbed_environment({"SLACK_X": "1", "HOME": "/h"}) == {"HOME": "/h"}


# --- HTTP mode -------------------------------------------------------------------------------------------
def test_http_mode_under_uvicorn_rejects_bad_signatures_and_replays(fake: FakeSlack,
                                                                     make_bot: Callable[..., FlywheelBot]) -> None:
    secret = "test-signing-secret"
    bot = make_bot(connect=False, http=True, SLACK_SIGNING_SECRET=secret, SLACK_APP_TOKEN=None,
                   http_host="127.0.0.1")
    server = bot.run_http(0, block=False)
    assert type(server.server).__module__.startswith("uvicorn")
    url = f"http://127.0.0.1:{bot.http_port}/slack/events"
    verifier = SignatureVerifier(secret)

    def post(body: str, content_type: str = "application/json", age: float = 0,
             signature: str | None = None) -> tuple[int, str]:
        timestamp = str(int(time.time() - age))
        sig = signature or verifier.generate_signature(timestamp=timestamp, body=body)
        request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
            "Content-Type": content_type, "X-Slack-Signature": sig, "X-Slack-Request-Timestamp": timestamp})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    challenge = json.dumps({"type": "url_verification", "challenge": "c-123", "token": "t"})
    status, body = post(challenge)
    assert status == 200 and "c-123" in body
    assert post(challenge, signature="v0=" + "0" * 64)[0] == 401  # forged
    assert post(challenge, age=10 * 60)[0] == 401  # a correctly signed request replayed 10 minutes later
    assert post(challenge, signature=verifier.generate_signature(timestamp="1", body=challenge))[0] == 401

    # A signed event is acked and answered; a signed slash command (form-encoded) too.
    event = {"type": "app_mention", "user": "U1", "text": f"<@UBOT> {QUESTION}", "ts": "1700000000.000100",
             "channel": "C0001", "event_ts": "1700000000.000100"}
    status, _ = post(json.dumps({"type": "event_callback", "event_id": "EvHTTP1", "team_id": "T0001",
                                 "api_app_id": "A0001", "event": event,
                                 "authorizations": [{"team_id": "T0001", "user_id": "UBOT", "is_bot": True}]}))
    assert status == 200
    fake.wait_for(lambda: interactions(bot), timeout=90)
    form = urllib.parse.urlencode({"command": "/flywheel", "text": "help", "user_id": "U1", "channel_id": "C0001",
                                   "team_id": "T0001", "response_url": f"{fake.api_url}../response/none",
                                   "trigger_id": "t"})
    status, _ = post(form, content_type="application/x-www-form-urlencoded")
    assert status == 200
    unsigned = urllib.request.Request(url, data=form.encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=10)
    assert refused.value.code == 401
